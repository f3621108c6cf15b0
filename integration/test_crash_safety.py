"""Crash safety with the real daemon behind a real Postfix.

* kill -9 under load, then a restart: every journal is delivered (none lost within
  its lifetime), a journal reaches the intake twice only if its delivery was in
  flight at the kill, and the spool holds no damaged file.
* A full spool file system: originals still flow, each journal that cannot be
  spooled gets a clear log line, and journaling resumes when space returns.
"""

import collections
import os
import re
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

import stack as st
from conftest import running_stack

MESSAGES = 60
SESSIONS = 4


def message(tag, n):
    return (b"From: load@example.net\r\nTo: alice@example.com\r\nSubject: %s %d\r\n"
            b"Message-ID: <%s-%d@example.net>\r\n\r\n%s" % (tag, n, tag, n, (b"x" * 98 + b"\r\n") * 20))


def send_burst(stack, tag, count):
    chunks = [list(range(i, count, SESSIONS)) for i in range(SESSIONS)]
    with ThreadPoolExecutor(SESSIONS) as pool:
        done = pool.map(lambda ns: stack.send_session("load@example.net", ["alice@example.com"],
                                                      [message(tag, n) for n in ns]), chunks)
        return [q for ids in done for q in ids]


def original_ids(stack, tag):
    """Original Message-ID number of each journal stored at the intake."""
    pattern = re.compile(rb"^Message-ID: <%s-(\d+)@example\.net>\r$" % tag, re.M)
    found = []
    for _, _, raw in stack.journals():
        m = pattern.search(raw)
        if m:
            found.append(int(m.group(1)))
    return found


@pytest.fixture
def slow_stack(request):
    # A busy intake: each journal takes 0.15 s to be accepted, so that a burst keeps
    # deliveries in flight for several seconds.
    yield from running_stack(request, "tdc-milter-crash-", intake_args=["--data-delay", "0.15"])


def spool_dir(stack):
    return stack.base / "tdc-spool"


def test_kill_9_under_load_loses_nothing(slow_stack):
    s = slow_stack
    queue_ids = send_burst(s, b"crash", MESSAGES)
    assert len(queue_ids) == MESSAGES
    st.poll(lambda: s.milter_log_text().count("successfully delivered") >= 5, 60,
            what="the first deliveries")
    pid = s.state["processes"]["tdc-milter"]["pid"]
    os.kill(pid, signal.SIGKILL)
    st.poll(lambda: not s.alive("tdc-milter"), 10, what="the daemon to die")
    before = s.milter_log_text()
    s.stop_milter()  # forget the dead process

    started = set(int(m) for m in re.findall(r"TDC: Delivery start DCID \d+ MID (\d+)", before))
    delivered = set(int(m) for m in re.findall(r"TDC: MID (\d+) successfully delivered", before))
    in_flight = started - delivered
    enqueued = st.enqueued(before)
    assert len(enqueued) == MESSAGES, "every journal was spooled before Postfix got its answer"
    assert len(delivered) < MESSAGES, "the kill came too late to test anything"

    s.start_milter()
    st.poll(lambda: queue_ids and set(queue_ids) <= set(s.relayed()), 60, what="every original relayed")
    st.poll(lambda: set(original_ids(s, b"crash")) == set(range(MESSAGES)), 120,
            what="a journal of every message at the intake")
    after = s.milter_log_text()[len(before):]
    recovered = re.search(r"TDC: (\d+) journals recovered from the spool", after)
    assert recovered and int(recovered.group(1)) == MESSAGES - len(delivered), after[:2000]
    st.poll(lambda: st.all_journals_settled(s.milter_log_text()), 60, what="every journal finished")

    counts = collections.Counter(original_ids(s, b"crash"))
    twice = sorted(n for n, c in counts.items() if c > 1)
    assert all(c <= 2 for c in counts.values()), counts
    # Only journals in flight at the kill may arrive twice (the intake had them,
    # the daemon had not yet removed them from the spool): each message delivered
    # twice must be one whose journal's MID was in flight.
    number_of_mid = {}
    for mid, message_id, _, _ in enqueued:
        m = re.fullmatch(r"<crash-(\d+)@example\.net>", message_id)
        if m:
            number_of_mid[mid] = int(m.group(1))
    assert len(number_of_mid) == MESSAGES, enqueued[:5]
    in_flight_numbers = {number_of_mid[mid] for mid in in_flight if mid in number_of_mid}
    assert set(twice) <= in_flight_numbers, (twice, sorted(in_flight_numbers))
    print("\nkill -9: %d journals, %d delivered before the kill, %d in flight, %d delivered twice"
          % (MESSAGES, len(delivered), len(in_flight), len(twice)))
    assert "expired" not in after and "removed from the.tdc.queue" not in after
    spool = spool_dir(s)
    assert not list((spool / "corrupt").glob("*")) if (spool / "corrupt").exists() else True
    assert list((spool / "active").glob("*")) == []
    assert "damaged spool file" not in s.milter_log_text()


class SmallSpoolStack(st.Stack):
    """The stack with its spool on a 2 MiB tmpfs, mounted before the daemon starts
    and unmounted once everything has stopped."""

    def start_milter(self):
        spool = spool_dir(self)
        if not os.path.ismount(spool):
            spool.mkdir(exist_ok=True)
            st.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0750", "tdc-spool", str(spool)])
        super().start_milter()

    def stop_all(self):
        try:
            super().stop_all()
        finally:
            if os.path.ismount(spool_dir(self)):
                subprocess.run(["umount", str(spool_dir(self))], check=False)


@pytest.fixture
def small_spool_stack(request):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    yield from running_stack(request, "tdc-milter-full-", stack_class=SmallSpoolStack)


def fill(path):
    """Fills the file system of `path` with one file; returns it."""
    filler = path / "filler"
    # Unbuffered: a buffered file would try the write that failed again at close.
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    return filler


def test_full_spool_lets_mail_flow_and_recovers(small_spool_stack):
    s = small_spool_stack
    filler = fill(spool_dir(s))
    queue_ids = send_burst(s, b"full", 8)
    st.poll(lambda: set(queue_ids) <= set(s.relayed()), 60, what="every original relayed despite the full spool")
    st.poll(lambda: s.milter_log_text().count("not journaled: the journal could not be spooled") >= 8, 30,
            what="a line for each journal that could not be spooled")
    log = s.milter_log_text()
    lines = [line for line in log.splitlines() if "could not be spooled" in line]
    assert all("No space left on device" in line for line in lines), lines
    assert original_ids(s, b"full") == []

    filler.unlink()
    later = send_burst(s, b"later", 4)
    st.poll(lambda: set(later) <= set(s.relayed()), 60, what="the later originals")
    st.poll(lambda: sorted(original_ids(s, b"later")) == [0, 1, 2, 3], 60,
            what="journals again once space returned")
