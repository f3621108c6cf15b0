"""SMTP smuggling through the journal, with a real Postfix in front: a sender's
original holding `<CR>.<CR>` and a second transaction after it reaches the intake as
exactly one journal, with no CR or LF outside a CRLF pair, and the intake sees no
second transaction (docs/SECURITY.md, "SMTP smuggling"). Debian's Postfix 3.7
already passes each bare CR of the data on as a space, so the milter sees none
here; what tdc-milter itself does with a bare CR from an MTA that passes it is
tests/bad_input_body.rs's bare_cr_body_cannot_smuggle_a_second_message."""

import pytest

import stack as st
from conftest import running_stack

SMUGGLED = (b"one\r.\rMAIL FROM:<evil@attacker.example>\rRCPT TO:<victim@example.com>\rDATA\r"
            b"Subject: injected\r\rinjected\r.\rQUIT\r")


@pytest.fixture(scope="module")
def own_stack(request):
    yield from running_stack(request, "tdc-milter-smuggling-")


def test_a_bare_cr_dot_cannot_end_the_journal_or_start_another(own_stack):
    s = own_stack
    message = (b"From: a@example.net\r\nTo: alice@example.com\r\nSubject: smuggling\r\n"
               b"Message-ID: <smuggling@example.net>\r\n\r\n" + SMUGGLED + b"\r\nafter\r\n")
    queue_id = s.send("a@example.net", ["alice@example.com"], message)
    st.poll(lambda: queue_id in s.relayed(), 60, what="the original at smtp-sink")

    def ours():
        return [j for j in s.journals() if b"<smuggling@example.net>" in j[2]]

    st.poll(ours, 60, what="the journal at the intake")
    (_, envelope, raw), = ours()
    # The journal's data, as the intake stored it, is one message with CRLF only.
    for i, b in enumerate(raw):
        if b == 0x0D:
            assert raw[i + 1:i + 2] == b"\n", "bare CR at %d" % i
        elif b == 0x0A:
            assert raw[i - 1:i] == b"\r", "bare LF at %d" % i
    # The body as Postfix passed it on (its smtpd may already have made each bare CR
    # a space): the journal carries the same, a remaining bare CR made CRLF.
    _, _, relayed = s.relayed()[queue_id]
    body = relayed.split(b"\r\n\r\n", 1)[1]
    assert body.startswith(b"one") and b"QUIT" in body, body
    expected = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    assert expected in raw, (body, raw[-400:])
    # No transaction but the journals': nothing from the smuggled sender or to its
    # recipient reached the intake.
    for _, env, _ in s.journals():
        assert env["mail_from"] != "evil@attacker.example", env
        assert "victim@example.com" not in env["rcpt_tos"], env
    assert envelope["rcpt_tos"] == [st.INTAKE_ADDRESS], envelope
