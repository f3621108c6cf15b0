"""The command line and the run order: options (--smoke shrinks them), the intake
chosen by its ceiling, the interleaved runs of every set-up in a rotating order at
every size, the light-load run, the two backlogs, then the report on stdout and
into --out or docs/BENCHMARKS.md. Progress goes to stderr, prefixed "bench:"."""

import argparse
import os
import shutil
import sys
import tempfile
import time

from stack import REPO, StackError

from . import BenchError
from . import __doc__ as OVERVIEW
from .load import parse_mix, sink_ceiling
from .measure import KIB, disk_of, fsync_probe
from .report import build_report, machine_description, size_text, write_report
from .runs import backlog, one_run
from .setups import SCENARIOS, BenchStack


def log(text):
    print("bench: %s" % text, file=sys.stderr, flush=True)


def default_binary():
    """$TDC_MILTER_BIN, else the release build, else the debug build of this repo."""
    explicit = os.environ.get("TDC_MILTER_BIN")
    if explicit:
        return explicit
    for profile in ("release", "debug"):
        candidate = REPO / "target" / profile / "tdc-milter"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return str(REPO / "target" / "release" / "tdc-milter")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="integration/bench", description=OVERVIEW.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5, help="interleaved runs; figures are medians (default 5)")
    p.add_argument("--smoke", action="store_true", help="tiny counts and one run: checks the harness in < 60 s")
    p.add_argument("--messages", type=int, default=2000, help="messages per run at 10 KB (default 2000)")
    p.add_argument("--sessions", type=int, default=20, help="smtp-source sessions (default 20)")
    p.add_argument("--mix", default="2k:2000,50k:2000,1m:200",
                   help="extra sizes as SIZE:COUNT (k or m suffix), comma separated; '' for none")
    p.add_argument("--backlog", type=int, default=10000,
                   help="journals queued while the intake is down, for memory and drain rate (default 10000)")
    p.add_argument("--light-messages", type=int, default=200,
                   help="messages of the light-load latency run (1 session, 10 KB; default 200)")
    p.add_argument("--ceiling-messages", type=int, default=2000, help="messages for each intake ceiling")
    p.add_argument("--intake", choices=("auto", "postfix", "aiosmtpd"), default="auto",
                   help="the STARTTLS intake for the rates (auto: the one with the higher ceiling)")
    p.add_argument("--out", help="write the report to this file too (only between the bench markers if "
                                 "it has them)")
    p.add_argument("--write-docs", action="store_true", help="same as --out docs/BENCHMARKS.md")
    p.add_argument("--bin", default=None, help="daemon binary (default $TDC_MILTER_BIN, else target/release, "
                                               "else target/debug)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)
    if args.smoke:
        args.runs = 1
        args.messages = min(args.messages, 40)
        args.sessions = min(args.sessions, 4)
        args.mix = ""
        args.backlog = min(args.backlog, 60)
        args.ceiling_messages = min(args.ceiling_messages, 40)
        args.light_messages = min(args.light_messages, 20)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    return args


def main(argv):
    """The whole benchmark; 0 when the harness worked, whether or not the targets were
    met."""
    args = parse_args(argv)
    if os.geteuid() != 0:
        log("run as root (Postfix, smtp-sink -u postfix)")
        return 2
    milter_bin = args.bin or default_binary()
    if "/debug/" in milter_bin:
        log("warning: %s is a debug build; its figures are not representative" % milter_bin)
    started = time.monotonic()
    base = tempfile.mkdtemp(prefix="tdc-bench-", dir="/var/tmp")
    os.chmod(base, 0o755)
    stack = BenchStack(base, milter_bin, lifetime=3600)
    stack.disk = disk_of(base)
    ok = False
    try:
        log("base %s; bringing up the intakes" % base)
        stack.up()
        ca = str(stack.tls_dir / "ca.crt")
        ceilings = {
            "aiosmtpd": sink_ceiling(stack.ports["intake"], ca, args.ceiling_messages, 10 * KIB),
            "postfix": sink_ceiling(stack.extra["pf_intake"], ca, args.ceiling_messages, 10 * KIB),
        }
        log("intake ceilings: aiosmtpd %.0f msgs/s, Postfix %.0f msgs/s" % (ceilings["aiosmtpd"],
                                                                            ceilings["postfix"]))
        stack.fsync = fsync_probe(str(stack.base), count=30 if args.smoke else 300)
        log("bare end-of-message write on disk %s: p50 %.2f ms, p99 %.2f ms" % (
            stack.disk, stack.fsync[0] * 1e3, stack.fsync[1] * 1e3))
        kind = args.intake
        if kind == "auto":
            kind = max(ceilings, key=ceilings.get)
        stack.use_intake(kind)
        stack.clear_intake()
        stack.up_mta()

        main_size = 10 * KIB
        plan = [(main_size, args.messages)] + parse_mix(args.mix)
        sizes = [s for s, _ in plan]
        results = []
        current = None
        for n in range(args.runs):
            for size, count in plan:
                # A rotating order, so that no set-up always runs first (or after the same one).
                order = SCENARIOS[n % len(SCENARIOS):] + SCENARIOS[:n % len(SCENARIOS)]
                for scenario in order:
                    if scenario != current:
                        stack.configure(scenario)
                        current = scenario
                    r = one_run(stack, scenario, count, args.sessions, size,
                                probe=scenario == "pass" and size == main_size)
                    r["run"] = n
                    r["load"] = "load"
                    results.append(r)
                    log("run %d %s %s ×%d: %.1f msgs/s%s%s" % (
                        n + 1, scenario, size_text(size), count, r["throughput"],
                        ", delivered %.1f/s" % r["delivery_rate"] if "delivery_rate" in r else "",
                        "; tdc-milter on a core %.1f times a message, waited %.2f ms a message" % (
                            r["tdc_slices"] / count, r["tdc_wait"] / count * 1e3)
                        if scenario in ("pass", "milter") else ""))
            # Latency without a queue in front of it: one session, one message at a time.
            if current != "milter":
                stack.configure("milter")
                current = "milter"
            r = one_run(stack, "milter", args.light_messages, 1, main_size)
            r.update(run=n, load="light")
            results.append(r)
            log("run %d milter light %s ×%d: %.1f msgs/s" % (n + 1, size_text(main_size), args.light_messages,
                                                             r["throughput"]))
        backlogs = []
        if args.backlog > 0:
            for scenario in ("milter", "bcc"):
                stack.configure(scenario)
                current = scenario
                b = backlog(stack, scenario, args.backlog, args.sessions, main_size)
                backlogs.append(b)
                log("backlog %s: %s" % (scenario, {k: v for k, v in b.items() if k != "scenario"}))

        description = machine_description(stack, milter_bin, args, ceilings)
        report = build_report(args, description, results, backlogs, sizes, main_size)
        print(report)
        out = args.out or ("docs/BENCHMARKS.md" if args.write_docs else None)
        if out:
            write_report(out if os.path.isabs(out) else REPO / out if args.write_docs else out, report)
            log("report written to %s" % out)
        log("done in %.0f s" % (time.monotonic() - started))
        ok = True
    except (StackError, BenchError) as e:
        log("FAILED: %s" % e)
        print(stack.diagnostics(), file=sys.stderr)
    finally:
        try:
            stack.stop_all()
        except StackError as e:
            log("stopping: %s" % e)
            ok = False
        if ok and not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            log("files kept in %s" % base)
    return 0 if ok else 1
