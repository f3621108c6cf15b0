"""The set-ups compared, on integration/stack.py's stack: BenchStack adds a metrics
port, a second intake played by Postfix, and the always_bcc transport, and
configure() switches Postfix (and the daemon's `enabled`) between none, pass,
milter and bcc with postconf and postfix reload. It also reads what a run needs
off the stack: Postfix's queue and log, the daemon's metrics, the intake's
arrivals and CPU. CountingStack is the plain stack with a relay that counts."""

import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import stack as stack_module
from stack import (
    INTAKE_ADDRESS,
    POSTFIX,
    POSTFIX_MASTER_CF,
    SMTP_SINK,
    Stack,
    StackError,
    free_ports,
    poll,
    postfix_uid,
    run,
)

from .measure import cpu_seconds, tree_cpu_seconds
from .metrics import parse_metrics

POSTCONF = "/usr/sbin/postconf"

SENDER = "sender@example.org"
RECIPIENT = "rcpt@example.test"  # matches DEFAULT: one journal to INTAKE_ADDRESS
SCENARIOS = ("none", "pass", "milter", "bcc")

MILTER_SETTINGS = """\
# tdc-milter settings for integration/bench
enabled: {enabled}
intake_address: {intake}
milter:
  listen: "inet:127.0.0.1:{milter_port}"
journal:
  sender: tdc@mta.test
delivery:
  route: ["127.0.0.1:{intake_port}"]
  tls: {{ verify: true, ca_file: {ca_file} }}
  # Long enough that the 10,000-journal backlog of the memory figure does not
  # expire while it is being pushed (the default is 120s).
  lifetime: {lifetime}s
queue:
  spool_dir: tdc-spool
control:
  socket: tdc-control.sock
metrics:
  listen: 127.0.0.1:{metrics_port}
policies:
  - name: DEFAULT
    connector: global
"""

# Added to the stack's main.cf (keys it does not set): mail for the intake's domain
# goes to the intake over verified STARTTLS, like the daemon's journals.
POSTFIX_EXTRA = """\
# integration/bench: the intake domain (always_bcc copies) over verified STARTTLS
transport_maps = texthash:{etc}/transport
smtp_tls_policy_maps = texthash:{etc}/tls_policy
smtp_tls_CAfile = {ca}
always_bcc =
"""

INTAKE_POSTFIX_MAIN_CF = """\
# The intake played by Postfix (integration/bench): STARTTLS required, each
# transaction handed before queueing to smtp-sink (smtpd_proxy_filter), so nothing
# is queued or fsynced here.
""" + stack_module.POSTFIX_HERMETIC_CF + """\
smtpd_milters =
smtpd_tls_cert_file = {tls}/intake.crt
smtpd_tls_key_file = {tls}/intake.key
smtpd_tls_security_level = encrypt
smtpd_proxy_filter = 127.0.0.1:{sink_port}
smtpd_proxy_timeout = 60s
"""


class CountingStack(Stack):
    """The integration stack with an smtp-sink next hop that stores nothing."""

    def start_relay_sink(self):
        # Counts only: no dump files, so that the next hop costs as little as it can.
        port = self.ports["relay"]
        self.spawn("smtp-sink", [SMTP_SINK, "-u", "postfix", "127.0.0.1:%d" % port, "256"],
                   self.log_dir / "smtp-sink.log")
        self.wait_listening(port, "smtp-sink")


class BenchStack(CountingStack):
    """The integration stack with a metrics port, a counting relay sink, an intake
    Postfix next to the aiosmtpd intake, and the always_bcc transport."""

    EXTRA_PORTS = ("metrics", "pf_intake", "pf_intake_sink")

    def __init__(self, base, milter_bin, lifetime):
        self.journaling = True  # tdc-milter's `enabled`: false for the "pass" set-up
        ports = dict(zip(stack_module.PORT_NAMES + self.EXTRA_PORTS,
                         free_ports(len(stack_module.PORT_NAMES) + len(self.EXTRA_PORTS))))
        super().__init__(base, ports={n: ports[n] for n in stack_module.PORT_NAMES}, milter_bin=milter_bin)
        self.extra = {n: ports[n] for n in self.EXTRA_PORTS}
        self.lifetime = lifetime
        self.intake_kind = "aiosmtpd"
        self.pf_intake_dir = self.base / "intake-postfix"
        self.pf_intake_dump = self.base / "intake-dump"
        self.disk = None  # the disk holding base, for /proc/diskstats (cli sets it)
        self.fsync = None  # (p50, p99) of the bare end-of-message write (cli sets it)

    # --------------------------------------------------------- settings

    def intake_port(self):
        return self.ports["intake"] if self.intake_kind == "aiosmtpd" else self.extra["pf_intake"]

    def write_milter_settings(self):
        self.settings_file.write_text(MILTER_SETTINGS.format(
            intake=INTAKE_ADDRESS, milter_port=self.ports["milter"], intake_port=self.intake_port(),
            ca_file='"%s"' % (self.tls_dir / "ca.crt"), lifetime=self.lifetime,
            metrics_port=self.extra["metrics"], enabled="true" if self.journaling else "false"))

    def make_postfix(self):
        super().make_postfix()
        etc = self.postfix_etc
        with open(etc / "main.cf", "a") as f:
            f.write(POSTFIX_EXTRA.format(etc=etc, ca=self.tls_dir / "ca.crt"))
        self.write_intake_route()

    def write_intake_route(self):
        etc = self.postfix_etc
        port = self.intake_port()
        (etc / "transport").write_text("intake.test smtp:[127.0.0.1]:%d\n" % port)
        (etc / "tls_policy").write_text("[127.0.0.1]:%d secure match=intake.test\n" % port)

    def use_intake(self, kind):
        """Points the daemon and Postfix's always_bcc at one of the two intakes."""
        self.intake_kind = kind
        self.write_milter_settings()
        self.write_intake_route()

    # ---------------------------------------------------------- processes

    def start_postfix_intake(self):
        d = self.pf_intake_dir
        for sub in ("etc", "spool", "data"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        os.chown(d / "data", postfix_uid(), -1)
        self.pf_intake_dump.mkdir(exist_ok=True)
        os.chown(self.pf_intake_dump, postfix_uid(), -1)
        (d / "etc" / "main.cf").write_text(INTAKE_POSTFIX_MAIN_CF.format(
            pf=d, hostname="intake.test", tls=self.tls_dir, sink_port=self.extra["pf_intake_sink"]))
        (d / "etc" / "master.cf").write_text(POSTFIX_MASTER_CF.format(smtpd_port=self.extra["pf_intake"]))
        port = self.extra["pf_intake_sink"]
        self.spawn("intake-smtp-sink", [SMTP_SINK, "-u", "postfix", "-d", "%s/%%H%%M%%S." % self.pf_intake_dump,
                                        "127.0.0.1:%d" % port, "256"], self.log_dir / "intake-smtp-sink.log")
        self.wait_listening(port, "intake-smtp-sink")
        self.start_intake_postfix_master()

    def start_intake_postfix_master(self):
        self.state["intake_postfix"] = str(self.pf_intake_dir / "etc")
        self.save()
        try:
            run([POSTFIX, "-c", self.pf_intake_dir / "etc", "start"])
        except StackError as e:
            raise StackError("%s\nintake maillog:\n%s" % (e, stack_module.tail(self.pf_intake_dir / "maillog")))
        self.wait_listening(self.extra["pf_intake"], None)

    def stop_intake_postfix_master(self):
        etc = self.state.get("intake_postfix")
        if not etc:
            return
        pid_file = Path(etc).parent / "spool" / "pid" / "master.pid"
        subprocess.run([POSTFIX, "-c", etc, "stop"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, start_new_session=True)

        def stopped():
            try:
                pid = int(pid_file.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                return True
            return stack_module.process_start_time(pid) is None

        poll(stopped, 15, what="the intake Postfix to stop")
        self.state["intake_postfix"] = None
        self.save()

    def stop_intake(self):
        """The intake the daemon uses goes away (connections are refused)."""
        if self.intake_kind == "aiosmtpd":
            self.stop_process("tls-sink")
        else:
            self.stop_intake_postfix_master()

    def start_intake(self):
        if self.intake_kind == "aiosmtpd":
            self.start_intake_sink()
        else:
            self.start_intake_postfix_master()

    def stop_steps(self):
        return super().stop_steps() + [self.stop_intake_postfix_master,
                                       lambda: self.stop_process("intake-smtp-sink")]

    def bring_up_steps(self):
        """The intakes first; up_mta() starts the daemon and Postfix."""
        return [self.prepare, self.start_relay_sink, self.start_intake_sink, self.start_postfix_intake]

    def up_mta(self):
        """The daemon and Postfix, once the intake is chosen."""
        return self.up([self.check_milter_settings, self.start_milter, self.start_postfix])

    # ------------------------------------------------------------- Postfix

    def configure(self, scenario):
        in_path = scenario in ("pass", "milter")
        if in_path and self.journaling != (scenario == "milter"):
            # `enabled` applies to new messages on reload, without a restart.
            self.journaling = scenario == "milter"
            self.write_milter_settings()
            offset = len(self.milter_log_text())
            os.kill(self.milter_pid(), signal.SIGHUP)
            poll(lambda: "TDC: settings reloaded from" in self.milter_log_text()[offset:], 10,
                 what="the daemon to reload")
        milters = "{ inet:127.0.0.1:%d, default_action=accept }" % self.ports["milter"] if in_path else ""
        bcc = INTAKE_ADDRESS if scenario == "bcc" else ""
        run([POSTCONF, "-c", self.postfix_etc, "-e", "smtpd_milters = %s" % milters, "always_bcc = %s" % bcc])
        run([POSTFIX, "-c", self.postfix_etc, "reload"])
        time.sleep(1.0)  # idle daemons restart with the new settings

    def master_pid(self, etc=None):
        etc = Path(etc or self.postfix_etc)
        return int((etc.parent / "spool" / "pid" / "master.pid").read_text().split()[0])

    def postfix_queue(self):
        """{queue: files} of the main Postfix's queues."""
        counts = {}
        for q in ("maildrop", "incoming", "active", "deferred", "hold"):
            n = 0
            for _, _, files in os.walk(self.postfix_dir / "spool" / q):
                n += len(files)
            counts[q] = n
        return counts

    def maillog_size(self):
        try:
            return self.maillog.stat().st_size
        except OSError:
            return 0

    def accepted_since(self, offset):
        """Messages Postfix took into its queue since maillog offset (qmgr's from= lines)."""
        with open(self.maillog, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        return len(re.findall(r"postfix/qmgr\[\d+\]: \w+: from=<%s>" % re.escape(SENDER), text))

    # --------------------------------------------------------------- daemon

    def milter_pid(self):
        return self.state["processes"]["tdc-milter"]["pid"]

    def metrics(self):
        url = "http://127.0.0.1:%d/metrics" % self.extra["metrics"]
        with urllib.request.urlopen(url, timeout=10) as response:
            return parse_metrics(response.read().decode())

    # --------------------------------------------------------------- intake

    def intake_arrivals(self):
        """Modification times of what the chosen intake stored (one per message)."""
        if self.intake_kind == "aiosmtpd":
            files = [p for p in self.intake_dir.iterdir() if p.suffix == ".json"]
        else:
            files = [p for p in self.pf_intake_dump.iterdir()]
        out = []
        for p in files:
            try:
                out.append(p.stat().st_mtime)
            except OSError:
                pass
        return out

    def intake_cpu(self):
        """CPU seconds so far of the intake in use (the sink, or the intake Postfix's
        tree and its smtp-sink)."""
        if self.intake_kind == "aiosmtpd":
            record = self.state["processes"].get("tls-sink")
            return cpu_seconds(record["pid"]) if record else 0.0
        total = 0.0
        record = self.state["processes"].get("intake-smtp-sink")
        if record:
            total += cpu_seconds(record["pid"])
        if self.state.get("intake_postfix"):
            total += tree_cpu_seconds(self.master_pid(self.state["intake_postfix"]))
        return total

    def clear_intake(self):
        for d in (self.intake_dir, self.pf_intake_dump):
            for p in d.iterdir():
                p.unlink(missing_ok=True)
