"""the.tdc.queue's delivery behind a real Postfix (docs/DELIVERY.md, docs/LOGGING.md), against
the independent aiosmtpd intake with the SETD intake's documented limits (TLS 1.2
only; the 11th MAIL on one connection gets 421 and the connection is closed), and
against an intake that cannot be reached (its SYNs dropped inside a network
namespace made for the test).

The intake takes 0.1 s over each journal, so a burst builds a backlog and an engine
that reuses connections runs into the 10-per-connection limit. The tests hold for
an engine that opens one connection per journal as well: they check what the
intake and the reference log lines must show either way, not how many connections
were used.

Run as root: /usr/bin/python3 -m pytest integration -q
"""

import collections
import email.parser
import email.policy
import os
import re
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import stack as st

WAIT = 60  # seconds; every wait polls and returns as soon as the condition holds
SENDER = "sender@example.org"
RECIPIENT = "bob@example.com"
MAX_PER_CONNECTION = 10  # the SETD intake's documented limit (tls_sink.py --max-msgs)
MAX_CONNECTIONS = 20  # delivery.max_connections, the default (the stack does not set it)
BURST_SESSIONS = 5  # parallel SMTP sessions into Postfix
BURST_PER_SESSION = 6  # messages in each: 30 in all

# OpenSSL's name of a TLS 1.2 suite (ECDHE-RSA-AES128-GCM-SHA256), not the IANA one
# (TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256) nor rustls' (TLS13_..., ..._WITH_...).
OPENSSL_CIPHER = re.compile(r"^(?:ECDHE|DHE)(?:-[A-Z0-9]+)+$")

# Lines that must not appear while the intake accepts everything.
FAILURE_LINE = re.compile(
    r"\b421[ -]\d|delivery attempt failed|soft bounced|delivery failed|Connection Error|Bounced:"
    r"|removed from the\.tdc\.queue|not journaled| (?:Warning|Critical): "
)


def message(tag, n):
    return (
        "From: Sender <%s>\r\nTo: %s\r\nSubject: %s %d\r\n"
        "Date: Mon, 23 Nov 2026 00:00:00 +0000\r\n"
        "Message-ID: <%s.%d@example.org>\r\n\r\n%s message %d\r\n" % (SENDER, RECIPIENT, tag, n, tag, n, tag, n)
    ).encode()


def report_message_id(raw):
    """The Message-Id line of a journal's envelope report (docs/JOURNAL-FORMAT.md)."""
    parsed = email.parser.BytesParser(policy=email.policy.default).parsebytes(raw)
    if not parsed.is_multipart():
        return None
    report = next(parsed.iter_parts()).get_content()
    m = re.search(r"(?m)^Message-Id: *(.*?)\s*$", report)
    return m.group(1) if m else None


def mids_by_queue_id(log_text, queue_ids):
    """{queue ID: [MID, ...]} from the enqueued lines, for the given queue IDs."""
    found = {q: [] for q in queue_ids}
    for mid, _, _, queue_id in st.enqueued(log_text):
        if queue_id in found:
            found[queue_id].append(mid)
    return found


def wait_settled(s, queue_ids):
    """Waits until every queue ID has its enqueued line, every journal its Message
    finished line, and the intake holds as many journals as were delivered."""

    def settled():
        log = s.milter_log_text()
        mids = mids_by_queue_id(log, queue_ids)
        if not all(mids.values()) or not st.all_journals_settled(log):
            return False
        delivered = len(re.findall(r"TDC: MID \d+ successfully delivered", log))
        return len(s.journals()) >= delivered

    st.poll(settled, WAIT, what="%d journals enqueued and finished" % len(queue_ids))
    return s.milter_log_text()


def delivery_dcids(log_text):
    """{MID: [DCID of each Delivery start line]}."""
    starts = collections.defaultdict(list)
    for dcid, mid in re.findall(r"TDC: Delivery start DCID (\d+) MID (\d+)$", log_text, re.M):
        starts[int(mid)].append(int(dcid))
    return starts


SINK_CONNECTION = re.compile(r"^tls_sink: connection (\d+) from \S+ (opened|closed)", re.M)


def most_connections_at_once(sink_log):
    """The largest number of connections the sink had open at one time (it logs
    every opening and closing from its one event-loop thread, in order)."""
    open_now, most = set(), 0
    for number, event in SINK_CONNECTION.findall(sink_log):
        if event == "opened":
            open_now.add(number)
        else:
            open_now.discard(number)
        most = max(most, len(open_now))
    return most


# ------------------------------------------------------------ the SETD intake


def test_tls_1_2_only_intake(busy_limited_stack):
    """The intake offers TLS 1.2 only: the journal goes over TLS 1.2, and the
    daemon's TLS line names the protocol and the cipher as the appliance does."""
    s = busy_limited_stack
    queue_id = s.send(SENDER, [RECIPIENT], message("tls12", 1))
    log = wait_settled(s, [queue_id])

    (mid,) = mids_by_queue_id(log, [queue_id])[queue_id]
    assert re.search(r"TDC: MID %d successfully delivered for scanning with Cisco Secure Email Threat Defense\.$"
                     % mid, log, re.M), "MID %d was not delivered" % mid
    journals = [j for j in s.journals() if report_message_id(j[2]) == "<tls12.1@example.org>"]
    assert len(journals) == 1, "one journal at the intake"
    envelope = journals[0][1]
    assert envelope["tls"] and envelope["tls"]["version"] == "TLSv1.2", envelope

    (dcid,) = delivery_dcids(log)[mid]
    lines = re.findall(r"Info: DCID %d TLS success protocol (\S+) cipher (\S+)$" % dcid, log, re.M)
    assert len(lines) == 1, "one TLS success line for DCID %d" % dcid
    protocol, cipher = lines[0]
    assert protocol == "TLSv1.2"
    assert OPENSSL_CIPHER.match(cipher), "not an OpenSSL-style cipher name: %s" % cipher
    # The same TCP connection, seen from both ends (Python's ssl names it as OpenSSL does).
    assert cipher == envelope["tls"]["cipher"]


def test_a_burst_is_journaled_once_each_and_at_most_ten_per_connection(busy_limited_stack):
    """The intake answers the 11th MAIL on one connection with 421 and closes it.
    A burst through Postfix must reach it whole: every message journaled exactly
    once, no connection over the limit, no failure anywhere."""
    s = busy_limited_stack

    def session(k):
        batch = [message("burst", k * BURST_PER_SESSION + i) for i in range(BURST_PER_SESSION)]
        return s.send_session(SENDER, [RECIPIENT], batch)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=BURST_SESSIONS) as pool:
        sent = list(pool.map(session, range(BURST_SESSIONS)))
    burst_seconds = time.monotonic() - started
    # queue ID -> the Message-ID of what was sent under it
    sent_ids = {q: "<burst.%d@example.org>" % (k * BURST_PER_SESSION + i)
                for k, qids in enumerate(sent) for i, q in enumerate(qids)}
    total = BURST_SESSIONS * BURST_PER_SESSION
    assert len(sent_ids) == total, "Postfix gave %d distinct queue IDs for %d messages" % (len(sent_ids), total)
    print("\n%d messages into Postfix in %.2f s" % (total, burst_seconds))

    log = wait_settled(s, list(sent_ids))

    # The daemon: one journal per message, each with the Message-ID that was sent.
    entries = {q: [e for e in st.enqueued(log) if e[3] == q] for q in sent_ids}
    for queue_id, found in entries.items():
        assert len(found) == 1, "queue ID %s: %d enqueued lines" % (queue_id, len(found))
        _, message_id, intake, _ = found[0]
        assert (message_id, intake) == (sent_ids[queue_id], st.INTAKE_ADDRESS)
    mids = {found[0][0] for found in entries.values()}
    for mid in mids:
        assert len(re.findall(r"TDC: MID %d successfully delivered for scanning with " % mid, log)) == 1, mid

    # The intake: every message exactly once, matched by the report's Message-Id.
    at_intake = collections.Counter()
    per_connection = collections.Counter()
    for _, envelope, raw in s.journals():
        at_intake[report_message_id(raw)] += 1
        per_connection[envelope["connection"]] += 1
        assert envelope["message_on_connection"] <= MAX_PER_CONNECTION, envelope
        assert envelope["tls"]["version"] == "TLSv1.2", envelope
    burst_at_intake = {m: c for m, c in at_intake.items() if m and m.startswith("<burst.")}
    assert burst_at_intake == {m: 1 for m in sent_ids.values()}, "each burst message exactly once"
    assert max(per_connection.values()) <= MAX_PER_CONNECTION, dict(per_connection)

    # The daemon's view of the same: no DCID carried more than the limit.
    per_dcid = collections.Counter(d for starts in delivery_dcids(log).values() for d in starts)
    assert max(per_dcid.values()) <= MAX_PER_CONNECTION, dict(per_dcid)
    at_once = most_connections_at_once(s.intake_log_text())
    print("journals per intake connection: %s; Delivery start lines per DCID: %s; at most %d connections at once"
          % (sorted(per_connection.values(), reverse=True), sorted(per_dcid.values(), reverse=True), at_once))
    assert 1 <= at_once <= MAX_CONNECTIONS, "%d connections open at once" % at_once

    # Nothing refused, nothing failed, nothing retried.
    assert not [line for line in s.intake_log_text().splitlines() if " 421 " in line], s.intake_log_text()
    failures = [line for line in log.splitlines() if FAILURE_LINE.search(line)]
    assert not failures, "\n".join(failures)

    # And Postfix delivered every original.
    st.poll(lambda: set(sent_ids) <= set(s.relayed()), WAIT, what="every original at smtp-sink")


# ------------------------------------------------------ an unreachable intake

LIFETIME = 6  # seconds: delivery.lifetime of the daemon in the namespace
RETRY_DELAY = 1  # seconds: delivery.retry_delay

MILTERTEST_SCRIPT = """\
-- One message, as Postfix sends it to a milter that negotiated no HELO and no DATA.
local conn = mt.connect("inet:%(milter)d@127.0.0.1", 40, 0.25)
if conn == nil then error("mt.connect failed") end
mt.macro(conn, SMFIC_CONNECT, "j", "mta.test", "{daemon_name}", "mta.test")
if mt.conninfo(conn, "client.example.net", "192.0.2.7") ~= nil then error("mt.conninfo failed") end
if mt.getreply(conn) ~= SMFIR_CONTINUE then error("conninfo: not continue") end
mt.macro(conn, SMFIC_MAIL, "{mail_addr}", "sender@example.org")
if mt.mailfrom(conn, "<sender@example.org>") ~= nil then error("mt.mailfrom failed") end
if mt.getreply(conn) ~= SMFIR_CONTINUE then error("mailfrom: not continue") end
if mt.rcptto(conn, "<bob@example.com>") ~= nil then error("mt.rcptto failed") end
if mt.getreply(conn) ~= SMFIR_CONTINUE then error("rcptto: not continue") end
mt.header(conn, "From", "sender@example.org")
mt.header(conn, "To", "bob@example.com")
mt.header(conn, "Subject", "unreachable intake")
mt.header(conn, "Message-ID", "<unreachable.1@example.org>")
mt.eoh(conn)
mt.bodystring(conn, "The intake drops our SYNs.\\r\\n")
mt.macro(conn, string.byte("E"), "i", "QID123")
if mt.eom(conn) ~= nil then error("mt.eom failed") end
if mt.getreply(conn) ~= SMFIR_ACCEPT then error("end of message: the original was not accepted") end
mt.disconnect(conn)
print("miltertest: accepted")
"""

# miltertest prints no error() text by itself.
MILTERTEST_WRAPPER = """\
local ok, err = pcall(dofile, "%(script)s")
if not ok then print("miltertest FAILED: " .. tostring(err)); os.exit(1) end
"""

NAMESPACE_SETTINGS = """\
# tdc-milter inside the test's network namespace (written by integration/test_delivery.py)
intake_address: journal@intake.test
milter:
  listen: "inet:127.0.0.1:{milter}"
journal:
  sender: tdc@mta.test
delivery:
  route: ["127.0.0.1:{dropped}"]
  lifetime: {lifetime}s
  retry_delay: {retry_delay}s
{own_state}"""


def listening_in(pid, port):
    """True when process `pid`'s network namespace has a TCP listener on 127.0.0.1:port."""
    try:
        lines = Path("/proc/%d/net/tcp" % pid).read_text().splitlines()[1:]
    except OSError:
        return False
    for line in lines:
        fields = line.split()
        address, local_port = fields[1].rsplit(":", 1)
        if fields[3] == "0A" and address in ("0100007F", "00000000") and int(local_port, 16) == port:
            return True
    return False


@pytest.fixture
def netns():
    """A fresh network namespace with its loopback up; always deleted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    missing = [t for t in ("ip", "iptables", "miltertest") if not shutil.which(t)]
    assert not missing, "%s missing: run integration/install-deps" % ", ".join(missing)
    name = "tdcdeliv%d" % os.getpid()
    added = subprocess.run(["ip", "netns", "add", name], stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if added.returncode != 0:
        why = added.stderr.strip()
        if "not permitted" in why or "Permission denied" in why:
            pytest.skip("ip netns is not permitted here: %s" % why)
        pytest.fail("ip netns add %s: %s" % (name, why), pytrace=False)
    try:
        st.run(["ip", "-n", name, "link", "set", "lo", "up"])
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_an_unreachable_intake_gives_the_reference_timeout_line(netns):
    """The intake's SYNs are dropped: the daemon logs the appliance's Connection
    Error line, gives the journal up within its lifetime, and the original is
    accepted all the same."""
    inside = ["ip", "netns", "exec", netns]
    # The namespace is empty: any port is free there. Both on its own 127.0.0.1.
    milter_port, dropped_port = 8895, 2525
    st.run(inside + ["iptables", "-A", "INPUT", "-p", "tcp", "--dport", str(dropped_port), "-j", "DROP"])

    base = Path(tempfile.mkdtemp(prefix="tdc-milter-netns-"))
    log_path = base / "tdc-milter.log"
    daemon = None
    passed = False
    try:
        settings = base / "tdc-milter.yaml"
        settings.write_text(NAMESPACE_SETTINGS.format(milter=milter_port, dropped=dropped_port,
                                                      lifetime=LIFETIME, retry_delay=RETRY_DELAY,
                                                      own_state=st.OWN_STATE_SETTINGS))
        binary = st.milter_binary()
        assert os.access(binary, os.X_OK), "no tdc-milter binary at %s (cargo build --locked)" % binary
        st.run([binary, "-c", settings, "check-config"])
        with open(log_path, "wb") as log:
            # ip netns exec execs the command: daemon.pid is the daemon's own pid.
            daemon = subprocess.Popen(inside + [binary, "-c", str(settings), "run", "--log", "stderr",
                                                        "--allow-root"],
                                      stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)

        def up():
            if daemon.poll() is not None:
                raise st.StackError("tdc-milter exited %s:\n%s" % (daemon.returncode, log_path.read_text()))
            return listening_in(daemon.pid, milter_port)

        st.poll(up, 20, what="tdc-milter to listen inside the namespace")

        script = base / "unreachable.lua"
        script.write_text(MILTERTEST_SCRIPT % {"milter": milter_port})
        wrapper = base / "run.lua"
        wrapper.write_text(MILTERTEST_WRAPPER % {"script": script})
        accepted_at = time.monotonic()
        out = subprocess.run(inside + ["miltertest", "-s", str(wrapper)], stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "miltertest: accepted" in out.stdout, (
            "miltertest exited %d:\n%s%s\n%s" % (out.returncode, out.stdout, out.stderr, log_path.read_text()))

        def finished():
            return "Message finished MID 1 done" in log_path.read_text(errors="replace")

        st.poll(finished, LIFETIME + 10, what="the journal's Message finished line")
        given_up_after = time.monotonic() - accepted_at
        text = log_path.read_text(errors="replace")
        lines = text.splitlines()
        print("\n" + "\n".join(line for line in lines if "MID" in line or "DCID" in line))

        def index_of(pattern):
            found = [i for i, line in enumerate(lines) if re.search(pattern, line)]
            assert found, "no line matching %r in the daemon's log:\n%s" % (pattern, text)
            return found[0]

        enqueued_at = index_of(r"Info: TDC: MID 1 with Message-ID '<unreachable\.1@example\.org>' enqueued for "
                               r"forwarding to Cisco Secure Email Threat Defense to the message intake address "
                               r"journal@intake\.test \(queue ID QID123\)$")
        error_at = index_of(r"Info: TDC: Connection Error: DCID \d+ domain: the\.tdc\.queue IP: 127\.0\.0\.1 "
                            r"port: %d details: timeout interface: 127\.0\.0\.1 reason: connection timed out$"
                            % dropped_port)
        # Hard bounced once the retry failed too, or expired at the end of the lifetime.
        given_up_at = index_of(r"Info: TDC: MID 1 (?:delivery failed to Cisco Secure Email Threat Defense: "
                               r"Hard Bounced\.|removed from the\.tdc\.queue: not delivered within its lifetime)")
        finished_at = index_of(r"Info: Message finished MID 1 done$")
        assert enqueued_at < error_at < given_up_at <= finished_at
        assert "successfully delivered" not in text
        assert given_up_after <= LIFETIME + 5, "given up %.1f s after the accept" % given_up_after
        passed = True
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.terminate()
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(timeout=5)
        if passed and not os.environ.get("TDC_KEEP_STACK"):
            shutil.rmtree(base, ignore_errors=True)
        else:
            print("\nnamespace test files kept in %s" % base)
