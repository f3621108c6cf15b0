//! The policy matcher (`policy::resolve`): 10, 100 and 1,000 policies × 1, 10 and
//! 100 recipients, each recipient matching only the last policy (DEFAULT), the
//! worst case: every recipient is compared with every policy. The throughput is
//! given in policy × recipient comparisons, so constant elements/s across the grid
//! means linear scaling.
//!
//! `cargo bench --bench policy` (add `-- --quick` for a short run).

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tdc_milter::config::Settings;
use tdc_milter::policy::resolve;

/// `count` policies: count - 1 that match none of the benchmark's recipients (a mix
/// of address, domain, sub-domain and local-part patterns, some with senders), then
/// DEFAULT.
fn settings(count: usize) -> Settings {
    let mut yaml = String::from("intake_address: journal@intake.test\npolicies:\n");
    for i in 0..count - 1 {
        let pattern = match i % 4 {
            0 => format!("user{i}@dept{i}.example.com"),
            1 => format!("dept{i}.example.com"),
            2 => format!(".lab{i}.example.com"),
            _ => format!("role{i}@"),
        };
        let senders = if i % 5 == 0 {
            format!(", senders: [\"partner{i}.example.org\"]")
        } else {
            String::new()
        };
        let _ = writeln!(
            yaml,
            "  - {{ name: p{i}, recipients: [\"{pattern}\"]{senders}, connector: {{ custom: p{i}@intake.test }} }}"
        );
    }
    yaml.push_str("  - { name: DEFAULT, connector: global }\n");
    match Settings::from_yaml(&yaml, Path::new("bench.yaml")) {
        Ok(s) => s,
        Err(e) => panic!("benchmark settings do not load: {e}"),
    }
}

fn policy_resolve(c: &mut Criterion) {
    let mut group = c.benchmark_group("policy_resolve");
    for policies in [10usize, 100, 1000] {
        let s = settings(policies);
        for count in [1usize, 10, 100] {
            let recipients: Vec<String> = (0..count)
                .map(|j| format!("<rcpt{j}@example.test>"))
                .collect();
            group.throughput(Throughput::Elements((policies * count) as u64));
            group.bench_with_input(
                BenchmarkId::new(format!("{policies}_policies"), format!("{count}_rcpts")),
                &recipients,
                |b, r| {
                    b.iter(|| {
                        let jobs = resolve(black_box(&s), black_box("<sender@example.org>"), r);
                        debug_assert_eq!(jobs.len(), 1);
                        jobs
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, policy_resolve);
criterion_main!(benches);
