"""The lab behind ./integration/lab (which installs the packages and builds the
daemon first; run that, not this).

    lab.py up        (re)start the stack in $TDC_LAB_DIR, send the sample messages,
                     print the daemon's log, the tophosts view and what was journaled
                     where; then keep the lab up until Ctrl-C (or SIGTERM), and stop it
    lab.py --detach  the same, but leave the lab running and return
    lab.py --down    stop everything a lab started there (idempotent)

Ports are free loopback ports unless TDC_LAB_SMTPD_PORT, TDC_LAB_RELAY_PORT,
TDC_LAB_INTAKE_PORT or TDC_LAB_MILTER_PORT say otherwise.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import stack as st

DEFAULT_BASE = "/var/tmp/tdc-milter-lab"
WAIT = 60

# (name, recipients, extra headers, the intake it should be journaled to, why)
SAMPLES = [
    ("clean", ["alice@example.com"], b"", st.INTAKE_ADDRESS, "policy DEFAULT: global intake"),
    ("forged", ["alice@example.com"], b"X-Spam-Flag: YES\r\n", st.INTAKE_ADDRESS,
     "a sender's X-Spam-Flag is no verdict: journaled"),
    ("custom", ["x@dept.lab.example.com"], b"", st.CUSTOM_INTAKE_ADDRESS, "policy research: custom intake"),
    ("off", [st.OFF_RECIPIENT], b"", None, "policy bulk: connector off"),
]


def sample_message(name, recipients, extra):
    return (
        b"From: Lab Sender <sender@example.net>\r\n"
        b"To: " + ", ".join(recipients).encode() + b"\r\n"
        b"Subject: tdc-milter lab sample: " + name.encode() + b"\r\n"
        b"Date: " + email_date().encode() + b"\r\n"
        b"Message-ID: <" + name.encode() + b"." + str(os.getpid()).encode() + b"@lab.example.net>\r\n"
        b"X-Lab-Sample: " + name.encode() + b"\r\n" + extra + b"\r\n"
        b"This is the '" + name.encode() + b"' sample of the tdc-milter lab.\r\n"
    )


def email_date():
    from email.utils import formatdate

    return formatdate(localtime=False)


def ports_from_environment():
    ports = {}
    for name in st.PORT_NAMES:
        value = os.environ.get("TDC_LAB_%s_PORT" % name.upper())
        if value:
            ports[name] = int(value)
    return ports


def down(base):
    stack = st.Stack.load(base)
    if stack is None:
        print("lab: no lab in %s, nothing to stop" % base)
        return 0
    was_running = stack.running()
    stack.stop_all()
    print("lab: %s (files kept in %s)" % ("stopped" if was_running else "nothing was running", base))
    return 0


def fresh_base(base):
    """Stops a lab still running in base and empties the directory, which must be ours."""
    path = Path(base)
    previous = st.Stack.load(base)
    if previous is not None:
        if previous.running():
            print("lab: stopping the lab that was running in %s" % base)
        previous.stop_all()
    elif path.exists() and any(path.iterdir()):
        raise st.StackError("%s is not empty and holds no lab (no %s); refusing to clear it" % (base, st.STATE_FILE))
    if path.exists():
        shutil.rmtree(path)


def interrupted(signum, frame):
    raise KeyboardInterrupt


def up(base, detach=False):
    fresh_base(base)
    stack = st.Stack(base, ports=ports_from_environment())
    try:
        print("lab: starting smtp-sink, the TLS intake sink, tdc-milter (%s) and Postfix in %s"
              % (stack.milter_bin, base), flush=True)
        stack.up()
        sent = {}
        for name, recipients, extra, _, _ in SAMPLES:
            sent[name] = stack.send("sender@example.net", recipients, sample_message(name, recipients, extra))
        settle(stack, set(sent.values()))
    except KeyboardInterrupt:
        print("\nlab: interrupted, stopping what was started", file=sys.stderr)
        stack.stop_all()
        return 130
    except st.StackError as e:
        print("lab: %s" % e, file=sys.stderr)
        if stack.running():
            print(stack.diagnostics(), file=sys.stderr)
            print("lab: the lab is still up for inspection; stop it with ./integration/lab --down", file=sys.stderr)
        else:
            stack.stop_all()
        return 1

    status = report(stack, sent)
    if detach:
        print("Stop it with: ./integration/lab --down")
        print("journals: %s" % stack.intake_dir, flush=True)
        return status
    print("The lab stays up until Ctrl-C (or ./integration/lab --down from another shell).")
    print("journals: %s" % stack.intake_dir, flush=True)
    return wait_then_stop(stack, status)


def wait_then_stop(stack, status):
    """Keeps the lab up while its processes live; Ctrl-C or SIGTERM stops all of them."""
    try:
        while stack.running():
            time.sleep(1)
        print("lab: the lab was stopped from elsewhere", file=sys.stderr)
    except KeyboardInterrupt:
        print("\nlab: stopping the lab", flush=True)
    stack.stop_all()
    print("lab: stopped (files kept in %s)" % stack.base, flush=True)
    return status


def settle(stack, queue_ids):
    """Waits until every sample was relayed and every journal the daemon enqueued
    has been delivered and stored by the intake sink."""
    expected = sum(1 for s in SAMPLES if s[3])
    st.poll(lambda: queue_ids <= set(stack.relayed()), WAIT, what="every sample at smtp-sink")
    st.poll(lambda: len(st.enqueued(stack.milter_log_text())) >= expected, WAIT,
            what="%d journals in the daemon's log" % expected)
    st.poll(lambda: st.all_journals_settled(stack.milter_log_text()), WAIT, what="every journal to finish")
    st.poll(lambda: len(stack.journals()) >= len(st.enqueued(stack.milter_log_text())), WAIT,
            what="the journals at the intake sink")


def report(stack, sent):
    p = stack.ports
    print()
    print("tdc-milter lab is up (all on 127.0.0.1):")
    print("  Postfix smtpd   port %-5d  send mail here, e.g. swaks --server 127.0.0.1:%d --to a@example.com"
          % (p["smtpd"], p["smtpd"]))
    print("  tdc-milter      port %-5d  settings %s" % (p["milter"], stack.settings_file))
    print("  intake (TLS)    port %-5d  journals land in %s" % (p["intake"], stack.intake_dir))
    print("  smtp-sink       port %-5d  relayed originals land in %s" % (p["relay"], stack.relay_dir))
    print("  logs: %s, %s" % (stack.milter_log, stack.maillog))
    print()
    print("tdc-milter log:")
    for line in stack.milter_log_text().splitlines():
        print("  " + line)
    print()
    print("tdc-milter tophosts:")
    for line in tophosts(stack).splitlines():
        print("  " + line)
    print()

    journals_by_sample = {}
    for n, envelope, raw in stack.journals():
        m = re.search(rb"(?m)^X-Lab-Sample: (\S+)\r$", raw)
        if m:
            journals_by_sample.setdefault(m.group(1).decode(), []).append((n, envelope))
    print("What was journaled where:")
    surprises = 0
    for name, recipients, _, intake, why in SAMPLES:
        journals = journals_by_sample.get(name, [])
        got = ", ".join("%d.eml to %s" % (n, ",".join(e["rcpt_tos"])) for n, e in journals) or "no journal"
        as_expected = [e["rcpt_tos"] for _, e in journals] == ([[intake]] if intake else [])
        surprises += not as_expected
        print("  %-7s to %-22s queue ID %-11s -> %-36s %s" % (
            name, ",".join(recipients), sent[name], got, why if as_expected else "UNEXPECTED (%s)" % why))
    print()
    return 1 if surprises else 0


def tophosts(stack):
    """The daemon's own view of its intakes, as an admin would ask for it."""
    argv = [str(stack.milter_bin), "-c", str(stack.settings_file), "tophosts"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        return "(tophosts failed with exit %d: %s)" % (done.returncode, done.stderr.strip())
    return done.stdout


def main(argv):
    base = os.path.abspath(os.environ.get("TDC_LAB_DIR") or DEFAULT_BASE)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupted)
    if argv == ["--down"]:
        return down(base)
    if argv in ([], ["up"]):
        return up(base)
    if argv == ["--detach"]:
        return up(base, detach=True)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
