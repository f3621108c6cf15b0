//! The log sanitiser: whatever a message carries, the line it lands in stays one
//! line of printable text, and nothing is lost (the escaping can be undone).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tdc_milter::tdclog::{sanitize, sanitize_bytes};

fn unescape(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            match bytes.get(i + 1) {
                Some(b'\\') => {
                    out.push(b'\\');
                    i += 2;
                }
                Some(b'x') => {
                    let hex = std::str::from_utf8(&bytes[i + 2..i + 4]).expect("hex digits");
                    out.push(u8::from_str_radix(hex, 16).expect("hex"));
                    i += 4;
                }
                other => panic!("a lone backslash escape {other:?} in {s:?}"),
            }
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let clean = sanitize(&text);
    assert!(!clean.chars().any(char::is_control), "{clean:?}");
    assert_eq!(unescape(&clean), text.as_bytes());
    let clean_bytes = sanitize_bytes(data);
    assert!(
        !clean_bytes.chars().any(char::is_control),
        "{clean_bytes:?}"
    );
});
