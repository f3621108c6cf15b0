"""The report: the description of the machine and build, the table of figures
against their targets, the CPU and disk tables, in markdown, and writing it into a
file between the bench markers (docs/BENCHMARKS.md relies on its wording)."""

import os
import platform
import ssl
import statistics
import subprocess
from pathlib import Path

from stack import REPO, StackError, run

from .measure import KIB, MIB
from .metrics import quantile
from .setups import POSTCONF, SCENARIOS

BEGIN_MARKER = "<!-- bench:begin (integration/bench --write-docs replaces this section) -->"
END_MARKER = "<!-- bench:end -->"


def machine_description(stack, milter_bin, args, ceilings):
    """The report's list of what the figures were taken on: machine, versions,
    build, runs, intake and the disk's bare fsync."""
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    try:
        postfix_version = run([POSTCONF, "-d", "-h", "mail_version"]).strip()
    except StackError:
        postfix_version = "?"
    try:
        rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True).stdout.strip() or "?"
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        if dirty:
            rev += " (with uncommitted changes)"
    except OSError:
        rev = "?"
    try:
        shown_bin = os.path.relpath(milter_bin, REPO)
    except ValueError:
        shown_bin = os.path.basename(milter_bin)
    if shown_bin.startswith(".."):
        shown_bin = os.path.basename(milter_bin)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    lines = [
        "- CPU: %s, %d cores (`nproc`); memory %.0f GiB" % (cpu, os.cpu_count(),
                                                           os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
                                                           / 2**30),
        "- kernel %s; %s" % (platform.release(), distro()),
        "- Postfix %s; %s; Python %s" % (postfix_version, ssl.OPENSSL_VERSION, platform.python_version()),
        "- tdc-milter git %s, binary `%s`" % (rev, shown_bin),
        "- load average at the start: %s (the machine may be shared: compare ratios within one run)" % load,
        "- runs: %d, interleaved; each figure is the median over the runs" % args.runs,
        "- intake: %s; ceilings with a Python STARTTLS client (4 processes, 10 messages per connection, "
        "%d × %s): aiosmtpd %.0f msgs/s, Postfix smtpd + smtp-sink %.0f msgs/s (lower bounds where the "
        "client is the limit)" % (describe_intake(stack.intake_kind), args.ceiling_messages, size_text(10 * KIB),
                                  ceilings["aiosmtpd"], ceilings["postfix"]),
    ]
    if getattr(stack, "fsync", None):
        lines.append("- disk %s: the daemon's end-of-message write pattern alone (overwrite 10 KB, cut, mark, "
                     "fsync; Python, the stack idle, %s times): p50 %s ms, p99 %s ms" % (
                         stack.disk, 30 if args.smoke else 300, fmt(stack.fsync[0] * 1e3),
                         fmt(stack.fsync[1] * 1e3)))
    return lines


def distro():
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return "?"


def describe_intake(kind):
    if kind == "aiosmtpd":
        return "integration/tls_sink.py (aiosmtpd, stores every message)"
    return "a second Postfix, smtpd with STARTTLS required, proxying each transaction to smtp-sink (dumps)"


def size_text(size):
    if size >= MIB:
        return "%g MB" % (size / MIB)
    return "%g KB" % (size / KIB)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, unit=""):
    if value is None:
        return "n/a"
    if abs(value) >= 100:
        text = "%.0f" % value
    elif abs(value) >= 10:
        text = "%.1f" % value
    else:
        text = "%.2f" % value
    return text + (" " + unit if unit else "")


def row(figure, baseline, target, measured, ratio, met):
    return "| %s | %s | %s | %s | %s | %s |" % (figure, baseline, target, measured,
                                              "n/a" if ratio is None else "%.2f×" % ratio,
                                              "n/a" if met is None else ("yes" if met else "no"))


def ratio_row(figure, base, measured, unit, minimum):
    ratio = measured / base if base and measured is not None else None
    return row(figure, fmt(base, unit), "≥ %.2f×" % minimum, fmt(measured, unit), ratio,
               None if ratio is None else ratio >= minimum)


def build_report(args, description, results, backlogs, sizes, main_size):
    def per(scenario, size, key):
        return [r[key] for r in results if r["scenario"] == scenario and r["size"] == size and key in r
                and r.get("load", "load") == "load"]

    lines = ["| figure | baseline | target | measured | ratio | met |", "|---|---|---|---|---|---|"]
    for size in sizes:
        count = next(r["count"] for r in results if r["size"] == size and r["load"] == "load")
        label = "%d × %s, %d sessions" % (count, size_text(size), args.sessions)
        none = median(per("none", size, "throughput"))
        milter = median(per("milter", size, "throughput"))
        bcc = median(per("bcc", size, "throughput"))
        lines.append(ratio_row("a. Postfix throughput with tdc-milter vs no milter (%s)" % label,
                               none, milter, "msgs/s", 0.95))
        lines.append(ratio_row("a. Postfix throughput with tdc-milter vs always_bcc (%s)" % label,
                               bcc, milter, "msgs/s", 1.0))
        passing = median(per("pass", size, "throughput"))
        if passing is not None:
            ratio = passing / none if none else None
            lines.append(row("a. (bound, not a target) Postfix with a milter that journals nothing — tdc-milter "
                             "with `enabled: false` — vs no milter (%s)" % label, fmt(none, "msgs/s"), "—",
                             fmt(passing, "msgs/s"), ratio, None))

    s = main_size
    for size in sizes:
        # Every message accepted and its copy delivered: the rate a gateway can keep up.
        lines.append(ratio_row("b. Journal delivery rate under load: tdc-milter journals vs Postfix always_bcc "
                               "copies (%s; start of smtp-source to last arrival at the intake)" % size_text(size),
                               median(per("bcc", size, "delivery_rate")),
                               median(per("milter", size, "delivery_rate")), "msgs/s", 1.0))
    drain = {b["scenario"]: b for b in backlogs}
    if "milter" in drain and "bcc" in drain:
        lines.append(ratio_row("b. Delivery rate draining a backlog of %d (arrivals/s at the intake between the 1st and 99th "
                               "percentile arrival, after the intake comes back)" % drain["milter"]["count"],
                               drain["bcc"]["drain_rate"], drain["milter"]["drain_rate"], "msgs/s", 1.0))

    def latency_row(name, key, q, limit, what, part=None):
        for load in ("light", "load"):
            rs = [r for r in results if r["scenario"] == "milter" and r["size"] == s
                  and r.get("load", "load") == load and key in r]
            found = sorted(((quantile(r[key], q), r) for r in rs if quantile(r[key], q)), key=lambda f: f[0][0])
            if not found:
                continue
            mid, run = found[(len(found) - 1) // 2]  # the median run (the lower one of an even count)
            how = ("light load: %d × %s in 1 session" % (rs[0]["count"], size_text(s)) if load == "light"
                   else "under load: %d × %s in %d sessions" % (rs[0]["count"], size_text(s), args.sessions))
            detail = ""
            if part and run.get(part[0]):
                share = quantile(run[part[0]], q)
                if share:
                    detail = "; %s p%g in that run %s ms" % (part[1], q * 100, fmt(share[0] * 1e3))
            if part and run.get("eom_mean") is not None:
                detail += "; mean in that run %s ms" % fmt(run["eom_mean"] * 1e3)
            if part and run.get("tdc_wait") is not None:
                detail += "; the daemon's threads waited for a core %s ms per message in that run" % (
                    fmt(run["tdc_wait"] / run["count"] * 1e3))
            probes = [r["probe"] for r in results if r["scenario"] == "pass" and r["size"] == s
                      and r.get("load", "load") == "load" and r.get("probe")]
            if part and load == "load" and probes:
                detail += ("; the same write and fsync, from another process every 5 ms while Postfix took this "
                           "load through the milter that journals nothing (pass): p50 %s ms, p99 %s ms (medians of "
                           "%d runs)" % (fmt(median([p[0] for p in probes]) * 1e3),
                                         fmt(median([p[1] for p in probes]) * 1e3), len(probes)))
            lines.append(row("%s, %s (%s; median run's bucket (%s, %s] ms%s)" % (
                name, how, what, fmt(mid[1] * 1e3), fmt(mid[2] * 1e3), detail), "—", "≤ %g ms" % (limit * 1e3),
                fmt(mid[0] * 1e3, "ms"), None, mid[0] <= limit))

    latency_row("c. End of message inside tdc-milter, p99", "eom", 0.99, 0.002,
                "daemon histogram, buckets 0.1 ms × √2ⁿ, linear inside the bucket",
                part=("spool_write", "of it the spool write (write, fsync)"))
    latency_row("d. Accept (enqueue at end of message) → journal delivered, p50", "a2d", 0.5, 0.050,
                "daemon histogram, buckets 5 ms × 2ⁿ, linear inside the bucket")
    if "milter" in drain:
        b = drain["milter"]
        lines.append(row("e. Daemon VmRSS with %d journals queued, intake down (%s each; VmHWM %s MiB, "
                         "after the drain %s MiB)" % (b["queued"], size_text(s), fmt(b["hwm"] / MIB),
                                                      fmt(b["hwm_after_drain"] / MIB)),
                         "—", "≤ 64 MiB", fmt(b["rss"] / MIB, "MiB"), None, b["rss"] <= 64 * MIB))
    loaded = [r for r in results if r.get("load", "load") == "load"]
    tdc_per_k = median([r["tdc_cpu"] / r["delivered"] * 1000 for r in loaded
                        if r["scenario"] == "milter" and r["size"] == s and r.get("delivered")])
    runs = sorted({r["run"] for r in results})
    pf_extra = []
    pf_milter_extra = []
    for n in runs:
        by = {r["scenario"]: r for r in loaded if r["run"] == n and r["size"] == s}
        if "bcc" in by and "none" in by:
            pf_extra.append((by["bcc"]["postfix_cpu"] - by["none"]["postfix_cpu"]) / by["bcc"]["count"] * 1000)
        if "milter" in by and "none" in by:
            pf_milter_extra.append((by["milter"]["postfix_cpu"] - by["none"]["postfix_cpu"])
                                   / by["milter"]["count"] * 1000)
    pf_per_k = median(pf_extra)
    ratio = tdc_per_k / pf_per_k if pf_per_k and tdc_per_k is not None and pf_per_k > 0 else None
    lines.append(row("f. CPU per 1,000 journals: tdc-milter process (utime+stime) vs the extra CPU of the "
                     "Postfix tree with always_bcc over without (%s; Postfix's own extra for the milter "
                     "protocol: %s s)" % (size_text(s), fmt(median(pf_milter_extra))),
                     fmt(pf_per_k, "s"), "≤ 1.00×", fmt(tdc_per_k, "s"), ratio,
                     None if ratio is None else ratio <= 1.0))

    cores = os.cpu_count() or 1
    cpu_rows = []
    for size in sizes:
        for scenario in SCENARIOS:
            rs = [r for r in loaded if r["scenario"] == scenario and r["size"] == size]
            if not rs:
                continue

            def k(key, rs=rs):
                return median([r[key] / r["count"] * 1000 for r in rs])

            parts = [k("postfix_cpu"), k("tdc_cpu"), k("intake_cpu"), k("source_cpu")]
            every = median([(r["postfix_cpu"] + r["tdc_cpu"] + r["intake_cpu"] + r["source_cpu"])
                            / r["count"] * 1000 for r in rs])
            waits = [r["tdc_wait"] / r["count"] * 1e3 for r in rs if r.get("tdc_wait") is not None]
            cpu_rows.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                size_text(size), scenario, fmt(median([r["throughput"] for r in rs])),
                fmt(median([r["busy"] * 100 for r in rs if r["busy"] is not None]), "%"),
                *(fmt(v, "s") for v in parts), fmt(every, "s"),
                fmt(cores * 1000 / every if every else None, "msgs/s"),
                fmt(median(waits), "ms") if scenario in ("milter", "pass") and waits else "—"))
    lines += ["", "Where the CPU went (medians; seconds of CPU from the start of smtp-source until the run "
              "settled, per 1,000 messages; busy = share of the %d cores in use on the whole machine while "
              "smtp-source ran; ceiling = %d cores / all, the rate at which the stack's processes would use "
              "every core; CPU wait = the time tdc-milter's threads were runnable but waiting for a core "
              "(`/proc/PID/task/*/schedstat`), per message, while smtp-source ran):" % (cores, cores), "",
              "| size | set-up | msgs/s | busy | Postfix tree | tdc-milter | intake | smtp-source | all "
              "| ceiling | tdc-milter CPU wait |",
              "|---|---|---|---|---|---|---|---|---|---|---|", *cpu_rows]
    disk_rows = []
    for size in sizes:
        for scenario in SCENARIOS:
            rs = [r for r in loaded if r["scenario"] == scenario and r["size"] == size and "disk_kib" in r]
            if not rs:
                continue
            disk_rows.append("| %s | %s | %s | %s | %s | %s |" % (
                size_text(size), scenario, fmt(median([r["throughput"] for r in rs])),
                fmt(median([r["disk_busy"] * 100 for r in rs if r.get("disk_busy") is not None]), "%"),
                fmt(median([r["disk_kib"] for r in rs])), fmt(median([r["disk_flushes"] for r in rs]))))
    if disk_rows:
        lines += ["", "The disk while smtp-source ran (medians; `/proc/diskstats` of the disk holding the "
                  "stack, every process on the machine; busy = share of the time with I/O in flight; the pass "
                  "runs at %s also carry the disk probe of c, a write and fsync every 5 ms):" % size_text(s), "",
                  "| size | set-up | msgs/s | disk busy | KiB written per message | flushes per message |",
                  "|---|---|---|---|---|---|", *disk_rows]
    body = ["### Results", "", *description, "", *lines, ""]
    return "\n".join(body)


def write_report(path, report):
    """Writes the report into the file between the bench markers if it has both, and
    as the whole file otherwise."""
    path = Path(path)
    section = "%s\n%s\n%s" % (BEGIN_MARKER, report, END_MARKER)
    try:
        text = path.read_text()
    except OSError:
        text = None
    if text and BEGIN_MARKER in text and END_MARKER in text:
        head = text.split(BEGIN_MARKER, 1)[0]
        tail = text.split(END_MARKER, 1)[1]
        path.write_text(head + section + tail)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(report + "\n")
