#!/usr/bin/python3
"""conn_secret.py: what a client can do with connections it does not hold.

    conn_secret.py SOCKET welcome       print the welcome's errno and id
    conn_secret.py SOCKET guess PORT    try to steal a connection's port

welcome: connects, prints "arg ERRNO conn ID" from the DW_WELCOME (a
refused connection has ERRNO set and is closed after it).

guess: a victim connection is bound to PORT the way the shim does it (a
DW_BIND on a control connection, naming the victim's id, which only the
victim was told).  An attacker that did not get that id tries ids near its
own and near each other it was given: DW_BIND to move the victim, and
DW_WRITE on a write channel in the victim's name.  Prints one line
"bind EINVAL/N write EBADF/N victim-still-bound yes|no" where N counts the
tries that got the right refusal; exits 0 when every try was refused.
"""
import errno
import os
import socket
import struct
import sys

HDR = struct.Struct("=HHIQII16s")      # struct divert_wire_hdr (40 bytes)
DW_WELCOME, DW_PACKET, DW_SETOPT, DW_BIND, DW_REPLY, DW_WRITE = 1, 2, 3, 4, 5, 6


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(3)
    s.connect(path)
    m = s.recv(100)
    _, _, arg, conn, _, _, _ = HDR.unpack(m[:40])
    return s, arg, conn


def request(path, mtype, conn, val, payload=b""):
    """One request on a fresh connection; the DW_REPLY's errno."""
    s, _, _ = connect(path)
    addr = struct.pack("=HH4s8s", socket.AF_INET, 0, b"\0\0\0\0", b"\0" * 8)
    s.send(HDR.pack(mtype, 1, 1, conn, val, 0, addr) + payload)
    m = s.recv(100)
    s.close()
    return HDR.unpack(m[:40])[2]


def main():
    path, what = sys.argv[1], sys.argv[2]
    if what == "welcome":
        s, arg, conn = connect(path)
        print("arg", arg, "conn", conn)
        return 0
    port = int(sys.argv[3])
    victim, _, vid = connect(path)
    if request(path, DW_BIND, vid, port) != 0:
        print("the victim could not bind")
        return 1
    mine = [connect(path) for _ in range(4)]
    guesses = set()
    for _, _, cid in mine:
        for d in range(1, 9):
            guesses.update({(cid + d) % 2**64, (cid - d) % 2**64})
    guesses.update({0, 1, 2**64 - 1})
    guesses.discard(vid)
    guesses -= {cid for _, _, cid in mine}
    # an echo request, as a program would write one
    ping = (bytes([0x45, 0, 0, 28, 0, 1, 0, 0, 64, 1, 0, 0]) +
            bytes([192, 0, 2, 1, 192, 0, 2, 2]) + bytes([8, 0, 0xf7, 0xff]) +
            bytes(4))
    binds = sum(request(path, DW_BIND, g, port + 1) == errno.EINVAL
                for g in guesses)
    writes = sum(request(path, DW_WRITE, g, 7, ping) == errno.EBADF
                 for g in guesses)
    # the victim still owns the port: another bind of it is refused
    still = request(path, DW_BIND, mine[0][2], port) == errno.EADDRINUSE
    print("bind EINVAL/%d %d write EBADF/%d %d victim-still-bound %s" %
          (len(guesses), binds, len(guesses), writes,
           "yes" if still else "no"))
    victim.close()
    return 0 if binds == writes == len(guesses) and still else 1


if __name__ == "__main__":
    sys.exit(main())
