"""the.tdc.queue against the independent aiosmtpd intake with the SETD intake's
documented limits (TLS 1.2 only, 10 messages per connection), and against an intake
that cannot be reached (SYNs dropped in a network namespace).

Run as root: /usr/bin/python3 -m pytest integration -q
"""

import os
import re
import shutil
import socket
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import stack as stack_module

BURST = 25


def message(n):
    return (
        "From: sender@example.org\r\nTo: bob@example.com\r\nSubject: burst %d\r\n"
        "Message-ID: <burst.%d@example.org>\r\n\r\nbody %d\r\n" % (n, n, n)
    ).encode()


def test_a_burst_respects_tls_1_2_and_ten_journals_per_connection(limited_stack):
    s = limited_stack
    with ThreadPoolExecutor(max_workers=5) as pool:
        queue_ids = list(pool.map(lambda n: s.send("sender@example.org", ["bob@example.com"], message(n)), range(BURST)))
    assert len(set(queue_ids)) == BURST

    def settled():
        log = s.milter_log_text()
        return len(stack_module.enqueued(log)) == BURST and stack_module.all_journals_settled(log)

    stack_module.poll(settled, 60, what="%d journals settled" % BURST)
    journals = s.journals()
    log = s.milter_log_text()
    assert len(journals) == BURST, s.diagnostics()
    ids = sorted(int(re.search(rb"Message-Id: <burst\.(\d+)@", raw).group(1)) for _, _, raw in journals)
    assert ids == list(range(BURST)), "each journal exactly once"
    for _, envelope, _ in journals:
        assert envelope["tls"]["version"] == "TLSv1.2", envelope
    per_connection = {}
    for _, envelope, _ in journals:
        peer = tuple(envelope["peer"])
        per_connection[peer] = per_connection.get(peer, 0) + 1
    assert max(per_connection.values()) <= 10, per_connection
    assert "server replied 421" not in log and "delivery failed" not in log and "soft bounced" not in log, log
    assert re.search(r"DCID \d+ TLS success protocol TLSv1\.2 cipher ECDHE-RSA-AES\d+-GCM-SHA\d+", log), log


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


MILTERTEST_SCRIPT = """
local conn = mt.connect("inet:%(port)d@127.0.0.1", 40, 0.25)
if conn == nil then error("connect failed") end
if mt.conninfo(conn, "client.example", "192.0.2.7") ~= nil then error("conninfo") end
if mt.mailfrom(conn, "<sender@example.org>") ~= nil then error("mailfrom") end
if mt.rcptto(conn, "<bob@example.com>") ~= nil then error("rcptto") end
mt.header(conn, "Subject", "unreachable intake")
mt.eoh(conn)
mt.bodystring(conn, "hello\\r\\n")
mt.macro(conn, string.byte("E"), "i", "QUNREACH")
if mt.eom(conn) ~= nil then error("eom") end
if mt.getreply(conn) ~= SMFIR_ACCEPT then error("the original was not accepted") end
mt.disconnect(conn)
print("accepted")
"""


def test_an_unreachable_intake_gives_the_reference_timeout_line():
    if os.geteuid() != 0:
        pytest.skip("needs root for a network namespace")
    for tool in ("ip", "iptables", "miltertest"):
        if not shutil.which(tool):
            pytest.skip("%s is not installed" % tool)
    ns = "tdcit%d" % os.getpid()
    base = Path(tempfile.mkdtemp(prefix="tdc-milter-unreach-"))
    daemon = None
    try:
        if subprocess.run(["ip", "netns", "add", ns]).returncode != 0:
            pytest.skip("network namespaces are not permitted here")
        inside = ["ip", "netns", "exec", ns]
        subprocess.run(inside + ["ip", "link", "set", "lo", "up"], check=True)
        dropped, milter = free_port(), free_port()
        subprocess.run(inside + ["iptables", "-A", "INPUT", "-p", "tcp", "--dport", str(dropped), "-j", "DROP"],
                       check=True)
        settings = base / "tdc-milter.yaml"
        settings.write_text(
            "intake_address: journal@intake.test\n"
            "milter: { listen: \"inet:127.0.0.1:%d\" }\n"
            "journal: { sender: tdc@mta.test }\n"
            "delivery:\n"
            "  route: [\"127.0.0.1:%d\"]\n"
            "  tls: { verify: false }\n"
            "  lifetime: 6s\n"
            "  retry_delay: 1s\n"
            "queue: { spool_dir: spool }\n"
            "control: { socket: control.sock }\n"
            "metrics: { listen: off }\n" % (milter, dropped)
        )
        log_path = base / "tdc-milter.log"
        with open(log_path, "wb") as log:
            daemon = subprocess.Popen(inside + [stack_module.milter_binary(), "-c", str(settings), "run",
                                                "--log", "stderr"], stdout=log, stderr=subprocess.STDOUT)
        script = base / "unreachable.lua"
        script.write_text(MILTERTEST_SCRIPT % {"port": milter})
        out = subprocess.run(inside + ["miltertest", "-s", str(script)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "accepted" in out.stdout, (out.stdout, out.stderr, log_path.read_text())

        def finished():
            return "Message finished MID 1 done" in log_path.read_text(errors="replace")

        stack_module.poll(finished, 30, what="the journal's end")
        text = log_path.read_text(errors="replace")
        print("\n".join(line for line in text.splitlines() if "MID" in line or "DCID" in line))
        expected = (
            r"Info: TDC: Connection Error: DCID \d+ domain: the\.tdc\.queue IP: 127\.0\.0\.1 port: %d "
            r"details: timeout interface: 127\.0\.0\.1 reason: connection timed out" % dropped
        )
        assert re.search(expected, text), text
        assert "TDC: MID 1 delivery failed to Cisco Secure Email Threat Defense: Hard Bounced." in text, text
        assert "TDC: MID 1 removed from the.tdc.queue: not delivered within its lifetime of 6 s" in text, text
    finally:
        if daemon is not None:
            daemon.terminate()
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                daemon.kill()
        subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
        shutil.rmtree(base, ignore_errors=True)
