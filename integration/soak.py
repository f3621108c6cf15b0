"""Fault soak: steady mail through a real Postfix with tdc-milter while the intake
is down for longer than a journal's lifetime, flaps, stalls after the data and
answers 4xx/5xx at random; then every original and every journal is accounted for.

    integration/soak [--minutes M] [--rate R] [--smoke] [--keep]

Checks (exit 1 if one fails; the report says which):
  * Postfix answered 250 to every message and relayed every original: tdc-milter
    tempfailed, rejected or held up none (no milter warning in the maillog).
  * Every journal the daemon enqueued has exactly one "Message finished" line.
  * The log's outcomes (delivered, hard bounced, expired) equal the daemon's
    Prometheus counters.
  * Every journal logged as delivered is in the intake's store; a journal is in the
    store twice, or in the store though logged as failed, only if an attempt of it
    failed after its data was sent (the reply to the final dot never came in time,
    so the daemon cannot know whether the intake kept it).

--smoke is the short version CI runs (about a minute, short lifetime); the full
run is described with its figures in docs/SOAK.md.
"""

import argparse
import collections
import json
import os
import re
import shutil
import smtplib
import sys
import tempfile
import threading
import time
import urllib.request

import stack as st

SENDER = "soak@example.net"
RECIPIENT = "alice@example.com"
STALL_ARGS = ["--stall-rate", "0.3", "--seed", "7"]
FAULT_ARGS = ["--fault-rate", "0.3", "--seed", "11"]


class SoakStack(st.Stack):
    """The usual stack, with metrics on a free port and the given journal lifetime."""

    def __init__(self, base, lifetime, retry_delay, **kwargs):
        super().__init__(base, **kwargs)
        self.lifetime = lifetime
        self.retry_delay = retry_delay

    def write_milter_settings(self):
        super().write_milter_settings()
        if "metrics" not in self.ports:
            self.ports["metrics"] = st.free_ports(1)[0]
            self.save()
        text = self.settings_file.read_text()
        text = text.replace("metrics:\n  listen: off\n", "metrics:\n  listen: 127.0.0.1:%d\n" % self.ports["metrics"])
        text = text.replace("delivery:\n", "delivery:\n  lifetime: %ds\n  retry_delay: %ds\n"
                            % (self.lifetime, self.retry_delay), 1)
        self.settings_file.write_text(text)

    def restart_intake(self, args):
        self.stop_process("tls-sink")
        self.intake_args = list(args)
        self.start_intake_sink()

    def metrics(self):
        url = "http://127.0.0.1:%d/metrics" % self.ports["metrics"]
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values


def plan(minutes, lifetime):
    """[(phase, seconds, intake mode)]. Random faults and stalls come first: after an
    outage the daemon backs off new connections (up to 10 s), which would leave
    them few journals. Then flapping, then down for longer than a lifetime, so that
    journals expire, then healthy again for the backlog."""
    if minutes is None:  # smoke
        return [("healthy", 5, "up"), ("faults", 8, "faults"), ("stalls", 10, "stall"),
                ("flapping", 8, "flap"), ("down", lifetime + 4, "down"), ("healthy", 10, "up")]
    unit = minutes * 60 / 10.0
    return [("healthy", unit, "up"), ("faults", 2 * unit, "faults"), ("stalls", 2 * unit, "stall"),
            ("flapping", unit, "flap"), ("down", max(3 * unit, lifetime + 30), "down"),
            ("healthy", unit, "up")]


class Load(threading.Thread):
    """Sends `rate` messages a second through Postfix until stopped; records the
    reply to each message and how long Postfix took to give it."""

    def __init__(self, stack, rate):
        super().__init__(daemon=True)
        self.stack, self.rate = stack, rate
        self.stop = threading.Event()
        self.results = []  # (n, code, seconds)
        self.errors = []

    def run(self):
        n = 0
        smtp = None
        next_at = time.monotonic()
        while not self.stop.is_set():
            try:
                if smtp is None or n % 50 == 0:
                    if smtp is not None:
                        smtp.quit()
                    smtp = smtplib.SMTP("127.0.0.1", self.stack.ports["smtpd"], local_hostname="client.example.net",
                                        timeout=60)
                message = (b"From: %s\r\nTo: %s\r\nSubject: soak %d\r\nMessage-ID: <soak-%d@example.net>\r\n\r\n"
                           b"soak message %d\r\n" % (SENDER.encode(), RECIPIENT.encode(), n, n, n))
                started = time.monotonic()
                code = 250
                try:
                    smtp.sendmail(SENDER, [RECIPIENT], message)
                except smtplib.SMTPResponseException as e:
                    code = e.smtp_code
                self.results.append((n, code, time.monotonic() - started))
                n += 1
            except (OSError, smtplib.SMTPException) as e:
                self.errors.append("message %d: %s" % (n, e))
                smtp = None
                n += 1
            next_at += 1.0 / self.rate
            time.sleep(max(0.0, next_at - time.monotonic()))
        if smtp is not None:
            try:
                smtp.quit()
            except (OSError, smtplib.SMTPException):
                pass


def drive_intake(stack, phases, say):
    for name, seconds, mode in phases:
        say("phase %-8s %5.0f s, intake %s" % (name, seconds, mode))
        end = time.monotonic() + seconds
        if mode == "up":
            stack.restart_intake([])
        elif mode == "down":
            stack.stop_process("tls-sink")
        elif mode == "stall":
            stack.restart_intake(STALL_ARGS + ["--stall-seconds", str(stack.stall_seconds)])
        elif mode == "faults":
            stack.restart_intake(FAULT_ARGS)
        up = True
        while time.monotonic() < end:
            if mode == "flap":
                if up:
                    stack.restart_intake([])
                else:
                    stack.stop_process("tls-sink")
                up = not up
                time.sleep(min(2.5, max(0.0, end - time.monotonic())))
            else:
                time.sleep(min(0.5, max(0.0, end - time.monotonic())))
    stack.restart_intake([])


MID_LINE = re.compile(r"TDC: MID (\d+) with Message-ID '<soak-(\d+)@example\.net>' enqueued")
FINISHED = re.compile(r"Message finished MID (\d+) done")
DELIVERED = re.compile(r"TDC: MID (\d+) successfully delivered for scanning")
FAILED = re.compile(r"TDC: MID (\d+) delivery failed to Cisco Secure Email Threat Defense: ")
EXPIRED = re.compile(r"TDC: MID (\d+) removed from the\.tdc\.queue: not delivered within its lifetime")
AFTER_DATA = re.compile(r"TDC: MID (\d+) delivery attempt failed: end of data: ")
STORED = re.compile(rb"^Message-ID: <soak-(\d+)@example\.net>\r$", re.M)


def reconcile(stack, load):
    log = stack.milter_log_text()
    report = {"failures": []}
    fail = report["failures"].append

    sent = [r for r in load.results]
    codes = collections.Counter(code for _, code, _ in sent)
    latencies = sorted(seconds for _, _, seconds in sent)
    report["originals"] = {
        "sent": len(sent), "replies": dict(codes), "errors": len(load.errors),
        "reply_seconds_p50": round(latencies[len(latencies) // 2], 4) if latencies else None,
        "reply_seconds_p99": round(latencies[int(len(latencies) * 0.99)], 4) if latencies else None,
        "reply_seconds_max": round(latencies[-1], 4) if latencies else None,
    }
    if load.errors:
        fail("SMTP errors while sending: %s" % load.errors[:5])
    if set(codes) != {250}:
        fail("Postfix did not accept every message: %s" % dict(codes))
    maillog = stack.maillog.read_text(errors="replace")
    milter_trouble = [line for line in maillog.splitlines()
                      if "milter" in line and ("warning" in line or "reject" in line or "hold" in line)]
    report["originals"]["maillog_milter_warnings"] = len(milter_trouble)
    if milter_trouble:
        fail("milter trouble in the maillog: %s" % milter_trouble[:3])
    relayed = len(stack.relayed())
    report["originals"]["relayed"] = relayed
    if relayed != len(sent):
        fail("%d originals sent, %d relayed" % (len(sent), relayed))

    mid_of = {int(m.group(2)): int(m.group(1)) for m in MID_LINE.finditer(log)}
    finished = collections.Counter(int(m) for m in FINISHED.findall(log))
    delivered = set(int(m) for m in DELIVERED.findall(log))
    failed = set(int(m) for m in FAILED.findall(log))
    expired = set(int(m) for m in EXPIRED.findall(log))
    after_data = set(int(m) for m in AFTER_DATA.findall(log))
    mids = set(mid_of.values())
    stored = collections.Counter()
    for _, _, raw in stack.journals():
        m = STORED.search(raw)
        if m and int(m.group(1)) in mid_of:
            stored[mid_of[int(m.group(1))]] += 1
    report["journals"] = {
        "enqueued": len(mids), "delivered": len(delivered), "hard_bounced": len(failed),
        "of_which_expired": len(expired), "attempts_failed_after_data": len(after_data),
        "stored_at_intake": sum(stored.values()), "distinct_stored": len(stored),
    }
    if len(mids) != len(sent):
        fail("%d originals, %d journals enqueued" % (len(sent), len(mids)))
    not_once = sorted(mid for mid in mids if finished[mid] != 1)
    if not_once:
        fail("journals without exactly one 'Message finished' line: %s" % not_once[:10])
    if delivered & failed:
        fail("journals both delivered and failed: %s" % sorted(delivered & failed)[:10])
    if mids != delivered | failed:
        fail("journals with no outcome: %s" % sorted(mids - delivered - failed)[:10])
    lost = sorted(mid for mid in delivered if stored[mid] == 0)
    if lost:
        fail("logged as delivered but not at the intake: %s" % lost[:10])
    twice = sorted(mid for mid in mids if stored[mid] > 1)
    kept_though_failed = sorted(mid for mid in failed if stored[mid] > 0)
    report["journals"]["stored_twice"] = len(twice)
    report["journals"]["stored_though_failed"] = len(kept_though_failed)
    unexplained = [mid for mid in twice + kept_though_failed if mid not in after_data]
    if unexplained:
        fail("at the intake twice, or though failed, with no attempt failed after the data: %s" % unexplained[:10])

    metrics = stack.metrics()
    counters = {
        "delivered": metrics.get("tdc_milter_journals_delivered_total"),
        "hard_bounced": metrics.get("tdc_milter_journals_hard_bounced_total"),
        "expired": metrics.get("tdc_milter_journals_expired_total"),
        "refused": metrics.get("tdc_milter_journals_refused_total"),
    }
    report["counters"] = counters
    for key, logged in (("delivered", len(delivered)), ("hard_bounced", len(failed)), ("expired", len(expired))):
        if counters[key] != logged:
            fail("counter %s is %s, the log says %d" % (key, counters[key], logged))
    if counters["refused"]:
        fail("%s journals refused (queue full or spool error)" % counters["refused"])
    return report


def unfinished_report(log_text, limit=5):
    """The log lines of the first journals that never got their Message finished line."""
    unfinished = sorted({e[0] for e in st.enqueued(log_text)} - st.finished_mids(log_text))
    out = ["%d journals unfinished: %s" % (len(unfinished), unfinished[:20])]
    for mid in unfinished[:limit]:
        mark = re.compile(r"\bMID %d\b" % mid)
        out += ["-- MID %d" % mid] + [line for line in log_text.splitlines() if mark.search(line)]
    return "\n".join(out)


def run(base, minutes, rate, lifetime, retry_delay, stall_seconds, say=print):
    stack = SoakStack(base, lifetime, retry_delay)
    stack.stall_seconds = stall_seconds
    phases = plan(minutes, lifetime)
    load = Load(stack, rate)
    try:
        stack.up()
        say("soak in %s: %.0f msg/s, lifetime %d s, %.0f s of phases"
            % (base, rate, lifetime, sum(p[1] for p in phases)))
        load.start()
        drive_intake(stack, phases, say)
        load.stop.set()
        load.join(120)
        say("load stopped after %d messages; waiting for every journal to finish" % len(load.results))
        sent = len(load.results)
        st.poll(lambda: set(stack.relayed()) and len(stack.relayed()) >= sent, 120, what="every original relayed")
        st.poll(lambda: len(st.enqueued(stack.milter_log_text())) >= sent, 60, what="every journal enqueued")
        try:
            st.poll(lambda: st.all_journals_settled(stack.milter_log_text()), lifetime + stall_seconds + 120,
                    what="every journal finished")
        except st.StackError as e:
            raise st.StackError("%s\n%s" % (e, unfinished_report(stack.milter_log_text())))
        return reconcile(stack, load)
    finally:
        load.stop.set()
        stack.stop_all()


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="length of the phases (default 10)")
    p.add_argument("--rate", type=float, default=None, help="messages a second (default 20; smoke 10)")
    p.add_argument("--smoke", action="store_true", help="the short run for CI (about a minute)")
    p.add_argument("--keep", action="store_true", help="keep the stack's directory")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("soak: run as root (Postfix)", file=sys.stderr)
        return 1
    if args.smoke:
        minutes, rate, lifetime, retry_delay, stall = None, args.rate or 10, 8, 1, 10
    else:
        minutes, rate, lifetime, retry_delay, stall = args.minutes, args.rate or 20, 120, 5, 130
    base = tempfile.mkdtemp(prefix="tdc-milter-soak-")
    os.chmod(base, 0o755)
    started = time.monotonic()
    try:
        report = run(base, minutes, rate, lifetime, retry_delay, stall)
    except st.StackError as e:
        print("soak: %s (files in %s)" % (e, base), file=sys.stderr)
        return 1
    report["seconds"] = round(time.monotonic() - started)
    print(json.dumps(report, indent=1))
    ok = not report["failures"]
    if ok and not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    else:
        print("soak: files kept in %s" % base)
    print("soak: %s" % ("every original and every journal accounted for" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
