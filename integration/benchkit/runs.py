"""One measured run: a load through one set-up with the CPU, scheduling, disk and
daemon histograms read before and after it (one_run), and the backlog: the intake
down while messages go through, the daemon's memory with them queued, and the
drain rate once it is back (backlog)."""

import time

from stack import poll, run

from .load import smtp_source
from .measure import (
    KIB,
    MIB,
    FsyncProber,
    children_cpu,
    cpu_seconds,
    disk_stats,
    machine_cpu,
    run_delay_delta,
    run_delay_seconds,
    tree_cpu_seconds,
    vm_status,
    window_rate,
)
from .metrics import counter, histogram, histogram_delta

POSTQUEUE = "/usr/sbin/postqueue"


def wait_settled(stack, scenario, count, timeout):
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
