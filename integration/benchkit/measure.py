"""What the harness reads off the machine: CPU time of a process or a process tree
(/proc/PID/stat), the time threads waited for a core (schedstat), whole-machine CPU
(/proc/stat), a disk's writes and flushes (/proc/diskstats), VmRSS and VmHWM, the
end-of-message write and fsync timed on the spool's file system, and percentiles
of what was timed."""

import os
import resource
import threading
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
KIB = 1024
MIB = 1024 * 1024


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


def children_cpu():
    """utime+stime of this process's reaped children (smtp-source), seconds."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


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
