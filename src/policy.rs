//! Which intake address each recipient's journal goes to (docs/POLICIES.md).
//!
//! Pure: settings + envelope in, one [`Job`] per distinct intake address out. The
//! first policy that matches a recipient decides; recipients whose setting resolves
//! to the same intake share one journal, and `off` recipients get none.

use std::collections::HashSet;

use crate::config::{Connector, Pattern, Policy, Settings};
use crate::outcome::Outcome;

/// One journal copy to build: an intake address and the envelope recipients for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub intake: String,
    /// In the order the recipients arrived.
    pub recipients: Vec<String>,
}

/// An envelope address split for matching: local part and domain, lower case, the
/// domain in A-labels. `None` for the null sender or an address without a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MatchAddress {
    local: String,
    domain: String,
}

impl MatchAddress {
    fn parse(address: &str) -> Option<MatchAddress> {
        let bare = strip_brackets(address);
        let (local, domain) = bare.rsplit_once('@')?;
        let domain = domain.trim_end_matches('.');
        let domain = match idna::domain_to_ascii(domain) {
            Ok(ascii) => ascii,
            Err(_) => domain.to_ascii_lowercase(),
        };
        Some(MatchAddress {
            local: unquote_local(local).to_lowercase(),
            domain,
        })
    }
}

/// `<a@b>` → `a@b`; also drops an RFC 5321 source route (`<@relay:a@b>`), which Postfix
/// may pass through unchanged.
pub fn strip_brackets(address: &str) -> &str {
    let trimmed = address.trim();
    let inner = trimmed
        .strip_prefix('<')
        .and_then(|a| a.strip_suffix('>'))
        .unwrap_or(trimmed);
    if inner.starts_with('@') {
        if let Some((_, rest)) = inner.split_once(':') {
            return rest;
        }
    }
    inner
}

/// `"john doe"` → `john doe`: a quoted local part matches its unquoted pattern.
fn unquote_local(local: &str) -> String {
    match local.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => local.to_string(),
    }
}

fn pattern_matches(pattern: &Pattern, address: Option<&MatchAddress>) -> bool {
    let Some(a) = address else {
        return false;
    };
    match pattern {
        Pattern::Address { local, domain } => a.local == *local && a.domain == *domain,
        Pattern::Domain(domain) => a.domain == *domain,
        Pattern::SubDomain(parent) => a
            .domain
            .strip_suffix(parent.as_str())
            .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        Pattern::LocalPart(local) => a.local == *local,
    }
}

/// An empty criteria list matches any address, the null sender included.
fn criteria_match(patterns: &[Pattern], address: Option<&MatchAddress>) -> bool {
    patterns.is_empty() || patterns.iter().any(|p| pattern_matches(p, address))
}

fn policy_matches(
    policy: &Policy,
    sender: Option<&MatchAddress>,
    rcpt: Option<&MatchAddress>,
) -> bool {
    criteria_match(&policy.senders, sender) && criteria_match(&policy.recipients, rcpt)
}

/// The intake address a connector setting resolves to, or `None` for `off`.
fn resolve_connector<'s>(settings: &'s Settings, connector: &'s Connector) -> Option<&'s str> {
    match connector {
        Connector::Off => None,
        Connector::Global => settings.intake_address.as_deref(),
        Connector::Custom(address) => Some(address),
        Connector::UseDefault => match settings.policies.last().map(|p| &p.connector) {
            // DEFAULT cannot itself be use-default (checked at load); guard against a loop anyway.
            Some(Connector::UseDefault) | None => None,
            Some(default) => resolve_connector(settings, default),
        },
    }
}

/// The journals one message needs. A recipient that matches no policy is impossible
/// with a loaded file (DEFAULT matches everything) and gets no journal.
pub fn resolve(settings: &Settings, sender: &str, recipients: &[String]) -> Vec<Job> {
    if !settings.enabled {
        return Vec::new();
    }
    let sender = MatchAddress::parse(sender);
    let mut jobs: Vec<Job> = Vec::new();
    // (intake, recipient) pairs already in a job: a search of the job's list instead
    // made a message with many recipients quadratic (benches/policy.rs).
    let mut seen: HashSet<(&str, &str)> = HashSet::new();
    for recipient in recipients {
        let rcpt = MatchAddress::parse(recipient);
        let Some(policy) = settings
            .policies
            .iter()
            .find(|p| policy_matches(p, sender.as_ref(), rcpt.as_ref()))
        else {
            continue;
        };
        let Some(intake) = resolve_connector(settings, &policy.connector) else {
            continue;
        };
        let recipient = strip_brackets(recipient);
        if !seen.insert((intake, recipient)) {
            continue;
        }
        match jobs.iter_mut().find(|j| j.intake == intake) {
            Some(job) => job.recipients.push(recipient.to_string()),
            None => jobs.push(Job {
                intake: intake.to_string(),
                recipients: vec![recipient.to_string()],
            }),
        }
    }
    jobs
}

/// Why [`resolve`] gave no journal: some recipient matched no policy, or every
/// recipient's policy resolves to `off`. Only asked when there is no journal, so the
/// usual path matches each recipient once.
pub fn why_no_journal(settings: &Settings, sender: &str, recipients: &[String]) -> Outcome {
    let sender = MatchAddress::parse(sender);
    let unmatched = recipients.iter().any(|r| {
        let rcpt = MatchAddress::parse(r);
        !settings
            .policies
            .iter()
            .any(|p| policy_matches(p, sender.as_ref(), rcpt.as_ref()))
    });
    if unmatched || recipients.is_empty() {
        Outcome::NoPolicy
    } else {
        Outcome::ConnectorOff
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use std::path::Path;

    fn settings(yaml: &str) -> Settings {
        match Settings::from_yaml(yaml, Path::new("test.yaml")) {
            Ok(s) => s,
            Err(e) => panic!("test settings do not load: {e}"),
        }
    }

    const POLICIES: &str = r#"
intake_address: global@intake.test
policies:
  - name: research
    recipients: [".lab.example.com", "CTO@Example.com"]
    connector: { custom: research@intake.test }
  - name: bulk
    senders: ["newsletter.example.org"]
    connector: off
  - name: partners
    recipients: ["partners.example.com", "postmaster@"]
    connector: use-default
  - name: both
    recipients: ["both.example.com"]
    senders: ["vip.example.org"]
    connector: off
  - name: DEFAULT
    connector: global
"#;

    fn rcpts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn recipients_split_by_intake_in_arrival_order() {
        let s = settings(POLICIES);
        let jobs = resolve(
            &s,
            "<a@sender.example>",
            &rcpts(&[
                "<x@dept.lab.example.com>",
                "<bob@example.com>",
                "<cto@example.com>",
            ]),
        );
        assert_eq!(
            jobs,
            vec![
                Job {
                    intake: "research@intake.test".into(),
                    recipients: rcpts(&["x@dept.lab.example.com", "cto@example.com"])
                },
                Job {
                    intake: "global@intake.test".into(),
                    recipients: rcpts(&["bob@example.com"])
                },
            ]
        );
    }

    #[test]
    fn subdomain_pattern_does_not_match_the_parent_itself() {
        let s = settings(POLICIES);
        let jobs = resolve(&s, "<a@b.example>", &rcpts(&["<x@lab.example.com>"]));
        assert_eq!(jobs[0].intake, "global@intake.test");
        let jobs = resolve(&s, "<a@b.example>", &rcpts(&["<x@notlab.example.com>"]));
        assert_eq!(jobs[0].intake, "global@intake.test");
        let jobs = resolve(&s, "<a@b.example>", &rcpts(&["<x@a.b.lab.example.com>"]));
        assert_eq!(jobs[0].intake, "research@intake.test");
    }

    #[test]
    fn matching_ignores_case() {
        let s = settings(POLICIES);
        let jobs = resolve(&s, "<a@b.example>", &rcpts(&["<Cto@EXAMPLE.COM>"]));
        assert_eq!(jobs[0].intake, "research@intake.test");
        assert_eq!(jobs[0].recipients, rcpts(&["Cto@EXAMPLE.COM"]));
    }

    #[test]
    fn first_match_wins_and_off_gets_nothing() {
        let s = settings(POLICIES);
        // The newsletter sender matches `bulk` before anything recipient-based below it.
        let jobs = resolve(
            &s,
            "<news@newsletter.example.org>",
            &rcpts(&["<bob@example.com>", "<x@partners.example.com>"]),
        );
        assert!(jobs.is_empty(), "{jobs:?}");
        assert_eq!(
            why_no_journal(
                &s,
                "<news@newsletter.example.org>",
                &rcpts(&["<bob@example.com>"])
            ),
            Outcome::ConnectorOff
        );
        // ...but `research` comes first, so it still wins for its recipients.
        let jobs = resolve(
            &s,
            "<news@newsletter.example.org>",
            &rcpts(&["<x@q.lab.example.com>"]),
        );
        assert_eq!(jobs.len(), 1);
    }

    #[test]
    fn no_policy_when_a_recipient_matches_none() {
        // Without DEFAULT (as in a unit test; a loaded file always has it).
        let mut s = settings(POLICIES);
        s.policies
            .retain(|p| p.name != crate::config::DEFAULT_POLICY);
        assert_eq!(
            why_no_journal(&s, "<a@b.example>", &rcpts(&["<x@nowhere.example>"])),
            Outcome::NoPolicy
        );
        assert_eq!(why_no_journal(&s, "<a@b.example>", &[]), Outcome::NoPolicy);
    }

    #[test]
    fn use_default_inherits_the_default_setting() {
        let s = settings(POLICIES);
        let jobs = resolve(&s, "<a@b.example>", &rcpts(&["<x@partners.example.com>"]));
        assert_eq!(jobs[0].intake, "global@intake.test");
        let off_default = POLICIES.replace(
            "  - name: DEFAULT\n    connector: global",
            "  - name: DEFAULT\n    connector: off",
        );
        let s = settings(&off_default);
        assert!(resolve(&s, "<a@b.example>", &rcpts(&["<x@partners.example.com>"])).is_empty());
        assert!(resolve(&s, "<a@b.example>", &rcpts(&["<x@other.example>"])).is_empty());
    }

    #[test]
    fn local_part_prefix_matches_any_domain() {
        let s = settings(POLICIES);
        let jobs = resolve(&s, "<>", &rcpts(&["<Postmaster@anything.example>"]));
        assert_eq!(jobs[0].intake, "global@intake.test");
        assert_eq!(jobs[0].recipients, rcpts(&["Postmaster@anything.example"]));
    }

    #[test]
    fn sender_and_recipient_criteria_must_both_match() {
        let s = settings(POLICIES);
        assert!(resolve(
            &s,
            "<boss@vip.example.org>",
            &rcpts(&["<a@both.example.com>"])
        )
        .is_empty());
        let jobs = resolve(&s, "<other@x.example>", &rcpts(&["<a@both.example.com>"]));
        assert_eq!(jobs[0].intake, "global@intake.test");
        // The null sender matches no sender pattern.
        let jobs = resolve(&s, "<>", &rcpts(&["<a@both.example.com>"]));
        assert_eq!(jobs[0].intake, "global@intake.test");
    }

    #[test]
    fn idn_recipient_matches_its_a_label_pattern() {
        let s = settings(
            "intake_address: g@intake.test\npolicies:\n  - name: idn\n    recipients: [\"bücher.example\"]\n    connector: off\n  - name: DEFAULT\n    connector: global\n",
        );
        assert!(resolve(&s, "<a@b.example>", &rcpts(&["<x@BÜCHER.example>"])).is_empty());
        assert!(resolve(&s, "<a@b.example>", &rcpts(&["<x@xn--bcher-kva.example>"])).is_empty());
    }

    #[test]
    fn duplicate_recipients_are_listed_once_and_disabled_means_nothing() {
        let s = settings(POLICIES);
        let jobs = resolve(
            &s,
            "<a@b.example>",
            &rcpts(&["<bob@example.com>", "<bob@example.com>"]),
        );
        assert_eq!(jobs[0].recipients, rcpts(&["bob@example.com"]));
        let s = settings(&format!("enabled: false\n{POLICIES}"));
        assert!(resolve(&s, "<a@b.example>", &rcpts(&["<bob@example.com>"])).is_empty());
    }

    #[test]
    fn addresses_without_brackets_and_with_source_routes() {
        assert_eq!(strip_brackets("a@b"), "a@b");
        assert_eq!(strip_brackets(" <a@b> "), "a@b");
        assert_eq!(strip_brackets("<@relay.example:a@b>"), "a@b");
        assert_eq!(strip_brackets("<>"), "");
        let quoted = MatchAddress::parse("<\"John Doe\"@Example.com>").expect("parses");
        assert_eq!(quoted.local, "john doe");
        assert_eq!(quoted.domain, "example.com");
    }
}
