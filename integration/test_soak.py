"""The fault soak (integration/soak.py) in its short form: about a minute of mail
through Postfix while the intake is healthy, down for longer than the journals'
lifetime, flapping, stalling after the data and failing at random. Every original
must be accepted and relayed, and every journal accounted for."""

import json
import os
import shutil
import tempfile

import pytest

import soak


def test_fault_soak_accounts_for_every_original_and_journal():
    if os.geteuid() != 0:
        pytest.skip("the soak needs root (Postfix)")
    base = tempfile.mkdtemp(prefix="tdc-milter-soak-")
    os.chmod(base, 0o755)
    report = soak.run(base, minutes=None, rate=10, lifetime=8, retry_delay=1, stall_seconds=10,
                      say=lambda text: print("soak: " + text))
    print(json.dumps(report, indent=1))
    assert report["failures"] == [], "%s\n(files kept in %s)" % (json.dumps(report, indent=1), base)
    # The faults really happened: some journals expired while the intake was down,
    # and some attempts failed at random.
    assert report["journals"]["of_which_expired"] > 0, report
    assert report["journals"]["hard_bounced"] > report["journals"]["of_which_expired"], report
    assert report["journals"]["attempts_failed_after_data"] > 0, report
    assert report["journals"]["delivered"] > 0, report
    shutil.rmtree(base, ignore_errors=True)
