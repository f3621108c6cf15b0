//! The man pages stay in step with the program: every command and option of
//! `--help`, and every settings key, is in them.

use std::process::Command;
use tdc_milter::config::Settings;

const BIN: &str = env!("CARGO_BIN_EXE_tdc-milter");
const MAN8: &str = include_str!("../packaging/man/tdc-milter.8");
const MAN5: &str = include_str!("../packaging/man/tdc-milter.yaml.5");

fn help(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().expect("run --help");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Command names from the "Commands:" section of `--help`.
fn commands(text: &str) -> Vec<String> {
    text.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect()
}

/// Long options (`--name`) in a `--help` text.
fn long_options(text: &str) -> Vec<String> {
    text.split_whitespace()
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.trim_end_matches(',').to_string())
        .collect()
}

#[test]
fn every_command_and_option_is_in_tdc_milter_8() {
    let top = help(&["--help"]);
    let cmds = commands(&top);
    assert!(cmds.len() >= 7, "{cmds:?}");
    let roff = MAN8.replace("\\-", "-");
    for c in &cmds {
        assert!(
            roff.lines()
                .any(|l| (l.starts_with(".B ") || l.starts_with(".BI ")) && l.contains(c.as_str())),
            "command {c} is not in tdc-milter.8"
        );
        for option in long_options(&help(&[c.as_str(), "--help"])) {
            assert!(
                roff.contains(&option),
                "option {option} of {c} is not in tdc-milter.8"
            );
        }
    }
    for option in long_options(&top) {
        assert!(
            roff.contains(&option),
            "option {option} is not in tdc-milter.8"
        );
    }
}

#[test]
fn every_settings_key_is_in_tdc_milter_yaml_5() {
    let settings = Settings::from_yaml(
        "intake_address: a@intake.test\n",
        std::path::Path::new("t.yaml"),
    )
    .expect("defaults load");
    let keys: Vec<String> = tdc_milter::config::show::values(&settings)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    for key in keys
        .iter()
        .chain(["levels.group".to_string(), "levels.machine".to_string()].iter())
    {
        assert!(
            MAN5.contains(key.as_str()),
            "key {key} is not in tdc-milter.yaml.5"
        );
    }
}
