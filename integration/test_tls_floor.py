"""No TLS below 1.2: an intake (or a man in the middle) that offers only TLS 1.0 and
1.1 gets no journal. The handshake fails, the daemon logs the appliance's "TLS
Error." outcome, nothing is stored at the intake, and the original still flows.
"""

import subprocess

import pytest

import stack as st
from conftest import running_stack


@pytest.fixture(scope="module")
def legacy_stack(request):
    yield from running_stack(request, "tdc-milter-legacy-tls-", intake_args=["--legacy-tls"])


def test_the_sink_really_speaks_tls_1_1(legacy_stack):
    """Without this, the test below could pass against a sink that speaks no TLS."""
    done = subprocess.run(
        ["openssl", "s_client", "-connect", "127.0.0.1:%d" % legacy_stack.ports["intake"],
         "-starttls", "smtp", "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0", "-brief"],
        input="QUIT\r\n", capture_output=True, text=True, timeout=30)
    assert "Protocol version: TLSv1.1" in done.stdout + done.stderr, done.stdout + done.stderr


def test_no_journal_below_tls_1_2(legacy_stack):
    message = (b"From: a@example.net\r\nTo: alice@example.com\r\nSubject: legacy TLS\r\n"
               b"Message-ID: <legacy-tls@example.net>\r\n\r\nbody\r\n")
    queue_id = legacy_stack.send("a@example.net", ["alice@example.com"], message)
    st.poll(lambda: queue_id in legacy_stack.relayed(), 60, what="the original at smtp-sink")
    st.poll(lambda: st.all_journals_settled(legacy_stack.milter_log_text())
            and st.enqueued(legacy_stack.milter_log_text()), 60, what="the journal to be finished")
    log = legacy_stack.milter_log_text()
    assert "TDC: MID 1 delivery failed to Cisco Secure Email Threat Defense: TLS Error." in log, log
    # Failed in the handshake, for the version: the sink (Python's ssl, OpenSSL)
    # closes without an alert when no version is shared, and the attempt line says
    # that is the likely cause. Not a certificate or STARTTLS failure.
    attempt = [line for line in log.splitlines() if "TDC: MID 1 delivery attempt failed" in line]
    assert attempt and all("TLS handshake: TLS failure:" in line for line in attempt), attempt
    assert all("ProtocolVersion" in line or "support TLS 1.2 or later" in line for line in attempt), attempt
    assert "successfully delivered" not in log
    assert "TLS success" not in log
    assert legacy_stack.journals() == []
