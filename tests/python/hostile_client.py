#!/usr/bin/python3
"""hostile_client.py: garbage and abuse on divertd's client socket.

    hostile_client.py SOCKET SEED COUNT

Opens connections to divertd and sends COUNT messages chosen at random
(seeded, so a failure can be replayed): short and long messages, wrong
versions and types, DW_BIND for unknown or stolen connection ids and any
port, DW_SETOPT with absurd values, DW_PACKET with random bytes, with IPv4
and IPv6 headers that lie about their lengths, with random addresses and
interface names; connections are closed abruptly at random.  It only
checks that it could talk to the daemon; the suite then checks that the
daemon still works.  Prints "sent N".
"""
import os
import random
import socket
import struct
import sys

HDR = struct.Struct("=HHIQII16s")      # struct divert_wire_hdr (40 bytes)
DW_WELCOME, DW_PACKET, DW_SETOPT, DW_BIND, DW_REPLY = 1, 2, 3, 4, 5


def sockaddr(rng):
    port = rng.choice([0, 100, 65535, rng.randrange(65536)])
    addr = rng.choice([b"\0\0\0\0", bytes([192, 0, 2, 1]), os.urandom(4)])
    zero = rng.choice([b"\0" * 8, b"eth0\0\0\0\0", b"lo\0\0\0\0\0\0",
                       os.urandom(8), b"divertd0"])
    family = rng.choice([socket.AF_INET] * 4 + [socket.AF_INET6, 0, 0xffff])
    return struct.pack("=HH4s8s", family, port, addr, zero)


def packet(rng):
    kind = rng.randrange(6)
    if kind == 0:
        return os.urandom(rng.randrange(0, 64))
    if kind == 1:                       # IPv4 header lying about lengths
        ihl = rng.randrange(16)
        tot = rng.randrange(65536)
        body = os.urandom(rng.randrange(0, 200))
        return bytes([0x40 | ihl, 0]) + struct.pack("!H", tot) + os.urandom(16) + body
    if kind == 2:                       # IPv6 header lying about lengths
        plen = rng.randrange(65536)
        nh = rng.choice([0, 6, 17, 43, 44, 58, 60, rng.randrange(256)])
        return (bytes([0x60, 0, 0, 0]) + struct.pack("!HBB", plen, nh, 64) +
                os.urandom(32) + os.urandom(rng.randrange(0, 100)))
    if kind == 3:                       # big
        return bytes([0x45]) + os.urandom(rng.randrange(1000, 65600))
    if kind == 4:                       # plausible ICMP echo to nowhere
        return (bytes([0x45, 0, 0, 28, 0, 1, 0, 0, 64, 1, 0, 0]) +
                bytes([203, 0, 113, 9, 203, 0, 113, 10]) + bytes(8))
    return os.urandom(rng.randrange(20, 2000))


def message(rng, conn_ids):
    mtype = rng.choice([DW_PACKET] * 6 + [DW_BIND, DW_SETOPT, DW_WELCOME,
                                          DW_REPLY, 0, 77, 0xffff])
    version = 1 if rng.random() < 0.9 else rng.randrange(65536)
    conn = rng.choice(conn_ids + [0, 2**64 - 1, rng.randrange(2**64)])
    val = rng.choice([0, 1, 8668, 65535, 65536, 2**31, 2**32 - 1,
                      rng.randrange(2**32)])
    arg = rng.choice([0, 1, 7, 8, rng.randrange(2**32)])
    hdr = HDR.pack(mtype, version, arg, conn, val, 0, sockaddr(rng))
    if rng.random() < 0.05:
        return hdr[:rng.randrange(len(hdr))]
    if mtype == DW_PACKET:
        return hdr + packet(rng)
    return hdr + (os.urandom(rng.randrange(0, 30)) if rng.random() < 0.1 else b"")


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(2)
    s.connect(path)
    welcome = s.recv(100)
    s.setblocking(False)    # from now on never wait: EAGAIN is fine
    return s, HDR.unpack(welcome[:40])[3]


def main():
    path, seed, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    conns, ids, sent = [], [], 0
    for _ in range(count):
        if not conns or rng.random() < 0.05:
            s, cid = connect(path)
            conns.append(s)
            ids.append(cid)
        s = rng.choice(conns)
        try:
            s.send(message(rng, ids))
            sent += 1
        except (BlockingIOError, OSError):
            pass
        if rng.random() < 0.02:         # drain replies now and then
            try:
                while s.recv(70000):
                    pass
            except (BlockingIOError, OSError):
                pass
        if rng.random() < 0.03:         # abrupt close
            conns.remove(s)
            s.close()
    for s in conns:
        s.close()
    print("sent", sent)


if __name__ == "__main__":
    main()
