"""The Prometheus alerting rules shipped in milter-config/tdc-milter.rules.yml:
promtool accepts them, and its rule unit tests (integration/alert_rules_test.yml)
fire each alert on the series that should raise it and on no healthy twin. The
metric names they use are checked against the daemon's /metrics by
tests/metrics.rs."""

import os
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
RULES = HERE.parent / "milter-config" / "tdc-milter.rules.yml"
TESTS = HERE / "alert_rules_test.yml"


def promtool():
    root = Path(os.environ.get("TDC_PROMTOOL_ROOT") or "/var/tmp/tdc-milter-promtool")
    tool = root / "usr" / "bin" / "promtool"
    assert os.access(tool, os.X_OK), "no promtool at %s: run integration/install-deps" % tool
    return str(tool)


def run(*args):
    done = subprocess.run([promtool(), *args], capture_output=True, text=True, cwd=HERE)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_rules_file_is_valid():
    out = run("check", "rules", str(RULES))
    assert "SUCCESS: 8 rules found" in out, out


def test_each_alert_fires_when_it_should_and_only_then():
    out = run("test", "rules", str(TESTS))
    assert "SUCCESS" in out, out
