"""Benchmarks of tdc-milter inside a real Postfix. Run it as
integration/bench (see that file, or --help, for the options).

What runs, all on 127.0.0.1, in one fresh world-searchable temporary directory:

    smtp-source ──▶ Postfix ──milter──▶ tdc-milter ──STARTTLS──▶ intake
                       │  └──always_bcc (other scenario)──STARTTLS──▶ intake
                       └──relay──▶ smtp-sink (counts only, stores nothing)

The intake is either integration/tls_sink.py (aiosmtpd, stores each journal) or a
second Postfix whose smtpd insists on STARTTLS and hands each transaction, before
queueing, to an smtp-sink that dumps it (Postfix's smtp-sink). The ceiling
of both is measured first with a Python STARTTLS client; the faster one is used for
the rates unless --intake says otherwise.

Four Postfix set-ups are compared, switched with postconf and postfix reload, and
interleaved (each run goes through all of them, in a rotating order):

    none    no milter at all
    pass    tdc-milter in the path with `enabled: false`: the milter protocol (Postfix's
            side and ours) and nothing else, the ceiling of any milter on this machine
    milter  tdc-milter as the last smtpd milter (journals spooled durably, fsync)
    bcc     no milter; always_bcc = the intake address, delivered by Postfix's smtp
            client over STARTTLS (verified, like the daemon) to the same intake

The figures are medians over the runs. Python standard library only, run by Debian's
/usr/bin/python3; the stack comes from integration/stack.py, unchanged.
"""

import argparse
import multiprocessing
import os
import platform
import re
import shutil
import signal
import smtplib
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import stack as stack_module  # noqa: E402
from stack import (  # noqa: E402
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

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SMTP_SOURCE = "/usr/sbin/smtp-source"
POSTCONF = "/usr/sbin/postconf"
POSTQUEUE = "/usr/sbin/postqueue"
CLK_TCK = os.sysconf("SC_CLK_TCK")
KIB = 1024
MIB = 1024 * 1024

BEGIN_MARKER = "<!-- bench:begin (integration/bench --write-docs replaces this section) -->"
END_MARKER = "<!-- bench:end -->"

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


class BenchError(Exception):
    pass


def log(text):
    print("bench: %s" % text, file=sys.stderr, flush=True)


# ------------------------------------------------------------ /proc readers


def proc_stat_fields(pid):
    """Fields of /proc/PID/stat from the state on (index 0 is field 3)."""
    try:
        text = Path("/proc/%d/stat" % pid).read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def cpu_seconds(pid, children=True):
    """utime+stime of a process (plus its reaped children's cutime+cstime)."""
    f = proc_stat_fields(pid)
    if f is None:
        return 0.0
    ticks = int(f[11]) + int(f[12])
    if children:
        ticks += int(f[13]) + int(f[14])
    return ticks / CLK_TCK


def tree_pids(root):
    """A process and its live descendants."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = proc_stat_fields(int(entry))
            if f is not None:
                parents[int(entry)] = int(f[1])
    tree, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        for child, parent in parents.items():
            if parent == p and child not in tree:
                tree.add(child)
                frontier.append(child)
    return tree


def tree_cpu_seconds(root):
    """CPU of a process tree: the root's own and reaped children's time, plus every
    live descendant's own and reaped children's time. Postfix's master reaps its
    daemons, so a daemon that exits between two readings moves from the second term
    into the first and is counted once."""
    return sum(cpu_seconds(pid) for pid in tree_pids(root))


def run_delay_seconds(pid):
    """Per thread of a process, the time it spent runnable but waiting for a CPU
    (`/proc/PID/task/TID/schedstat`, second field, ns). A thread that exits between
    two readings takes its time with it, so a difference is a lower bound."""
    delays = {}
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return delays
    for tid in tids:
        try:
            fields = Path("/proc/%d/task/%s/schedstat" % (pid, tid)).read_text().split()
        except OSError:
            continue
        delays[tid] = (int(fields[1]) / 1e9, int(fields[2]))
    return delays


def run_delay_delta(after, before):
    """(seconds waiting for a core, times put on a core) between two readings."""
    wait = sum(v[0] - before.get(tid, (0.0, 0))[0] for tid, v in after.items())
    slices = sum(v[1] - before.get(tid, (0.0, 0))[1] for tid, v in after.items())
    return wait, slices


def machine_cpu():
    """(busy, total) seconds of all CPUs since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already in user
    return (total - idle) / CLK_TCK, total / CLK_TCK


def disk_of(path):
    """The whole disk (e.g. vda) holding `path`, by its device numbers."""
    dev = os.stat(path).st_dev
    major, minor = os.major(dev), os.minor(dev)
    try:
        # A partition's sysfs entry sits inside its disk's.
        real = Path(os.path.realpath("/sys/dev/block/%d:%d" % (major, minor)))
        if (real / "partition").exists():
            real = real.parent
        return real.name
    except OSError:
        return None


def disk_stats(disk):
    """{sectors_written, io_ms, flushes} of a disk since boot, from /proc/diskstats."""
    for line in Path("/proc/diskstats").read_text().splitlines():
        f = line.split()
        if len(f) >= 14 and f[2] == disk:
            return {"sectors_written": int(f[9]), "io_ms": int(f[12]),
                    "flushes": int(f[18]) if len(f) >= 19 else 0}
    return None


def end_of_message_write(fd, data):
    """Seconds taken by what the daemon does at end of message with a recycled spool
    file: overwrite, cut, mark, fsync (the mark is taken off again after)."""
    t0 = time.perf_counter()
    os.pwrite(fd, data, 0)
    os.ftruncate(fd, len(data))
    os.fchmod(fd, 0o700)
    os.fsync(fd)
    elapsed = time.perf_counter() - t0
    os.fchmod(fd, 0o600)
    return elapsed


def p50_p99(times):
    times = sorted(times)
    return times[len(times) // 2], times[min(len(times) - 1, int(len(times) * 0.99))]


def fsync_probe(directory, count=300, size=10 * KIB):
    """p50 and p99 seconds of the end-of-message write on the same file system, alone."""
    path = os.path.join(directory, "fsync-probe")
    data = b"x" * size
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        times = [end_of_message_write(fd, data) for _ in range(count)]
    finally:
        os.close(fd)
        os.unlink(path)
    return p50_p99(times)


class FsyncProber(threading.Thread):
    """The end-of-message write every few milliseconds until stopped: what a
    journal's write costs on this disk while something else loads the machine."""

    def __init__(self, directory, size=10 * KIB, interval=0.005):
        super().__init__(daemon=True)
        self.path = os.path.join(directory, "fsync-prober")
        self.data = b"x" * size
        self.interval = interval
        self.times = []
        self.stopping = threading.Event()

    def run(self):
        fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
        try:
            while not self.stopping.is_set():
                self.times.append(end_of_message_write(fd, self.data))
                self.stopping.wait(self.interval)
        finally:
            os.close(fd)
            os.unlink(self.path)

    def stop(self):
        """(p50, p99, count) in seconds; None without samples."""
        self.stopping.set()
        self.join()
        if not self.times:
            return None
        return (*p50_p99(self.times), len(self.times))


def vm_status(pid):
    """{VmRSS: bytes, VmHWM: bytes} of a live process."""
    out = {}
    for line in Path("/proc/%d/status" % pid).read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * KIB
    return out


# ------------------------------------------------------------------ metrics

METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_metrics(text):
    """{(name, labels text): value} of a Prometheus exposition."""
    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = METRIC_LINE.match(line)
        if m:
            out[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return out


def histogram(metrics, name):
    """[(upper bound, cumulative count)] of a histogram, +Inf last."""
    buckets = []
    for (metric, labels), value in metrics.items():
        if metric == name + "_bucket":
            le = re.search(r'le="([^"]+)"', labels).group(1)
            buckets.append((float("inf") if le == "+Inf" else float(le), value))
    return sorted(buckets)


def histogram_delta(after, before):
    before = dict(before)
    return [(le, count - before.get(le, 0.0)) for le, count in after]


def quantile(buckets, q):
    """(estimate, lower bound, upper bound) of quantile q of a cumulative histogram,
    linear inside the bucket as Prometheus's histogram_quantile does; None if empty."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return (lower, lower, le)
            inside = count - below
            share = (rank - below) / inside if inside else 1.0
            return (lower + (le - lower) * share, lower, le)
        lower, below = le, count
    return None


# ------------------------------------------------------------- the stack


class BenchStack(Stack):
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

    def start_relay_sink(self):
        # Counts only: no dump files, so that the next hop costs as little as it can.
        port = self.ports["relay"]
        self.spawn("smtp-sink", [SMTP_SINK, "-u", "postfix", "127.0.0.1:%d" % port, "256"],
                   self.log_dir / "smtp-sink.log")
        self.wait_listening(port, "smtp-sink")

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


def counter(m, name):
    return m.get((name + "_total", ""), m.get((name, ""), 0.0))


# ------------------------------------------------------------------ loads


def smtp_source(stack, count, sessions, size):
    """Runs smtp-source against Postfix; returns (wall clock start, seconds)."""
    argv = [SMTP_SOURCE, "-d", "-s", str(sessions), "-m", str(count), "-l", str(size), "-M", "client.example.net",
            "-f", SENDER, "-t", RECIPIENT, "127.0.0.1:%d" % stack.ports["smtpd"]]
    wall = time.time()
    t0 = time.monotonic()
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            timeout=1800)
    elapsed = time.monotonic() - t0
    if result.returncode != 0:
        raise BenchError("smtp-source exited %d: %s" % (result.returncode, result.stdout.decode(errors="replace")))
    return wall, elapsed


def children_cpu():
    """utime+stime of this process's reaped children (smtp-source), seconds."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def message_bytes(size):
    line = b"x" * 76 + b"\r\n"
    body = (line * (size // len(line) + 1))[:size]
    return (b"From: <tdc@mta.test>\r\nTo: <journal@intake.test>\r\nSubject: sink ceiling\r\n"
            b"Message-ID: <ceiling@mta.test>\r\n\r\n" + body + b"\r\n")


def _client_worker(args):
    """One client process: `count` messages, `per_connection` per STARTTLS session."""
    port, ca_file, count, size, per_connection = args
    context = ssl.create_default_context(cafile=ca_file)
    message = message_bytes(size)
    sent = 0
    while sent < count:
        with smtplib.SMTP("127.0.0.1", port, local_hostname="mta.test", timeout=60) as smtp:
            smtp.starttls(context=context)
            smtp.ehlo()
            for _ in range(min(per_connection, count - sent)):
                smtp.sendmail("tdc@mta.test", [INTAKE_ADDRESS], message)
                sent += 1
    return sent


def sink_ceiling(port, ca_file, count, size, processes=4, per_connection=10):
    """Messages/s a STARTTLS intake takes from a Python client (processes × sessions
    of per_connection messages); a lower bound where the client is the limit."""
    shares = [count // processes + (1 if i < count % processes else 0) for i in range(processes)]
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(processes) as pool:
        t0 = time.monotonic()
        sent = sum(pool.map(_client_worker, [(port, ca_file, n, size, per_connection) for n in shares]))
        elapsed = time.monotonic() - t0
    return sent / elapsed


# ------------------------------------------------------------------- runs


def wait_settled(stack, scenario, count, timeout, deliveries_before=None):
    """Waits until Postfix's queue is empty and, where something goes to the intake,
    `count` copies arrived there (and the daemon's queue is empty)."""

    def settled():
        q = stack.postfix_queue()
        if any(q.values()):
            return False
        if scenario in ("none", "pass"):
            return True
        if len(stack.intake_arrivals()) < count:
            return False
        if scenario == "milter":
            m = stack.metrics()
            return counter(m, "tdc_milter_queue_journals") == 0
        return True

    poll(settled, timeout, interval=0.02, what="%s run to settle (%d messages)" % (scenario, count))
    return time.time()


def one_run(stack, scenario, count, sessions, size, probe=False):
    """One load through one set-up; returns its figures. With probe, the disk's
    write-and-fsync latency is sampled by another process meanwhile."""
    stack.clear_intake()
    offset = stack.maillog_size()
    master = stack.master_pid()
    milter_pid = stack.milter_pid()
    m0 = stack.metrics()
    pf_cpu0 = tree_cpu_seconds(master)
    tdc_cpu0 = cpu_seconds(milter_pid, children=False)
    tdc_wait0 = run_delay_seconds(milter_pid)
    intake_cpu0 = stack.intake_cpu()
    source_cpu0 = children_cpu()
    busy0, total0 = machine_cpu()
    disk0 = disk_stats(stack.disk) if stack.disk else None
    prober = FsyncProber(str(stack.base)) if probe else None
    if prober:
        prober.start()
    wall, elapsed = smtp_source(stack, count, sessions, size)
    probed = prober.stop() if prober else None
    disk1 = disk_stats(stack.disk) if stack.disk else None
    busy1, total1 = machine_cpu()
    tdc_wait, tdc_slices = run_delay_delta(run_delay_seconds(milter_pid), tdc_wait0)
    source_cpu = children_cpu() - source_cpu0
    timeout = 120 + count * max(size, 10 * KIB) / (2 * MIB)
    wait_settled(stack, scenario, count, timeout)
    pf_cpu1 = tree_cpu_seconds(master)
    tdc_cpu1 = cpu_seconds(milter_pid, children=False)
    intake_cpu1 = stack.intake_cpu()
    m1 = stack.metrics()
    # Postfix logs through postlogd: give the last lines a moment.
    accepted = poll(lambda: (n := stack.accepted_since(offset)) >= count and n, 10,
                    what="Postfix's log of %d accepted messages" % count)
    out = {
        "scenario": scenario,
        "size": size,
        "count": count,
        "accepted": accepted,
        "throughput": accepted / elapsed,
        "source_seconds": elapsed,
        "postfix_cpu": pf_cpu1 - pf_cpu0,
        "tdc_cpu": tdc_cpu1 - tdc_cpu0,
        "intake_cpu": intake_cpu1 - intake_cpu0,
        "source_cpu": source_cpu,
        # The daemon's threads, runnable but waiting for a CPU, while smtp-source ran.
        "tdc_wait": tdc_wait,
        "tdc_slices": tdc_slices,
        # Share of all CPUs busy while smtp-source ran (any process on the machine).
        "busy": (busy1 - busy0) / (total1 - total0) if total1 > total0 else None,
    }
    if probed:
        out["probe"] = probed
    if disk0 and disk1:
        # The disk's share of time with I/O in flight, and what was written per
        # message, while smtp-source ran (every process on the machine).
        out["disk_busy"] = (disk1["io_ms"] - disk0["io_ms"]) / 1000 / elapsed if elapsed > 0 else None
        out["disk_kib"] = (disk1["sectors_written"] - disk0["sectors_written"]) * 512 / KIB / count
        out["disk_flushes"] = (disk1["flushes"] - disk0["flushes"]) / count
    if scenario in ("milter", "bcc"):
        arrivals = stack.intake_arrivals()
        out["arrived"] = len(arrivals)
        out["delivery_rate"] = len(arrivals) / (max(arrivals) - wall)
    if scenario == "milter":
        out["delivered"] = counter(m1, "tdc_milter_journals_delivered") - counter(m0, "tdc_milter_journals_delivered")
        out["eom"] = histogram_delta(histogram(m1, "tdc_milter_end_of_message_seconds"),
                                     histogram(m0, "tdc_milter_end_of_message_seconds"))
        calls = counter(m1, "tdc_milter_end_of_message_seconds_count") - counter(m0, "tdc_milter_end_of_message_seconds_count")
        if calls > 0:
            out["eom_mean"] = (counter(m1, "tdc_milter_end_of_message_seconds_sum")
                               - counter(m0, "tdc_milter_end_of_message_seconds_sum")) / calls
        out["spool_write"] = histogram_delta(histogram(m1, "tdc_milter_spool_write_seconds"),
                                             histogram(m0, "tdc_milter_spool_write_seconds"))
        out["a2d"] = histogram_delta(histogram(m1, "tdc_milter_accept_to_delivered_seconds"),
                                     histogram(m0, "tdc_milter_accept_to_delivered_seconds"))
    return out


def backlog(stack, scenario, count, sessions, size):
    """The intake is down while `count` messages go through; then it comes back.
    Returns the daemon's memory with the backlog queued (milter) and the drain rate
    (copies/s from the first to the last arrival at the intake)."""
    stack.clear_intake()
    stack.stop_intake()
    out = {"scenario": scenario, "count": count}
    try:
        m0 = stack.metrics()
        smtp_source(stack, count, sessions, size)
        timeout = 300 + count * size / MIB

        if scenario == "milter":
            def all_queued():
                if any(stack.postfix_queue().values()):
                    return False
                m = stack.metrics()
                gone = sum(counter(m, n) - counter(m0, n) for n in (
                    "tdc_milter_journals_delivered", "tdc_milter_journals_hard_bounced",
                    "tdc_milter_journals_refused"))
                return counter(m, "tdc_milter_queue_journals") + gone >= count and m

            m = poll(all_queued, timeout, interval=0.1, what="%d journals queued" % count)
            vm = vm_status(stack.milter_pid())
            out.update(queued=int(counter(m, "tdc_milter_queue_journals")),
                       queued_bytes=counter(m, "tdc_milter_queue_bytes"), rss=vm["VmRSS"], hwm=vm["VmHWM"],
                       lost=int(counter(m, "tdc_milter_journals_hard_bounced")
                                - counter(m0, "tdc_milter_journals_hard_bounced")))
            expected = out["queued"]
        else:
            def all_deferred():
                q = stack.postfix_queue()
                return q["deferred"] >= count and not (q["incoming"] or q["active"] or q["maildrop"])

            poll(all_deferred, timeout, interval=0.1, what="%d always_bcc copies deferred" % count)
            expected = count
    finally:
        stack.start_intake()
    if scenario == "bcc":
        run([POSTQUEUE, "-c", stack.postfix_etc, "-f"])
    poll(lambda: len(stack.intake_arrivals()) >= expected and not any(stack.postfix_queue().values()),
         600 + count * size / MIB, interval=0.1, what="the backlog to drain")
    if scenario == "milter":
        poll(lambda: counter(stack.metrics(), "tdc_milter_queue_journals") == 0, 60, what="the daemon's queue")
        out["hwm_after_drain"] = vm_status(stack.milter_pid())["VmHWM"]
    arrivals = sorted(stack.intake_arrivals())
    out["drained"] = len(arrivals)
    out["drain_rate"] = window_rate(arrivals)
    return out


def window_rate(arrivals):
    """Arrivals/s between the 1st and the 99th percentile of the arrival times: the
    few copies whose first attempt met the closed port come back after the retry
    delay (tdc-milter) or the queue run delay (Postfix), after the burst."""
    if len(arrivals) < 2:
        return 0.0
    first = int(len(arrivals) * 0.01)
    last = max(first + 1, int(len(arrivals) * 0.99) - 1)
    span = arrivals[last] - arrivals[first]
    return (last - first) / span if span > 0 else 0.0


# ----------------------------------------------------------------- report


def machine_description(stack, milter_bin, args, ceilings):
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    try:
        postfix_version = run([POSTCONF, "-d", "-h", "mail_version"]).strip()
    except StackError:
        postfix_version = "?"
    try:
        rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True).stdout.strip() or "?"
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        if dirty:
            rev += " (with uncommitted changes)"
    except OSError:
        rev = "?"
    try:
        shown_bin = os.path.relpath(milter_bin, REPO)
    except ValueError:
        shown_bin = os.path.basename(milter_bin)
    if shown_bin.startswith(".."):
        shown_bin = os.path.basename(milter_bin)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    lines = [
        "- CPU: %s, %d cores (`nproc`); memory %.0f GiB" % (cpu, os.cpu_count(),
                                                           os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
                                                           / 2**30),
        "- kernel %s; %s" % (platform.release(), distro()),
        "- Postfix %s; %s; Python %s" % (postfix_version, ssl.OPENSSL_VERSION, platform.python_version()),
        "- tdc-milter git %s, binary `%s`" % (rev, shown_bin),
        "- load average at the start: %s (the machine may be shared: compare ratios within one run)" % load,
        "- runs: %d, interleaved; each figure is the median over the runs" % args.runs,
        "- intake: %s; ceilings with a Python STARTTLS client (4 processes, 10 messages per connection, "
        "%d × %s): aiosmtpd %.0f msgs/s, Postfix smtpd + smtp-sink %.0f msgs/s (lower bounds where the "
        "client is the limit)" % (describe_intake(stack.intake_kind), args.ceiling_messages, size_text(10 * KIB),
                                  ceilings["aiosmtpd"], ceilings["postfix"]),
    ]
    if getattr(stack, "fsync", None):
        lines.append("- disk %s: the daemon's end-of-message write pattern alone (overwrite 10 KB, cut, mark, "
                     "fsync; Python, the stack idle, %s times): p50 %s ms, p99 %s ms" % (
                         stack.disk, 30 if args.smoke else 300, fmt(stack.fsync[0] * 1e3),
                         fmt(stack.fsync[1] * 1e3)))
    return lines


def distro():
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return "?"


def describe_intake(kind):
    if kind == "aiosmtpd":
        return "integration/tls_sink.py (aiosmtpd, stores every message)"
    return "a second Postfix, smtpd with STARTTLS required, proxying each transaction to smtp-sink (dumps)"


def size_text(size):
    if size >= MIB:
        return "%g MB" % (size / MIB)
    return "%g KB" % (size / KIB)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, unit=""):
    if value is None:
        return "n/a"
    if abs(value) >= 100:
        text = "%.0f" % value
    elif abs(value) >= 10:
        text = "%.1f" % value
    else:
        text = "%.2f" % value
    return text + (" " + unit if unit else "")


def row(figure, baseline, target, measured, ratio, met):
    return "| %s | %s | %s | %s | %s | %s |" % (figure, baseline, target, measured,
                                              "n/a" if ratio is None else "%.2f×" % ratio,
                                              "n/a" if met is None else ("yes" if met else "no"))


def ratio_row(figure, base, measured, unit, minimum):
    ratio = measured / base if base and measured is not None else None
    return row(figure, fmt(base, unit), "≥ %.2f×" % minimum, fmt(measured, unit), ratio,
               None if ratio is None else ratio >= minimum)


def build_report(args, description, results, backlogs, sizes, main_size):
    def per(scenario, size, key):
        return [r[key] for r in results if r["scenario"] == scenario and r["size"] == size and key in r
                and r.get("load", "load") == "load"]

    lines = ["| figure | baseline | target | measured | ratio | met |", "|---|---|---|---|---|---|"]
    for size in sizes:
        count = next(r["count"] for r in results if r["size"] == size and r["load"] == "load")
        label = "%d × %s, %d sessions" % (count, size_text(size), args.sessions)
        none = median(per("none", size, "throughput"))
        milter = median(per("milter", size, "throughput"))
        bcc = median(per("bcc", size, "throughput"))
        lines.append(ratio_row("a. Postfix throughput with tdc-milter vs no milter (%s)" % label,
                               none, milter, "msgs/s", 0.95))
        lines.append(ratio_row("a. Postfix throughput with tdc-milter vs always_bcc (%s)" % label,
                               bcc, milter, "msgs/s", 1.0))
        passing = median(per("pass", size, "throughput"))
        if passing is not None:
            ratio = passing / none if none else None
            lines.append(row("a. (bound, not a target) Postfix with a milter that journals nothing — tdc-milter "
                             "with `enabled: false` — vs no milter (%s)" % label, fmt(none, "msgs/s"), "—",
                             fmt(passing, "msgs/s"), ratio, None))

    s = main_size
    for size in sizes:
        # Every message accepted and its copy delivered: the rate a gateway can keep up.
        lines.append(ratio_row("b. Journal delivery rate under load: tdc-milter journals vs Postfix always_bcc "
                               "copies (%s; start of smtp-source to last arrival at the intake)" % size_text(size),
                               median(per("bcc", size, "delivery_rate")),
                               median(per("milter", size, "delivery_rate")), "msgs/s", 1.0))
    drain = {b["scenario"]: b for b in backlogs}
    if "milter" in drain and "bcc" in drain:
        lines.append(ratio_row("b. Delivery rate draining a backlog of %d (arrivals/s at the intake between the 1st and 99th "
                               "percentile arrival, after the intake comes back)" % drain["milter"]["count"],
                               drain["bcc"]["drain_rate"], drain["milter"]["drain_rate"], "msgs/s", 1.0))

    def latency_row(name, key, q, limit, what, part=None):
        for load in ("light", "load"):
            rs = [r for r in results if r["scenario"] == "milter" and r["size"] == s
                  and r.get("load", "load") == load and key in r]
            found = sorted(((quantile(r[key], q), r) for r in rs if quantile(r[key], q)), key=lambda f: f[0][0])
            if not found:
                continue
            mid, run = found[(len(found) - 1) // 2]  # the median run (the lower one of an even count)
            how = ("light load: %d × %s in 1 session" % (rs[0]["count"], size_text(s)) if load == "light"
                   else "under load: %d × %s in %d sessions" % (rs[0]["count"], size_text(s), args.sessions))
            detail = ""
            if part and run.get(part[0]):
                share = quantile(run[part[0]], q)
                if share:
                    detail = "; %s p%g in that run %s ms" % (part[1], q * 100, fmt(share[0] * 1e3))
            if part and run.get("eom_mean") is not None:
                detail += "; mean in that run %s ms" % fmt(run["eom_mean"] * 1e3)
            if part and run.get("tdc_wait") is not None:
                detail += "; the daemon's threads waited for a core %s ms per message in that run" % (
                    fmt(run["tdc_wait"] / run["count"] * 1e3))
            probes = [r["probe"] for r in results if r["scenario"] == "pass" and r["size"] == s
                      and r.get("load", "load") == "load" and r.get("probe")]
            if part and load == "load" and probes:
                detail += ("; the same write and fsync, from another process every 5 ms while Postfix took this "
                           "load through the milter that journals nothing (pass): p50 %s ms, p99 %s ms (medians of "
                           "%d runs)" % (fmt(median([p[0] for p in probes]) * 1e3),
                                         fmt(median([p[1] for p in probes]) * 1e3), len(probes)))
            lines.append(row("%s, %s (%s; median run's bucket (%s, %s] ms%s)" % (
                name, how, what, fmt(mid[1] * 1e3), fmt(mid[2] * 1e3), detail), "—", "≤ %g ms" % (limit * 1e3),
                fmt(mid[0] * 1e3, "ms"), None, mid[0] <= limit))

    latency_row("c. End of message inside tdc-milter, p99", "eom", 0.99, 0.002,
                "daemon histogram, buckets 0.1 ms × √2ⁿ, linear inside the bucket",
                part=("spool_write", "of it the spool write (write, fsync)"))
    latency_row("d. Accept (enqueue at end of message) → journal delivered, p50", "a2d", 0.5, 0.050,
                "daemon histogram, buckets 5 ms × 2ⁿ, linear inside the bucket")
    if "milter" in drain:
        b = drain["milter"]
        lines.append(row("e. Daemon VmRSS with %d journals queued, intake down (%s each; VmHWM %s MiB, "
                         "after the drain %s MiB)" % (b["queued"], size_text(s), fmt(b["hwm"] / MIB),
                                                      fmt(b["hwm_after_drain"] / MIB)),
                         "—", "≤ 64 MiB", fmt(b["rss"] / MIB, "MiB"), None, b["rss"] <= 64 * MIB))
    loaded = [r for r in results if r.get("load", "load") == "load"]
    tdc_per_k = median([r["tdc_cpu"] / r["delivered"] * 1000 for r in loaded
                        if r["scenario"] == "milter" and r["size"] == s and r.get("delivered")])
    runs = sorted({r["run"] for r in results})
    pf_extra = []
    pf_milter_extra = []
    for n in runs:
        by = {r["scenario"]: r for r in loaded if r["run"] == n and r["size"] == s}
        if "bcc" in by and "none" in by:
            pf_extra.append((by["bcc"]["postfix_cpu"] - by["none"]["postfix_cpu"]) / by["bcc"]["count"] * 1000)
        if "milter" in by and "none" in by:
            pf_milter_extra.append((by["milter"]["postfix_cpu"] - by["none"]["postfix_cpu"])
                                   / by["milter"]["count"] * 1000)
    pf_per_k = median(pf_extra)
    ratio = tdc_per_k / pf_per_k if pf_per_k and tdc_per_k is not None and pf_per_k > 0 else None
    lines.append(row("f. CPU per 1,000 journals: tdc-milter process (utime+stime) vs the extra CPU of the "
                     "Postfix tree with always_bcc over without (%s; Postfix's own extra for the milter "
                     "protocol: %s s)" % (size_text(s), fmt(median(pf_milter_extra))),
                     fmt(pf_per_k, "s"), "≤ 1.00×", fmt(tdc_per_k, "s"), ratio,
                     None if ratio is None else ratio <= 1.0))

    cores = os.cpu_count() or 1
    cpu_rows = []
    for size in sizes:
        for scenario in SCENARIOS:
            rs = [r for r in loaded if r["scenario"] == scenario and r["size"] == size]
            if not rs:
                continue

            def k(key, rs=rs):
                return median([r[key] / r["count"] * 1000 for r in rs])

            parts = [k("postfix_cpu"), k("tdc_cpu"), k("intake_cpu"), k("source_cpu")]
            every = median([(r["postfix_cpu"] + r["tdc_cpu"] + r["intake_cpu"] + r["source_cpu"])
                            / r["count"] * 1000 for r in rs])
            waits = [r["tdc_wait"] / r["count"] * 1e3 for r in rs if r.get("tdc_wait") is not None]
            cpu_rows.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                size_text(size), scenario, fmt(median([r["throughput"] for r in rs])),
                fmt(median([r["busy"] * 100 for r in rs if r["busy"] is not None]), "%"),
                *(fmt(v, "s") for v in parts), fmt(every, "s"),
                fmt(cores * 1000 / every if every else None, "msgs/s"),
                fmt(median(waits), "ms") if scenario in ("milter", "pass") and waits else "—"))
    lines += ["", "Where the CPU went (medians; seconds of CPU from the start of smtp-source until the run "
              "settled, per 1,000 messages; busy = share of the %d cores in use on the whole machine while "
              "smtp-source ran; ceiling = %d cores / all, the rate at which the stack's processes would use "
              "every core; CPU wait = the time tdc-milter's threads were runnable but waiting for a core "
              "(`/proc/PID/task/*/schedstat`), per message, while smtp-source ran):" % (cores, cores), "",
              "| size | set-up | msgs/s | busy | Postfix tree | tdc-milter | intake | smtp-source | all "
              "| ceiling | tdc-milter CPU wait |",
              "|---|---|---|---|---|---|---|---|---|---|---|", *cpu_rows]
    disk_rows = []
    for size in sizes:
        for scenario in SCENARIOS:
            rs = [r for r in loaded if r["scenario"] == scenario and r["size"] == size and "disk_kib" in r]
            if not rs:
                continue
            disk_rows.append("| %s | %s | %s | %s | %s | %s |" % (
                size_text(size), scenario, fmt(median([r["throughput"] for r in rs])),
                fmt(median([r["disk_busy"] * 100 for r in rs if r.get("disk_busy") is not None]), "%"),
                fmt(median([r["disk_kib"] for r in rs])), fmt(median([r["disk_flushes"] for r in rs]))))
    if disk_rows:
        lines += ["", "The disk while smtp-source ran (medians; `/proc/diskstats` of the disk holding the "
                  "stack, every process on the machine; busy = share of the time with I/O in flight; the pass "
                  "runs at %s also carry the disk probe of c, a write and fsync every 5 ms):" % size_text(s), "",
                  "| size | set-up | msgs/s | disk busy | KiB written per message | flushes per message |",
                  "|---|---|---|---|---|---|", *disk_rows]
    body = ["### Results", "", *description, "", *lines, ""]
    return "\n".join(body)


def write_report(path, report):
    path = Path(path)
    section = "%s\n%s\n%s" % (BEGIN_MARKER, report, END_MARKER)
    try:
        text = path.read_text()
    except OSError:
        text = None
    if text and BEGIN_MARKER in text and END_MARKER in text:
        head = text.split(BEGIN_MARKER, 1)[0]
        tail = text.split(END_MARKER, 1)[1]
        path.write_text(head + section + tail)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(report + "\n")


# ------------------------------------------------------------------- main


def default_binary():
    explicit = os.environ.get("TDC_MILTER_BIN")
    if explicit:
        return explicit
    for profile in ("release", "debug"):
        candidate = REPO / "target" / profile / "tdc-milter"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return str(REPO / "target" / "release" / "tdc-milter")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="integration/bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5, help="interleaved runs; figures are medians (default 5)")
    p.add_argument("--smoke", action="store_true", help="tiny counts and one run: checks the harness in < 60 s")
    p.add_argument("--messages", type=int, default=2000, help="messages per run at 10 KB (default 2000)")
    p.add_argument("--sessions", type=int, default=20, help="smtp-source sessions (default 20)")
    p.add_argument("--mix", default="2k:2000,50k:2000,1m:200",
                   help="extra sizes as SIZE:COUNT (k or m suffix), comma separated; '' for none")
    p.add_argument("--backlog", type=int, default=10000,
                   help="journals queued while the intake is down, for memory and drain rate (default 10000)")
    p.add_argument("--light-messages", type=int, default=200,
                   help="messages of the light-load latency run (1 session, 10 KB; default 200)")
    p.add_argument("--ceiling-messages", type=int, default=2000, help="messages for each intake ceiling")
    p.add_argument("--intake", choices=("auto", "postfix", "aiosmtpd"), default="auto",
                   help="the STARTTLS intake for the rates (auto: the one with the higher ceiling)")
    p.add_argument("--out", help="write the report to this file too (only between the bench markers if "
                                 "it has them)")
    p.add_argument("--write-docs", action="store_true", help="same as --out docs/BENCHMARKS.md")
    p.add_argument("--bin", default=None, help="daemon binary (default $TDC_MILTER_BIN, else target/release, "
                                               "else target/debug)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)
    if args.smoke:
        args.runs = 1
        args.messages = min(args.messages, 40)
        args.sessions = min(args.sessions, 4)
        args.mix = ""
        args.backlog = min(args.backlog, 60)
        args.ceiling_messages = min(args.ceiling_messages, 40)
        args.light_messages = min(args.light_messages, 20)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    return args


def parse_mix(text):
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        size, _, count = item.partition(":")
        unit = {"k": KIB, "m": MIB}.get(size[-1].lower(), 1)
        number = size[:-1] if unit != 1 else size
        out.append((int(float(number) * unit), int(count)))
    return out


def main(argv):
    args = parse_args(argv)
    if os.geteuid() != 0:
        log("run as root (Postfix, smtp-sink -u postfix)")
        return 2
    milter_bin = args.bin or default_binary()
    if "/debug/" in milter_bin:
        log("warning: %s is a debug build; its figures are not representative" % milter_bin)
    started = time.monotonic()
    base = tempfile.mkdtemp(prefix="tdc-bench-", dir="/var/tmp")
    os.chmod(base, 0o755)
    stack = BenchStack(base, milter_bin, lifetime=3600)
    stack.disk = disk_of(base)
    ok = False
    try:
        log("base %s; bringing up the intakes" % base)
        stack.up()
        ca = str(stack.tls_dir / "ca.crt")
        ceilings = {
            "aiosmtpd": sink_ceiling(stack.ports["intake"], ca, args.ceiling_messages, 10 * KIB),
            "postfix": sink_ceiling(stack.extra["pf_intake"], ca, args.ceiling_messages, 10 * KIB),
        }
        log("intake ceilings: aiosmtpd %.0f msgs/s, Postfix %.0f msgs/s" % (ceilings["aiosmtpd"],
                                                                            ceilings["postfix"]))
        stack.fsync = fsync_probe(str(stack.base), count=30 if args.smoke else 300)
        log("bare end-of-message write on disk %s: p50 %.2f ms, p99 %.2f ms" % (
            stack.disk, stack.fsync[0] * 1e3, stack.fsync[1] * 1e3))
        kind = args.intake
        if kind == "auto":
            kind = max(ceilings, key=ceilings.get)
        stack.use_intake(kind)
        stack.clear_intake()
        stack.up_mta()

        main_size = 10 * KIB
        plan = [(main_size, args.messages)] + parse_mix(args.mix)
        sizes = [s for s, _ in plan]
        results = []
        current = None
        for n in range(args.runs):
            for size, count in plan:
                # A rotating order, so that no set-up always runs first (or after the same one).
                order = SCENARIOS[n % len(SCENARIOS):] + SCENARIOS[:n % len(SCENARIOS)]
                for scenario in order:
                    if scenario != current:
                        stack.configure(scenario)
                        current = scenario
                    r = one_run(stack, scenario, count, args.sessions, size,
                                probe=scenario == "pass" and size == main_size)
                    r["run"] = n
                    r["load"] = "load"
                    results.append(r)
                    log("run %d %s %s ×%d: %.1f msgs/s%s%s" % (
                        n + 1, scenario, size_text(size), count, r["throughput"],
                        ", delivered %.1f/s" % r["delivery_rate"] if "delivery_rate" in r else "",
                        "; tdc-milter on a core %.1f times a message, waited %.2f ms a message" % (
                            r["tdc_slices"] / count, r["tdc_wait"] / count * 1e3)
                        if scenario in ("pass", "milter") else ""))
            # Latency without a queue in front of it: one session, one message at a time.
            if current != "milter":
                stack.configure("milter")
                current = "milter"
            r = one_run(stack, "milter", args.light_messages, 1, main_size)
            r.update(run=n, load="light")
            results.append(r)
            log("run %d milter light %s ×%d: %.1f msgs/s" % (n + 1, size_text(main_size), args.light_messages,
                                                             r["throughput"]))
        backlogs = []
        if args.backlog > 0:
            for scenario in ("milter", "bcc"):
                stack.configure(scenario)
                current = scenario
                b = backlog(stack, scenario, args.backlog, args.sessions, main_size)
                backlogs.append(b)
                log("backlog %s: %s" % (scenario, {k: v for k, v in b.items() if k != "scenario"}))

        description = machine_description(stack, milter_bin, args, ceilings)
        report = build_report(args, description, results, backlogs, sizes, main_size)
        print(report)
        out = args.out or ("docs/BENCHMARKS.md" if args.write_docs else None)
        if out:
            write_report(out if os.path.isabs(out) else REPO / out if args.write_docs else out, report)
            log("report written to %s" % out)
        log("done in %.0f s" % (time.monotonic() - started))
        ok = True
    except (StackError, BenchError) as e:
        log("FAILED: %s" % e)
        print(stack.diagnostics(), file=sys.stderr)
    finally:
        try:
            stack.stop_all()
        except StackError as e:
            log("stopping: %s" % e)
            ok = False
        if ok and not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            log("files kept in %s" % base)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
