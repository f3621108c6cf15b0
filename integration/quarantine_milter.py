#!/usr/bin/python3
"""A tiny milter that quarantines: the "earlier filter" of the Sendmail tests.

    quarantine_milter.py --port 8894 [--header X-Test-Quarantine]

Speaks the milter protocol (version 6) itself, over TCP on 127.0.0.1, with the
standard library only. It answers "continue" to every command; at end of message,
if the message had the --header field, it first sends SMFIR_QUARANTINE with that
field's value as the reason (or "quarantined by quarantine_milter.py" when the
value is empty). Sendmail then holds the message in its queue (an hf file) and, unlike
Postfix, still passes it to the filters listed after this one. One line per
quarantined message goes to stdout. SIGTERM or SIGINT stops it.
"""

import argparse
import signal
import socketserver
import struct
import sys

SMFI_VERSION = 6
SMFIF_QUARANTINE = 0x20

# Commands from the MTA that get no reply.
NO_REPLY = {b"D", b"A", b"Q", b"K"}


class ProtocolError(Exception):
    pass


def read_exactly(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def read_packet(sock):
    (length,) = struct.unpack("!I", read_exactly(sock, 4))
    if length < 1 or length > 16 * 1024 * 1024:
        raise ProtocolError("bad packet length %d" % length)
    packet = read_exactly(sock, length)
    return packet[:1], packet[1:]


def send_packet(sock, command, data=b""):
    sock.sendall(struct.pack("!I", len(data) + 1) + command + data)


class MilterHandler(socketserver.BaseRequestHandler):
    def handle(self):
        sock = self.request
        header = self.server.header.lower()
        reason = None  # the reason to quarantine the current message with, if any
        try:
            while True:
                command, data = read_packet(sock)
                if command == b"O":
                    if len(data) < 12:
                        raise ProtocolError("short OPTNEG")
                    version, actions, _protocol = struct.unpack("!III", data[:12])
                    if not actions & SMFIF_QUARANTINE:
                        raise ProtocolError("the MTA does not offer quarantine")
                    # No "no reply"/"skip" options: the MTA sends every command and
                    # waits for our answer to each.
                    send_packet(sock, b"O", struct.pack("!III", min(version, SMFI_VERSION), SMFIF_QUARANTINE, 0))
                    continue
                if command in NO_REPLY:
                    if command == b"A":
                        reason = None
                    if command == b"Q":
                        return
                    continue
                if command == b"M":
                    reason = None
                elif command == b"L":
                    name, _, rest = data.partition(b"\0")
                    value = rest.split(b"\0", 1)[0]
                    if name.decode(errors="replace").lower() == header:
                        reason = value.strip().decode(errors="replace") or "quarantined by quarantine_milter.py"
                elif command == b"E":
                    if reason is not None:
                        send_packet(sock, b"q", reason.encode() + b"\0")
                        print("quarantine_milter: quarantined a message: %s" % reason, flush=True)
                    reason = None
                send_packet(sock, b"c")
        except EOFError:
            return
        except (OSError, ProtocolError, struct.error) as e:
            print("quarantine_milter: connection dropped: %s" % e, flush=True)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def main(argv):
    p = argparse.ArgumentParser(description="a milter that quarantines flagged messages")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--header", default="X-Test-Quarantine", help="messages with this field are quarantined")
    args = p.parse_args(argv)

    server = Server((args.host, args.port), MilterHandler)
    server.header = args.header

    def stop(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    print("quarantine_milter listening on %s:%d" % (args.host, args.port), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    server.server_close()
    print("quarantine_milter stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
