#!/usr/bin/env python3
"""Throughput of TCP allocations (RFC 6062) through TURN relays on loopback.

For each relay named on the command line: a TCP allocation over a TCP
control connection, CreatePermission and Connect to a local peer, a data
connection bound with ConnectionBind, then `--seconds` of bulk data from
the client through the relay to the peer (64 KiB writes; the peer reads
and counts). Rounds are interleaved (relay A, relay B, A, B, ...) and the
median bytes/s of each relay is printed, with every round. Loopback only;
every loop is bounded by the round's duration or a socket timeout.

    scripts/bench-turn-tcp.py --user bench --password PASSWORD \\
        natkit=127.0.0.1:36478 coturn=127.0.0.1:36479
"""

import argparse
import hashlib
import hmac
import os
import socket
import statistics
import struct
import threading
import time

MAGIC = 0x2112A442
ALLOCATE, CREATE_PERMISSION, CONNECT, CONNECTION_BIND = 0x003, 0x008, 0x00A, 0x00B
USERNAME, MESSAGE_INTEGRITY, ERROR_CODE, REALM, NONCE = 0x6, 0x8, 0x9, 0x14, 0x15
XOR_PEER_ADDRESS, XOR_RELAYED_ADDRESS, REQUESTED_TRANSPORT = 0x12, 0x16, 0x19
CONNECTION_ID = 0x2A
TIMEOUT = 10.0
CHUNK = 64 * 1024


def attr(t, v):
    return struct.pack("!HH", t, len(v)) + v + b"\0" * (-len(v) % 4)


def message(method, attrs, auth=None):
    tid = os.urandom(12)
    body = b"".join(attrs)
    if auth:
        user, realm, nonce, key = auth
        body += attr(USERNAME, user) + attr(REALM, realm) + attr(NONCE, nonce)
        # RFC 8489 §14.5: the length covers MESSAGE-INTEGRITY itself.
        head = struct.pack("!HHI", method, len(body) + 24, MAGIC) + tid
        body += attr(MESSAGE_INTEGRITY, hmac.new(key, head + body, hashlib.sha1).digest())
    return struct.pack("!HHI", method, len(body), MAGIC) + tid + body


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        b = s.recv(n - len(buf))
        if not b:
            raise ConnectionError("closed")
        buf += b
    return buf


def exchange(s, msg):
    s.sendall(msg)
    head = recv_exact(s, 20)
    (length,) = struct.unpack("!H", head[2:4])
    body = recv_exact(s, length)
    attrs, i = {}, 0
    while i + 4 <= len(body):
        t, n = struct.unpack("!HH", body[i : i + 4])
        attrs.setdefault(t, body[i + 4 : i + 4 + n])
        i += 4 + n + (-n % 4)
    code = None
    if ERROR_CODE in attrs:
        v = attrs[ERROR_CODE]
        code = (v[2] & 7) * 100 + v[3]
    return code, attrs, head[8:20]


def xor_address(addr):
    ip, port = addr
    raw = socket.inet_aton(ip)
    x = bytes(a ^ b for a, b in zip(raw, struct.pack("!I", MAGIC)))
    return struct.pack("!BBH", 0, 1, port ^ (MAGIC >> 16)) + x


def unxor(v):
    port = struct.unpack("!H", v[2:4])[0] ^ (MAGIC >> 16)
    ip = bytes(a ^ b for a, b in zip(v[4:8], struct.pack("!I", MAGIC)))
    return socket.inet_ntoa(ip), port


def authed(s, method, attrs, user, password, auth):
    """Send with `auth`, answering one 401/438 with the new nonce."""
    for _ in range(2):
        code, a, _ = exchange(s, message(method, attrs, auth))
        if code in (401, 438):
            realm, nonce = a[REALM], a[NONCE]
            key = hashlib.md5(user + b":" + realm + b":" + password).digest()
            auth = (user, realm, nonce, key)
            continue
        return code, a, auth
    raise RuntimeError(f"method {method:#x}: still {code} after a new nonce")


def one_round(server, user, password, seconds):
    ctl = socket.create_connection(server, timeout=TIMEOUT)
    tcp = attr(REQUESTED_TRANSPORT, bytes([6, 0, 0, 0]))
    code, a, auth = authed(ctl, ALLOCATE, [tcp], user, password, None)
    assert code is None, f"Allocate: {code}"
    peer_listener = socket.socket()
    peer_listener.bind(("127.0.0.1", 0))
    peer_listener.listen(1)
    peer_listener.settimeout(TIMEOUT)
    peer = peer_listener.getsockname()
    code, _, auth = authed(
        ctl, CREATE_PERMISSION, [attr(XOR_PEER_ADDRESS, xor_address(peer))], user, password, auth
    )
    assert code is None, f"CreatePermission: {code}"
    code, a, auth = authed(
        ctl, CONNECT, [attr(XOR_PEER_ADDRESS, xor_address(peer))], user, password, auth
    )
    assert code is None, f"Connect: {code}"
    cid = a[CONNECTION_ID]
    conn, _ = peer_listener.accept()
    data = socket.create_connection(server, timeout=TIMEOUT)
    code, _, _ = authed(data, CONNECTION_BIND, [attr(CONNECTION_ID, cid)], user, password, auth)
    assert code is None, f"ConnectionBind: {code}"
    got = [0, None, None]

    def reader():
        buf = bytearray(1 << 20)
        conn.settimeout(TIMEOUT)
        while True:
            try:
                n = conn.recv_into(buf)
            except ConnectionResetError:
                # coturn resets the peer connection when the client's
                # half-close arrives; what came before counts.
                break
            if n == 0:
                break
            if got[1] is None:
                got[1] = time.monotonic()
            got[0] += n
            got[2] = time.monotonic()

    t = threading.Thread(target=reader)
    t.start()
    chunk = os.urandom(CHUNK)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        data.sendall(chunk)
    data.shutdown(socket.SHUT_WR)
    t.join(TIMEOUT + seconds)
    for s in (data, conn, ctl, peer_listener):
        s.close()
    return got[0] / (got[2] - got[1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("relays", nargs="+", help="NAME=IP:PORT")
    args = p.parse_args()
    relays = []
    for r in args.relays:
        name, addr = r.split("=")
        ip, port = addr.rsplit(":", 1)
        relays.append((name, (ip, int(port))))
    results = {name: [] for name, _ in relays}
    for i in range(args.rounds):
        for name, server in relays:
            bps = one_round(server, args.user.encode(), args.password.encode(), args.seconds)
            results[name].append(bps)
            print(f"round {i + 1} {name}: {bps / 1e6:,.0f} MB/s", flush=True)
    for name, v in results.items():
        print(f"{name}: median {statistics.median(v) / 1e6:,.0f} MB/s "
              f"(rounds {', '.join(f'{x / 1e6:,.0f}' for x in v)})")


if __name__ == "__main__":
    main()
