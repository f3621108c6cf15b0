"""tdc-milter behind a real Sendmail 8.17 (docs/SENDMAIL.md).

swaks sends to a Sendmail (unpacked from Debian's packages, see sendmail.py) that
relays into smtp-sink and has two filters, in this order: quarantine_milter.py,
which quarantines messages carrying X-Test-Quarantine, then tdc-milter, configured
with exactly the lines of milter-config/sendmail.mc (the port put in). tdc-milter
journals to the STARTTLS sink (tls_sink.py). Run as root:
/usr/bin/python3 -m pytest integration/test_sendmail.py -q
"""

import os
import re

import pytest

import sendmail as sm
import stack as st
from conftest import running_stack
from test_postfix import Case, attached_bytes, headers, strip_header

INTAKE = st.INTAKE_ADDRESS
OUR_IP_HEADER = b"X-IronPort-RemoteIP: 127.0.0.1\r\n"
WAIT = 60  # seconds; every wait polls and returns as soon as the condition holds


@pytest.fixture(scope="module")
def sm_stack(request):
    """The Sendmail stack, up for this module; its files are kept when a test failed
    (or TDC_KEEP_STACK is set)."""
    if os.geteuid() != 0:
        pytest.skip("the real-Sendmail tests need root (unshare, mount, smtp-sink -u postfix)")
    try:
        root = sm.ensure_unpacked()
    except st.StackError as e:
        pytest.fail("no Sendmail to run (integration/install-deps unpacks it): %s" % e, pytrace=False)
    yield from running_stack(request, "tdc-milter-sendmail-", stack_class=sm.SendmailStack, root=root)


def case(name, subject, extra=b"", recipients=("alice@example.com",)):
    return Case(name, "sender@example.net", list(recipients), headers(subject, name=name, extra=extra),
                ("%s: sent through Sendmail.\n" % name).encode())


def journals_of(s, name):
    """Journals at the intake whose attached original is the test message `name`."""
    marker = b"X-Test-Case: " + name.encode() + b"\r\n"
    return [j for j in s.journals() if marker in j[2]]


def enqueued_for(s, queue_id):
    return [e for e in st.enqueued(s.milter_log_text()) if e[3] == queue_id]


def settle(s):
    """Waits until every journal the daemon enqueued has reached the intake."""
    st.poll(lambda: st.all_journals_settled(s.milter_log_text()), WAIT, what="a Message finished line for every MID")
    st.poll(lambda: len(s.journals()) >= len(st.enqueued(s.milter_log_text())), WAIT,
            what="a journal at the intake for every enqueued line")


def quarantined_line(queue_id, message_id, reason):
    return ("TDC: message with Message-ID '%s' (queue ID %s) not journaled: quarantined by an earlier mail filter: %s"
            % (message_id, queue_id, reason))


def send_quarantined(s, name, reason):
    """Sends a message the first filter quarantines; checks that Sendmail held it and
    tdc-milter still saw it. Returns (queue ID, the daemon's lines about it)."""
    c = case(name, b"held", extra=b"X-Test-Quarantine: " + reason.encode() + b"\n")
    qid = s.send(c.sender, c.recipients, c.message)
    # Filters answer before Sendmail's 250: their verdicts are in by now.
    assert qid in s.queue_files("hf"), "Sendmail did not hold the message"
    assert qid not in s.queue_files("qf")
    lines = [l for l in s.milter_log_text().splitlines() if "(queue ID %s)" % qid in l]
    return qid, lines


# -------------------------------------------------------------------- tests


def test_shipped_filter_line_continues_when_the_milter_is_unavailable():
    """No F= flag (F=T would tempfail, F=R reject); the line is listed last."""
    line = sm.shipped_lines(8895)[0]
    assert sm.filter_equates(line)["F"] == ""
    assert sm.filter_equates(line)["S"] == "inet:8895@127.0.0.1"


def test_clean_message_is_relayed_and_journaled(sm_stack):
    s = sm_stack
    c = case("sm-clean", b"clean through Sendmail", recipients=["alice@example.com", "bob@example.org"])
    qid = s.send(c.sender, c.recipients, c.message)
    trace, received, relayed = st.poll(lambda: s.relayed().get(c.name), WAIT, what="the original at smtp-sink")
    assert relayed == c.message, "Sendmail changed the message"
    assert sm.sendmail_queue_id(received) == qid
    rcpts = [re.match(r"<([^>]*)>", r).group(1) for r in trace["X-Rcpt-Args"]]
    assert sorted(rcpts) == sorted(c.recipients)

    found = st.poll(lambda: journals_of(s, c.name), WAIT, what="the journal at the intake")
    settle(s)
    assert len(journals_of(s, c.name)) == 1
    _, envelope, raw = found[0]
    assert envelope["tls"] and envelope["tls"]["version"] in ("TLSv1.2", "TLSv1.3")
    assert envelope["mail_from"] == st.JOURNAL_SENDER
    assert envelope["rcpt_tos"] == [INTAKE]
    boundary = re.search(rb'boundary="([^"]+)"', raw).group(1).decode()
    # What Sendmail passed to its filters: the relayed copy minus Sendmail's
    # Received: header, which it does not show them.
    assert attached_bytes(raw, boundary) == OUR_IP_HEADER + strip_header(relayed, st.CLIENT_IP_HEADER)
    report = raw.split(b"\r\n\r\n", 2)[2]
    for rcpt in c.recipients:
        assert b"Recipient: " + rcpt.encode() + b"\r\n" in report
    # The queue ID reaches tdc-milter at end of message (its own macro request).
    entries = enqueued_for(s, qid)
    assert [(e[1], e[2]) for e in entries] == [("<sm-clean.it@example.net>", INTAKE)]


def test_a_sender_written_verdict_does_not_stop_the_journal(sm_stack):
    # No verdict header is trusted by default (journal.not_clean is empty): a sender
    # cannot opt out of scanning by writing X-Spam-Flag: YES.
    s = sm_stack
    c = case("sm-forged-verdict", b"buy now", extra=b"X-Spam-Flag: YES\n")
    qid = s.send(c.sender, c.recipients, c.message)
    trace, received, relayed = st.poll(lambda: s.relayed().get(c.name), WAIT, what="the original at smtp-sink")
    assert relayed == c.message
    st.poll(lambda: journals_of(s, c.name), WAIT, what="the journal of the forged-verdict message")
    assert [(e[1], e[2]) for e in enqueued_for(s, qid)] == [("<sm-forged-verdict.it@example.net>", INTAKE)]


def test_message_quarantined_by_an_earlier_filter_is_not_journaled(sm_stack):
    s = sm_stack
    qid, lines = send_quarantined(s, "sm-held", "suspicious attachment")
    assert len(lines) == 1 and lines[0].endswith(
        "Info: " + quarantined_line(qid, "<sm-held.it@example.net>", "suspicious attachment")), lines
    assert "quarantined a message: suspicious attachment" in (s.log_dir / "quarantine_milter.log").read_text()
    settle(s)
    assert journals_of(s, "sm-held") == []
    assert "sm-held" not in s.relayed()


def test_quarantine_is_seen_without_the_eom_macros_line(sm_stack):
    """Without the shipped confMILTER_MACROS_EOM line, Sendmail's global list is just
    {msg_id}; tdc-milter still gets {quarantine} because it asks for it itself (and
    asks for an end-of-header list, without which Sendmail 8.17 would ignore that
    request). A milter that relied on the global list alone would journal the
    quarantined message here."""
    s = sm_stack
    s.restart_sendmail(eom_macros=False)
    try:
        cf = (s.sm_dir / "sendmail.cf").read_text()
        assert re.search(r"(?m)^O Milter\.macros\.eom=\{msg_id\}$", cf), "the global list still names {quarantine}"
        qid, lines = send_quarantined(s, "sm-held-no-eom-line", "held again")
        assert len(lines) == 1 and lines[0].endswith(
            quarantined_line(qid, "<sm-held-no-eom-line.it@example.net>", "held again")), lines
        c = case("sm-clean-no-eom-line", b"clean, no EOM line")
        qid = s.send(c.sender, c.recipients, c.message)
        st.poll(lambda: journals_of(s, c.name), WAIT, what="the journal of the clean message")
        assert [e[3] for e in enqueued_for(s, qid)] == [qid]
        settle(s)
        assert journals_of(s, "sm-held-no-eom-line") == []
    finally:
        s.restart_sendmail(eom_macros=True)


def test_mail_flows_while_tdc_milter_is_down(sm_stack):
    """Runs last: no F= flag, so Sendmail continues without the unavailable filter."""
    s = sm_stack
    settle(s)
    journals_before = len(s.journals())
    s.stop_milter()
    try:
        c = case("sm-milter-down", b"milter down")
        s.send(c.sender, c.recipients, c.message)
        trace, received, relayed = st.poll(lambda: s.relayed().get(c.name), WAIT, what="the original at smtp-sink")
        assert relayed == c.message
    finally:
        s.start_milter()
    assert len(s.journals()) == journals_before

    # Back up: journaling resumes (Sendmail retries an unavailable filter per connection).
    c = case("sm-milter-back", b"milter back")
    s.send(c.sender, c.recipients, c.message)
    st.poll(lambda: journals_of(s, c.name), WAIT, what="the journal after the restart")
