//! The `policies` list: names, criteria and connectors, the rules that hold across
//! the list (DEFAULT last, names unique), and the one across keys: a policy that
//! journals to the global intake needs `intake_address`.

use std::collections::HashMap;

use serde_saphyr::Spanned;

use super::error::{at, quoted, ConfigError};
use super::raw::{RawConnector, RawPolicy, RawSettings};
use super::Loader;
use crate::config::values::{normalise_address, parse_pattern};
use crate::config::{Connector, Pattern, Policy, Settings, DEFAULT_POLICY};

/// Without `policies`, one policy: DEFAULT, journaling to the global intake.
pub(super) fn default_policies() -> Vec<Policy> {
    vec![Policy {
        name: DEFAULT_POLICY.to_string(),
        recipients: Vec::new(),
        senders: Vec::new(),
        connector: Connector::Global,
    }]
}

/// With the milter enabled and no `intake_address`, no policy may journal to it.
pub(super) fn intake_address_needed(
    loader: &Loader<'_>,
    raw: &RawSettings,
    settings: &Settings,
) -> Result<(), ConfigError> {
    if !settings.enabled || settings.intake_address.is_some() {
        return Ok(());
    }
    let policies = &settings.policies;
    let default = policies.last().map(|p| &p.connector);
    for (i, policy) in policies.iter().enumerate() {
        let effective = match &policy.connector {
            Connector::UseDefault => default.unwrap_or(&Connector::Global),
            other => other,
        };
        if *effective != Connector::Global {
            continue;
        }
        let how = if policy.connector == Connector::UseDefault {
            "use-default, and DEFAULT is global"
        } else {
            "global"
        };
        let message = format!(
            "intake_address is not set, but policy {} journals to it (connector {how}); \
             set intake_address or change the connector",
            quoted(&policy.name)
        );
        // Where the connector is written, or the policy's name when it is left out.
        let written = raw.policies.as_ref().and_then(|list| list.value.get(i));
        let location = written.and_then(|p| p.connector.as_ref().map_or(at(&p.name), at));
        return Err(loader.err_in("policies", location, message));
    }
    Ok(())
}

/// `policies`: each checked, then the rules across the list (DEFAULT last, names unique).
pub(super) fn policies(
    loader: &Loader<'_>,
    key: &str,
    list: &Spanned<Vec<RawPolicy>>,
) -> Result<Vec<Policy>, ConfigError> {
    let list_at = at(list);
    let count = list.value.len();
    let mut policies = Vec::with_capacity(count);
    // Lower-cased name → line where it was first used.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (index, raw) in list.value.iter().enumerate() {
        let key = format!("{key}[{index}]");
        let name = raw.name.value.trim().to_string();
        if name.is_empty() {
            return Err(loader.bad(&raw.name, &format!("{key}.name"), "the name is empty"));
        }
        let is_default = name == DEFAULT_POLICY;
        if !is_default && name.eq_ignore_ascii_case(DEFAULT_POLICY) {
            return Err(loader.bad(
                &raw.name,
                &format!("{key}.name"),
                format!(
                    "{} is reserved: the catch-all policy is spelled {DEFAULT_POLICY}",
                    quoted(&name)
                ),
            ));
        }
        let line = at(&raw.name).map(|(line, _)| line).unwrap_or(0);
        if let Some(first) = seen.insert(name.to_lowercase(), line) {
            return Err(loader.bad(
                &raw.name,
                &format!("{key}.name"),
                format!(
                    "policy name {} is already used on line {first}",
                    quoted(&name)
                ),
            ));
        }
        if is_default && index + 1 != count {
            return Err(loader.bad(
                &raw.name,
                &key,
                format!(
                    "policy {DEFAULT_POLICY} must be the last one; it matches every recipient, \
                         so policies after it would never apply"
                ),
            ));
        }
        if is_default {
            for (field, criteria) in [("recipients", &raw.recipients), ("senders", &raw.senders)] {
                if let Some(c) = criteria.as_ref().filter(|c| !c.value.is_empty()) {
                    return Err(loader.bad(
                        c,
                        &format!("{key}.{field}"),
                        format!("policy {DEFAULT_POLICY} matches everything and takes no {field}"),
                    ));
                }
            }
        }
        let recipients = patterns(loader, &raw.recipients, &format!("{key}.recipients"))?;
        let senders = patterns(loader, &raw.senders, &format!("{key}.senders"))?;
        let connector = match &raw.connector {
            // An omitted connector inherits; DEFAULT has nothing to inherit from.
            None if is_default => Connector::Global,
            None => Connector::UseDefault,
            Some(c) => {
                let location = at(c);
                match &c.value {
                    RawConnector::UseDefault if is_default => {
                        let message = format!(
                            "{key}.connector: policy {DEFAULT_POLICY} cannot be use-default; \
                                 write global, off or {{ custom: ADDRESS }}"
                        );
                        return Err(loader.err_in("policies", location, message));
                    }
                    RawConnector::UseDefault => Connector::UseDefault,
                    RawConnector::Global => Connector::Global,
                    RawConnector::Off => Connector::Off,
                    RawConnector::Custom(address) => {
                        Connector::Custom(normalise_address(&address.value).map_err(|e| {
                            loader.bad(address, &format!("{key}.connector.custom"), e)
                        })?)
                    }
                }
            }
        };
        policies.push(Policy {
            name,
            recipients,
            senders,
            connector,
        });
    }
    if policies.last().map(|p| p.name.as_str()) != Some(DEFAULT_POLICY) {
        let message = format!(
            "policies: the last policy must be {DEFAULT_POLICY} (it matches every recipient \
                 and says what happens to the rest); add one with connector global or off"
        );
        return Err(loader.err_in("policies", list_at, message));
    }
    Ok(policies)
}

fn patterns(
    loader: &Loader<'_>,
    raw: &Option<Spanned<Vec<Spanned<String>>>>,
    key: &str,
) -> Result<Vec<Pattern>, ConfigError> {
    let Some(list) = raw else {
        return Ok(Vec::new());
    };
    list.value
        .iter()
        .enumerate()
        .map(|(i, p)| parse_pattern(&p.value).map_err(|e| loader.bad(p, &format!("{key}[{i}]"), e)))
        .collect()
}
