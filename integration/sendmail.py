#!/usr/bin/python3
"""A real Sendmail 8.17 in front of tdc-milter, for integration/test_sendmail.py.

    swaks ──▶ Sendmail ──milter──▶ quarantine_milter.py, then tdc-milter ──STARTTLS──▶ tls_sink.py
                 │
                 └──relay──▶ smtp-sink (the next hop)

Sendmail is not installed: it conflicts with Postfix (both provide
mail-transport-agent), and its postinst is slow. Debian's sendmail-bin and
sendmail-cf packages are unpacked into a cache directory instead
($TDC_SENDMAIL_ROOT, default /var/tmp/tdc-milter-sendmail), by
`sendmail.py unpack` (run by integration/install-deps) or on first use. Its
run-time dependencies (m4, libwrap0, liblockfile1) are installed by install-deps.

Everything else lives in the stack's base directory (see stack.py); Sendmail's own
files are in BASE/sendmail/: sendmail.mc, sendmail.cf, mqueue/, hosts, the -X
trace (sendmail.trace). Sendmail runs in its own UTS and mount namespaces
(unshare), with the host name mta.sm.test and BASE/sendmail/hosts bind-mounted on
/etc/hosts: with the machine's unqualified host name it would sleep in 60 s loops
and never listen. The host keeps its own name and /etc/hosts.

Needs root. Python standard library only.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import stack as st  # noqa: E402

DEFAULT_ROOT = "/var/tmp/tdc-milter-sendmail"
PACKAGES = ("sendmail-bin", "sendmail-cf")
BINARY = Path("usr/libexec/sendmail/sendmail")
CF_DIR = Path("usr/share/sendmail/cf")
UNSHARE = "/usr/bin/unshare"
M4 = "/usr/bin/m4"

# The admin snippet under test: its lines go into the test's .mc unchanged, except
# for the port.
SHIPPED_MC = HERE.parent / "milter-config" / "sendmail.mc"
EOM_MACROS_DEFINE = "define(`confMILTER_MACROS_EOM'"

HOSTNAME = "mta.sm.test"
QUARANTINE_HEADER = "X-Test-Quarantine"

MC_TEMPLATE = """\
divert(-1)
# Sendmail for the tdc-milter integration tests (written by integration/sendmail.py)
divert(0)dnl
OSTYPE(`linux')dnl
define(`confDONT_PROBE_INTERFACES', `True')dnl
define(`confDOMAIN_NAME', `{hostname}')dnl
define(`QUEUE_DIR', `{dir}/mqueue')dnl
define(`STATUS_FILE', `{dir}/statistics')dnl
define(`confPID_FILE', `{dir}/sendmail.pid')dnl
define(`ALIAS_FILE', `{dir}/aliases')dnl
define(`confSERVICE_SWITCH_FILE', `{dir}/service.switch')dnl
define(`confHOSTS_FILE', `{dir}/hosts')dnl
define(`confDONT_BLAME_SENDMAIL', `GroupWritableDirPathSafe,TrustStickyBit')dnl
define(`SMART_HOST', `relay:[127.0.0.1]')dnl
define(`RELAY_MAILER_ARGS', `TCP $h {relay_port}')dnl
define(`confTO_QUEUERETURN', `1h')dnl
DAEMON_OPTIONS(`Port={smtpd_port}, Addr=127.0.0.1, Name=MTA-test')dnl
FEATURE(`no_default_msa')dnl
FEATURE(`promiscuous_relay')dnl
FEATURE(`accept_unresolvable_domains')dnl
dnl The earlier filter: quarantines messages that carry {quarantine_header}.
INPUT_MAIL_FILTER(`quarantine', `S=inet:{quarantine_port}@127.0.0.1, F=T, T=C:10s;S:10s;R:10s;E:30s')dnl
dnl milter-config/sendmail.mc, port substituted:
{shipped}
MAILER(`smtp')dnl
"""


class SendmailError(st.StackError):
    pass


# ------------------------------------------------------------------ the package


def sendmail_root():
    return Path(os.environ.get("TDC_SENDMAIL_ROOT") or DEFAULT_ROOT)


def unpacked(root):
    return (root / BINARY).is_file() and (root / CF_DIR / "m4" / "cf.m4").is_file()


def ensure_unpacked(root=None):
    """The directory holding Debian's sendmail-bin and sendmail-cf, unpacked (not
    installed); downloads and unpacks them with apt-get/dpkg-deb if needed."""
    root = Path(root or sendmail_root())
    if unpacked(root):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=root.name + ".tmp-", dir=root.parent))
    try:
        os.chmod(work, 0o755)  # apt-get download runs as _apt where it can
        st.run(["apt-get", "download", *PACKAGES], cwd=work)
        tree = work / "root"
        for deb in sorted(work.glob("*.deb")):
            st.run(["dpkg-deb", "-x", str(deb), str(tree)])
        if not unpacked(tree):
            raise SendmailError("no sendmail binary or cf tree in %s after unpacking" % tree)
        if root.exists():
            shutil.rmtree(root)
        os.replace(tree, root)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return root


# ------------------------------------------------------------ the configuration


def shipped_lines(milter_port, eom_macros=True):
    """The statements of milter-config/sendmail.mc (every line that is not a dnl
    comment), with tdc-milter's port put in. eom_macros=False leaves out the
    confMILTER_MACROS_EOM line."""
    lines = [l for l in SHIPPED_MC.read_text().splitlines() if l.strip() and not l.startswith("dnl")]
    filters = [l for l in lines if l.startswith("INPUT_MAIL_FILTER(")]
    defines = [l for l in lines if l.startswith(EOM_MACROS_DEFINE)]
    if len(filters) != 1 or len(defines) != 1 or len(lines) != 2:
        raise SendmailError("%s: expected one INPUT_MAIL_FILTER and one confMILTER_MACROS_EOM line, got:\n%s"
                            % (SHIPPED_MC, "\n".join(lines)))
    line, count = re.subn(r"S=inet:\d+@127\.0\.0\.1", "S=inet:%d@127.0.0.1" % milter_port, filters[0])
    if count != 1:
        raise SendmailError("%s: no S=inet:PORT@127.0.0.1 in %r" % (SHIPPED_MC, filters[0]))
    return [line] + (defines if eom_macros else [])


def filter_equates(line):
    """The equates of an INPUT_MAIL_FILTER line: {"S": "inet:…", "T": "…"}; F is ''
    when the line has none."""
    m = re.match(r"INPUT_MAIL_FILTER\(`[^']*',\s*`([^']*)'\)", line)
    if not m:
        raise SendmailError("not an INPUT_MAIL_FILTER line: %r" % line)
    equates = {"F": ""}
    for field in m.group(1).split(","):
        key, _, value = field.strip().partition("=")
        equates[key] = value
    return equates


# ------------------------------------------------------------------- the stack


class SendmailStack(st.Stack):
    """stack.Stack with Sendmail where Postfix was, and the quarantining milter
    listed before tdc-milter. The "smtpd" port is Sendmail's."""

    EXTRA_PORTS = ("quarantine",)

    def __init__(self, base, root=None, **options):
        super().__init__(base, **options)
        self.root = Path(root or sendmail_root())
        self.sm_dir = self.base / "sendmail"
        self.mqueue = self.sm_dir / "mqueue"
        self.trace = self.sm_dir / "sendmail.trace"
        self.eom_macros = True

    # --------------------------------------------------------------- bring-up

    def bring_up_steps(self):
        return [self.prepare, self.start_relay_sink, self.start_intake_sink, self.start_quarantine_milter,
                self.start_milter, self.start_sendmail]

    def prepare(self):
        # Every port in one go, so that none is handed out twice.
        names = [n for n in st.PORT_NAMES + self.EXTRA_PORTS if not self.ports.get(n)]
        for name, port in zip(names, st.free_ports(len(names))):
            self.ports[name] = port
        super().prepare()

    def make_postfix(self):
        """Called by prepare(): here the MTA is Sendmail."""
        if not unpacked(self.root):
            raise SendmailError("no unpacked Sendmail in %s (run integration/install-deps, "
                                "or integration/sendmail.py unpack)" % self.root)
        self.mqueue.mkdir(parents=True, exist_ok=True)
        self.sm_dir.chmod(0o755)
        self.mqueue.chmod(0o700)
        (self.sm_dir / "aliases").write_text("")
        (self.sm_dir / "hosts").write_text("127.0.0.1 %s mta localhost\n" % HOSTNAME)
        (self.sm_dir / "service.switch").write_text("hosts files\n")
        self.make_sendmail_cf()

    def make_sendmail_cf(self):
        mc = MC_TEMPLATE.format(
            hostname=HOSTNAME,
            dir=self.sm_dir,
            relay_port=self.ports["relay"],
            smtpd_port=self.ports["smtpd"],
            quarantine_port=self.ports["quarantine"],
            quarantine_header=QUARANTINE_HEADER,
            shipped="\n".join(shipped_lines(self.ports["milter"], self.eom_macros)),
        )
        (self.sm_dir / "sendmail.mc").write_text(mc)
        cf_dir = self.root / CF_DIR
        # m4 warns on stderr (promiscuous_relay is an open relay): keep it out of the .cf.
        result = subprocess.run([M4, "-D_CF_DIR_=%s/" % cf_dir, str(cf_dir / "m4" / "cf.m4"),
                                 str(self.sm_dir / "sendmail.mc")],
                                stdin=subprocess.DEVNULL, capture_output=True)
        if result.returncode != 0:
            raise SendmailError("m4 exited %d:\n%s" % (result.returncode, result.stderr.decode(errors="replace")))
        (self.sm_dir / "sendmail.cf").write_bytes(result.stdout)

    def start_quarantine_milter(self):
        port = self.ports["quarantine"]
        self.spawn("quarantine-milter", [st.PYTHON, HERE / "quarantine_milter.py", "--port", port,
                                         "--header", QUARANTINE_HEADER],
                   self.log_dir / "quarantine_milter.log")
        self.wait_listening(port, "quarantine-milter")

    def start_sendmail(self):
        # unshare execs sh, and sh execs sendmail: the recorded pid is Sendmail's
        # daemon (-bD: in the foreground).
        script = 'hostname "$1" && mount --bind "$2" /etc/hosts && exec "$3" -C "$4" -X "$5" -bD -q10s'
        self.spawn("sendmail", [UNSHARE, "--uts", "--mount", "sh", "-c", script, "sh", HOSTNAME,
                                self.sm_dir / "hosts", self.root / BINARY, self.sm_dir / "sendmail.cf",
                                self.trace],
                   self.log_dir / "sendmail.log")
        self.wait_listening(self.ports["smtpd"], "sendmail")

    def stop_sendmail(self):
        self.stop_process("sendmail")

    def restart_sendmail(self, eom_macros):
        """Sendmail again, with or without the shipped confMILTER_MACROS_EOM line."""
        self.stop_sendmail()
        st.poll(lambda: self.ports["smtpd"] not in st.listening_ports(), 20, what="Sendmail's port to close")
        self.eom_macros = eom_macros
        self.make_sendmail_cf()
        self.start_sendmail()

    def stop_steps(self):
        return [lambda: self.stop_process("sendmail"),
                lambda: self.stop_process("quarantine-milter")] + super().stop_steps()

    def running(self):
        return any(self.alive(n) for n in list(self.state["processes"]))

    # ---------------------------------------------------------------- traffic

    def send(self, mail_from, recipients, message, timeout=30):
        """Sends `message` (CRLF bytes) to Sendmail with swaks, byte for byte; returns
        Sendmail's queue ID."""
        if re.search(rb"(?<!\r)\n", message) or not message.endswith(b"\r\n"):
            raise ValueError("message must use CRLF line endings and end with CRLF")
        fd, name = tempfile.mkstemp(prefix="swaks-data-", suffix=".tmp", dir=self.base)
        os.close(fd)
        data = Path(name)
        data.write_bytes(st.dot_stuff(message) + b".")
        argv = [st.SWAKS, "--server", "127.0.0.1:%d" % self.ports["smtpd"], "--ehlo", "client.example.net",
                "--from", mail_from or "<>", "--to", ",".join(recipients), "--timeout", str(timeout),
                "--no-data-fixup", "--data", "@%s" % data]
        try:
            transcript = st.run(argv)
        finally:
            data.unlink(missing_ok=True)
        m = re.search(r"<-  250 2\.0\.0 (\S+) Message accepted for delivery", transcript)
        if not m:
            raise SendmailError("no queue ID in Sendmail's reply:\n%s" % transcript)
        return m.group(1)

    def queue_files(self, prefix):
        """Queue IDs with a file of this kind in the queue: qf = waiting for delivery,
        hf = held (quarantined)."""
        try:
            return {p.name[2:] for p in self.mqueue.iterdir() if p.name.startswith(prefix)}
        except OSError:
            return set()

    def relayed(self):
        """{X-Test-Case value: (trace, received, message)} for the messages that
        reached smtp-sink and left Sendmail's queue. A message leaves the queue only
        after smtp-sink acknowledged it, so its dump file is complete by then.
        message is the dump minus the leading Received: headers (smtp-sink's and
        Sendmail's, which Sendmail does not show its filters either)."""
        waiting = self.queue_files("qf")
        found = {}
        for path in sorted(self.relay_dir.iterdir()):
            trace, received, message = st.split_sink_copy(path.read_bytes())
            m = re.search(rb"(?m)^X-Test-Case: (\S+)\r$", message)
            queue_id = sendmail_queue_id(received)
            if m and queue_id and queue_id not in waiting:
                found[m.group(1).decode()] = (trace, received, message)
        return found

    def diagnostics(self):
        parts = [super().diagnostics()]
        parts += ["== Sendmail -X trace (tail)", st.tail(self.trace, 80)]
        for name in ("sendmail.log", "quarantine_milter.log"):
            parts += ["== %s (tail)" % name, st.tail(self.log_dir / name, 20)]
        try:
            parts += ["== %s: %s" % (self.mqueue, sorted(p.name for p in self.mqueue.iterdir()))]
        except OSError as e:
            parts += ["== %s: %s" % (self.mqueue, e)]
        return "\n".join(parts)


SENDMAIL_QUEUE_ID = re.compile(rb"by " + HOSTNAME.encode() + rb" \([^)]*\) with E?SMTP id ([0-9A-Za-z]+)")


def sendmail_queue_id(received):
    """The queue ID in the Received: header that Sendmail prepended, or None."""
    for header in received:
        m = SENDMAIL_QUEUE_ID.search(b" ".join(header.split()))
        if m:
            return m.group(1).decode()
    return None


def main(argv):
    if argv == ["unpack"]:
        root = ensure_unpacked()
        print("sendmail unpacked in %s" % root)
        return 0
    print("usage: sendmail.py unpack   (into $TDC_SENDMAIL_ROOT, default %s)" % DEFAULT_ROOT, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
