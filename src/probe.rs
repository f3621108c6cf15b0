//! `tdc-milter probe`: walks the path a journal would take to the intake and says,
//! in plain words, where it breaks. The appliance's answer to a TLS error is "contact
//! support"; this is ours. It sends no message: MAIL FROM and RCPT TO, then RSET and
//! QUIT.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::config::Settings;
use crate::delivery::cert_match::describe;
use crate::delivery::{
    Deliverer, DeliveryError, FailureClass, Kind, Stage, TlsFailure, TlsProblem,
};
use crate::tdclog::Log;

/// The probe gives up on one host after this long (or the journal lifetime, if shorter).
const PER_HOST: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub address: String,
    pub steps: Vec<Step>,
    pub verdict: String,
    /// A journal would be accepted: the intake took RCPT TO over verified TLS ≥ 1.2.
    pub accepted: bool,
}

impl Report {
    fn step(&mut self, name: &str, ok: bool, detail: impl Into<String>) {
        self.steps.push(Step {
            name: name.to_string(),
            ok,
            detail: detail.into(),
        });
    }

    fn fail(mut self, verdict: impl Into<String>) -> Report {
        self.verdict = verdict.into();
        self.accepted = false;
        self
    }

    pub fn render(&self) -> String {
        let mut out = format!("probe of the message intake address {}\n", self.address);
        for s in &self.steps {
            let mark = if s.ok { "[ ok ]" } else { "[FAIL]" };
            out.push_str(&format!("{mark} {}: {}\n", s.name, s.detail));
        }
        out.push_str(&format!("\n{}\n", self.verdict));
        out
    }
}

/// Plain words for a failed TLS handshake.
fn certificate_words(failure: &TlsFailure) -> String {
    let detail = &failure.detail;
    match failure.problem {
        TlsProblem::UntrustedIssuer => "the certificate is not signed by a CA we trust (the system store, plus delivery.tls.ca_file if set)".into(),
        TlsProblem::NotTheIntake => format!(
            "the certificate carries no name that delivery.tls.match accepts ({detail}); if this host really is the intake, add its name or domain to the list"
        ),
        TlsProblem::WrongName => {
            format!("the certificate is not valid for the name we connected to ({detail})")
        }
        TlsProblem::Expired => "the certificate has expired".into(),
        TlsProblem::NotValidYet => {
            "the certificate is not valid yet (check this machine's clock)".into()
        }
        TlsProblem::Other => detail.clone(),
    }
}

/// The verdict for a failure, by where it happened.
fn verdict_for(e: &DeliveryError, target: &str) -> String {
    match (&e.kind, e.stage) {
        (Kind::DnsPermanent(d), _) => format!(
            "The intake domain cannot receive mail ({d}). Check intake_address: journals to it are hard bounced."
        ),
        (Kind::DnsTemporary(d), _) => format!(
            "DNS did not answer properly ({d}). Journals would be retried once; check the resolver (delivery.resolver)."
        ),
        (Kind::TlsUnavailable(_), _) => format!(
            "{target} does not offer STARTTLS (or something in between, such as a firewall that inspects SMTP, strips it). tdc-milter never sends journals in plaintext, so every journal would fail with 'TLS Error'."
        ),
        (Kind::Tls(d), _) => format!(
            "The TLS handshake with {target} failed: {}. Every journal would fail with 'TLS Error' until this is fixed; set delivery.tls.ca_file if the intake uses a private CA.",
            certificate_words(d)
        ),
        (Kind::Reply(r), Stage::StartTls) => format!(
            "{target} refused STARTTLS ({r}); tdc-milter never falls back to plaintext."
        ),
        (Kind::Network(d), _) | (Kind::Protocol(d), _) => format!(
            "Cannot talk to {target}: {d}. Check firewalls and that outbound connections to this port are allowed."
        ),
        (Kind::Timeout, _) => format!(
            "{target} did not answer in time ({}). Check firewalls and routing towards it.",
            e.stage.name()
        ),
        (Kind::Reply(r), _) => format!("{target} answered {r} at {}.", e.stage.name()),
        (Kind::No8BitMime, _) => e.to_string(),
    }
}

/// Probes the intake `address` (default: the configured intake address).
pub async fn probe(settings: &Settings, address: Option<&str>) -> Report {
    let address = address
        .map(str::to_string)
        .or_else(|| settings.intake_address.clone())
        .unwrap_or_default();
    let mut report = Report {
        address: address.clone(),
        steps: Vec::new(),
        verdict: String::new(),
        accepted: false,
    };
    let Some((_, domain)) = address
        .rsplit_once('@')
        .filter(|(l, d)| !l.is_empty() && !d.is_empty())
    else {
        report.step(
            "intake address",
            false,
            "none given and intake_address is not set",
        );
        return report.fail("Give an address (tdc-milter probe ADDRESS) or set intake_address.");
    };
    let domain = domain.to_string();
    // The probe's own lines stay out of the mail log.
    let deliverer = match Deliverer::new(settings, Log::memory()) {
        Ok(d) => d,
        Err(e) => {
            report.step("TLS and DNS set-up", false, e.clone());
            return report.fail(format!("tdc-milter cannot deliver at all: {e}"));
        }
    };
    let targets = match deliverer.route(&domain).await {
        Ok(t) => t,
        Err(e) => {
            report.step("route", false, e.to_string());
            return report.fail(verdict_for(&e, &domain));
        }
    };
    let listed: Vec<String> = targets
        .iter()
        .map(|t| format!("{} ({})", t.tls_name, t.address))
        .collect();
    report.step("route", true, listed.join(", "));
    let mut needed: Vec<String> = Vec::new();
    for target in &targets {
        if let Some(accepted) = deliverer.accepted_names(target) {
            let names = format!("{}: {}", target.tls_name, describe(&accepted));
            if !needed.contains(&names) {
                needed.push(names);
            }
        }
    }
    if needed.is_empty() {
        report.step(
            "certificate names",
            true,
            "not checked: delivery.tls.verify is false",
        );
    } else {
        report.step(
            "certificate names",
            true,
            format!(
                "a certificate must name one of (delivery.tls.match) {}",
                needed.join("; ")
            ),
        );
    }

    let mut last = String::from("no host to try");
    for (i, target) in targets.iter().enumerate() {
        let name = format!("{} ({})", target.tls_name, target.address);
        let deadline = Instant::now() + PER_HOST.min(settings.delivery.lifetime);
        let mut session = match deliverer.open(target, i as u64 + 1, deadline).await {
            Ok(s) => s,
            Err(open) => {
                let e = open.error;
                let step = match e.stage {
                    Stage::Connect => "connect",
                    Stage::Greeting => "greeting",
                    Stage::Ehlo => "EHLO",
                    Stage::StartTls => "STARTTLS",
                    Stage::TlsHandshake => "TLS and certificate",
                    _ => "EHLO after STARTTLS",
                };
                let detail = match &e.kind {
                    Kind::Tls(d) => certificate_words(d),
                    _ => e.to_string(),
                };
                report.step(&format!("{step} {name}"), false, detail);
                last = verdict_for(&e, &name);
                // Only a host we cannot reach sends us on to the next one.
                if e.class() == FailureClass::Network {
                    continue;
                }
                return report.fail(last);
            }
        };
        report.step(
            &format!("connect {name}"),
            true,
            "greeting and EHLO answered",
        );
        let caps = session.capabilities();
        let mut offered = vec!["STARTTLS"];
        if caps.pipelining {
            offered.push("PIPELINING");
        }
        if caps.eight_bit_mime {
            offered.push("8BITMIME");
        }
        if caps.size.is_some() {
            offered.push("SIZE");
        }
        report.step(
            "TLS",
            true,
            format!(
                "{} {}, certificate of {} verified; after STARTTLS the server offers {}",
                session.tls_protocol,
                session.tls_cipher,
                target.tls_name,
                offered.join(" ")
            ),
        );
        let sender = settings.journal.sender.clone();
        match session.try_envelope(&sender, &address, deadline).await {
            Ok((mail, Some(rcpt))) if rcpt.is_positive() => {
                report.step("MAIL FROM", true, format!("<{sender}>: {mail}"));
                report.step("RCPT TO", true, format!("<{address}>: {rcpt}"));
                session.quit().await;
                report.verdict = format!(
                    "A journal to {address} would be accepted by {name} over {}.",
                    caps_word(caps.eight_bit_mime)
                );
                report.accepted = true;
                return report;
            }
            Ok((mail, Some(rcpt))) => {
                report.step("MAIL FROM", true, format!("<{sender}>: {mail}"));
                report.step("RCPT TO", false, format!("<{address}>: {rcpt}"));
                session.quit().await;
                return report.fail(format!(
                    "{name} refuses the intake address ({rcpt}). Check intake_address against the address shown in the SETD portal."
                ));
            }
            Ok((mail, None)) => {
                report.step("MAIL FROM", false, format!("<{sender}>: {mail}"));
                session.quit().await;
                return report.fail(format!(
                    "{name} refuses our sender <{sender}> ({mail}). Check journal.sender."
                ));
            }
            Err(e) => {
                report.step(e.stage.name(), false, e.to_string());
                return report.fail(verdict_for(&e, &name));
            }
        }
    }
    report.fail(last)
}

fn caps_word(eight_bit: bool) -> String {
    if eight_bit {
        "verified TLS, 8BITMIME offered".into()
    } else {
        "verified TLS (8BITMIME not offered: journals of 8-bit originals would fail)".into()
    }
}
