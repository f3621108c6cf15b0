"""The daemon's Prometheus exposition (its metrics listener): parsed into
{(name, labels): value}, counters read, histograms taken apart and differenced
between two scrapes, and quantiles estimated from their buckets."""

import re

METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_metrics(text):
    """{(name, labels text): value} of a Prometheus exposition."""
    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = METRIC_LINE.match(line)
        if m:
            out[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return out


def histogram(metrics, name):
    """[(upper bound, cumulative count)] of a histogram, +Inf last."""
    buckets = []
    for (metric, labels), value in metrics.items():
        if metric == name + "_bucket":
            le = re.search(r'le="([^"]+)"', labels).group(1)
            buckets.append((float("inf") if le == "+Inf" else float(le), value))
    return sorted(buckets)


def histogram_delta(after, before):
    before = dict(before)
    return [(le, count - before.get(le, 0.0)) for le, count in after]


def quantile(buckets, q):
    """(estimate, lower bound, upper bound) of quantile q of a cumulative histogram,
    linear inside the bucket as Prometheus's histogram_quantile does; None if empty."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return (lower, lower, le)
            inside = count - below
            share = (rank - below) / inside if inside else 1.0
            return (lower + (le - lower) * share, lower, le)
        lower, below = le, count
    return None


def counter(m, name):
    """A counter of a parsed exposition, under its name with or without `_total`;
    0 while the daemon has not exposed it yet."""
    return m.get((name + "_total", ""), m.get((name, ""), 0.0))

