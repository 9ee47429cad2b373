#!/usr/bin/python3
"""ring_hostile.py: clients that get divertd's shared-memory ring and abuse it.

    ring_hostile.py LAYOUT SOCKET scribble PORT CASE
    ring_hostile.py LAYOUT SOCKET goodwrap PORT
    ring_hostile.py LAYOUT SOCKET seal
    ring_hostile.py LAYOUT SOCKET rxlie PORT HOW READY DONE
    ring_hostile.py LAYOUT SOCKET late PORT READY COUNT

LAYOUT is a file of "name value" lines that the suite prints with a
program compiled against src/divert_wire.h (offsets of struct dw_ring_map,
struct dw_rec and struct divert_wire_hdr, the ring sizes, the message
types), so nothing here restates the header's layout.  Every client
connects, takes the DW_WELCOME (its connection id) and asks for the ring
(DW_RING: the memfd comes with the reply, SCM_RIGHTS), then binds PORT as
the shim does: a DW_BIND naming the id on a second connection.

scribble: breaks the tx ring the way CASE says, sends a DW_KICK and waits
  (5 s at most) for divertd to hang up.  Prints "CASE: eof" (exit 0) or
  "CASE: still connected" (exit 1).  With "good-then-bad", a well-formed
  record goes first: a UDP datagram from 192.0.2.2 to 192.0.2.1 port 5,
  written as incoming on 192.0.2.1.
goodwrap: well-formed writes that answer nothing (incoming, to an address
  no interface has: divertd counts each as no_interface) up to near the
  tx ring's end, a wrap mark, three more at the start; divertd must take
  them all (its tx head reaches the tail) and stay connected.  Prints
  "records N wrapped at OFF, taken to HEAD, still connected" (exit 0).
  rec-past-end starts the same way, then a record crosses the end.
seal: the memfd must be sealed: ftruncate (shrink and grow) and adding a
  seal fail with EPERM; also a second DW_RING is refused with EISCONN.
  Prints one line per check, "ok - ..." or "not ok - ...".
rxlie: lies in the rx ring (HOW: "ahead": head beyond tail and count
  huge; "taken": taken far beyond what was posted, head at the tail, as if
  it had read everything; "negative": count far below zero), sends
  DW_KICKs, creates READY and keeps the connection (lying again now and
  then) until DONE exists (60 s at most).  Prints "lied HOW kicks N".
late: binds first, then asks for the ring: the reply must carry EISCONN
  and no descriptor.  Creates READY, then reads COUNT packets from the
  socket (DW_PACKET, 10 s each at most) and writes each back as the shim
  would.  Prints "ring after bind: arg A fds F" and "packets N written N".
"""
import array
import errno
import fcntl
import mmap
import os
import socket
import struct
import sys
import time


def layout(path):
    lay = {}
    with open(path) as f:
        for line in f:
            k, v = line.split()
            lay[k] = int(v)
    return lay


L = layout(sys.argv[1])
HDR = struct.Struct("=HHIQII16s")
assert HDR.size == L["wire_hdr_size"] == 40, "wire header"
for field, off in (("type", 0), ("version", 2), ("arg", 4), ("conn", 8),
                   ("val", 16), ("addr", 24)):
    assert L["wire_" + field] == off, "wire header field " + field
REC = struct.Struct("=II16sQ")
assert REC.size == L["rec_sizeof"], "record size"
assert (L["rec_size"], L["rec_len"], L["rec_addr"]) == (0, 4, 8), "record"
for ring in ("rx", "tx"):
    for f, width in (("head", 8), ("tail", 8), ("count", 8), ("wake", 4)):
        assert L["%s_%s_width" % (ring, f)] == width, ring + f
RING_LEN = L["ring_hdr"] + L["ring_rx"] + L["ring_tx"]
TX = L["ring_hdr"] + L["ring_rx"]       # the tx ring's bytes in the map


def sockaddr(addr=b"\0\0\0\0", port=0, ifname=b""):
    return struct.pack("=HH4s8s", socket.AF_INET, port, addr,
                       ifname.ljust(8, b"\0"))


def msg(mtype, arg=0, conn=0, val=0, addr=None):
    return HDR.pack(mtype, 1, arg, conn, val, 0, addr or sockaddr())


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(5)
    s.connect(path)
    m = s.recv(100)
    mtype, _, arg, conn, _, _, _ = HDR.unpack(m[:40])
    if mtype != L["DW_WELCOME"] or arg != 0:
        raise SystemExit("no welcome (type %d arg %d)" % (mtype, arg))
    return s, conn


def ask_ring(s):
    """DW_RING: (arg, the memfd or None, how many descriptors came)."""
    s.send(msg(L["DW_RING"]))
    fds = array.array("i")
    data, anc, _, _ = s.recvmsg(100, socket.CMSG_SPACE(4 * fds.itemsize))
    for level, kind, cdata in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(cdata[:len(cdata) - len(cdata) % fds.itemsize])
    mtype, _, arg, _, _, _, _ = HDR.unpack(data[:40])
    if mtype != L["DW_RING"]:
        raise SystemExit("reply to DW_RING has type %d" % mtype)
    return arg, (list(fds) or [None])[0], len(fds)


def bind(path, conn, port):
    """As the shim binds: DW_BIND on a connection of its own."""
    c, _ = connect(path)
    c.send(msg(L["DW_BIND"], conn=conn, val=port))
    while True:
        m = c.recv(100)
        if HDR.unpack(m[:40])[0] == L["DW_REPLY"]:
            break
    c.close()
    err = HDR.unpack(m[:40])[2]
    if err != 0:
        raise SystemExit("bind %d: %s" % (port, os.strerror(err)))


def ring_client(path, port=None):
    s, conn = connect(path)
    arg, fd, _ = ask_ring(s)
    if arg != 0 or fd is None:
        raise SystemExit("no ring: arg %d" % arg)
    if os.fstat(fd).st_size != RING_LEN:
        raise SystemExit("the memfd has %d bytes, not %d" %
                         (os.fstat(fd).st_size, RING_LEN))
    mm = mmap.mmap(fd, RING_LEN, mmap.MAP_SHARED,
                   mmap.PROT_READ | mmap.PROT_WRITE)
    magic, version, rx, tx = struct.unpack_from(
        "=IIII", mm, L["map_magic"])
    assert L["map_version"] == L["map_magic"] + 4
    assert L["map_rx_size"] == L["map_magic"] + 8
    assert L["map_tx_size"] == L["map_magic"] + 12
    if (magic, version, rx, tx) != (L["ring_magic"], 1, L["ring_rx"],
                                    L["ring_tx"]):
        raise SystemExit("ring header %x %d %d %d" % (magic, version, rx, tx))
    if port is not None:
        bind(path, conn, port)
    return s, conn, fd, mm


def put(mm, name, value):
    fmt = {8: "=Q", 4: "=I"}[L[name + "_width"]]
    if name.endswith("count"):
        fmt = "=q"
    struct.pack_into(fmt, mm, L[name], value)


def get(mm, name):
    fmt = {8: "=Q", 4: "=I"}[L[name + "_width"]]
    if name.endswith("count"):
        fmt = "=q"
    return struct.unpack_from(fmt, mm, L[name])[0]


def rec_size(n):
    return (L["rec_sizeof"] + n + 7) & ~7


def record(mm, off, size, length, addr=None, pkt=b""):
    REC.pack_into(mm, TX + off, size, length, addr or sockaddr(), 0)
    mm[TX + off + REC.size:TX + off + REC.size + len(pkt)] = pkt


def cksum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff


def udp_in():
    """A datagram 192.0.2.2 -> 192.0.2.1 port 5, no UDP checksum."""
    payload = b"ring-hostile"
    udp = struct.pack("!HHHH", 40000, 5, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0x4242, 0, 64,
                     17, 0, bytes([192, 0, 2, 2]), bytes([192, 0, 2, 1]))
    ip = ip[:10] + struct.pack("!H", cksum(ip)) + ip[12:]
    return ip + udp


def scribble(mm, s, case):
    size = L["ring_tx"]
    if case == "tail-odd":                  # not a multiple of 8
        put(mm, "tx_tail", 13)
    elif case == "tail-beyond":             # more than the ring holds
        put(mm, "tx_tail", size + 8)
    elif case == "tail-back":               # behind the head
        put(mm, "tx_tail", 2**64 - 8)
    elif case == "rec-small":               # size below a record header
        record(mm, 0, 16, 0)
        put(mm, "tx_tail", 32)
    elif case == "rec-len":                 # len beyond any packet
        record(mm, 0, rec_size(100), L["maxpkt"] + 1)
        put(mm, "tx_tail", rec_size(100))
    elif case == "rec-mismatch":            # size does not match len
        record(mm, 0, rec_size(100), 20)
        put(mm, "tx_tail", rec_size(100))
    elif case == "rec-past-tail":           # the record goes past the tail
        record(mm, 0, rec_size(100), 100)
        put(mm, "tx_tail", 64)
    elif case == "rec-past-end":            # ... past the ring's end
        # (no wrap mark) once divertd took records up to near the end
        off = advance(mm, s, size - 40000)
        n = rec_size(50000)
        record(mm, off, n, 50000)          # its header: the bytes would
                                            # lie beyond the mapping
        put(mm, "tx_tail", off + n)
    elif case == "wrap-at-start":           # a wrap mark at offset 0
        struct.pack_into("=I", mm, TX, L["rec_wrap"])
        put(mm, "tx_tail", 8)
    elif case == "good-then-bad":
        pkt = udp_in()
        n = rec_size(len(pkt))
        record(mm, 0, n, len(pkt),
               sockaddr(bytes([192, 0, 2, 1]), 0, b"eth0"), pkt)
        record(mm, n, 8, 0)                 # then garbage
        put(mm, "tx_tail", n + 64)
    else:
        raise SystemExit("unknown case " + case)


# an incoming write that names no interface: divertd takes it out of the
# ring, checks it and counts it (no_interface); it goes nowhere
NOWHERE = sockaddr(bytes([203, 0, 113, 77]))


def kick(s):
    try:
        s.send(msg(L["DW_KICK"]))
    except OSError:
        pass


def wait_head(mm, s, tail, seconds=5):
    """divertd took everything up to tail (it publishes its tx head)."""
    deadline = time.monotonic() + seconds
    while get(mm, "tx_head") != tail:
        if time.monotonic() > deadline:
            raise SystemExit("divertd took the tx ring to %d, not %d" %
                             (get(mm, "tx_head"), tail))
        time.sleep(0.005)


def advance(mm, s, upto):
    """Well-formed records (of 60,000-byte packets, NOWHERE) until the
    tail passes upto; divertd takes them.  The tail, as an offset."""
    tail = get(mm, "tx_tail")
    off = tail % L["ring_tx"]
    n = rec_size(60000)
    while off + n <= upto:
        record(mm, off, n, 60000, NOWHERE, b"\x45" + bytes(59999))
        off += n
        tail += n
        put(mm, "tx_tail", tail)
        kick(s)
        wait_head(mm, s, tail)
    return off


def do_goodwrap(path, port):
    """Records up to near the end, a wrap mark, records at the start: a
    well-formed ring divertd must follow (each counted as no_interface)."""
    s, _, fd, mm = ring_client(path, port)
    size = L["ring_tx"]
    off = advance(mm, s, size - 40000)
    nrec = get(mm, "tx_tail") // rec_size(60000)
    tail = get(mm, "tx_tail")
    struct.pack_into("=I", mm, TX + off, L["rec_wrap"])
    tail += size - off
    for i in range(3):
        n = rec_size(1000)
        record(mm, i * n, n, 1000, NOWHERE, b"\x45" + bytes(999))
        tail += n
    put(mm, "tx_tail", tail)
    kick(s)
    wait_head(mm, s, tail)
    s.settimeout(0.2)
    try:
        gone = s.recv(70000) == b""
    except socket.timeout:
        gone = False
    print("records %d wrapped at %d, taken to %d, %s" %
          (nrec + 3, off, get(mm, "tx_head"),
           "hung up" if gone else "still connected"))
    return 1 if gone else 0


def wait_eof(s, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if s.recv(70000) == b"":
                return True
        except socket.timeout:
            return False
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


def do_scribble(path, port, case):
    s, _, fd, mm = ring_client(path, port)
    scribble(mm, s, case)
    try:
        s.send(msg(L["DW_KICK"]))
    except OSError:
        pass
    eof = wait_eof(s, 5)
    print("%s: %s" % (case, "eof" if eof else "still connected"))
    return 0 if eof else 1


def do_seal(path):
    fails = 0

    def check(name, good):
        nonlocal fails
        print(("ok - " if good else "not ok - ") + name)
        fails += not good

    def eperm(fn):
        try:
            fn()
        except PermissionError:
            return "EPERM"
        except OSError as e:
            return errno.errorcode.get(e.errno, str(e.errno))
        return "no error"

    s, _, fd, mm = ring_client(path)
    seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    want = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
    check("the memfd carries the seals shrink, grow and seal (0x%x)" % seals,
          seals & want == want)
    r = eperm(lambda: os.ftruncate(fd, L["ring_hdr"]))
    check("ftruncate to shrink it fails: %s" % r, r == "EPERM")
    r = eperm(lambda: os.ftruncate(fd, 2 * RING_LEN))
    check("ftruncate to grow it fails: %s" % r, r == "EPERM")
    r = eperm(lambda: fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE))
    check("adding a seal (write) fails: %s" % r, r == "EPERM")
    check("its size is still %d bytes (%d)" % (RING_LEN, os.fstat(fd).st_size),
          os.fstat(fd).st_size == RING_LEN)
    arg, _, nfds = ask_ring(s)
    check("a second DW_RING is refused: arg %d (EISCONN %d), %d descriptors"
          % (arg, errno.EISCONN, nfds), arg == errno.EISCONN and nfds == 0)
    # the connection still works: divertd answers a DW_RING again
    arg, _, _ = ask_ring(s)
    check("... and the connection still answers (arg %d)" % arg,
          arg == errno.EISCONN)
    return 1 if fails else 0


def do_rxlie(path, port, how, ready, done):
    s, _, fd, mm = ring_client(path, port)

    def lie():
        if how == "ahead":
            put(mm, "rx_head", get(mm, "rx_tail") + (1 << 40) + 3)
            put(mm, "rx_count", 1 << 62)
        elif how == "taken":
            put(mm, "rx_taken", (1 << 63) + 12345)
            put(mm, "rx_head", get(mm, "rx_tail"))
        elif how == "negative":
            put(mm, "rx_count", -(1 << 40))
        else:
            raise SystemExit("unknown lie " + how)
        put(mm, "rx_wake", 0)

    s.setblocking(False)
    lie()
    kicks = 0
    open(ready, "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(done) and time.monotonic() < deadline:
        lie()
        for _ in range(50):
            try:
                s.send(msg(L["DW_KICK"]))
                kicks += 1
            except BlockingIOError:
                break
            except OSError:
                print("lied %s kicks %d (divertd hung up)" % (how, kicks))
                return 1
        try:                    # the kicks divertd sends: taken, not heeded
            while s.recv(70000):
                pass
        except BlockingIOError:
            pass
        time.sleep(0.02)
    print("lied %s kicks %d" % (how, kicks))
    return 0


def do_late(path, port, ready, count):
    s, conn = connect(path)
    bind(path, conn, port)
    arg, fd, nfds = ask_ring(s)
    print("ring after bind: arg %d fds %d" % (arg, nfds))
    open(ready, "w").close()
    got = written = 0
    s.settimeout(10)
    while got < count:
        try:
            m = s.recv(70000)
        except socket.timeout:
            break
        if m == b"":
            break
        mtype, _, _, _, _, _, addr = HDR.unpack(m[:40])
        if mtype != L["DW_PACKET"]:
            continue
        got += 1
        s.send(HDR.pack(L["DW_PACKET"], 1, 1, 0, 0, 0, addr) + m[40:])
        written += 1
    print("packets %d written %d" % (got, written))
    return 0 if arg == errno.EISCONN and nfds == 0 and got == count else 1


def main():
    path, what = sys.argv[2], sys.argv[3]
    a = sys.argv[4:]
    if what == "scribble":
        return do_scribble(path, int(a[0]), a[1])
    if what == "goodwrap":
        return do_goodwrap(path, int(a[0]))
    if what == "seal":
        return do_seal(path)
    if what == "rxlie":
        return do_rxlie(path, int(a[0]), a[1], a[2], a[3])
    if what == "late":
        return do_late(path, int(a[0]), a[1], int(a[2]))
    raise SystemExit("unknown mode " + what)


if __name__ == "__main__":
    sys.exit(main())
