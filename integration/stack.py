"""Brings up and tears down the integration stack: one implementation for the lab
(integration/lab) and the real-Postfix tests (integration/test_postfix.py).

    swaks ──▶ Postfix smtpd ──milter──▶ tdc-milter ──STARTTLS──▶ tls_sink.py (the intake)
                   │
                   └──relay──▶ smtp-sink (the next hop; every original lands here)

Everything lives in one base directory, and all traffic stays on 127.0.0.1:

    BASE/stack.json          state: ports and the processes started (read by --down)
    BASE/tls/                test CA and the intake's certificate (valid for IP 127.0.0.1)
    BASE/relay/              smtp-sink dumps, one file per relayed original
    BASE/intake/             journals received by the TLS sink: N.eml + N.json
    BASE/tdc-milter.yaml     settings of the daemon under test
    BASE/logs/               tdc-milter.log (its stderr), smtp-sink.log, tls_sink.log
    BASE/postfix/            hermetic Postfix: etc/, spool/, data/, maillog

Postfix runs as the `postfix` user, so BASE and all its parents must be
world-searchable. Needs root, Debian's postfix, swaks and python3-aiosmtpd (see
integration/install-deps). Python standard library only, so that Debian's
/usr/bin/python3 runs it.
"""

import json
import os
import re
import tempfile
import signal
import smtplib
import socket
import subprocess
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# Debian's interpreter: the one that has python3-aiosmtpd (a pyenv python3 first
# on PATH would not).
PYTHON = "/usr/bin/python3"
POSTFIX = "/usr/sbin/postfix"
SMTP_SINK = "/usr/sbin/smtp-sink"
SWAKS = "/usr/bin/swaks"

STATE_FILE = "stack.json"
PORT_NAMES = ("smtpd", "relay", "intake", "milter")

# What the daemon under test is configured with (the README's example, pointed at
# the local sinks). Tests and the lab send to these addresses.
INTAKE_ADDRESS = "journal@intake.test"
CUSTOM_INTAKE_ADDRESS = "research@intake.test"
CUSTOM_DOMAIN = ".lab.example.com"
OFF_RECIPIENT = "nojournal@example.com"
JOURNAL_SENDER = "tdc@mta.test"
CLIENT_IP_HEADER = "X-IronPort-RemoteIP"

# Settings that keep a daemon's state in the directory of its settings file (relative
# paths are taken from there), so two daemons never share a spool, a control socket
# or a metrics port. Shared by every settings file the tests write.
OWN_STATE_SETTINGS = """\
queue:
  spool_dir: tdc-spool
control:
  socket: tdc-control.sock
metrics:
  listen: off
"""

SETTINGS_TEMPLATE = """\
# tdc-milter settings for the integration stack (written by integration/stack.py)
enabled: true
intake_address: {intake}
milter:
  listen: "inet:127.0.0.1:{milter_port}"
journal:
  sender: {sender}
  client_ip_header: {client_ip_header}
delivery:
  route: ["127.0.0.1:{intake_port}"]
  tls: {{ verify: true, ca_file: {ca_file} }}
{own_state}policies:
  - name: research
    recipients: ["{custom_domain}"]
    connector: {{ custom: {custom_intake} }}
  - name: bulk
    recipients: ["{off_recipient}"]
    connector: off
  - name: DEFAULT
    connector: global
"""

# The part of main.cf every hermetic Postfix here shares (the stack's and the bench's
# intake): its own queue, data and log under {pf}, loopback only, no local delivery.
POSTFIX_HERMETIC_CF = """\
compatibility_level = 3.6
queue_directory = {pf}/spool
data_directory = {pf}/data
# There is no syslog here: postlogd writes the log.
maillog_file = {pf}/maillog
maillog_file_prefixes = {pf}
# Short queue IDs (microseconds and inode) repeat: with the few inodes a quiet queue
# reuses, two of a few hundred messages share one often enough to fail a test that
# matches originals and journals by queue ID. Long queue IDs are unique.
enable_long_queue_ids = yes
myhostname = {hostname}
mydomain = test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
alias_maps =
alias_database =
local_recipient_maps =
biff = no
"""

POSTFIX_MAIN_CF = """\
# Hermetic Postfix for the tdc-milter integration stack (written by integration/stack.py)
""" + POSTFIX_HERMETIC_CF + """\
# Every recipient goes to the smtp-sink next hop, in plain text.
relayhost = [127.0.0.1]:{relay_port}
smtp_tls_security_level = none
# Treat the loopback client like a remote one, as on an inbound gateway: Postfix
# neither rewrites header addresses nor adds missing headers.
local_header_rewrite_clients =
# tdc-milter goes last in smtpd_milters, never in non_smtpd_milters; a milter that
# is down must never stop mail.
smtpd_milters = {{ inet:127.0.0.1:{milter_port}, default_action=accept }}
non_smtpd_milters =
milter_default_action = accept
milter_protocol = 6
queue_run_delay = 5s
minimal_backoff_time = 5s
maximal_backoff_time = 10s
"""

POSTFIX_MASTER_CF = """\
127.0.0.1:{smtpd_port} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n -  0 cleanup
qmgr      unix  n - n 300 1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
local     unix  - n n - - local
lmtp      unix  - - n - - lmtp
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""

LEAF_EXTENSIONS = """\
subjectAltName=DNS:intake.test,DNS:localhost,IP:127.0.0.1,IP:::1
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
"""


class StackError(Exception):
    pass


# ---------------------------------------------------------------- small helpers


def milter_binary():
    """The daemon under test: $TDC_MILTER_BIN, else the debug build of this repo."""
    return os.environ.get("TDC_MILTER_BIN") or str(REPO / "target" / "debug" / "tdc-milter")


def run(argv, **kwargs):
    """Runs a short command; a failure raises StackError with its output."""
    result = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # a Ctrl-C is handled by us, not by the child
        **kwargs,
    )
    if result.returncode != 0:
        output = result.stdout.decode(errors="replace")
        raise StackError("%s exited %d:\n%s" % (" ".join(map(str, argv)), result.returncode, output))
    return result.stdout.decode(errors="replace")


def process_start_time(pid):
    """The kernel's start time of a live process, or None if it is gone (or a zombie).

    Recorded with each pid, so that a later --down never signals a process that
    merely reuses a pid we once had."""
    try:
        stat = Path("/proc/%d/stat" % pid).read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def listening_ports():
    """TCP ports in LISTEN state on 127.0.0.1 or 0.0.0.0 (checked without connecting)."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, port = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and address in ("0100007F", "00000000", "0" * 32):
                ports.add(int(port, 16))
    return ports


def free_ports(count):
    """Distinct loopback ports that were free a moment ago."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def poll(condition, timeout, interval=0.05, what="condition"):
    """Calls condition() until it returns something true; returns that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise StackError("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(interval)


def tail(path, lines=60):
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as e:
        return "(%s: %s)" % (path, e)
    return "\n".join(text.splitlines()[-lines:])


def dot_stuff(message):
    """SMTP transparency (RFC 5321 §4.5.2) for a CRLF message."""
    stuffed = message.replace(b"\r\n.", b"\r\n..")
    return b"." + stuffed if stuffed.startswith(b".") else stuffed


# -------------------------------------------------------- reading what arrived

SINK_TRACE_HEADERS = re.compile(rb"^X-(Client-Addr|Client-Proto|Helo-Args|Mail-Args|Rcpt-Args):")


def split_sink_copy(dump):
    """Splits an smtp-sink dump file into (trace, received, message).

    What smtp-sink writes: its trace headers (X-Client-Addr, X-Client-Proto,
    X-Helo-Args, X-Mail-Args, one X-Rcpt-Args per recipient) and its own Received:
    header, then the DATA bytes with dot-stuffing undone and every CR dropped, then
    the LF of the final "." line (so a dump ends with an extra empty line).
    trace is a dict of lists; received is the list of the leading Received:
    headers (smtp-sink's, then the one Postfix prepended); message is the rest with
    CRLF line ends restored: what Postfix relayed minus those Received: headers,
    which is what Postfix passed to its milters (Postfix hides its own Received:
    header from them). A bare CR or LF in a message would not survive this."""
    lines = dump.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the split after the last newline
    if lines and lines[-1] == b"":
        lines.pop()  # smtp-sink's extra empty line
    trace = {}
    i = 0
    while i < len(lines) and SINK_TRACE_HEADERS.match(lines[i]):
        name, value = lines[i].split(b":", 1)
        trace.setdefault(name.decode(), []).append(value.strip().decode(errors="replace"))
        i += 1
    received = []
    while i < len(lines) and lines[i].lower().startswith(b"received:"):
        header = [lines[i]]
        i += 1
        while i < len(lines) and lines[i][:1] in (b" ", b"\t"):
            header.append(lines[i])
            i += 1
        received.append(b"\r\n".join(header) + b"\r\n")
    message = b"".join(line + b"\r\n" for line in lines[i:])
    return trace, received, message


POSTFIX_QUEUE_ID = re.compile(rb"\(Postfix\) with E?SMTPS?A? id ([0-9A-Za-z]+)")


def postfix_queue_id(received):
    """The queue ID in the Received: header that Postfix prepended, or None."""
    for header in received:
        m = POSTFIX_QUEUE_ID.search(header)
        if m:
            return m.group(1).decode()
    return None


# ---------------------------------------------------------------------- stack


class Stack:
    """The stack in one base directory. Every start records itself in
    BASE/stack.json at once, so stop_all() (or `lab --down` from another process)
    can undo a bring-up that failed or was interrupted half way."""

    def __init__(self, base, ports=None, milter_bin=None, intake_args=()):
        self.base = Path(base).resolve()
        # Extra tls_sink.py options, e.g. the SETD intake's limits (--tls12-only,
        # --max-msgs 10).
        self.intake_args = [str(a) for a in intake_args]
        self.tls_dir = self.base / "tls"
        self.relay_dir = self.base / "relay"
        self.intake_dir = self.base / "intake"
        self.log_dir = self.base / "logs"
        self.postfix_dir = self.base / "postfix"
        self.postfix_etc = self.postfix_dir / "etc"
        self.maillog = self.postfix_dir / "maillog"
        self.settings_file = self.base / "tdc-milter.yaml"
        self.milter_log = self.log_dir / "tdc-milter.log"
        self.milter_bin = milter_bin or milter_binary()
        self.state = {"ports": {}, "processes": {}, "postfix": None}
        self.children = {}  # name -> Popen, for processes started by this Python process
        if ports:
            self.state["ports"].update(ports)

    # ------------------------------------------------------------ state file

    @classmethod
    def load(cls, base):
        """The stack recorded in BASE/stack.json, or None if there is none."""
        path = Path(base) / STATE_FILE
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        stack = cls(base)
        stack.state = state
        stack.milter_bin = state.get("milter_bin", stack.milter_bin)
        return stack

    def save(self):
        self.state["milter_bin"] = str(self.milter_bin)
        tmp = self.base / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(self.state, indent=1) + "\n")
        os.replace(tmp, self.base / STATE_FILE)

    @property
    def ports(self):
        return self.state["ports"]

    # ------------------------------------------------------------- bring-up

    def up(self, steps=None):
        """Runs the bring-up steps (by default bring_up_steps()); on any failure (or
        Ctrl-C) stops what was started."""
        try:
            for step in steps or self.bring_up_steps():
                step()
        except BaseException:
            self.stop_all()
            raise
        return self

    def bring_up_steps(self):
        """What up() starts, in order; stacks with other parts override it."""
        return [self.prepare, self.start_relay_sink, self.start_intake_sink, self.start_milter,
                self.start_postfix]

    def prepare(self):
        """Base directory layout, ports, certificates, settings files."""
        self.base.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o755)
        for parent in self.base.parents:
            if not parent.stat().st_mode & 0o001:
                raise StackError(
                    "%s is not world-searchable; Postfix (user postfix) could not reach %s" % (parent, self.base)
                )
        for d in (self.tls_dir, self.relay_dir, self.intake_dir, self.log_dir):
            d.mkdir(exist_ok=True)
        os.chown(self.relay_dir, postfix_uid(), -1)  # smtp-sink runs as postfix

        missing = [n for n in PORT_NAMES if not self.ports.get(n)]
        for name, port in zip(missing, free_ports(len(missing))):
            self.ports[name] = port
        busy = sorted(set(self.ports.values()) & listening_ports())
        if busy:
            raise StackError("port(s) already in use on 127.0.0.1: %s" % ", ".join(map(str, busy)))
        self.save()

        self.make_certificates()
        self.write_milter_settings()
        self.check_milter_settings()  # before anything runs: a bad binary or file fails fast
        self.make_postfix()

    def make_certificates(self):
        """A test CA and a leaf for the intake, valid for intake.test and 127.0.0.1."""
        d = self.tls_dir
        if (d / "intake.crt").exists():
            return
        (d / "leaf.ext").write_text(LEAF_EXTENSIONS)
        run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
             "-subj", "/CN=tdc-milter test CA", "-keyout", "ca.key", "-out", "ca.crt",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign"], cwd=d)
        run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=intake.test",
             "-keyout", "intake.key", "-out", "intake.csr"], cwd=d)
        run(["openssl", "x509", "-req", "-in", "intake.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "3650", "-sha256", "-extfile", "leaf.ext",
             "-out", "intake.crt"], cwd=d)

    def write_milter_settings(self):
        self.settings_file.write_text(
            SETTINGS_TEMPLATE.format(
                intake=INTAKE_ADDRESS,
                milter_port=self.ports["milter"],
                sender=JOURNAL_SENDER,
                client_ip_header=CLIENT_IP_HEADER,
                intake_port=self.ports["intake"],
                ca_file=json.dumps(str(self.tls_dir / "ca.crt")),
                custom_domain=CUSTOM_DOMAIN,
                custom_intake=CUSTOM_INTAKE_ADDRESS,
                off_recipient=OFF_RECIPIENT,
                own_state=OWN_STATE_SETTINGS,
            )
        )

    def make_postfix(self):
        pf = self.postfix_dir
        for d in (self.postfix_etc, pf / "spool", pf / "data"):
            d.mkdir(parents=True, exist_ok=True)
        os.chown(pf / "data", postfix_uid(), -1)
        (self.postfix_etc / "main.cf").write_text(
            POSTFIX_MAIN_CF.format(pf=pf, hostname="mta.test", relay_port=self.ports["relay"],
                                   milter_port=self.ports["milter"])
        )
        (self.postfix_etc / "master.cf").write_text(POSTFIX_MASTER_CF.format(smtpd_port=self.ports["smtpd"]))

    # ------------------------------------------------------------ processes

    def spawn(self, name, argv, log_path):
        """Starts a long-running process in its own session, output to log_path."""
        with open(log_path, "ab") as log:
            child = subprocess.Popen(
                [str(a) for a in argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.children[name] = child
        self.state["processes"][name] = {
            "pid": child.pid,
            "start": process_start_time(child.pid),
            "log": str(log_path),
        }
        self.save()
        return child

    def alive(self, name):
        record = self.state["processes"].get(name)
        if not record:
            return False
        child = self.children.get(name)
        if child is not None and child.poll() is not None:
            return False
        start = process_start_time(record["pid"])
        return start is not None and start == record["start"]

    def wait_listening(self, port, name, timeout=20):
        """Waits until `port` listens, failing early if process `name` died."""

        def ready():
            if port in listening_ports():
                return True
            if name and not self.alive(name):
                record = self.state["processes"].get(name, {})
                raise StackError("%s exited during start-up; its log:\n%s" % (name, tail(record.get("log", ""))))
            return False

        poll(ready, timeout, what="%s to listen on 127.0.0.1:%d" % (name, port))

    def stop_process(self, name, timeout=40):
        """SIGTERM, wait, then SIGKILL. Only the pid we recorded, and only if it is
        still the process we started."""
        record = self.state["processes"].get(name)
        if not record:
            return
        if self.alive(name):
            try:
                os.kill(record["pid"], signal.SIGTERM)
                poll(lambda: not self.alive(name), timeout, what="%s to exit" % name)
            except StackError:
                if self.alive(name):
                    os.kill(record["pid"], signal.SIGKILL)
                    poll(lambda: not self.alive(name), 5, what="%s to die" % name)
            except ProcessLookupError:
                pass
        child = self.children.pop(name, None)
        if child is not None:
            child.wait(timeout=5)
        del self.state["processes"][name]
        self.save()

    def start_relay_sink(self):
        port = self.ports["relay"]
        # %Y%m%d%H%M%S. plus smtp-sink's random suffix: one file per message.
        template = "%s/%%Y%%m%%d%%H%%M%%S." % self.relay_dir
        self.spawn("smtp-sink", [SMTP_SINK, "-u", "postfix", "-d", template, "127.0.0.1:%d" % port, "100"],
                   self.log_dir / "smtp-sink.log")
        self.wait_listening(port, "smtp-sink")

    def start_intake_sink(self):
        port = self.ports["intake"]
        self.spawn("tls-sink", [PYTHON, HERE / "tls_sink.py", "--port", port,
                                "--cert", self.tls_dir / "intake.crt", "--key", self.tls_dir / "intake.key",
                                "--outdir", self.intake_dir, *self.intake_args],
                   self.log_dir / "tls_sink.log")
        self.wait_listening(port, "tls-sink")

    def check_milter_settings(self):
        if not os.access(self.milter_bin, os.X_OK):
            raise StackError("no tdc-milter binary at %s (build it with `cargo build --locked`, "
                             "or set TDC_MILTER_BIN)" % self.milter_bin)
        return run([self.milter_bin, "-c", self.settings_file, "check-config"])

    def start_milter(self):
        self.check_milter_settings()
        # Where this run of the daemon begins in the maillog (outcome_accounting).
        try:
            self.state["maillog_at_milter_start"] = self.maillog.stat().st_size
        except OSError:
            self.state["maillog_at_milter_start"] = 0
        self.save()
        self.spawn("tdc-milter", [self.milter_bin, "-c", self.settings_file, "run", "--log", "stderr",
                                 "--allow-root"], self.milter_log)
        self.wait_listening(self.ports["milter"], "tdc-milter")

    def stop_milter(self):
        self.stop_process("tdc-milter")

    def start_postfix(self):
        etc = str(self.postfix_etc)
        self.state["postfix"] = etc  # recorded first: a half-started Postfix is stopped too
        self.save()
        try:
            run([POSTFIX, "-c", etc, "start"])
        except StackError as e:
            raise StackError("%s\nmaillog:\n%s" % (e, tail(self.maillog)))
        self.wait_listening(self.ports["smtpd"], None)

    def postfix_running(self):
        etc = self.state.get("postfix")
        if not etc:
            return False
        pid_file = Path(etc).parent / "spool" / "pid" / "master.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return False
        return process_start_time(pid) is not None

    def stop_postfix(self):
        etc = self.state.get("postfix")
        if not etc:
            return
        if self.postfix_running():
            # postfix stop waits for the master and its children (about 2 s),
            # and uses SIGKILL on the process group itself after 5 s.
            subprocess.run([POSTFIX, "-c", etc, "stop"], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            poll(lambda: not self.postfix_running(), 15, what="Postfix to stop")
        self.state["postfix"] = None
        self.save()

    def stop_steps(self):
        """What stop_all runs, in dependency order; a stack with more processes adds
        its own before or after these."""
        return [self.stop_postfix, lambda: self.stop_process("tdc-milter"),
                lambda: self.stop_process("tls-sink"), lambda: self.stop_process("smtp-sink")]

    def stop_all(self):
        """Stops whatever this stack started, in dependency order. Idempotent.
        Ctrl-C while stopping does not interrupt the stopping."""
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            errors = []
            for step in self.stop_steps():
                try:
                    step()
                except Exception as e:  # keep stopping the rest
                    errors.append(str(e))
            if errors:
                raise StackError("; ".join(errors))
        finally:
            signal.signal(signal.SIGINT, previous)

    def running(self):
        return self.postfix_running() or any(self.alive(n) for n in list(self.state["processes"]))

    # -------------------------------------------------------------- traffic

    def send(self, mail_from, recipients, message, timeout=30, xclient_addr=None):
        """Sends `message` (bytes, CRLF line endings) through Postfix with swaks,
        byte for byte: --no-data-fixup, and we do the dot-stuffing. Returns
        Postfix's queue ID. `xclient_addr` makes Postfix take that as the client's
        address (XCLIENT; the stack's main.cf must authorise loopback for it)."""
        if re.search(rb"(?<!\r)\n", message) or not message.endswith(b"\r\n"):
            raise ValueError("message must use CRLF line endings and end with CRLF")
        # One data file per call, so that sends may run in parallel.
        fd, name = tempfile.mkstemp(prefix="swaks-data-", suffix=".tmp", dir=self.base)
        os.close(fd)
        data = Path(name)
        data.write_bytes(dot_stuff(message) + b".")  # swaks adds the final CRLF
        argv = [SWAKS, "--server", "127.0.0.1:%d" % self.ports["smtpd"], "--ehlo", "client.example.net",
                "--from", mail_from or "<>", "--to", ",".join(recipients), "--timeout", str(timeout),
                "--no-data-fixup", "--data", "@%s" % data]
        if xclient_addr:
            argv += ["--xclient-addr", xclient_addr]
        try:
            transcript = run(argv)
        finally:
            data.unlink(missing_ok=True)
        m = re.search(r"<-  250 .*queued as ([0-9A-Za-z]+)", transcript)
        if not m:
            raise StackError("no queue ID in Postfix's reply:\n%s" % transcript)
        return m.group(1)

    def send_session(self, mail_from, recipients, messages, timeout=30):
        """Sends several messages (bytes, CRLF line endings) through Postfix in one
        SMTP session, as a busy client does: much faster than one swaks per message,
        for bursts. smtplib does the dot-stuffing. Returns Postfix's queue IDs, in
        order."""
        queue_ids = []
        with smtplib.SMTP("127.0.0.1", self.ports["smtpd"], local_hostname="client.example.net",
                          timeout=timeout) as smtp:
            smtp.ehlo()
            for message in messages:
                if re.search(rb"(?<!\r)\n", message) or not message.endswith(b"\r\n"):
                    raise ValueError("message must use CRLF line endings and end with CRLF")
                code, reply = smtp.mail(mail_from or "<>")
                if code != 250:
                    raise StackError("MAIL FROM refused: %d %s" % (code, reply.decode(errors="replace")))
                for rcpt in recipients:
                    code, reply = smtp.rcpt(rcpt)
                    if code not in (250, 251):
                        raise StackError("RCPT TO:<%s> refused: %d %s" % (rcpt, code, reply.decode(errors="replace")))
                code, reply = smtp.data(message)
                m = re.search(r"queued as ([0-9A-Za-z]+)", reply.decode(errors="replace"))
                if code != 250 or not m:
                    raise StackError("no queue ID in Postfix's reply: %d %s" % (code, reply.decode(errors="replace")))
                queue_ids.append(m.group(1))
        return queue_ids

    def relayed(self):
        """{Postfix queue ID: (trace, received, message)} for the originals that
        reached smtp-sink.

        smtp-sink creates a dump file before it writes it, and completes it before
        it answers the final dot; Postfix logs status=sent after that answer. So a
        dump counts once the maillog has status=sent for its queue ID."""
        try:
            maillog = self.maillog.read_text(errors="replace")
        except OSError:
            return {}
        sent = set(re.findall(r"postfix/smtp\[\d+\]: ([0-9A-Za-z]+): to=<.*, status=sent ", maillog))
        found = {}
        for path in sorted(self.relay_dir.iterdir()):
            trace, received, message = split_sink_copy(path.read_bytes())
            queue_id = postfix_queue_id(received)
            if queue_id in sent:
                found[queue_id] = (trace, received, message)
        return found

    def maillog_since_milter_start(self):
        """The maillog from where the daemon's last start found it."""
        try:
            with open(self.maillog, "rb") as f:
                f.seek(self.state.get("maillog_at_milter_start", 0))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def messages_postfix_passed_on(self, maillog=None):
        """Queue IDs of the messages that Postfix's smtpd received in full (the queue
        manager took them) since the daemon's last start: each went through the
        milter's end of message, unless the milter was down."""
        text = self.maillog_since_milter_start() if maillog is None else maillog
        received = set(re.findall(r"postfix/smtpd\[\d+\]: ([0-9A-Za-z]+): client=", text))
        queued = set(re.findall(r"postfix/qmgr\[\d+\]: ([0-9A-Za-z]+): from=<", text))
        return received & queued

    def outcome_accounting(self):
        """(outcomes the daemon counted, messages Postfix passed on) since the
        daemon's last start, or None when the daemon is not running or Postfix could
        not reach it (the maillog says so): the two must be equal."""
        if not self.alive("tdc-milter") or not self.postfix_running():
            return None
        try:
            out = run([self.milter_bin, "-c", self.settings_file, "status", "--json"])
        except StackError:
            return None
        counted = sum(json.loads(out)["messages"].values())
        since_start = self.maillog_since_milter_start()
        if re.search(r"warning: .*Milter service inet:127\.0\.0\.1:%d" % self.ports["milter"], since_start):
            return None
        return counted, len(self.messages_postfix_passed_on(since_start))

    def journals(self):
        """Journals stored by the TLS sink: [(n, envelope dict, raw bytes)], in order."""
        found = []
        for path in self.intake_dir.glob("*.json"):
            if not path.stem.isdigit():
                continue
            envelope = json.loads(path.read_text())
            found.append((int(path.stem), envelope, path.with_suffix(".eml").read_bytes()))
        return sorted(found, key=lambda j: j[0])

    def milter_log_text(self):
        try:
            return self.milter_log.read_bytes().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def intake_log_text(self):
        """The TLS sink's output: its 421s and its closed connections (tls_sink.py)."""
        try:
            return (self.log_dir / "tls_sink.log").read_bytes().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def diagnostics(self):
        """The logs and listings to show when something went wrong."""
        parts = ["== base %s" % self.base, "== ports %s" % json.dumps(self.ports)]
        parts += ["== Postfix maillog (tail)", tail(self.maillog, 80)]
        parts += ["== tdc-milter log (tail)", tail(self.milter_log, 80)]
        for name in ("smtp-sink.log", "tls_sink.log"):
            parts += ["== %s (tail)" % name, tail(self.log_dir / name, 20)]
        for d in (self.relay_dir, self.intake_dir):
            try:
                listing = sorted(p.name for p in d.iterdir())
            except OSError as e:
                listing = [str(e)]
            parts += ["== %s: %d files" % (d, len(listing))] + ["  " + n for n in listing]
        return "\n".join(parts)


def postfix_uid():
    import pwd

    try:
        return pwd.getpwnam("postfix").pw_uid
    except KeyError:
        raise StackError("no postfix user: install Postfix with integration/install-deps")


# ----------------------------------------------------------- log helpers

LOG_LINE = re.compile(r"^(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4} (\w+): (.*)$")
ENQUEUED = re.compile(
    r"TDC: MID (\d+) with Message-ID '(.*)' enqueued for forwarding to .* to the message intake address "
    r"(\S+) \(queue ID ([^)]*)\)$"
)
FINISHED = re.compile(r"Message finished MID (\d+) done")


def enqueued(log_text):
    """[(mid, message_id, intake, queue_id)] from the daemon's enqueued lines."""
    out = []
    for line in log_text.splitlines():
        m = ENQUEUED.search(line)
        if m:
            out.append((int(m.group(1)), m.group(2), m.group(3), m.group(4)))
    return out


def finished_mids(log_text):
    return {int(m.group(1)) for m in FINISHED.finditer(log_text)}


def all_journals_settled(log_text):
    """True when every journal the daemon enqueued has its Message finished line."""
    return {e[0] for e in enqueued(log_text)} <= finished_mids(log_text)
