#!/usr/bin/env python3
"""Send one unauthenticated request of each kind to a TURN server and print
request and response sizes: what a spoofed request can make the relay send.

Usage: python3 scripts/turn-amplification.py HOST PORT   (loopback only)
"""
import ipaddress
import os
import socket
import struct
import sys
import zlib

COOKIE = 0x2112A442


def msg(mtype, attrs=b"", fingerprint=False):
    tid = os.urandom(12)
    if fingerprint:  # RFC 8489 §14.7
        hdr = struct.pack("!HHI", mtype, len(attrs) + 8, COOKIE) + tid
        crc = (zlib.crc32(hdr + attrs) ^ 0x5354554E) & 0xFFFFFFFF
        attrs += struct.pack("!HHI", 0x8028, 4, crc)
    return struct.pack("!HHI", mtype, len(attrs), COOKIE) + tid + attrs


def xor_peer(ip, port):
    x = struct.pack("!HH", 0x0001, port ^ (COOKIE >> 16))
    x += (int(ipaddress.IPv4Address(ip)) ^ COOKIE).to_bytes(4, "big")
    return struct.pack("!HH", 0x0012, 8) + x


TRANSPORT = struct.pack("!HHI", 0x0019, 4, 17 << 24)
KINDS = {
    "Binding": msg(0x0001),
    "Binding + FINGERPRINT": msg(0x0001, fingerprint=True),
    "Allocate, bare": msg(0x0003),
    "Allocate (REQUESTED-TRANSPORT)": msg(0x0003, TRANSPORT),
    "Allocate + FINGERPRINT": msg(0x0003, TRANSPORT, fingerprint=True),
    "Refresh": msg(0x0004),
    "CreatePermission (1 peer)": msg(0x0008, xor_peer("192.0.2.1", 9)),
    "ChannelBind": msg(0x0009, struct.pack("!HHHH", 0x000C, 4, 0x4000, 0) + xor_peer("192.0.2.1", 9)),
    "Send indication, no allocation": msg(0x0016, xor_peer("192.0.2.1", 9) + struct.pack("!HH", 0x0013, 4) + b"data"),
    "ChannelData, no allocation": struct.pack("!HH", 0x4000, 4) + b"data",
}

host, port = sys.argv[1], int(sys.argv[2])
if not ipaddress.ip_address(host).is_loopback:
    sys.exit("loopback only")
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
s.settimeout(0.5)
for name, req in KINDS.items():
    s.sendto(req, (host, port))
    try:
        resp, _ = s.recvfrom(4096)
        print(f"{name:34s} {len(req):4d} -> {len(resp):4d} B  x{len(resp) / len(req):4.1f}")
    except socket.timeout:
        print(f"{name:34s} {len(req):4d} -> no answer")
