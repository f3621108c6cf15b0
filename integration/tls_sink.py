#!/usr/bin/python3
"""A stand-in for the SETD message intake: an SMTP server that insists on STARTTLS.

Run it with Debian's /usr/bin/python3 (it needs the python3-aiosmtpd package):

    tls_sink.py --port 4650 --cert intake.crt --key intake.key --outdir DIR

Every message it accepts is stored as DIR/<n>.eml (the DATA bytes exactly as
received, dot-stuffing removed) and DIR/<n>.json (envelope and TLS facts, and the
connection it came on: "connection" numbers the TCP connections this sink process
accepted, "message_on_connection" counts the messages stored on that one, from 1).
The .json file is written last, and both files appear by rename, so a reader that
sees <n>.json can read both files whole.  Each connection's opening and closing
and each 421 the sink sends are logged on stdout, in the order they happened.

Fault injection, keyed on the recipient's local part: "tempfail" gets a 451,
"permfail" a 550.  --tls12-only caps TLS at 1.2; --legacy-tls offers only TLS 1.0
and 1.1 (an outdated intake, or a downgrading man in the middle); --max-msgs N answers the
(N+1)th MAIL FROM on one connection with 421 and closes it (the limits the real
intake documents).  --data-delay S waits S seconds before it answers each final
dot, like a busy intake, so that a burst of journals builds a backlog.
--fault-rate P answers the final dot of a share P of the messages, at random, with
451 or 554 (half each) and stores nothing; --stall-rate P with --stall-seconds S
waits S seconds before it stores and answers a share P of them (an intake that
stalls after the data; a client that gave up meanwhile may send the journal again).
The random choices follow --seed.  SIGTERM or SIGINT stops the sink.
"""

import argparse
import asyncio
import random
import json
import os
import re
import signal
import ssl
import sys

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

ENVELOPE_FILE = re.compile(r"^(\d+)\.json$")


def write_atomically(path, data):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def next_free_number(outdir):
    """Continue the numbering of an existing output directory."""
    taken = [int(m.group(1)) for m in map(ENVELOPE_FILE.match, os.listdir(outdir)) if m]
    return max(taken, default=0) + 1


def tls_facts(server, session):
    """(version, cipher) of the session's TLS layer, or None for plain text."""
    ssl_object = None
    if isinstance(session.ssl, dict):
        ssl_object = session.ssl.get("ssl_object")
    if ssl_object is None and server.transport is not None:
        ssl_object = server.transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    return {"version": ssl_object.version(), "cipher": ssl_object.cipher()[0]}


def log(text):
    print("tls_sink: %s" % text, flush=True)


class IntakeSMTP(SMTP):
    """aiosmtpd's SMTP protocol, of which there is one instance per TCP connection
    (STARTTLS keeps it): numbers the connections and logs what the tests check."""

    def __init__(self, handler, **kwargs):
        super().__init__(handler, **kwargs)
        self.connection = handler.new_connection()
        self.stored = 0
        self.opened = False

    def connection_made(self, transport):
        super().connection_made(transport)  # again after STARTTLS, on the TLS transport
        if not self.opened:
            self.opened = True
            log("connection %d from %s opened" % (self.connection, self.peer_text()))

    def peer_text(self):
        peer = self.session.peer if self.session else None
        return "%s:%s" % tuple(peer[:2]) if peer else "?"

    async def push(self, status):
        text = status.decode(errors="replace") if isinstance(status, bytes) else status
        if text.startswith("421"):  # e.g. the --max-msgs limit: "421 4.7.0 MAIL sent too many times"
            log("connection %d from %s, messages stored: %d, sent: %s" % (self.connection, self.peer_text(),
                                                                          self.stored, text))
        await super().push(status)

    def connection_lost(self, error):
        log("connection %d from %s closed, messages stored: %d" % (self.connection, self.peer_text(), self.stored))
        super().connection_lost(error)


class IntakeController(Controller):
    def factory(self):
        return IntakeSMTP(self.handler, **self.SMTP_kwargs)


class IntakeHandler:
    FAULTS = {
        "tempfail": "451 4.3.0 simulated temporary failure",
        "permfail": "550 5.1.1 simulated permanent failure",
    }

    def __init__(self, outdir, data_delay=0.0, fault_rate=0.0, stall_rate=0.0, stall_seconds=0.0, seed=0):
        self.outdir = outdir
        self.data_delay = data_delay
        self.fault_rate = fault_rate
        self.stall_rate = stall_rate
        self.stall_seconds = stall_seconds
        self.random = random.Random(seed)
        self.number = next_free_number(outdir)
        self.connections = 0

    def new_connection(self):
        # Called on the event loop's thread only, like the hooks below.
        self.connections += 1
        return self.connections

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        fault = self.FAULTS.get(address.split("@")[0].lower())
        if fault:
            return fault
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.data_delay > 0:
            await asyncio.sleep(self.data_delay)
        if self.random.random() < self.fault_rate:
            reply = self.random.choice(["451 4.3.0 simulated random temporary failure",
                                        "554 5.3.0 simulated random permanent failure"])
            log("connection %d: random fault: %s" % (server.connection, reply))
            return reply
        if self.random.random() < self.stall_rate:
            log("connection %d: stalling %.1f s after the data" % (server.connection, self.stall_seconds))
            await asyncio.sleep(self.stall_seconds)
        n, self.number = self.number, self.number + 1
        server.stored += 1
        content = envelope.original_content
        if content is None:
            content = envelope.content
        if isinstance(content, str):
            content = content.encode("utf-8", "surrogateescape")
        facts = {
            "mail_from": envelope.mail_from,
            "mail_options": envelope.mail_options,
            "rcpt_tos": envelope.rcpt_tos,
            "rcpt_options": envelope.rcpt_options,
            "helo": session.host_name,
            "peer": list(session.peer) if session.peer else None,
            "tls": tls_facts(server, session),
            "size": len(content),
            "connection": server.connection,
            "message_on_connection": server.stored,
        }
        base = os.path.join(self.outdir, str(n))
        write_atomically(base + ".eml", content)
        write_atomically(base + ".json", json.dumps(facts, indent=1).encode() + b"\n")
        return "250 2.0.0 Ok: stored as %d" % n


def parse_args(argv):
    p = argparse.ArgumentParser(description="STARTTLS-only SMTP intake sink")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cert", required=True, help="PEM certificate (chain) of the server")
    p.add_argument("--key", required=True, help="PEM private key")
    p.add_argument("--outdir", required=True)
    p.add_argument("--hostname", default="intake.test", help="name in the greeting")
    p.add_argument("--tls12-only", action="store_true")
    p.add_argument("--legacy-tls", action="store_true", help="offer TLS 1.0 and 1.1 only")
    p.add_argument("--max-msgs", type=int, default=0, help="MAIL commands per connection (0: no limit)")
    p.add_argument("--data-delay", type=float, default=0.0, help="seconds to wait before answering each final dot")
    p.add_argument("--fault-rate", type=float, default=0.0, help="share of messages refused with 451 or 554")
    p.add_argument("--stall-rate", type=float, default=0.0, help="share of messages answered after --stall-seconds")
    p.add_argument("--stall-seconds", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0, help="seed of the random faults and stalls")
    return p.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    os.makedirs(args.outdir, exist_ok=True)

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if args.tls12_only:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    if args.legacy_tls:
        # OpenSSL 3 allows TLS < 1.2 only at security level 0.
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1

    limits = {}
    if args.max_msgs > 0:
        limits["command_call_limit"] = {"MAIL": args.max_msgs, "*": 100000}

    controller = IntakeController(
        IntakeHandler(args.outdir, args.data_delay, args.fault_rate, args.stall_rate, args.stall_seconds, args.seed),
        hostname=args.host,
        port=args.port,
        server_hostname=args.hostname,
        tls_context=context,
        require_starttls=True,
        ready_timeout=10,
        **limits,
    )
    # Block the signals before the server thread starts, so that every thread
    # inherits the mask and sigwait() below is the one that receives them.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    controller.start()
    print("tls_sink listening on %s:%d, storing into %s" % (args.host, args.port, args.outdir), flush=True)
    received = signal.sigwait(stop_signals)
    controller.stop()
    print("tls_sink stopped by signal %d" % received, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
