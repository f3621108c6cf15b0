//! The journal builder (`journal::build`) on originals of 2 KB, 50 KB and 1 MB.
//!
//! `cargo bench --bench journal` (add `-- --quick` for a short run); the figures
//! are recorded in docs/BENCHMARKS.md.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tdc_milter::journal::{build, Envelope, JournalFormat, Original};
use time::OffsetDateTime;

/// An original as the milter hands it over: our client-IP header first, a few
/// headers, then `size` bytes of 7-bit body in CRLF lines.
fn original(size: usize) -> Vec<u8> {
    let mut out = b"X-IronPort-RemoteIP: 192.0.2.10\r\n\
From: <sender@example.org>\r\n\
To: <rcpt@example.test>\r\n\
Subject: benchmark\r\n\
Date: Sun, 22 Nov 2026 09:00:00 +0000\r\n\
Message-ID: <bench@example.org>\r\n\
\r\n"
        .to_vec();
    let line = [b"x".repeat(76), b"\r\n".to_vec()].concat();
    let body: Vec<u8> = line.iter().copied().cycle().take(size).collect();
    out.extend_from_slice(&body);
    out.extend_from_slice(b"\r\n");
    out
}

fn journal_build(c: &mut Criterion) {
    let mut group = c.benchmark_group("journal_build");
    let recipients = vec!["rcpt@example.test".to_string()];
    let envelope = Envelope {
        from: "tdc@mta.test",
        to: "journal@intake.test",
        recipients: &recipients,
        message_id: "<1764288000000.1.tdc@mta.test>",
        date: OffsetDateTime::UNIX_EPOCH,
    };
    for (label, size) in [("2KB", 2 * 1024), ("50KB", 50 * 1024), ("1MB", 1024 * 1024)] {
        let bytes = original(size);
        let original = Original {
            sender: "sender@example.org",
            subject: Some(b" benchmark"),
            message_id: Some("<bench@example.org>"),
            added_headers: b"",
            bytes: &bytes,
        };
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(label), &original, |b, o| {
            b.iter(|| {
                build(
                    JournalFormat::EnvelopeReport,
                    black_box(&envelope),
                    black_box(o),
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, journal_build);
criterion_main!(benches);
