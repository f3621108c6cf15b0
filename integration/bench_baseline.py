#!/usr/bin/python3
"""Two builds of tdc-milter in the same Postfix stack, in interleaved runs: what a
change costs, as a ratio measured in one sitting (docs/BENCHMARKS.md).

    /usr/bin/python3 integration/bench_baseline.py --baseline OLD_BINARY [--bin NEW_BINARY]
        [--runs 5] [--messages 2000] [--sessions 20] [--size 10240]

Each run restarts the daemon with one of the two binaries (on the same spool and
settings), sends --messages through Postfix with smtp-source in --sessions
sessions, and waits until every journal is delivered to the intake. It reports,
per binary, the medians of Postfix's acceptance rate (messages a second while
smtp-source ran) and of the daemon's CPU time per 1,000 journals (user + system,
from /proc, from the first message to the last delivery), and the ratios new/old.
The order alternates (old, new; new, old; ...) so that drift of the machine falls
on both. Needs root, like the integration tests.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import stack as st  # noqa: E402
from benchkit.load import smtp_source  # noqa: E402
from benchkit.measure import cpu_seconds  # noqa: E402
from benchkit.setups import CountingStack  # noqa: E402


def delivered(stack):
    return stack.milter_log_text().count(" successfully delivered for scanning")


def one_run(stack, binary, args):
    stack.stop_milter()
    stack.milter_bin = binary
    stack.start_milter()
    pid = stack.state["processes"]["tdc-milter"]["pid"]
    before_delivered = delivered(stack)
    cpu_before = cpu_seconds(pid, children=False)
    _, accepted_in = smtp_source(stack, args.messages, args.sessions, args.size,
                                 sender="sender@example.net", recipient="alice@example.com")
    st.poll(lambda: delivered(stack) - before_delivered >= args.messages, 600, interval=0.2,
            what="%d journals delivered" % args.messages)
    cpu = cpu_seconds(pid, children=False) - cpu_before
    return {"rate": args.messages / accepted_in, "cpu_per_1000": cpu * 1000.0 / args.messages}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", required=True, help="the daemon binary to compare against")
    p.add_argument("--bin", default=str(st.REPO / "target" / "release" / "tdc-milter"), help="the new binary")
    p.add_argument("--runs", type=int, default=5, help="runs of each binary (default 5)")
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--sessions", type=int, default=20)
    p.add_argument("--size", type=int, default=10240, help="message size in bytes (default 10240)")
    args = p.parse_args()
    binaries = {"old": os.path.abspath(args.baseline), "new": os.path.abspath(args.bin)}
    for name, path in binaries.items():
        if not os.access(path, os.X_OK):
            p.error("no executable %s binary at %s" % (name, path))

    base = tempfile.mkdtemp(prefix="tdc-milter-baseline-")
    os.chmod(base, 0o755)
    stack = CountingStack(base, milter_bin=binaries["new"])
    results = {"old": [], "new": []}
    try:
        stack.up()
        for i in range(args.runs):
            order = ("old", "new") if i % 2 == 0 else ("new", "old")
            for name in order:
                r = one_run(stack, binaries[name], args)
                results[name].append(r)
                print("run %d %s: %.0f msgs/s, %.2f s CPU per 1000 journals" % (i + 1, name, r["rate"],
                                                                                   r["cpu_per_1000"]), flush=True)
    finally:
        stack.stop_all()

    def med(name, key):
        return statistics.median(r[key] for r in results[name])

    print()
    print("| figure (median of %d runs, %d × %d B in %d sessions) | old | new | new/old |"
          % (args.runs, args.messages, args.size, args.sessions))
    print("|---|---|---|---|")
    for key, label, unit in (("rate", "Postfix acceptance rate", "msgs/s"),
                             ("cpu_per_1000", "daemon CPU per 1,000 journals", "s")):
        old, new = med("old", key), med("new", key)
        print("| %s | %.2f %s | %.2f %s | %.3f |" % (label, old, unit, new, unit, new / old))
    subprocess.run(["rm", "-rf", base], check=False)


if __name__ == "__main__":
    main()
