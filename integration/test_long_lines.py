"""A message with lines longer than SMTP allows (998 octets) still gets its journal
to a strict intake (aiosmtpd refuses such lines with 500): tdc-milter breaks them
with CRLF and a space on the way, as Postfix's own SMTP client does."""

import re

import pytest

import stack as st
from conftest import running_stack


@pytest.fixture(scope="module")
def own_stack(request):
    # Its own stack: the session's is shared by test_postfix.py, which counts every
    # journal at its intake.
    yield from running_stack(request, "tdc-milter-long-lines-")


def test_a_5000_octet_line_is_journaled_to_a_strict_intake(own_stack):
    stack = own_stack
    line = b"y" * 5000
    message = (b"From: a@example.net\r\nTo: alice@example.com\r\nSubject: long line\r\n"
               b"Message-ID: <long-line@example.net>\r\n\r\nbefore\r\n" + line + b"\r\nafter\r\n")
    queue_id = stack.send("a@example.net", ["alice@example.com"], message)
    st.poll(lambda: queue_id in stack.relayed(), 60, what="the original at smtp-sink")

    def journal():
        for _, _, raw in stack.journals():
            if b"<long-line@example.net>" in raw:
                return raw
        return None

    st.poll(lambda: journal() is not None, 60, what="the journal at the intake")
    raw = journal()
    assert all(len(l) <= 1000 for l in raw.split(b"\n"))
    # The long line arrives whole once the inserted breaks are taken out again.
    assert line in re.sub(rb"\r\n ", b"", raw)
    assert b"before\r\n" in raw and b"after\r\n" in raw
