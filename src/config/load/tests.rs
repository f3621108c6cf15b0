use std::net::SocketAddr;
use std::time::Duration;

use super::*;
use crate::config::values::normalise_address;
use crate::config::{
    CertMatch, Connector, HeaderVerdict, HostPort, Pattern, Policy, ResolverSpec, Route,
    SocketSpec, TlsSettings,
};

const FILE: &str = "/etc/tdc-milter/tdc-milter.yaml";

fn load(yaml: &str) -> Result<Settings, ConfigError> {
    Settings::from_yaml(yaml, Path::new(FILE))
}

fn ok(yaml: &str) -> Settings {
    match load(yaml) {
        Ok(s) => s,
        Err(e) => panic!("settings refused: {e}\n{yaml}"),
    }
}

fn fail(yaml: &str) -> ConfigError {
    match load(yaml) {
        Ok(s) => panic!("settings accepted: {s:?}\n{yaml}"),
        Err(e) => e,
    }
}

/// Asserts the error's position and that its text contains `needle`.
fn fails_at(yaml: &str, line: usize, column: usize, needle: &str) -> String {
    let e = fail(yaml);
    let text = e.to_string();
    assert_eq!(e.location(), Some((line, column)), "{text}");
    assert!(
        text.starts_with(&format!("{FILE}:{line}:{column}: ")),
        "{text}"
    );
    assert!(text.contains(needle), "'{needle}' not in: {text}");
    assert!(!text.contains('\n'), "{text}");
    text
}

const INTAKE: &str = "intake_address: 5f1c2e@intake.example.net\n";

fn with_intake(rest: &str) -> String {
    format!("{INTAKE}{rest}")
}

#[test]
fn full_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "not checked here\n").unwrap();
    let yaml = format!(
        r#"enabled: true
intake_address: 5F1c2e@Intake.Example.NET
milter:
  listen: unix:/run/tdc-milter/milter.sock
incoming:
  daemon_names: [inbound, "smtpd-ext"]
journal:
  sender: tdc@GW.example.org
  client_ip_header: X-Remote-IP
  max_size: 10MB
  not_clean:
    - {{ header: X-Spam-Flag, value: "YES" }}
    - {{ header: X-Virus, value: " infected " }}
delivery:
  route: ["127.0.0.1:2526", "Relay.Example", "[::1]:25"]
  resolver: 127.0.0.1:5353
  port: 2525
  tls: {{ verify: false, ca_file: "{ca}", match: [hostname, ".Etd.cisco.com"] }}
  lifetime: 5m
  max_connections: 3
policies:
  - name: research
    recipients: [".lab.example.com", "cto@example.com"]
    senders: []
    connector: {{ custom: 9ab0d3@intake.example.net }}
  - name: bulk
    senders: ["newsletter.example.org"]
    connector: off
  - name: partners
    recipients: ["partners.example.com", "postmaster@"]
    connector: use-default
  - name: DEFAULT
    connector: global
"#,
        ca = ca.display()
    );
    let s = ok(&yaml);
    assert_eq!(s.path, PathBuf::from(FILE));
    assert!(s.enabled);
    assert_eq!(
        s.intake_address.as_deref(),
        Some("5F1c2e@intake.example.net")
    );
    assert_eq!(
        s.milter.listen,
        SocketSpec::Unix("/run/tdc-milter/milter.sock".into())
    );
    assert_eq!(s.incoming.daemon_names, vec!["inbound", "smtpd-ext"]);
    assert_eq!(s.journal.sender, "tdc@gw.example.org");
    assert_eq!(s.journal.client_ip_header, "X-Remote-IP");
    assert_eq!(s.journal.max_size, 10_000_000);
    assert_eq!(
        s.journal.not_clean,
        vec![
            HeaderVerdict {
                header: "X-Spam-Flag".into(),
                value: "YES".into()
            },
            HeaderVerdict {
                header: "X-Virus".into(),
                value: "infected".into()
            },
        ]
    );
    assert_eq!(
        s.delivery.route,
        Route::Static(vec![
            HostPort {
                host: "127.0.0.1".into(),
                port: Some(2526)
            },
            HostPort {
                host: "relay.example".into(),
                port: None
            },
            HostPort {
                host: "::1".into(),
                port: Some(25)
            },
        ])
    );
    assert_eq!(
        s.delivery.resolver,
        ResolverSpec::Server("127.0.0.1:5353".parse::<SocketAddr>().unwrap())
    );
    assert_eq!(s.delivery.port, 2525);
    assert_eq!(
        s.delivery.tls,
        TlsSettings {
            verify: false,
            ca_file: Some(ca.clone()),
            cert_match: vec![
                CertMatch::Hostname,
                CertMatch::Under("etd.cisco.com".into())
            ],
        }
    );
    assert_eq!(s.delivery.lifetime, Duration::from_secs(300));
    assert_eq!(s.delivery.max_connections, 3);
    assert_eq!(
        s.policies,
        vec![
            Policy {
                name: "research".into(),
                recipients: vec![
                    Pattern::SubDomain("lab.example.com".into()),
                    Pattern::Address {
                        local: "cto".into(),
                        domain: "example.com".into()
                    },
                ],
                senders: vec![],
                connector: Connector::Custom("9ab0d3@intake.example.net".into()),
            },
            Policy {
                name: "bulk".into(),
                recipients: vec![],
                senders: vec![Pattern::Domain("newsletter.example.org".into())],
                connector: Connector::Off,
            },
            Policy {
                name: "partners".into(),
                recipients: vec![
                    Pattern::Domain("partners.example.com".into()),
                    Pattern::LocalPart("postmaster".into()),
                ],
                senders: vec![],
                connector: Connector::UseDefault,
            },
            Policy {
                name: "DEFAULT".into(),
                recipients: vec![],
                senders: vec![],
                connector: Connector::Global,
            },
        ]
    );
}

#[test]
fn defaults_when_keys_are_omitted() {
    let s = ok(INTAKE);
    assert!(s.enabled);
    assert_eq!(
        s.milter.listen,
        SocketSpec::Inet {
            host: "127.0.0.1".into(),
            port: 8895
        }
    );
    assert!(s.incoming.daemon_names.is_empty());
    let host = gethostname::gethostname();
    let expected = normalise_address(&format!("tdc@{}", host.to_string_lossy())).unwrap();
    assert_eq!(s.journal.sender, expected);
    assert!(s.journal.sender.starts_with("tdc@"));
    assert_eq!(s.journal.client_ip_header, "X-IronPort-RemoteIP");
    assert_eq!(s.journal.max_size, 50 * 1024 * 1024);
    assert!(
        s.journal.not_clean.is_empty(),
        "a sender could forge a default verdict"
    );
    assert_eq!(s.milter.max_connections, 1000);
    assert_eq!(s.milter.idle_timeout, std::time::Duration::from_secs(7210));
    assert!(s.incoming.internal_networks.is_empty());
    assert_eq!(s.delivery.route, Route::Dns);
    assert_eq!(s.delivery.resolver, ResolverSpec::System);
    assert_eq!(s.delivery.port, 25);
    assert_eq!(
        s.delivery.tls,
        TlsSettings {
            verify: true,
            ca_file: None,
            cert_match: CertMatch::defaults(),
        }
    );
    assert_eq!(s.delivery.lifetime, Duration::from_secs(120));
    assert_eq!(s.delivery.max_connections, 20);
    assert_eq!(
        s.policies,
        vec![Policy {
            name: "DEFAULT".into(),
            recipients: vec![],
            senders: vec![],
            connector: Connector::Global,
        }]
    );
}

#[test]
fn empty_sections_and_nulls_take_defaults() {
    let s = ok(&with_intake(
        "milter:\nincoming: {}\njournal:\n  sender: ~\ndelivery:\n  tls: {}\n",
    ));
    assert!(s.delivery.tls.verify);
    assert_eq!(s.journal.client_ip_header, "X-IronPort-RemoteIP");
}

#[test]
fn empty_file_needs_an_intake_address() {
    let e = fail("");
    assert_eq!(e.location(), None);
    let text = e.to_string();
    assert!(
        text.starts_with(&format!("{FILE}: intake_address is not set")),
        "{text}"
    );
    // Switched off, nothing is needed.
    let s = ok("enabled: false\n");
    assert!(!s.enabled);
    assert_eq!(s.intake_address, None);
}

#[test]
fn unknown_key_at_top_level() {
    let text = fails_at(
        &with_intake("colour: red\n"),
        2,
        1,
        "unknown key 'colour' in the top level; expected one of enabled, intake_address, milter",
    );
    assert_eq!(
        text,
        format!(
            "{FILE}:2:1: unknown key 'colour' in the top level; expected one of enabled, \
             intake_address, milter, incoming, journal, delivery, queue, control, metrics, tracking, check, policies, levels"
        )
    );
}

#[test]
fn unknown_key_nested() {
    let yaml = with_intake(
        "policies:\n  - name: research\n    recipients: [example.com]\n  - name: bulk\n    colour: red\n    connector: off\n  - name: DEFAULT\n",
    );
    let text = fails_at(
        &yaml,
        6,
        5,
        "unknown key 'colour' in policies[1]; expected one of name",
    );
    assert_eq!(
        text,
        format!(
            "{FILE}:6:5: unknown key 'colour' in policies[1]; expected one of name, recipients, \
             senders, connector"
        )
    );
    fails_at(
        &with_intake("delivery:\n  tls:\n    verify: true\n    verfy: false\n"),
        5,
        5,
        "unknown key 'verfy' in delivery.tls; expected one of verify, ca_file",
    );
    fails_at(
        &with_intake("journal:\n  not_clean:\n    - { header: X-Spam, value: 'YES', case: no }\n"),
        4,
        39,
        "unknown key 'case' in journal.not_clean[0]",
    );
}

#[test]
fn wrong_types() {
    fails_at(
        &with_intake("delivery:\n  port: seventy\n"),
        3,
        9,
        "delivery.port: expected a whole number from 0 to 65535, found 'seventy'",
    );
    fails_at(
        &with_intake("delivery:\n  port: 70000\n"),
        3,
        9,
        "delivery.port: expected a whole number from 0 to 65535, found '70000'",
    );
    fails_at(
        &with_intake("enabled: maybe\n"),
        2,
        10,
        "enabled: expected true or false, found 'maybe'",
    );
    fails_at(
        &with_intake("incoming:\n  daemon_names: inbound\n"),
        3,
        17,
        "incoming.daemon_names: expected a list, found 'inbound'",
    );
    fails_at(
        &with_intake("delivery: fast\n"),
        2,
        11,
        "delivery: expected a mapping",
    );
    fails_at(
        &with_intake("delivery:\n  lifetime: [1s]\n"),
        3,
        13,
        "delivery.lifetime: expected a single value",
    );
    fails_at(
        &with_intake("policies:\n  - connector: off\n  - name: DEFAULT\n"),
        3,
        5,
        "missing key 'name' in policies[0]",
    );
}

#[test]
fn duplicate_keys_are_refused() {
    fails_at(
        &with_intake("enabled: true\nenabled: false\n"),
        3,
        1,
        "duplicate key 'enabled' in the top level",
    );
}

#[test]
fn bare_number_where_a_unit_is_due() {
    fails_at(
        &with_intake("delivery:\n  lifetime: 120\n"),
        3,
        13,
        "delivery.lifetime: duration '120' has no unit",
    );
    fails_at(
        &with_intake("journal:\n  max_size: 52428800\n"),
        3,
        13,
        "journal.max_size: size '52428800' has no unit",
    );
    fails_at(
        &with_intake("delivery:\n  lifetime: 0s\n"),
        3,
        13,
        "delivery.lifetime: must be longer than 0",
    );
}

#[test]
fn connector_off_unquoted_is_the_keyword() {
    let s = ok(&with_intake(
        "policies:\n  - name: bulk\n    senders: [newsletter.example.org]\n    connector: off\n  - name: quoted\n    senders: [a.example]\n    connector: \"off\"\n  - name: DEFAULT\n    connector: off\n",
    ));
    assert_eq!(s.policies[0].connector, Connector::Off);
    assert_eq!(s.policies[1].connector, Connector::Off);
    assert_eq!(s.policies[2].connector, Connector::Off);
    // Nothing journals to the global intake, so it is not required.
    let s = ok("policies:\n  - name: DEFAULT\n    connector: off\n");
    assert_eq!(s.intake_address, None);
}

#[test]
fn connector_booleans_are_not_off() {
    for (word, column) in [("false", 16), ("no", 16), ("Off", 16), ("OFF", 16)] {
        let yaml = with_intake(&format!(
            "policies:\n  - name: bulk\n    connector: {word}\n  - name: DEFAULT\n"
        ));
        fails_at(
            &yaml,
            4,
            column,
            &format!(
                "policies[0].connector: expected use-default, global, off or {{ custom: ADDRESS }}, found '{word}'"
            ),
        );
    }
}

#[test]
fn booleans_accept_yaml_1_1_spellings() {
    assert!(!ok("enabled: off\n").enabled);
    assert!(!ok("enabled: no\n").enabled);
    assert!(ok(&with_intake("enabled: yes\n")).enabled);
    assert!(ok(&with_intake("enabled: on\n")).enabled);
    assert!(
        !ok(&with_intake("delivery:\n  tls: { verify: off }\n"))
            .delivery
            .tls
            .verify
    );
}

#[test]
fn default_policy_missing() {
    fails_at(
        &with_intake("policies:\n  - name: research\n    connector: global\n"),
        3,
        3,
        "policies: the last policy must be DEFAULT",
    );
    fails_at(
        &with_intake("policies: []\n"),
        2,
        11,
        "policies: the last policy must be DEFAULT",
    );
}

#[test]
fn default_policy_not_last() {
    fails_at(
        &with_intake(
            "policies:\n  - name: DEFAULT\n    connector: global\n  - name: bulk\n    connector: off\n",
        ),
        3,
        11,
        "policies[0]: policy DEFAULT must be the last one",
    );
}

#[test]
fn default_policy_with_criteria() {
    fails_at(
        &with_intake("policies:\n  - name: DEFAULT\n    recipients: [example.com]\n"),
        4,
        17,
        "policies[0].recipients: policy DEFAULT matches everything and takes no recipients",
    );
    fails_at(
        &with_intake("policies:\n  - name: DEFAULT\n    senders:\n      - example.com\n"),
        5,
        7,
        "policies[0].senders: policy DEFAULT matches everything and takes no senders",
    );
    // Empty lists say the same as no list.
    ok(&with_intake(
        "policies:\n  - name: DEFAULT\n    recipients: []\n    senders: []\n",
    ));
}

#[test]
fn default_policy_cannot_use_default() {
    fails_at(
        &with_intake("policies:\n  - name: DEFAULT\n    connector: use-default\n"),
        4,
        16,
        "policies[0].connector: policy DEFAULT cannot be use-default",
    );
}

#[test]
fn default_policy_spelling_is_reserved() {
    fails_at(
        &with_intake("policies:\n  - name: Default\n  - name: DEFAULT\n"),
        3,
        11,
        "policies[0].name: 'Default' is reserved",
    );
}

#[test]
fn omitted_connector_inherits() {
    let s = ok(&with_intake(
        "policies:\n  - name: partners\n    recipients: [partners.example.com]\n  - name: DEFAULT\n",
    ));
    assert_eq!(s.policies[0].connector, Connector::UseDefault);
    assert_eq!(s.policies[1].connector, Connector::Global);
}

#[test]
fn duplicate_policy_names() {
    fails_at(
        &with_intake(
            "policies:\n  - name: bulk\n    connector: off\n  - name: Bulk\n    connector: off\n  - name: DEFAULT\n",
        ),
        5,
        11,
        "policies[1].name: policy name 'Bulk' is already used on line 3",
    );
}

#[test]
fn empty_policy_name() {
    fails_at(
        &with_intake("policies:\n  - name: ''\n  - name: DEFAULT\n"),
        3,
        11,
        "policies[0].name: the name is empty",
    );
}

#[test]
fn bad_socket_spec() {
    fails_at(
        &with_intake("milter:\n  listen: 127.0.0.1:8895\n"),
        3,
        11,
        "milter.listen: '127.0.0.1:8895' is not a milter socket; write inet:HOST:PORT or unix:/absolute/path",
    );
    fails_at(
        &with_intake("milter:\n  listen: unix:milter.sock\n"),
        3,
        11,
        "milter.listen: socket 'unix:milter.sock' needs an absolute path",
    );
    let s = ok(&with_intake("milter:\n  listen: inet:[::1]:8895\n"));
    assert_eq!(
        s.milter.listen,
        SocketSpec::Inet {
            host: "::1".into(),
            port: 8895
        }
    );
    assert_eq!(s.milter.listen.to_string(), "inet:[::1]:8895");
}

#[test]
fn bad_addresses() {
    fails_at(
        "intake_address: intake.example.net\n",
        1,
        17,
        "intake_address: 'intake.example.net' is not an address (local@domain)",
    );
    fails_at(
        "intake_address: x@exa_mple..net\n",
        1,
        17,
        "intake_address: address 'x@exa_mple..net': domain 'exa_mple..net' has an empty label",
    );
    fails_at(
        &with_intake("journal:\n  sender: '@gw.example.org'\n"),
        3,
        11,
        "journal.sender: address '@gw.example.org': the local part (before '@') is empty",
    );
    fails_at(
        &with_intake(
            "policies:\n  - name: research\n    connector: { custom: 9ab0d3 }\n  - name: DEFAULT\n",
        ),
        4,
        26,
        "policies[0].connector.custom: '9ab0d3' is not an address",
    );
}

#[test]
fn custom_intake_is_normalised() {
    let s = ok(&with_intake(
        "policies:\n  - name: r\n    recipients: [r.example]\n    connector:\n      custom: Lab@Intake.Bücher.example\n  - name: DEFAULT\n",
    ));
    assert_eq!(
        s.policies[0].connector,
        Connector::Custom("Lab@intake.xn--bcher-kva.example".into())
    );
}

#[test]
fn idn_patterns_become_a_labels() {
    let s = ok(&with_intake(
        "policies:\n  - name: idn\n    recipients: [Bücher.Example, \"Müller@Bücher.example\", .bücher.example]\n  - name: DEFAULT\n",
    ));
    assert_eq!(
        s.policies[0].recipients,
        vec![
            Pattern::Domain("xn--bcher-kva.example".into()),
            Pattern::Address {
                local: "müller".into(),
                domain: "xn--bcher-kva.example".into()
            },
            Pattern::SubDomain("xn--bcher-kva.example".into()),
        ]
    );
}

#[test]
fn subdomain_and_other_patterns() {
    let s = ok(&with_intake(
        "policies:\n  - name: p\n    recipients: [.Example.com, '@example.org', postmaster@]\n    senders: [CEO@Example.NET]\n  - name: DEFAULT\n",
    ));
    assert_eq!(
        s.policies[0].recipients,
        vec![
            Pattern::SubDomain("example.com".into()),
            Pattern::Domain("example.org".into()),
            Pattern::LocalPart("postmaster".into()),
        ]
    );
    assert_eq!(
        s.policies[0].senders,
        vec![Pattern::Address {
            local: "ceo".into(),
            domain: "example.net".into()
        }]
    );
}

#[test]
fn bad_patterns_are_located() {
    fails_at(
        &with_intake(
            "policies:\n  - name: p\n    recipients:\n      - example.com\n      - 'bad domain.example'\n  - name: DEFAULT\n",
        ),
        6,
        9,
        "policies[0].recipients[1]: pattern 'bad domain.example': domain 'bad domain.example' contains ' '",
    );
    fails_at(
        &with_intake("policies:\n  - name: p\n    senders: ['']\n  - name: DEFAULT\n"),
        4,
        15,
        "policies[0].senders[0]: the pattern is empty",
    );
    fails_at(
        &with_intake("policies:\n  - name: p\n    senders: [..example.com]\n  - name: DEFAULT\n"),
        4,
        15,
        "policies[0].senders[0]: pattern '..example.com'",
    );
}

#[test]
fn intake_address_missing_while_needed() {
    // DEFAULT is global.
    fails_at(
        "policies:\n  - name: bulk\n    connector: off\n  - name: DEFAULT\n    connector: global\n",
        5,
        16,
        "intake_address is not set, but policy 'DEFAULT' journals to it (connector global)",
    );
    // use-default while DEFAULT is global: the first such policy is named.
    fails_at(
        "policies:\n  - name: partners\n    recipients: [p.example]\n    connector: use-default\n  - name: DEFAULT\n    connector: global\n",
        4,
        16,
        "policy 'partners' journals to it (connector use-default, and DEFAULT is global)",
    );
    // An ordinary policy that is global, while DEFAULT is off.
    fails_at(
        "policies:\n  - name: vip\n    recipients: [vip.example]\n    connector: global\n  - name: DEFAULT\n    connector: off\n",
        4,
        16,
        "policy 'vip' journals to it",
    );
    // Custom and off only: no global intake needed.
    ok("policies:\n  - name: r\n    recipients: [r.example]\n    connector: { custom: a@intake.example }\n  - name: DEFAULT\n    connector: off\n");
    // Switched off: not needed.
    ok("enabled: false\npolicies:\n  - name: DEFAULT\n    connector: global\n");
}

#[test]
fn ca_file_must_be_readable() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let yaml = with_intake(&format!(
        "delivery:\n  tls:\n    ca_file: \"{}\"\n",
        missing.display()
    ));
    fails_at(&yaml, 4, 14, "delivery.tls.ca_file: cannot read '");
    let text = fail(&yaml).to_string();
    assert!(text.contains("No such file or directory"), "{text}");

    let dir_yaml = with_intake(&format!(
        "delivery:\n  tls:\n    ca_file: \"{}\"\n",
        dir.path().display()
    ));
    fails_at(&dir_yaml, 4, 14, "is a directory");

    // A relative path is taken from the settings file's directory.
    std::fs::write(dir.path().join("ca.pem"), "x").unwrap();
    let settings_path = dir.path().join("tdc-milter.yaml");
    let s = Settings::from_yaml(
        &with_intake("delivery:\n  tls: { ca_file: ca.pem }\n"),
        &settings_path,
    )
    .unwrap();
    assert_eq!(s.delivery.tls.ca_file, Some(dir.path().join("ca.pem")));
}

#[test]
fn routes() {
    let s = ok(&with_intake("delivery:\n  route: dns\n"));
    assert_eq!(s.delivery.route, Route::Dns);
    fails_at(
        &with_intake("delivery:\n  route: 127.0.0.1:2526\n"),
        3,
        10,
        "delivery.route: expected dns or a list of hosts, found '127.0.0.1:2526'; write a single host as a list: [\"127.0.0.1:2526\"]",
    );
    fails_at(
        &with_intake("delivery:\n  route: []\n"),
        3,
        10,
        "delivery.route: the list of hosts is empty",
    );
    fails_at(
        &with_intake("delivery:\n  route:\n    - relay.example:25\n    - \"::1\"\n"),
        5,
        7,
        "delivery.route[1]: host '::1': an IPv6 address must be written in brackets",
    );
    fails_at(
        &with_intake("delivery:\n  route: [\"relay.example:0\"]\n"),
        3,
        11,
        "port 0 is not usable",
    );
}

#[test]
fn resolvers_ports_and_limits() {
    fails_at(
        &with_intake("delivery:\n  resolver: 127.0.0.1\n"),
        3,
        13,
        "delivery.resolver: expected system or IP:PORT",
    );
    let s = ok(&with_intake("delivery:\n  resolver: \"[::1]:53\"\n"));
    assert_eq!(
        s.delivery.resolver,
        ResolverSpec::Server("[::1]:53".parse().unwrap())
    );
    fails_at(
        &with_intake("delivery:\n  port: 0\n"),
        3,
        9,
        "delivery.port: port 0 is not usable",
    );
    fails_at(
        &with_intake("delivery:\n  max_connections: 0\n"),
        3,
        20,
        "delivery.max_connections: must be at least 1",
    );
    fails_at(
        &with_intake("delivery:\n  max_connections: -1\n"),
        3,
        20,
        "delivery.max_connections: expected a whole number",
    );
}

#[test]
fn journal_checks() {
    fails_at(
        &with_intake("journal:\n  client_ip_header: 'X Remote IP'\n"),
        3,
        21,
        "journal.client_ip_header: header name 'X Remote IP' contains ' '",
    );
    fails_at(
        &with_intake("journal:\n  not_clean:\n    - { header: 'X-Spam:', value: 'YES' }\n"),
        4,
        17,
        "journal.not_clean[0].header: header name 'X-Spam:' contains ':'",
    );
    fails_at(
        &with_intake("journal:\n  not_clean:\n    - { header: X-Spam, value: ' ' }\n"),
        4,
        32,
        "journal.not_clean[0].value: the value for header X-Spam is empty",
    );
    fails_at(
        &with_intake("journal:\n  max_size: 0B\n"),
        3,
        13,
        "journal.max_size: must be more than 0 bytes",
    );
    let s = ok(&with_intake("journal:\n  not_clean: []\n"));
    assert!(s.journal.not_clean.is_empty());
    fails_at(
        &with_intake("incoming:\n  daemon_names: [inbound, '']\n"),
        3,
        27,
        "incoming.daemon_names[1]: the daemon name is empty",
    );
}

#[test]
fn errors_stay_on_one_line() {
    let e = fail("intake_address: \"a\\nb@x\"\n");
    let text = e.to_string();
    assert!(!text.contains('\n'), "{text}");
    assert!(text.contains("a\\nb@x"), "{text}");
}

#[test]
fn syntax_errors_are_located() {
    let e = fail("enabled: [true\n");
    assert!(e.location().is_some(), "{e}");
    assert!(e.to_string().starts_with(FILE), "{e}");
    assert!(!e.to_string().contains('\n'), "{e}");
}

#[test]
fn unreadable_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.yaml");
    let e = Settings::load(&path).unwrap_err();
    assert_eq!(e.location(), None);
    assert_eq!(
        e.to_string(),
        format!(
            "cannot read settings file {}: No such file or directory (os error 2)",
            path.display()
        )
    );
}

#[test]
fn load_reads_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tdc-milter.yaml");
    std::fs::write(&path, "intake_address: a@intake.example\nenabled: colour\n").unwrap();
    let e = Settings::load(&path).unwrap_err();
    assert_eq!(e.location(), Some((2, 10)));
    assert_eq!(e.path(), path.as_path());
    assert!(e
        .to_string()
        .starts_with(&format!("{}:2:10: enabled:", path.display())));
}

#[test]
fn the_example_file_loads() {
    let text = include_str!("../../../milter-config/tdc-milter.yaml");
    let s = match Settings::from_yaml(text, Path::new(crate::config::DEFAULT_PATH)) {
        Ok(s) => s,
        Err(e) => panic!("the example file does not load: {e}"),
    };
    assert!(!s.enabled, "the package installs this file switched off");
    assert_eq!(
        s.intake_address.as_deref(),
        Some("5f1c2e@intake.example.net")
    );
    assert_eq!(
        s.milter.listen,
        SocketSpec::Inet {
            host: "127.0.0.1".into(),
            port: 8895
        }
    );
    assert_eq!(s.delivery.tls.ca_file, None);
    let names: Vec<&str> = s.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names.last(), Some(&"DEFAULT"));
    assert!(s.policies.iter().any(|p| p.connector == Connector::Off));
    assert!(s
        .policies
        .iter()
        .any(|p| matches!(p.connector, Connector::Custom(_))));
}

#[test]
fn connector_shapes() {
    fails_at(
        &with_intake("policies:\n  - name: a\n    connector: custom\n  - name: DEFAULT\n"),
        4,
        16,
        "policies[0].connector: expected use-default, global, off or { custom: ADDRESS }, found 'custom'",
    );
    fails_at(
        &with_intake("policies:\n  - name: a\n    connector: { colour: x@y.z }\n  - name: DEFAULT\n"),
        4,
        18,
        "policies[0].connector: expected use-default, global, off or { custom: ADDRESS }, found 'colour'",
    );
    fails_at(
        &with_intake("policies:\n  - name: a\n    connector: [global]\n  - name: DEFAULT\n"),
        4,
        16,
        "policies[0].connector: expected use-default, global, off or { custom: ADDRESS }",
    );
    fails_at(
        &with_intake("policies:\n  - name: a\n    connector: { custom: [x] }\n  - name: DEFAULT\n"),
        4,
        26,
        "policies[0].connector.custom: expected a single value",
    );
    let s = ok(&with_intake(
        "policies:\n  - name: a\n    recipients: [a.example]\n    connector:\n      custom: x@intake.example\n  - name: DEFAULT\n",
    ));
    assert_eq!(
        s.policies[0].connector,
        Connector::Custom("x@intake.example".into())
    );
}

#[test]
fn metrics_listen_is_an_address_or_off_unquoted() {
    let s = ok(&with_intake(""));
    assert_eq!(s.metrics.listen, "127.0.0.1:9466".parse().ok());
    let s = ok(&with_intake("metrics:\n  listen: off\n"));
    assert_eq!(s.metrics.listen, None);
    let s = ok(&with_intake("metrics: { listen: \"[::1]:9100\" }\n"));
    assert_eq!(s.metrics.listen, "[::1]:9100".parse().ok());
    fails_at(
        &with_intake("metrics:\n  listen: 9466\n"),
        3,
        11,
        "metrics.listen: expected off or IP:PORT",
    );
}

#[test]
fn control_socket_and_queue_paths_are_taken_from_the_file_directory() {
    let s = ok(&with_intake(
        "control: { socket: run/ctl.sock }\nqueue: { spool_dir: spool }\n",
    ));
    assert!(s.control.socket.ends_with("run/ctl.sock"));
    assert!(s.control.socket.is_absolute());
    assert!(s.queue.spool_dir.is_absolute() && s.queue.spool_dir.ends_with("spool"));
    fails_at(
        &with_intake("delivery:\n  min_connections: 30\n"),
        3,
        20,
        "delivery.min_connections: 30 is more than delivery.max_connections (20)",
    );
}

#[test]
fn milter_limits_and_internal_networks() {
    let s = ok(&with_intake(
        "milter:\n  max_connections: 20\n  idle_timeout: 10m\nincoming:\n  internal_networks: [10.0.0.0/8, \"[2001:db8::]/32\", 192.0.2.7]\n",
    ));
    assert_eq!(s.milter.max_connections, 20);
    assert_eq!(s.milter.idle_timeout, std::time::Duration::from_secs(600));
    let nets: Vec<String> = s
        .incoming
        .internal_networks
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(nets, ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32"]);
    assert!(s.incoming.is_internal("10.200.1.1".parse().unwrap()));
    assert!(!s.incoming.is_internal("192.0.2.8".parse().unwrap()));

    fails_at(
        &with_intake("incoming:\n  internal_networks:\n    - 10.0.0.0/8\n    - 10.1.2.3/8\n"),
        5,
        7,
        "incoming.internal_networks[1]: '10.1.2.3/8' has host bits set below /8; did you mean 10.0.0.0/8?",
    );
    fails_at(
        &with_intake("incoming:\n  internal_networks: [mail.example.com]\n"),
        3,
        23,
        "incoming.internal_networks[0]: 'mail.example.com' is not an IP address",
    );
    fails_at(
        &with_intake("milter:\n  max_connections: 0\n"),
        3,
        20,
        "milter.max_connections: must be at least 1",
    );
}

#[test]
fn milter_socket_mode_and_group() {
    let s = ok(&with_intake(""));
    assert_eq!((s.milter.socket_mode, s.milter.socket_group), (0o660, None));
    let s = ok(&with_intake(
        "milter: { socket_mode: \"0600\", socket_group: postfix }\n",
    ));
    assert_eq!(s.milter.socket_mode, 0o600);
    assert_eq!(s.milter.socket_group.as_deref(), Some("postfix"));
    // Unquoted, as chmod takes it.
    assert_eq!(
        ok(&with_intake("milter: { socket_mode: 660 }\n"))
            .milter
            .socket_mode,
        0o660
    );
    fails_at(
        &with_intake("milter: { socket_mode: \"0689\" }\n"),
        2,
        24,
        "milter.socket_mode: '0689' is not an octal mode",
    );
    fails_at(
        &with_intake("milter: { socket_mode: \"4660\" }\n"),
        2,
        24,
        "milter.socket_mode: '4660' has bits besides the permissions",
    );
    fails_at(
        &with_intake("milter: { socket_mode: \"0060\" }\n"),
        2,
        24,
        "does not let the daemon's own user read and write the socket",
    );
    fails_at(
        &with_intake("milter: { socket_group: \" \" }\n"),
        2,
        25,
        "milter.socket_group: the group name is empty",
    );
}

#[test]
fn certificate_match_list() {
    let s = ok(&with_intake(
        "delivery:\n  tls:\n    match: [nexthop, mx.us.etd.cisco.com, \".etd.cisco.com\"]\n",
    ));
    assert_eq!(
        s.delivery.tls.cert_match,
        vec![
            CertMatch::Nexthop,
            CertMatch::Name("mx.us.etd.cisco.com".into()),
            CertMatch::Under("etd.cisco.com".into()),
        ]
    );
    fails_at(
        &with_intake("delivery:\n  tls:\n    match: []\n"),
        4,
        12,
        "delivery.tls.match: the list is empty, so no certificate could ever be accepted",
    );
    fails_at(
        &with_intake("delivery:\n  tls:\n    match: [nexthop, nexthopp]\n"),
        4,
        22,
        "delivery.tls.match[1]: 'nexthopp' is neither nexthop, dot-nexthop, hostname",
    );
}

#[test]
fn show_config_renders_every_key_the_file_may_set() {
    let s = ok(&with_intake(""));
    let shown: Vec<String> = crate::config::show::values(&s)
        .into_iter()
        .map(|(key, _)| key)
        .fold(Vec::new(), |mut keys, key| {
            if keys.last() != Some(&key) {
                keys.push(key);
            }
            keys
        });
    assert_eq!(shown, setting_keys(), "show.rs and raw.rs list other keys");
}

#[test]
fn every_key_set_at_a_level_is_recorded_as_set_there() {
    let mut base = RawSettings::default();
    let over: RawSettings = serde_saphyr::from_str(
        "enabled: true\nmilter: { idle_timeout: 1s }\ntracking: { max_age: 1h }\n\
         delivery: { port: 26, tls: { match: [hostname] } }\n",
    )
    .expect("parses");
    let mut origins = Origins::new();
    levels::overlay(&mut base, over, &mut origins, Level::Group, 1);
    let set: Vec<&str> = origins.keys().map(String::as_str).collect();
    assert_eq!(
        set,
        [
            "delivery.port",
            "delivery.tls.match",
            "enabled",
            "milter.idle_timeout",
            "tracking.max_age"
        ]
    );
    assert!(origins.values().all(|o| *o == (Level::Group, 1)));
    assert!(base.tracking.and_then(|t| t.max_age).is_some());
}
