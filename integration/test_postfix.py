"""tdc-milter behind a real Postfix (docs/POLICIES.md, docs/JOURNAL-FORMAT.md, docs/LOGGING.md).

swaks sends a set of messages through a hermetic Postfix that has tdc-milter as
its last smtpd milter and relays into smtp-sink; the daemon journals to the
STARTTLS sink (tls_sink.py). The tests check what reached each sink and what the
daemon logged. Run as root: /usr/bin/python3 -m pytest integration -q
"""

import base64
import email
import email.parser
import email.policy
import re
from dataclasses import dataclass, field

import pytest

import stack as st

INTAKE = st.INTAKE_ADDRESS
CUSTOM = st.CUSTOM_INTAKE_ADDRESS
OUR_IP_HEADER = b"X-IronPort-RemoteIP: 127.0.0.1\r\n"
WAIT = 60  # seconds; every wait polls and returns as soon as the condition holds


@dataclass
class Case:
    name: str
    sender: str
    recipients: list
    headers: bytes  # header lines without X-Test-Case, LF line ends here
    body: bytes  # LF line ends here
    journals: dict = field(default_factory=dict)  # intake address -> its recipients

    @property
    def message(self):
        """The exact bytes swaks sends (CRLF)."""
        text = b"X-Test-Case: " + self.name.encode() + b"\n" + self.headers + b"\n" + self.body
        return text.replace(b"\n", b"\r\n")

    @property
    def eight_bit(self):
        return any(b >= 0x80 for b in self.message)


def headers(subject=b"test", message_id=True, extra=b"", name=""):
    h = b"From: Sender <sender@example.net>\nTo: someone@example.com\n"
    h += b"Subject: " + subject + b"\n"
    h += b"Date: Sun, 22 Nov 2026 22:00:00 +0000\n"
    if message_id:
        h += b"Message-ID: <" + name.encode() + b".it@example.net>\n"
    return h + extra


def encoded_word_b(text):
    return b"=?UTF-8?B?" + base64.b64encode(text.encode()) + b"?="


ENCODED_SUBJECT = encoded_word_b("Grüße aus ") + b"\n =?UTF-8?Q?K=C3=B6ln_=E2=9C=93?="
FOLDED_SUBJECT = b"A rather long subject line that a careful client\n\tfolded onto a second line"

CASES = [
    Case(
        "multi-recipient",
        "sender@example.net",
        ["alice@example.com", "x@dept.lab.example.com", "bob@example.org", st.OFF_RECIPIENT,
         "y@research.lab.example.com"],
        headers(b"one message, two intakes", name="multi-recipient"),
        b"Split between the global and the custom intake.\n",
        {INTAKE: ["alice@example.com", "bob@example.org"],
         CUSTOM: ["x@dept.lab.example.com", "y@research.lab.example.com"]},
    ),
    Case(
        "forged-verdict",
        "sender@example.net",
        ["alice@example.com", "x@dept.lab.example.com"],
        headers(b"buy now", name="forged-verdict", extra=b"X-Spam-Flag: YES\nX-Spam-Flag: YES\n"),
        b"A sender's own verdict headers are not trusted: journaled.\n",
        {INTAKE: ["alice@example.com"], CUSTOM: ["x@dept.lab.example.com"]},
    ),
    Case(
        "off-only",
        "sender@example.net",
        [st.OFF_RECIPIENT],
        headers(b"newsletter", name="off-only"),
        b"The only recipient's policy is off: no journal.\n",
    ),
    Case(
        "utf8-body",
        "sender@example.net",
        ["dave@example.com"],
        headers(b"utf-8 body", name="utf8-body",
                extra=b"MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
                      b"Content-Transfer-Encoding: 8bit\n"),
        "Grüße, naïve café, ✓ and 日本語.\n".encode(),
        {INTAKE: ["dave@example.com"]},
    ),
    Case(
        "latin1-body",
        "sender@example.net",
        ["erin@example.com"],
        headers(b"latin-1 body", name="latin1-body",
                extra=b"MIME-Version: 1.0\nContent-Type: text/plain; charset=iso-8859-1\n"
                      b"Content-Transfer-Encoding: 8bit\n"),
        "Grüße aus Köln: ½ ± ß é\n".encode("latin-1"),
        {INTAKE: ["erin@example.com"]},
    ),
    Case(
        "folded-subject",
        "sender@example.net",
        ["frank@example.com"],
        # The Message-ID folded onto its own line, as some clients write it.
        headers(FOLDED_SUBJECT, message_id=False,
                extra=b"Message-ID:\n <folded-subject.it@example.net>\n"),
        b"The Subject and the Message-ID are folded.\n",
        {INTAKE: ["frank@example.com"]},
    ),
    Case(
        "encoded-subject",
        "sender@example.net",
        ["grace@example.com"],
        headers(ENCODED_SUBJECT, name="encoded-subject"),
        b"RFC 2047 encoded words, folded.\n",
        {INTAKE: ["grace@example.com"]},
    ),
    Case(
        "forged-client-ip",
        "sender@example.net",
        ["heidi@example.com"],
        headers(b"forged client IP", name="forged-client-ip",
                extra=b"X-IronPort-RemoteIP: 6.6.6.6\nx-ironport-remoteip:\n 6.6.6.7\n"),
        b"The sender forged our client-IP header twice.\n",
        {INTAKE: ["heidi@example.com"]},
    ),
    Case(
        "leading-dots",
        "sender@example.net",
        ["ivan@example.com"],
        headers(b"dots", name="leading-dots"),
        b".hidden line\n..two dots\n.\n. dot space\nlast line\n",
        {INTAKE: ["ivan@example.com"]},
    ),
    Case(
        "no-message-id",
        "sender@example.net",
        ["judy@example.com"],
        headers(b"no Message-ID", message_id=False),
        b"This message has no Message-ID header.\n",
        {INTAKE: ["judy@example.com"]},
    ),
    Case(
        "null-sender",
        "",
        ["x@dept.lab.example.com"],
        headers(b"a bounce", name="null-sender"),
        b"A delivery status notification has the null sender.\n",
        {CUSTOM: ["x@dept.lab.example.com"]},
    ),
]
CASE_BY_NAME = {c.name: c for c in CASES}
JOURNALED = [(c.name, intake) for c in CASES for intake in c.journals]
NOT_JOURNALED = [c.name for c in CASES if not c.journals]


def original_message_id(case):
    parsed = email.message_from_bytes(case.message, policy=email.policy.default)
    value = parsed.get("Message-ID")
    return "" if value is None else re.sub(r"\s+", "", str(value))


def strip_header(message, name):
    """`message` without every field called `name` (and its continuation lines)."""
    head, sep, body = message.partition(b"\r\n\r\n")
    kept, skipping = [], False
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        skipping = line.split(b":", 1)[0].strip().lower() == name.lower().encode()
        if not skipping:
            kept.append(line)
    return b"\r\n".join(kept) + sep + body


def attached_bytes(raw, boundary):
    """The raw content of the message/rfc822 part, cut out of the journal by its
    boundary (RFC 2046 §5.1.1: the CRLF before a delimiter belongs to it)."""
    b = boundary.encode()
    parts = raw.split(b"\r\n--" + b)
    attached = [p for p in parts if re.search(rb"(?im)^content-type:\s*message/rfc822", p.split(b"\r\n\r\n", 1)[0])]
    assert len(attached) == 1, "expected one message/rfc822 part, found %d" % len(attached)
    part = attached[0]
    assert parts[-1].startswith(b"--"), "the journal does not end with the close delimiter"
    return part.split(b"\r\n\r\n", 1)[1]


def unfolded(header):
    """A header's decoded value with every run of white space as one space."""
    return " ".join(str(header).split())


def report_fields(text):
    fields = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), []).append(value.strip())
    return fields


# ----------------------------------------------------------------- fixtures


@dataclass
class Outcome:
    queue_ids: dict  # case -> Postfix queue ID
    relayed: dict  # case -> message bytes as relayed (what Postfix passed to milters)
    trace: dict  # case -> smtp-sink's envelope trace headers
    journals: dict  # (case, intake) -> [(n, envelope, raw)]
    unmatched: list  # journals no case claims
    log: str  # the daemon's log once everything settled
    wait_error: str


@pytest.fixture(scope="module")
def outcome(stack):
    queue_ids = {}
    for case in CASES:
        queue_ids[case.name] = stack.send(case.sender, case.recipients, case.message)

    errors = []

    def wait(condition, what):
        try:
            st.poll(condition, WAIT, what=what)
        except st.StackError as e:
            errors.append(str(e))

    wanted = set(queue_ids.values())
    wait(lambda: wanted <= set(stack.relayed()), "every original at smtp-sink")
    # A journal is enqueued before the milter answers end-of-message, so once every
    # original has been relayed, the log names every journal there will ever be.
    wait(lambda: len(st.enqueued(stack.milter_log_text())) >= len(JOURNALED),
         "%d enqueued lines in the daemon's log" % len(JOURNALED))
    wait(lambda: st.all_journals_settled(stack.milter_log_text()), "a Message finished line for every MID")
    wait(lambda: len(stack.journals()) >= len(st.enqueued(stack.milter_log_text())),
         "a journal at the intake for every enqueued line")

    relayed_by_qid = stack.relayed()
    relayed, trace = {}, {}
    for name, qid in queue_ids.items():
        if qid in relayed_by_qid:
            trace[name], _, relayed[name] = relayed_by_qid[qid]
    journals, unmatched = {}, []
    for n, envelope, raw in stack.journals():
        m = re.search(rb"(?m)^X-Test-Case: (\S+)\r$", raw)
        rcpts = envelope.get("rcpt_tos") or [None]
        if m and m.group(1).decode() in CASE_BY_NAME:
            journals.setdefault((m.group(1).decode(), rcpts[0]), []).append((n, envelope, raw))
        else:
            unmatched.append(n)
    return Outcome(queue_ids, relayed, trace, journals, unmatched, stack.milter_log_text(), "; ".join(errors))


def the_journal(outcome, name, intake):
    found = outcome.journals.get((name, intake), [])
    assert len(found) == 1, "%s: expected one journal to %s, got %d" % (name, intake, len(found))
    n, envelope, raw = found[0]
    parsed = email.parser.BytesParser(policy=email.policy.default).parsebytes(raw)
    return n, envelope, raw, parsed


# -------------------------------------------------------------------- tests


def test_everything_arrived_in_time(outcome):
    assert not outcome.wait_error


@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_original_reached_the_relay_unchanged(outcome, name):
    case = CASE_BY_NAME[name]
    assert name in outcome.relayed, "the original never reached smtp-sink"
    assert outcome.relayed[name] == case.message
    rcpts = [re.match(r"<([^>]*)>", r).group(1) for r in outcome.trace[name]["X-Rcpt-Args"]]
    assert sorted(rcpts) == sorted(case.recipients)  # qmgr reorders them


def test_exactly_the_expected_journals(outcome):
    expected = sorted(JOURNALED)
    assert sorted(outcome.journals) == expected
    assert all(len(v) == 1 for v in outcome.journals.values()), "duplicate journals"
    assert outcome.unmatched == [], "journals that belong to no test message"


@pytest.mark.parametrize("name", NOT_JOURNALED)
def test_not_journaled(outcome, name):
    assert not [k for k in outcome.journals if k[0] == name]
    qid = outcome.queue_ids[name]
    assert not [e for e in st.enqueued(outcome.log) if e[3] == qid], "the daemon enqueued a journal for it"


@pytest.mark.parametrize("name,intake", JOURNALED)
def test_journal_envelope_over_tls(outcome, name, intake):
    case = CASE_BY_NAME[name]
    _, envelope, raw, _ = the_journal(outcome, name, intake)
    assert envelope["tls"] and envelope["tls"]["version"] in ("TLSv1.2", "TLSv1.3")
    assert envelope["mail_from"] == st.JOURNAL_SENDER
    assert envelope["rcpt_tos"] == [intake]
    options = [o.upper() for o in envelope["mail_options"]]
    if case.eight_bit or any(b >= 0x80 for b in raw):
        assert "BODY=8BITMIME" in options


@pytest.mark.parametrize("name,intake", JOURNALED)
def test_journal_structure(outcome, name, intake):
    case = CASE_BY_NAME[name]
    _, _, raw, parsed = the_journal(outcome, name, intake)
    assert re.search(rb"(?<!\r)\n", raw) is None, "bare LF in the journal"
    assert not parsed.defects
    assert parsed.get_content_type() == "multipart/mixed"
    assert "X-MS-Journal-Report" in parsed
    assert parsed["To"].addresses[0].addr_spec == intake
    assert parsed["From"].addresses[0].addr_spec == st.JOURNAL_SENDER
    original = email.message_from_bytes(case.message, policy=email.policy.default)
    assert unfolded(parsed["Subject"]) == unfolded(original["Subject"])

    parts = list(parsed.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/rfc822"]
    report, attachment = parts
    cte = str(attachment.get("Content-Transfer-Encoding", "")).lower()
    assert cte == ("8bit" if case.eight_bit else "7bit")
    assert not report.defects and not attachment.defects
    inner = attachment.get_content()
    assert inner.get_all(st.CLIENT_IP_HEADER) == ["127.0.0.1"]
    assert inner["X-Test-Case"] == name


@pytest.mark.parametrize("name,intake", JOURNALED)
def test_journal_report(outcome, name, intake):
    case = CASE_BY_NAME[name]
    _, _, _, parsed = the_journal(outcome, name, intake)
    report = next(parsed.iter_parts())
    fields = report_fields(report.get_content())
    assert fields["Sender"] == [case.sender or "<>"]
    original = email.message_from_bytes(case.message, policy=email.policy.default)
    assert [" ".join(s.split()) for s in fields["Subject"]] == [unfolded(original["Subject"])]
    assert fields["Message-Id"] == [original_message_id(case)]
    assert sorted(fields["Recipient"]) == sorted(case.journals[intake])
    assert set(fields) == {"Sender", "Subject", "Message-Id", "Recipient"}


@pytest.mark.parametrize("name,intake", JOURNALED)
def test_attached_original_is_what_postfix_passed(outcome, name, intake):
    _, _, raw, parsed = the_journal(outcome, name, intake)
    passed = outcome.relayed[name]  # the sink copy minus Postfix's Received header
    expected = OUR_IP_HEADER + strip_header(passed, st.CLIENT_IP_HEADER)
    assert attached_bytes(raw, parsed.get_boundary()) == expected


def test_forged_client_ip_only_removed_from_the_copy(outcome):
    assert b"6.6.6.6" in outcome.relayed["forged-client-ip"], "the delivered original must keep it"
    _, _, raw, _ = the_journal(outcome, "forged-client-ip", INTAKE)
    assert b"6.6.6.6" not in raw and b"6.6.6.7" not in raw


@pytest.mark.parametrize("name,intake", JOURNALED)
def test_daemon_logged_the_journal(outcome, stack, name, intake):
    log = outcome.log
    qid = outcome.queue_ids[name]
    entries = [e for e in st.enqueued(log) if e[3] == qid and e[2] == intake]
    assert len(entries) == 1, "one enqueued line for queue ID %s to %s" % (qid, intake)
    mid, message_id, _, _ = entries[0]
    assert message_id == original_message_id(CASE_BY_NAME[name])
    lines = log.splitlines()

    def line_of(pattern):
        found = [i for i, line in enumerate(lines) if re.search(pattern, line)]
        assert len(found) == 1, "expected one line matching %r, found %d" % (pattern, len(found))
        return found[0]

    enqueued_at = line_of(r"TDC: MID %d with Message-ID .* enqueued for forwarding " % mid)
    start_at = line_of(r"TDC: Delivery start DCID \d+ MID %d$" % mid)
    dcid = int(re.search(r"DCID (\d+)", lines[start_at]).group(1))
    line_of(r"TDC: New SMTP DCID %d interface 127\.0\.0\.1 address 127\.0\.0\.1 port %d$"
            % (dcid, stack.ports["intake"]))
    line_of(r"DCID %d TLS success protocol TLSv1\.[23] cipher \S+$" % dcid)
    delivered_at = line_of(r"TDC: MID %d successfully delivered for scanning with .*\.$" % mid)
    finished_at = line_of(r"Message finished MID %d done$" % mid)
    # A journal's lines in the order a log reader follows them (docs/LOGGING.md).
    assert enqueued_at < start_at < delivered_at < finished_at


def test_log_lines_are_well_formed(outcome):
    lines = outcome.log.split("\n")
    assert lines[-1] == "", "the log does not end with a complete line"
    bad_format = [l for l in lines[:-1] if not st.LOG_LINE.match(l)]
    assert not bad_format
    control = [l for l in lines if re.search(r"[\x00-\x1f\x7f]", l)]
    assert not control, "raw control characters in the log"


def test_postfix_delivers_while_the_milter_is_down(stack, outcome):
    """Runs last: milter_default_action / default_action=accept."""
    case = Case("milter-down", "sender@example.net", ["kim@example.com"],
                headers(b"milter down", name="milter-down"), b"Delivered without the milter.\n")
    journals_before = len(stack.journals())
    stack.stop_milter()
    try:
        qid = stack.send(case.sender, case.recipients, case.message)
        relayed = st.poll(lambda: stack.relayed().get(qid), WAIT, what="the original at smtp-sink")
        assert relayed[2] == case.message
        maillog = stack.maillog.read_text(errors="replace")
        assert re.search(r"warning: connect to Milter service inet:127\.0\.0\.1:%d: Connection refused"
                         % stack.ports["milter"], maillog)
    finally:
        stack.start_milter()
    assert len(stack.journals()) == journals_before

    # And once it is back, journaling resumes.
    case = Case("milter-back", "sender@example.net", ["leo@example.com"],
                headers(b"milter back", name="milter-back"), b"Journaled again.\n")
    stack.send(case.sender, case.recipients, case.message)
    st.poll(lambda: [j for j in stack.journals() if b"X-Test-Case: milter-back\r\n" in j[2]], WAIT,
            what="the journal after the restart")
