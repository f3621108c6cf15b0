//! The settings parser: any file is either settings or an error that points into
//! the file; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use tdc_milter::config::Settings;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = Settings::from_yaml(text, Path::new("/etc/tdc-milter/tdc-milter.yaml")) {
        let message = e.to_string();
        assert!(!message.is_empty());
        if let Some((line, _column)) = e.location() {
            // YAML breaks lines at CRLF, CR and LF alike.
            let lines = text
                .replace("\r\n", "\n")
                .replace('\r', "\n")
                .split('\n')
                .count();
            assert!(
                line >= 1 && line <= lines,
                "line {line} of {lines} in {message}"
            );
        }
    }
});
