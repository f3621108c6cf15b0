//! The `policies` list: names, criteria and connectors, and the rules that hold
//! across the list (DEFAULT last, names unique).

use std::collections::HashMap;

use serde_saphyr::Spanned;

use super::error::{at, quoted, ConfigError, Position};
use super::raw::{RawConnector, RawPolicy};
use super::Loader;
use crate::config::values::{normalise_address, parse_pattern};
use crate::config::{Connector, Pattern, Policy, DEFAULT_POLICY};

impl Loader<'_> {
    /// The policies, and for each where its connector is written (for later errors).
    pub(super) fn policies(
        &self,
        raw: Option<Spanned<Vec<RawPolicy>>>,
    ) -> Result<(Vec<Policy>, Vec<Option<Position>>), ConfigError> {
        let Some(list) = raw else {
            return Ok((
                vec![Policy {
                    name: DEFAULT_POLICY.to_string(),
                    recipients: Vec::new(),
                    senders: Vec::new(),
                    connector: Connector::Global,
                }],
                vec![None],
            ));
        };
        let list_at = at(&list);
        let count = list.value.len();
        let mut policies = Vec::with_capacity(count);
        let mut connector_at = Vec::with_capacity(count);
        // Lower-cased name → line where it was first used.
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (index, raw) in list.value.into_iter().enumerate() {
            let key = format!("policies[{index}]");
            let name = raw.name.value.trim().to_string();
            if name.is_empty() {
                return Err(self.bad(&raw.name, &format!("{key}.name"), "the name is empty"));
            }
            let is_default = name == DEFAULT_POLICY;
            if !is_default && name.eq_ignore_ascii_case(DEFAULT_POLICY) {
                return Err(self.bad(
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
                return Err(self.bad(
                    &raw.name,
                    &format!("{key}.name"),
                    format!(
                        "policy name {} is already used on line {first}",
                        quoted(&name)
                    ),
                ));
            }
            if is_default && index + 1 != count {
                return Err(self.bad(
                    &raw.name,
                    &key,
                    format!(
                        "policy {DEFAULT_POLICY} must be the last one; it matches every recipient, \
                         so policies after it would never apply"
                    ),
                ));
            }
            if is_default {
                for (field, criteria) in
                    [("recipients", &raw.recipients), ("senders", &raw.senders)]
                {
                    if let Some(c) = criteria.as_ref().filter(|c| !c.value.is_empty()) {
                        return Err(self.bad(
                            c,
                            &format!("{key}.{field}"),
                            format!(
                                "policy {DEFAULT_POLICY} matches everything and takes no {field}"
                            ),
                        ));
                    }
                }
            }
            let recipients = self.patterns(raw.recipients, &format!("{key}.recipients"))?;
            let senders = self.patterns(raw.senders, &format!("{key}.senders"))?;
            let (connector, location) = match raw.connector {
                // An omitted connector inherits; DEFAULT has nothing to inherit from.
                None if is_default => (Connector::Global, at(&raw.name)),
                None => (Connector::UseDefault, at(&raw.name)),
                Some(c) => {
                    let location = at(&c);
                    let connector = match c.value {
                        RawConnector::UseDefault if is_default => {
                            let message = format!(
                                "{key}.connector: policy {DEFAULT_POLICY} cannot be use-default; \
                                 write global, off or {{ custom: ADDRESS }}"
                            );
                            return Err(self.err_in("policies", location, message));
                        }
                        RawConnector::UseDefault => Connector::UseDefault,
                        RawConnector::Global => Connector::Global,
                        RawConnector::Off => Connector::Off,
                        RawConnector::Custom(address) => {
                            Connector::Custom(normalise_address(&address.value).map_err(|e| {
                                self.bad(&address, &format!("{key}.connector.custom"), e)
                            })?)
                        }
                    };
                    (connector, location)
                }
            };
            policies.push(Policy {
                name,
                recipients,
                senders,
                connector,
            });
            connector_at.push(location);
        }
        if policies.last().map(|p| p.name.as_str()) != Some(DEFAULT_POLICY) {
            let message = format!(
                "policies: the last policy must be {DEFAULT_POLICY} (it matches every recipient \
                 and says what happens to the rest); add one with connector global or off"
            );
            return Err(self.err_in("policies", list_at, message));
        }
        Ok((policies, connector_at))
    }

    fn patterns(
        &self,
        raw: Option<Spanned<Vec<Spanned<String>>>>,
        key: &str,
    ) -> Result<Vec<Pattern>, ConfigError> {
        let Some(list) = raw else {
            return Ok(Vec::new());
        };
        list.value
            .iter()
            .enumerate()
            .map(|(i, p)| {
                parse_pattern(&p.value).map_err(|e| self.bad(p, &format!("{key}[{i}]"), e))
            })
            .collect()
    }
}
