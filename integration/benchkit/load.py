"""The load generators: smtp-source into Postfix (the runs and the backlog), the
Python STARTTLS client that measures an intake's ceiling without Postfix, and the
message sizes and counts of --mix."""

import multiprocessing
import smtplib
import ssl
import subprocess
import time

from stack import INTAKE_ADDRESS

from . import BenchError
from .measure import KIB, MIB
from .setups import RECIPIENT, SENDER

SMTP_SOURCE = "/usr/sbin/smtp-source"


def smtp_source(stack, count, sessions, size, sender=SENDER, recipient=RECIPIENT):
    """Runs smtp-source against Postfix; returns (wall clock start, seconds)."""
    argv = [SMTP_SOURCE, "-d", "-s", str(sessions), "-m", str(count), "-l", str(size), "-M", "client.example.net",
            "-f", sender, "-t", recipient, "127.0.0.1:%d" % stack.ports["smtpd"]]
    wall = time.time()
    t0 = time.monotonic()
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            timeout=1800)
    elapsed = time.monotonic() - t0
    if result.returncode != 0:
        raise BenchError("smtp-source exited %d: %s" % (result.returncode, result.stdout.decode(errors="replace")))
    return wall, elapsed


def message_bytes(size):
    """A journal-like message with a body of `size` bytes, for the ceiling client."""
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


def parse_mix(text):
    """[(bytes, count)] of --mix, e.g. "2k:2000,1m:200"."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        size, _, count = item.partition(":")
        unit = {"k": KIB, "m": MIB}.get(size[-1].lower(), 1)
        number = size[:-1] if unit != 1 else size
        out.append((int(float(number) * unit), int(count)))
    return out
