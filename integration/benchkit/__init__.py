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

The package, one job a module: measure (/proc, the disk, fsync probes), metrics
(the daemon's Prometheus exposition), setups (the stack and its four set-ups), load
(smtp-source and the intake ceiling client), runs (one measured run, the backlog),
report (the markdown and the bench markers), cli (options and the interleaved
runs). It imports integration/stack.py as the top-level module `stack`, so
integration/ must be on sys.path (integration/bench puts it there).
"""


class BenchError(Exception):
    """The harness could not measure (a load generator failed); not a missed target."""
