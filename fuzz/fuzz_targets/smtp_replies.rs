//! SMTP reply handling: whatever an intake (or a man in the middle) sends is read
//! as replies or refused with an error; never a panic, never an unbounded read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use tdc_milter::delivery::smtp::read_replies;

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
});

fuzz_target!(|data: &[u8]| {
    let replies = RUNTIME.block_on(read_replies(data));
    for (reply, _capabilities) in replies.iter().flatten() {
        assert!((200..=559).contains(&reply.code), "{reply:?}");
        // The text goes into log lines: one line.
        assert!(!reply.text.contains(['\r', '\n']), "{reply:?}");
    }
});
