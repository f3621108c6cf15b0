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
