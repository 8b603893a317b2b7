#!/usr/bin/env python3
"""Hostile HTTP/2 clients for bench/run.sh's `flood` test: one kind of attack from several
connections at once, for a while, opening a new connection whenever the server closes one.

    flood_h2.py PORT ATTACK SECONDS [CONNECTIONS]

ATTACK is one of: rapid_reset, continuation, hpack_bomb, settings, ping, zero_window,
reused_ids. Prints `connections N` (how many it opened: a server that closes attackers makes
it open more) and `bytes N` (what it managed to send) when done. Frames are built by hand,
as in the gateway's hostile HTTP/2 tests: nothing here is meant to be a correct client.
"""
import select
import socket
import ssl
import struct
import sys
import threading
import time

DATA, HEADERS, RST_STREAM, SETTINGS, PING, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 8, 9
END_STREAM, END_HEADERS = 0x1, 0x4
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def literal(name_index, value):
    """A field with an indexed name and a literal value, not added to the table (RFC 7541 6.2.2)."""
    assert len(value) < 127
    return bytes([name_index]) + bytes([len(value)]) + value


def length_prefixed(prefix_bits, first, n):
    """An HPACK integer (RFC 7541 5.1) with its first byte's high bits `first`."""
    limit = (1 << prefix_bits) - 1
    if n < limit:
        return bytes([first | n])
    out = [first | limit]
    n -= limit
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# GET https://127.0.0.1/healthz: :method GET, :scheme https (static), :path and :authority literal.
REQUEST = b"\x82\x87" + literal(0x04, b"/healthz") + literal(0x01, b"127.0.0.1")


def connect(port, settings=b""):
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    # A send the server does not take within 2 s ends this connection (a new one follows).
    raw = socket.create_connection(("127.0.0.1", port), timeout=2)
    sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
    sock.sendall(PREFACE + frame(SETTINGS, 0, 0, settings))
    return sock


def drain(sock):
    """Reads and drops what the server has sent so far, so that its answers do not back up.
    On the sending thread: an SSL socket is not safe to use from two threads at once."""
    while select.select([sock], [], [], 0)[0] or sock.pending():
        if not sock.recv(65536):
            raise ConnectionError("closed by the server")


def attack(kind, sock, deadline, counter):
    """Sends one connection's worth of the attack until the deadline or until the server closes."""
    reads = kind not in ("settings", "ping")
    stream = 1
    if kind == "zero_window":
        # The initial window is 0 (the SETTINGS sent at connect): the server can send no DATA,
        # and holds up to its stream limit of answers. Then the connection stays open, silent.
        burst = b"".join(frame(HEADERS, END_STREAM | END_HEADERS, 2 * i + 1, REQUEST) for i in range(100))
        sock.sendall(burst)
        counter[1] += len(burst)
        while time.monotonic() < deadline:
            select.select([], [], [], 0.2)
        return
    bomb_entry = None
    while time.monotonic() < deadline:
        if kind == "rapid_reset":
            chunk = b"".join(
                frame(HEADERS, END_STREAM | END_HEADERS, stream + 2 * i, REQUEST) +
                frame(RST_STREAM, 0, stream + 2 * i, struct.pack(">I", 8)) for i in range(100))
            stream += 200
        elif kind == "continuation":
            if stream == 1:
                chunk = frame(HEADERS, END_STREAM, 1, REQUEST)
                stream = 3
            else:
                # A new-name literal field (RFC 7541 6.2.2), over and over, never END_HEADERS.
                field = b"\x00" + bytes([9]) + b"x-padding" + bytes([100]) + b"a" * 100
                chunk = frame(CONTINUATION, 0, 1, field) * 50
        elif kind == "hpack_bomb":
            # Insert a 4 KB field into the dynamic table once, then name it 16,000 times in one
            # request (4 bytes each on the wire, 4 KB each decoded: 64 MB of fields).
            if bomb_entry is None:
                value = b"a" * 4000
                insert = b"\x40" + bytes([7]) + b"x-bombs" + length_prefixed(7, 0, len(value)) + value
                sock.sendall(frame(HEADERS, END_STREAM | END_HEADERS, stream, REQUEST + insert))
                stream += 2
                bomb_entry = True
            block = REQUEST + b"\xbe" * 16000
            chunk = frame(HEADERS, END_STREAM, stream, block[:16000]) + frame(CONTINUATION, END_HEADERS, stream, block[16000:])
            stream += 2
        elif kind == "settings":
            chunk = frame(SETTINGS, 0, 0, struct.pack(">HI", 3, 100)) * 200
        elif kind == "ping":
            chunk = frame(PING, 0, 0, b"\x00" * 8) * 200
        elif kind == "reused_ids":
            chunk = frame(HEADERS, END_STREAM | END_HEADERS, 1, REQUEST) * 2
        else:
            raise SystemExit(f"unknown attack {kind}")
        if reads:
            drain(sock)
        sock.sendall(chunk)
        counter[1] += len(chunk)


def worker(port, kind, deadline, counter, lock):
    settings = struct.pack(">HI", 4, 0) if kind == "zero_window" else b""
    while time.monotonic() < deadline:
        try:
            sock = connect(port, settings)
        except OSError:
            time.sleep(0.05)
            continue
        with lock:
            counter[0] += 1
        try:
            attack(kind, sock, deadline, counter)
        except (OSError, ValueError):
            pass
        finally:
            try:
                sock.close()
            except OSError:
                pass


def main():
    port, kind, seconds = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    connections = int(sys.argv[4]) if len(sys.argv) > 4 else 4
    if kind == "zero_window":
        connections = max(connections, 50)
    deadline = time.monotonic() + seconds
    counter, lock = [0, 0], threading.Lock()
    threads = [threading.Thread(target=worker, args=(port, kind, deadline, counter, lock), daemon=True) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 15)
    print(f"connections {counter[0]}")
    print(f"bytes {counter[1]}")


if __name__ == "__main__":
    main()
