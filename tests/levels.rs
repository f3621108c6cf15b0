//! Cluster, group and machine levels (docs/POLICIES.md, "Levels"): the most specific level that sets a key
//! wins, errors name the file that is wrong, and show-config says where each value
//! came from.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tdc_milter::config::{Level, Settings};

const BIN: &str = env!("CARGO_BIN_EXE_tdc-milter");

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        Files {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&path, text).expect("write");
        path
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

const CLUSTER: &str = "enabled: true
intake_address: cluster@intake.test
delivery:
  lifetime: 120s
  port: 2525
  tls: { verify: true, ca_file: ca.pem }
levels: { group: group.yaml, machine: machine/machine.yaml }
";

fn load(f: &Files) -> Result<Settings, String> {
    Settings::load(&f.path().join("tdc-milter.yaml")).map_err(|e| e.to_string())
}

#[test]
fn the_most_specific_level_wins_key_by_key() {
    let f = Files::new();
    f.write("ca.pem", "placeholder");
    f.write("tdc-milter.yaml", CLUSTER);
    f.write(
        "group.yaml",
        "intake_address: group@intake.test\ndelivery:\n  lifetime: 60s\npolicies:\n  - name: lab\n    recipients: [\".lab.example\"]\n    connector: off\n  - name: DEFAULT\n    connector: global\n",
    );
    f.write("machine/ca.pem", "placeholder");
    f.write(
        "machine/machine.yaml",
        "delivery:\n  tls: { ca_file: ca.pem }\n",
    );
    let s = load(&f).expect("loads");
    assert_eq!(s.intake_address.as_deref(), Some("group@intake.test"));
    assert_eq!(s.delivery.lifetime, Duration::from_secs(60));
    assert_eq!(s.delivery.port, 2525, "a key only the cluster sets stays");
    assert!(s.delivery.tls.verify, "tls merges key by key");
    assert_eq!(
        s.delivery.tls.ca_file.as_deref(),
        Some(f.path().join("machine/ca.pem").as_path()),
        "a relative path is taken from the file that set it"
    );
    assert_eq!(
        s.policies.len(),
        2,
        "the group's policy list replaces the cluster's"
    );
    let level = |k: &str| s.origins.get(k).copied();
    assert_eq!(level("intake_address"), Some(Level::Group));
    assert_eq!(level("delivery.lifetime"), Some(Level::Group));
    assert_eq!(level("delivery.port"), Some(Level::Cluster));
    assert_eq!(level("delivery.tls.ca_file"), Some(Level::Machine));
    assert_eq!(level("delivery.tls.verify"), Some(Level::Cluster));
    assert_eq!(level("policies"), Some(Level::Group));
    assert_eq!(level("queue.spool_dir"), None, "default");
}

#[test]
fn off_at_machine_level_wins_over_cluster_and_group() {
    let f = Files::new();
    f.write("ca.pem", "placeholder");
    f.write("tdc-milter.yaml", CLUSTER);
    f.write("group.yaml", "enabled: true\n");
    f.write("machine/machine.yaml", "enabled: false\n");
    let s = load(&f).expect("loads");
    assert!(!s.enabled);
    assert_eq!(s.origins.get("enabled"), Some(&Level::Machine));
    // And the other way round: the machine level may switch it on again.
    f.write("group.yaml", "enabled: false\n");
    f.write("machine/machine.yaml", "enabled: true\n");
    assert!(load(&f).expect("loads").enabled);
}

#[test]
fn errors_name_the_file_that_is_wrong() {
    let f = Files::new();
    f.write("ca.pem", "placeholder");
    f.write("tdc-milter.yaml", CLUSTER);
    f.write("machine/machine.yaml", "enabled: false\n");
    let group = f.write("group.yaml", "delivery:\n  lifetime: 60\n");
    let e = load(&f).expect_err("bare number");
    assert!(
        e.starts_with(&format!("{}:2:13: delivery.lifetime:", group.display())),
        "{e}"
    );
    f.write("group.yaml", "enabled: true\ncolour: red\n");
    let e = load(&f).expect_err("unknown key");
    assert!(
        e.starts_with(&format!("{}:2:1: unknown key 'colour'", group.display())),
        "{e}"
    );
    f.write("group.yaml", "levels: { machine: other.yaml }\n");
    let e = load(&f).expect_err("levels in a level file");
    assert!(
        e.contains("only the main (cluster) settings file may name level files"),
        "{e}"
    );
    std::fs::remove_file(&group).expect("remove");
    let e = load(&f).expect_err("missing level file");
    assert!(
        e.starts_with(&format!(
            "{}:7:18: levels.group: cannot read",
            f.path().join("tdc-milter.yaml").display()
        )),
        "{e}"
    );
}

#[test]
fn show_config_prints_each_value_with_its_level() {
    let f = Files::new();
    f.write("ca.pem", "placeholder");
    let main = f.write("tdc-milter.yaml", CLUSTER);
    f.write("group.yaml", "delivery:\n  lifetime: 60s\n");
    f.write("machine/machine.yaml", "enabled: false\n");
    let out = Command::new(BIN)
        .args(["-c", main.to_str().expect("utf-8"), "show-config"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        "enabled = false    # machine",
        "intake_address = cluster@intake.test    # cluster",
        "delivery.lifetime = 60s    # group",
        "delivery.port = 2525    # cluster",
        "delivery.retry_delay = 5s    # default",
        "policies = [0] DEFAULT: recipients [] senders [] connector global    # default",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    assert!(text.starts_with("# effective settings of "), "{text}");
}

/// The annotated example, which promises every key.
const EXAMPLE: &str = include_str!("../milter-config/tdc-milter.yaml");

/// For each key: a value for the group file and another for the machine file, both
/// different from the example's. A key missing here fails the test below.
const LEVEL_VALUES: &[(&str, &str, &str)] = &[
    ("enabled", "true", "false"),
    ("intake_address", "g@intake.test", "m@intake.test"),
    (
        "milter.listen",
        "\"inet:127.0.0.1:8896\"",
        "\"unix:/run/m.sock\"",
    ),
    ("milter.max_connections", "900", "800"),
    ("milter.idle_timeout", "1h", "2h"),
    ("milter.socket_mode", "\"0600\"", "\"0666\""),
    ("milter.socket_group", "postfix", "mail"),
    ("incoming.daemon_names", "[inbound]", "[smtpd, inbound]"),
    (
        "incoming.internal_networks",
        "[10.0.0.0/8]",
        "[\"2001:db8::/32\"]",
    ),
    ("journal.sender", "g@gw.test", "m@gw.test"),
    ("journal.client_ip_header", "X-G-IP", "X-M-IP"),
    ("journal.max_size", "10MiB", "20MiB"),
    (
        "journal.not_clean",
        "[{ header: X-Spam, value: \"Yes\" }]",
        "[{ header: X-Spam-Flag, value: \"YES\" }]",
    ),
    (
        "delivery.route",
        "[\"relay.test:2525\"]",
        "[\"[2001:db8::25]\"]",
    ),
    ("delivery.resolver", "\"127.0.0.1:5353\"", "\"[::1]:53\""),
    ("delivery.port", "2525", "587"),
    ("delivery.tls.verify", "false", "true"),
    ("delivery.tls.ca_file", "group-ca.pem", "machine-ca.pem"),
    (
        "delivery.tls.match",
        "[hostname]",
        "[nexthop, .intake.test]",
    ),
    ("delivery.lifetime", "60s", "300s"),
    ("delivery.retry_delay", "2s", "10s"),
    ("delivery.shutdown_grace", "10s", "20s"),
    ("delivery.min_connections", "4", "5"),
    ("delivery.max_connections", "19", "18"),
    ("delivery.max_messages_per_connection", "5", "6"),
    ("queue.spool_dir", "group-spool", "machine-spool"),
    ("queue.max_messages", "1000", "2000"),
    ("queue.max_bytes", "1GiB", "3GiB"),
    ("control.socket", "group.sock", "machine.sock"),
    ("metrics.listen", "127.0.0.1:9467", "off"),
    ("tracking.max_journals", "100", "200"),
    ("tracking.max_age", "1h", "2h"),
    ("check.window", "5m", "30m"),
    ("check.queue_warning", "20%", "80%"),
    (
        "policies",
        "[{ name: g, recipients: [g.test], connector: off }, { name: DEFAULT, connector: global }]",
        "[{ name: DEFAULT, connector: off }]",
    ),
];

/// The keys of a YAML mapping, nested sections as `a.b`; a list is one key.
fn leaf_keys(prefix: &str, value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                leaf_keys(&path, value, out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

/// `delivery.tls.match` and a value → `{delivery: {tls: {match: VALUE}}}`.
fn file_setting(key: &str, value: &str) -> String {
    let parts: Vec<&str> = key.split('.').collect();
    let mut text = String::new();
    for part in &parts {
        text.push_str(&format!("{{ {part}: "));
    }
    text.push_str(value);
    text.push_str(&" }".repeat(parts.len()));
    text.push('\n');
    text
}

/// What show-config prints for `key`, and the level it names.
fn shown(s: &Settings, key: &str) -> (String, &'static str) {
    let value: Vec<String> = tdc_milter::config::show::values(s)
        .into_iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v)
        .collect();
    (value.join("\n"), tdc_milter::config::show::level_of(s, key))
}

#[test]
fn every_key_of_the_annotated_example_is_honoured_at_every_level() {
    let example: serde_json::Value = serde_saphyr::from_str(EXAMPLE).expect("example parses");
    let mut in_example = Vec::new();
    leaf_keys("", &example, &mut in_example);
    in_example.retain(|k| !k.starts_with("levels."));
    let keys = tdc_milter::config::setting_keys();
    let mut sorted_keys = keys.clone();
    sorted_keys.sort();
    in_example.sort();
    assert_eq!(
        in_example, sorted_keys,
        "the annotated example lacks keys, or has unknown ones"
    );
    let listed: Vec<&str> = LEVEL_VALUES.iter().map(|(k, _, _)| *k).collect();
    assert_eq!(listed, keys, "LEVEL_VALUES must list every key, in order");

    let f = Files::new();
    f.write("group-ca.pem", "placeholder");
    f.write("machine-ca.pem", "placeholder");
    let cluster = EXAMPLE.replace(
        "  group: null      # e.g. /etc/tdc-milter/group.yaml\n  machine: null    # e.g. /etc/tdc-milter/machine.yaml",
        "  group: group.yaml\n  machine: machine.yaml",
    );
    assert_ne!(cluster, EXAMPLE, "the example's levels lines changed");
    f.write("tdc-milter.yaml", &cluster);
    for (key, group_value, machine_value) in LEVEL_VALUES {
        f.write("group.yaml", "");
        f.write("machine.yaml", "");
        let at_cluster = shown(&load(&f).expect("the example loads"), key);
        // A null in the file is the same as leaving the key out.
        let pointer = format!("/{}", key.replace('.', "/"));
        let null = example
            .pointer(&pointer)
            .is_some_and(serde_json::Value::is_null);
        let expected = if null { "default" } else { "cluster" };
        assert_eq!(at_cluster.1, expected, "{key}");

        f.write("group.yaml", &file_setting(key, group_value));
        let s = load(&f).unwrap_or_else(|e| panic!("{key} at the group level: {e}"));
        let at_group = shown(&s, key);
        assert_eq!(at_group.1, "group", "{key} set in the group file");
        assert_ne!(
            at_group.0, at_cluster.0,
            "{key} set in the group file is ignored"
        );

        f.write("machine.yaml", &file_setting(key, machine_value));
        let s = load(&f).unwrap_or_else(|e| panic!("{key} at the machine level: {e}"));
        let at_machine = shown(&s, key);
        assert_eq!(at_machine.1, "machine", "{key} set in the machine file");
        assert_ne!(
            at_machine.0, at_group.0,
            "{key} set in the machine file is ignored"
        );
    }
}
