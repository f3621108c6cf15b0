"""The README's first command, ./integration/lab, end to end: it brings the lab up,
shows the samples journaled where the policies say, prints the tophosts view, and
stops everything it started on Ctrl-C; --detach leaves it up for --down.

The lab runs in its own temporary directory (TDC_LAB_DIR) on free ports, with the
daemon under test (TDC_MILTER_BIN), so it does not disturb a lab an admin has up.
"""

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

import stack as st

LAB = st.HERE / "lab"
READY = "journals: "
TIMEOUT = 300


@pytest.fixture
def lab_dir():
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    parent = tempfile.mkdtemp(prefix="tdc-milter-labtest-")
    os.chmod(parent, 0o755)
    yield Path(parent) / "lab"
    leftover = st.Stack.load(Path(parent) / "lab")
    if leftover is not None:
        leftover.stop_all()
    shutil.rmtree(parent, ignore_errors=True)


def lab_env(base):
    env = dict(os.environ)
    env["TDC_LAB_DIR"] = str(base)
    env["TDC_MILTER_BIN"] = str(st.milter_binary())
    return env


def start_lab(base, *args):
    out = open(base.parent / "lab.out", "w+")
    child = subprocess.Popen([str(LAB), *args], env=lab_env(base), stdout=out,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    return child, out


def output(out):
    out.flush()
    out.seek(0)
    return out.read()


def wait_ready(child, out):
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        text = output(out)
        if READY in text:
            return text
        if child.poll() is not None:
            pytest.fail("the lab exited (%s) before it was ready:\n%s" % (child.returncode, text))
        time.sleep(0.2)
    child.kill()
    pytest.fail("the lab was not ready within %d s:\n%s" % (TIMEOUT, output(out)))


def assert_lab_report(text, base):
    # Every sample went where the policies say, and nothing was unexpected.
    assert "UNEXPECTED" not in text, text
    assert "clean   to alice@example.com" in text and "1.eml to %s" % st.INTAKE_ADDRESS in text, text
    assert "to %s" % st.CUSTOM_INTAKE_ADDRESS in text, text
    assert text.count("-> no journal") == 1, text
    # The daemon's own lines and its tophosts view are shown.
    assert "successfully delivered for scanning with Cisco Secure Email Threat Defense" in text, text
    tophosts = text.split("tdc-milter tophosts:", 1)[1]
    assert "the.tdc.queue" in tophosts.split("What was journaled where:", 1)[0], text
    assert text.rstrip().splitlines()[-1].startswith(READY) or READY + str(base / "intake") in text
    assert len(list((base / "intake").glob("*.eml"))) == 3


def assert_all_stopped(base):
    stack = st.Stack.load(base)
    assert stack is not None
    assert not stack.running(), stack.diagnostics()
    busy = set(stack.ports.values()) & st.listening_ports()
    assert not busy, "still listening on %s" % sorted(busy)


def test_lab_runs_until_ctrl_c_then_stops_everything(lab_dir):
    child, out = start_lab(lab_dir)
    text = wait_ready(child, out)
    assert "until Ctrl-C" in text
    assert_lab_report(text, lab_dir)
    assert st.Stack.load(lab_dir).running()

    os.killpg(child.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
    child.wait(timeout=120)
    text = output(out)
    assert "lab: stopped" in text, text
    assert_all_stopped(lab_dir)


def test_lab_detached_is_stopped_by_down(lab_dir):
    child, out = start_lab(lab_dir, "--detach")
    assert child.wait(timeout=TIMEOUT) == 0, output(out)
    text = output(out)
    assert_lab_report(text, lab_dir)
    assert "./integration/lab --down" in text
    assert st.Stack.load(lab_dir).running()

    down = subprocess.run([str(LAB), "--down"], env=lab_env(lab_dir), capture_output=True, text=True,
                          timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "lab: stopped" in down.stdout
    assert_all_stopped(lab_dir)
    again = subprocess.run([str(LAB), "--down"], env=lab_env(lab_dir), capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0 and "nothing was running" in again.stdout
