"""pytest fixtures for the real-Postfix tests: one stack (integration/stack.py) per
session, in a fresh world-searchable temporary directory.

Run as root: /usr/bin/python3 -m pytest integration -q
TDC_KEEP_STACK=1 keeps the base directory after a green run too (it is always kept
after a failure); TDC_MILTER_BIN picks the daemon binary.
"""

import os
import shutil
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import stack as stack_module  # noqa: E402

_stacks = []


def running_stack(request, prefix, stack_class=None, **options):
    """A stack (a stack.Stack, or stack_class) in a fresh world-searchable temporary
    directory, up for the fixture's scope; its files are kept when a test failed (or
    TDC_KEEP_STACK is set)."""
    if os.geteuid() != 0:
        pytest.skip("the real-Postfix tests need root (Postfix, smtp-sink -u postfix)")
    base = tempfile.mkdtemp(prefix=prefix)
    os.chmod(base, 0o755)  # Postfix runs as user postfix and must reach it
    s = (stack_class or stack_module.Stack)(base, **options)
    _stacks.append(s)
    try:
        s.up()
    except stack_module.StackError as e:
        pytest.fail("could not bring up the stack: %s\n%s" % (e, s.diagnostics()), pytrace=False)
    yield s
    # Every message Postfix passed on got exactly one outcome (docs/LOGGING.md,
    # "Not journaled"): the daemon's counts add up to the messages of this run.
    accounting = s.outcome_accounting()
    s.stop_all()
    _stacks.remove(s)
    if accounting is not None and accounting[0] != accounting[1]:
        pytest.fail("the daemon counted %d outcomes, Postfix passed on %d messages through it (%s)"
                    % (accounting[0], accounting[1], base), pytrace=False)
    if request.session.testsfailed or os.environ.get("TDC_KEEP_STACK"):
        print("\nstack files kept in %s" % base)
    else:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def stack(request):
    yield from running_stack(request, "tdc-milter-it-")


@pytest.fixture(scope="module")
def busy_limited_stack(request):
    """The SETD intake's limits, and an intake that takes 0.1 s over each journal, so
    that a burst of journals waits in the queue (connection reuse, more connections)."""
    yield from running_stack(request, "tdc-milter-busy-",
                             intake_args=["--tls12-only", "--max-msgs", "10", "--data-delay", "0.1"])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test shows the maillog, the daemon's log and the sink listings."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and _stacks:
        report.sections.append(("tdc-milter stack", _stacks[-1].diagnostics()))
