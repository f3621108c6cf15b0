"""Coverage through a real Postfix: every message gets one outcome, and a skip is
never silent (docs/LOGGING.md, "Not journaled").

* SpamAssassin (Debian's spamd, started here) through spamass-milter ahead of
  tdc-milter, with the documented header_checks that drop the sender's copies of
  the X-Spam-* headers: forged verdicts cannot switch journaling off, and the
  GTUBE message is not journaled, with a line naming the verdict header.
* Direction and loops: a client in incoming.internal_networks (chosen with
  XCLIENT) is not journaled; a journal sent back through the same Postfix is not
  journaled again.
* Load: 130 concurrent smtpd sessions go through the milter at the default
  milter.max_connections with every message journaled; at max_connections 20 no
  session waits for the milter, and each message is journaled or logged and
  counted as milter busy.
* Alerting and gaps: `status --check` says OK, then WARNING and CRITICAL while the
  intake is down, UNKNOWN while the daemon is stopped; the next start logs how long
  journaling was off.

Every stack of these tests (conftest.running_stack) also checks, when it stops,
that the daemon's outcome counts add up to the messages Postfix passed on.

Run as root: /usr/bin/python3 -m pytest integration -q
"""

import json
import os
import re
import shutil
import signal
import smtplib
import subprocess
import threading
import time

import pytest

import stack as st
from conftest import running_stack

WAIT = 90
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
SPAMD = "/usr/sbin/spamd"
SPAMASS_MILTER = "/usr/sbin/spamass-milter"
# What milter-config/tdc-milter.yaml documents for journal.not_clean.
HEADER_CHECKS = "/^X-Spam(-[A-Za-z]+)?:/ IGNORE\n"


class CoverageStack(st.Stack):
    """The stack with settings and main.cf additions; XCLIENT from loopback, and
    10.0.0.0/8 and 198.51.100.0/24 as clients that may relay (chosen by XCLIENT)."""

    settings_extra = {}  # section -> lines inserted under it (two-space indented)
    main_cf_extra = {}

    def write_milter_settings(self):
        super().write_milter_settings()
        text = self.settings_file.read_text()
        for section, lines in self.settings_extra.items():
            if "\n%s:\n" % section in text:
                text = text.replace("\n%s:\n" % section, "\n%s:\n%s" % (section, lines), 1)
            else:
                text += "%s:\n%s" % (section, lines)
        self.settings_file.write_text(text)

    def make_postfix(self):
        super().make_postfix()
        settings = {
            "smtpd_authorized_xclient_hosts": "127.0.0.0/8",
            "mynetworks": "127.0.0.0/8 10.0.0.0/8 198.51.100.0/24",
        }
        settings.update(self.main_cf_extra)
        names = dict(self.ports, etc=self.postfix_etc)
        for key, value in settings.items():
            st.run(["postconf", "-c", str(self.postfix_etc), "-e", "%s=%s" % (key, value % names)])

    def status(self):
        out = st.run([self.milter_bin, "-c", self.settings_file, "status", "--json"])
        return json.loads(out)

    def outcomes(self):
        return self.status()["messages"]


class SpamStack(CoverageStack):
    settings_extra = {
        "journal": '  not_clean: [ { header: X-Spam-Flag, value: "YES" } ]\n',
        "incoming": "  internal_networks: [10.0.0.0/8]\n",
    }
    main_cf_extra = {
        "header_checks": "regexp:%(etc)s/header_checks",
        "smtpd_milters": "inet:127.0.0.1:%(spamass)d, { inet:127.0.0.1:%(milter)d, default_action=accept }",
    }

    def prepare(self):
        if not self.ports.get("spamd"):
            self.ports["spamd"], self.ports["spamass"] = st.free_ports(2)
        super().prepare()
        (self.postfix_etc / "header_checks").write_text(HEADER_CHECKS)

    def bring_up_steps(self):
        return [self.prepare, self.start_relay_sink, self.start_intake_sink, self.start_spamd,
                self.start_spamass_milter, self.start_milter, self.start_postfix]

    def start_spamd(self):
        port = self.ports["spamd"]
        # Debian's site configuration, with a threshold that the rules this hermetic
        # set-up trips on ham (a test-net client address, no reverse DNS) cannot
        # reach; GTUBE scores 1000.
        site = self.base / "spamassassin"
        if not site.exists():
            shutil.copytree("/etc/spamassassin", site)
            with open(site / "local.cf", "a") as f:
                f.write("\n# integration/test_coverage.py\nrequired_score 50\n")
        # -L: local tests only (no DNS, no network); the stock rules ship GTUBE.
        self.spawn("spamd", [SPAMD, "-L", "-s", "stderr", "-i", "127.0.0.1", "-p", port, "-u", "nobody",
                             "--siteconfigpath", site,
                             "--max-children=2", "--pidfile", self.base / "spamd.pid"],
                   self.log_dir / "spamd.log")
        self.wait_listening(port, "spamd", timeout=120)

    def start_spamass_milter(self):
        port = self.ports["spamass"]
        self.spawn("spamass-milter", [SPAMASS_MILTER, "-p", "inet:%d@127.0.0.1" % port, "--",
                                      "-d", "127.0.0.1", "-p", self.ports["spamd"]],
                   self.log_dir / "spamass-milter.log")
        self.wait_listening(port, "spamass-milter")

    def stop_steps(self):
        steps = super().stop_steps()
        return steps[:1] + [lambda: self.stop_process("spamass-milter"),
                            lambda: self.stop_process("spamd")] + steps[1:]

    def diagnostics(self):
        parts = [super().diagnostics()]
        for name in ("spamd.log", "spamass-milter.log"):
            parts += ["== %s (tail)" % name, st.tail(self.log_dir / name, 30)]
        return "\n".join(parts)


class LoadStack(CoverageStack):
    """Enough smtpd processes for 130 concurrent sessions from one client."""
    main_cf_extra = {
        "default_process_limit": "300",
        "smtpd_client_connection_count_limit": "0",
    }


@pytest.fixture(scope="module")
def spam_stack(request):
    for tool in (SPAMD, SPAMASS_MILTER):
        if not os.access(tool, os.X_OK):
            pytest.fail("%s is missing: run integration/install-deps" % tool, pytrace=False)
    yield from running_stack(request, "tdc-milter-spam-", stack_class=SpamStack)


@pytest.fixture(scope="module")
def load_stack(request):
    yield from running_stack(request, "tdc-milter-load-", stack_class=LoadStack)


def message(name, extra=b"", body=b"A clean message.\r\n"):
    return (b"From: Sender <sender@example.net>\r\nTo: someone@example.com\r\n"
            b"Subject: coverage " + name.encode() + b"\r\n"
            b"Date: Sun, 06 Dec 2026 20:00:00 +0000\r\n"
            b"Message-ID: <" + name.encode() + b".cov@example.net>\r\n"
            b"X-Test-Case: " + name.encode() + b"\r\n" + extra + b"\r\n" + body)


def journal_of(s, name):
    marker = b"X-Test-Case: " + name.encode() + b"\r\n"
    return [j for j in s.journals() if marker in j[2]]


STAMP = re.compile(r"^\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4} ")


def lines_about(s, queue_id):
    """The daemon's lines about Postfix's queue ID, without their time stamps."""
    return [STAMP.sub("", l) for l in s.milter_log_text().splitlines() if "(queue ID %s)" % queue_id in l]


def relayed(s, name):
    found = {}

    def arrived():
        for trace, received, msg in s.relayed().values():
            if b"X-Test-Case: " + name.encode() + b"\r\n" in msg:
                found["msg"] = msg
                return True
        return False

    st.poll(arrived, WAIT, what="the original of %s at smtp-sink" % name)
    return found["msg"]


def wait_outcomes(s, total):
    st.poll(lambda: sum(s.outcomes().values()) >= total, WAIT, what="%d outcomes counted" % total)
    return s.outcomes()


# ------------------------------------------------------------------ verdicts


def test_forged_verdicts_cannot_stop_the_journal_and_spam_is_logged(spam_stack):
    s = spam_stack
    before = sum(s.outcomes().values())
    one = message("forged-one", extra=b"X-Spam-Flag: YES\r\n")
    two = message("forged-two", extra=b"X-Spam-Flag: YES\r\nX-Spam-Status: Yes, score=99\r\nX-Spam-Flag: YES\r\n")
    # In the body too: a sender cannot place a header anywhere else.
    spam = message("gtube", body=b"This is the GTUBE:\r\n" + GTUBE + b"\r\n")
    qids = {n: s.send("sender@example.net", ["alice@example.com"], m, xclient_addr="198.51.100.7")
            for n, m in (("forged-one", one), ("forged-two", two), ("gtube", spam))}

    for name in ("forged-one", "forged-two"):
        st.poll(lambda: journal_of(s, name), WAIT, what="the journal of %s" % name)
        original = relayed(s, name)
        # The documented set-up: the sender's copies are gone, SpamAssassin's verdict
        # (ham) is the only one.
        assert b"X-Spam-Flag: YES" not in original, original
        assert re.search(rb"X-Spam-Status: No", original), original
    spam_original = relayed(s, "gtube")
    assert b"X-Spam-Flag: YES" in spam_original
    outcomes = wait_outcomes(s, before + 3)
    assert journal_of(s, "gtube") == []
    assert lines_about(s, qids["gtube"]) == [
        "Warning: TDC: message with Message-ID '<gtube.cov@example.net>' (queue ID %s) not journaled: "
        "not clean: verdict header X-Spam-Flag: YES" % qids["gtube"]]
    assert outcomes["not_clean"] >= 1
    track = st.run([s.milter_bin, "-c", s.settings_file, "track", qids["gtube"]])
    assert "not journaled (not_clean)" in track, track


# ------------------------------------------------------------- direction, loops


def test_internal_client_is_not_journaled_and_an_external_one_is(spam_stack):
    s = spam_stack
    before = s.outcomes()
    internal = s.send("sender@example.net", ["alice@example.com"], message("internal"), xclient_addr="10.1.2.3")
    external = s.send("sender@example.net", ["alice@example.com"], message("external"), xclient_addr="198.51.100.9")
    (_, envelope, raw), = st.poll(lambda: journal_of(s, "external"), WAIT, what="the external journal")
    assert b"\r\n" + st.CLIENT_IP_HEADER.encode() + b": 198.51.100.9\r\n" in raw
    relayed(s, "internal")
    after = wait_outcomes(s, sum(before.values()) + 2)
    assert after["internal_client"] == before["internal_client"] + 1
    assert journal_of(s, "internal") == []
    assert lines_about(s, internal) == [
        "Warning: TDC: message with Message-ID '<internal.cov@example.net>' (queue ID %s) not journaled: "
        "internal client 10.1.2.3 (incoming.internal_networks)" % internal]
    assert [e[3] for e in st.enqueued(s.milter_log_text())].count(external) == 1


def test_a_journal_sent_back_through_postfix_is_not_journaled_again(spam_stack):
    s = spam_stack
    s.send("sender@example.net", ["alice@example.com"], message("to-loop"), xclient_addr="198.51.100.7")
    (_, envelope, raw), = st.poll(lambda: journal_of(s, "to-loop"), WAIT, what="the journal to send back")
    journals_before = len(s.journals())
    before = s.outcomes()
    # As a site whose intake route passes through this Postfix would: from
    # journal.sender; then with another envelope sender (the journal's own marker).
    back = s.send(envelope["mail_from"], ["alice@example.com"], raw, xclient_addr="198.51.100.7")
    again = s.send("bounces@example.net", ["alice@example.com"], raw, xclient_addr="198.51.100.7")
    after = wait_outcomes(s, sum(before.values()) + 2)
    assert after["loop"] == before["loop"] + 2, after
    assert lines_about(s, back)[0].endswith("not journaled: loop: the envelope sender is journal.sender")
    assert lines_about(s, again)[0].endswith(
        "not journaled: loop: the message is a journal (its marker header and Message-ID)")
    time.sleep(2)  # a journal, if one was made, would be on its way by now
    assert len(s.journals()) == journals_before


# ------------------------------------------------------------------- load


def concurrent_sessions(s, sessions, per_session):
    """`sessions` SMTP sessions at once, each sending `per_session` messages; all
    connect first and wait for each other, so that they are open together.
    Returns (queue IDs, the longest wait for the greeting in seconds)."""
    barrier = threading.Barrier(sessions)
    results, errors, waits = [], [], []
    lock = threading.Lock()

    def one(n):
        try:
            started = time.monotonic()
            smtp = smtplib.SMTP("127.0.0.1", s.ports["smtpd"], local_hostname="client.example.net", timeout=120)
            greeted = time.monotonic() - started
            barrier.wait(timeout=120)
            smtp.ehlo()
            qids = []
            for i in range(per_session):
                name = "load-%d-%d" % (n, i)
                smtp.sendmail("sender@example.net", ["alice@example.com"], message(name))
                qids.append(name)
            smtp.quit()
            with lock:
                results.extend(qids)
                waits.append(greeted)
        except Exception as e:  # reported below, with the others
            with lock:
                errors.append("session %d: %r" % (n, e))

    threads = [threading.Thread(target=one, args=(n,)) for n in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]
    return results, max(waits)


def milter_timeouts(s):
    maillog = s.maillog.read_text(errors="replace")
    return [l for l in maillog.splitlines() if "milter" in l and ("timed out" in l or "timeout" in l)]


def test_130_concurrent_sessions_all_go_through_the_milter(load_stack):
    s = load_stack
    before = s.outcomes()
    names, longest = concurrent_sessions(s, 130, 2)
    after = wait_outcomes(s, sum(before.values()) + 260)
    assert after["journaled"] - before["journaled"] == 260, after
    assert sum(after.values()) - sum(before.values()) == 260
    st.poll(lambda: len([j for j in s.journals() if b"X-Test-Case: load-" in j[2]]) >= 260, WAIT,
            what="260 journals at the intake")
    assert milter_timeouts(s) == []
    assert s.status()["milter"]["busy_connections"] == 0
    print("\n130 sessions at the default limit: longest wait for the greeting %.2f s" % longest)


def test_past_max_connections_mail_flows_and_is_counted_as_busy(load_stack):
    s = load_stack
    text = s.settings_file.read_text()
    s.settings_file.write_text(text.replace("\nmilter:\n", "\nmilter:\n  max_connections: 20\n", 1))
    os.kill(s.state["processes"]["tdc-milter"]["pid"], signal.SIGHUP)
    st.poll(lambda: "settings reloaded" in s.milter_log_text(), WAIT, what="the reload")
    before = s.outcomes()
    busy_lines_before = s.milter_log_text().count("not journaled: milter busy")
    journals_before = len(s.journals())
    relayed_before = len(list(s.relay_dir.iterdir()))
    _, longest = concurrent_sessions(s, 130, 2)
    after = wait_outcomes(s, sum(before.values()) + 260)
    journaled = after["journaled"] - before["journaled"]
    busy = after["milter_busy"] - before["milter_busy"]
    # Every message is journaled or counted busy, nothing else, and the counts add up.
    assert journaled + busy == 260 and sum(after.values()) - sum(before.values()) == 260, after
    assert busy >= 2 * (130 - 20), after
    assert s.milter_log_text().count("not journaled: milter busy") - busy_lines_before == busy
    status = s.status()
    assert status["milter"]["busy_connections"] >= 110 and status["milter"]["max_connections"] == 20
    # Postfix never waited out a milter timeout, and every original went on.
    assert milter_timeouts(s) == []
    st.poll(lambda: len(list(s.relay_dir.iterdir())) - relayed_before >= 260, WAIT, what="260 originals relayed")
    st.poll(lambda: len(s.journals()) - journals_before >= journaled, WAIT, what="the journals")
    # A connection left waiting in the backlog costs Postfix its whole milter timeout
    # (30 s by default); being answered at once costs nothing of the kind.
    assert longest < 10, longest
    print("\n130 sessions at max_connections 20: %d journaled, %d milter busy, longest greeting wait %.2f s"
          % (journaled, busy, longest))


# ------------------------------------------------------------- alerting, gaps


class CheckStack(CoverageStack):
    """Short retries and lifetime, so that a journal to an intake that is down is
    given up within the test."""
    settings_extra = {"delivery": "  lifetime: 6s\n  retry_delay: 1s\n"}


@pytest.fixture(scope="module")
def check_stack(request):
    yield from running_stack(request, "tdc-milter-check-", stack_class=CheckStack)


def status_check(s):
    """(exit code, line) of `tdc-milter status --check`."""
    done = subprocess.run([str(s.milter_bin), "-c", str(s.settings_file), "status", "--check"],
                          capture_output=True, text=True, timeout=30)
    lines = done.stdout.splitlines()
    assert len(lines) == 1, (done.returncode, done.stdout, done.stderr)
    return done.returncode, lines[0]


def test_status_check_follows_the_intake_and_the_daemon_and_a_gap_is_logged(check_stack):
    s = check_stack
    # Healthy: a message journaled and delivered.
    s.send("sender@example.net", ["alice@example.com"], message("check-ok"))
    st.poll(lambda: journal_of(s, "check-ok"), WAIT, what="the journal of check-ok")
    code, line = st.poll(lambda: (lambda r: r if r[0] == 0 else None)(status_check(s)), 30,
                         what="status --check OK")
    assert line.startswith("TDC OK - "), line
    assert " | queue=0;" in line, line

    # The intake down: the first failed attempt is a soft bounce (WARNING); the
    # journal given up after its retry, a hard bounce (CRITICAL).
    s.stop_process("tls-sink")
    try:
        s.send("sender@example.net", ["alice@example.com"], message("check-down"))
        code, line = st.poll(lambda: (lambda r: r if r[0] != 0 else None)(status_check(s)), WAIT,
                             what="status --check to leave OK")
        assert code == 1 and line.startswith("TDC WARNING - soft bounces in the last 15m"), (code, line)
        code, line = st.poll(lambda: (lambda r: r if r[0] == 2 else None)(status_check(s)), WAIT,
                             what="status --check CRITICAL")
        assert line.startswith("TDC CRITICAL - journals hard bounced or expired in the last 15m"), line
        assert "(1 since start, " in line, line
    finally:
        s.start_intake_sink()

    # The daemon stopped: mail flows without it, and the check cannot know more.
    s.stop_milter()
    stopped_at = time.monotonic()
    try:
        code, line = status_check(s)
        assert code == 3 and line.startswith("TDC UNKNOWN - daemon not reachable"), (code, line)
        s.send("sender@example.net", ["alice@example.com"], message("check-gap"))
        relayed(s, "check-gap")
        time.sleep(2)
    finally:
        s.start_milter()
    off = time.monotonic() - stopped_at
    gap = st.poll(lambda: [l for l in s.milter_log_text().splitlines() if "journaling was off for" in l], 30,
                  what="the gap line")
    assert len(gap) == 1, gap
    m = re.search(r"Warning: TDC: journaling was off for (\d+) s: the previous instance was last running at "
                  r"\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}; mail received meanwhile was not journaled$", gap[0])
    assert m, gap[0]
    # A clean stop records its last moment: the gap is the time it was stopped.
    assert off - 2 <= int(m.group(1)) <= off + 2, (gap[0], off)
    assert journal_of(s, "check-gap") == []
