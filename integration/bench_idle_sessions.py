#!/usr/bin/python3
"""What an idle milter session costs the daemon (docs/BENCHMARKS.md): opens
--sessions milter connections to a running stack's daemon, each negotiated
(SMFIC_OPTNEG answered) and then left idle, as Postfix leaves the connection of an
smtpd process that waits for its client; reports the daemon's VmRSS before and
after, and the difference per session.

    /usr/bin/python3 integration/bench_idle_sessions.py [--bin BINARY] [--sessions 1000]

Needs root, like the integration tests.
"""

import argparse
import os
import resource
import socket
import struct
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import stack as st  # noqa: E402
from benchkit.measure import KIB, MIB, vm_status  # noqa: E402

# SMFIC_OPTNEG: protocol version 6, every action, every protocol step.
OPTNEG = b"O" + struct.pack(">III", 6, 0x1FF, 0x1FFFFF)


def negotiated(port):
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(struct.pack(">I", len(OPTNEG)) + OPTNEG)
    header = b""
    while len(header) < 5:
        chunk = sock.recv(5 - len(header))
        if not chunk:
            raise RuntimeError("the daemon closed a new session")
        header += chunk
    if header[4:5] != b"O":
        raise RuntimeError("unexpected reply %r to SMFIC_OPTNEG" % header)
    return sock


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bin", default=str(st.REPO / "target" / "release" / "tdc-milter"))
    p.add_argument("--sessions", type=int, default=1000)
    args = p.parse_args()
    want = args.sessions + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), max(hard, want)))

    base = tempfile.mkdtemp(prefix="tdc-milter-idle-")
    os.chmod(base, 0o755)
    stack = st.Stack(base, milter_bin=os.path.abspath(args.bin))
    socks = []
    try:
        stack.up()
        pid = stack.state["processes"]["tdc-milter"]["pid"]
        # One session first, so that what every session shares is allocated.
        socks.append(negotiated(stack.ports["milter"]))
        time.sleep(1)
        before = vm_status(pid)["VmRSS"]
        for _ in range(args.sessions):
            socks.append(negotiated(stack.ports["milter"]))
        time.sleep(1)
        after = vm_status(pid)["VmRSS"]
    finally:
        for s in socks:
            s.close()
        stack.stop_all()
    print("idle milter sessions: %d; daemon VmRSS %.1f MiB before, %.1f MiB after: %.1f KiB a session"
          % (args.sessions, before / MIB, after / MIB, (after - before) / KIB / args.sessions))


if __name__ == "__main__":
    main()
