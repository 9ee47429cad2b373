#!/usr/bin/python3
"""nat_peer.py: both ends of the traffic that crosses divert_nat.

    nat_peer.py serve READY ADDR TCPPORT UDPPORT SECONDS
    nat_peer.py udp ADDR PORT PAYLOAD
    nat_peer.py tcp ADDR PORT NBYTES

serve (the server, outside): listens on ADDR, TCP port TCPPORT and UDP
port UDPPORT, creates the file READY once both are bound, and prints one
line per peer as it saw it:
    udp from 198.51.100.1:61001 hello
        (and answers "reply hello" to that address)
    tcp from 198.51.100.1:61002 received 1048576 sha256 HEX
        (after reading to EOF; then sends the same bytes back and closes)
It stops after SECONDS, or on SIGTERM, exit status 0.

udp (a client): sends PAYLOAD from a connected socket and waits 5 s for the
answer: prints "udp local PORT reply from ADDR:PORT: TEXT" and exits 0, or
"udp local PORT refused" (an ICMP port unreachable came back) and exits 3,
or "udp local PORT no reply" and exits 1.

tcp (a client): sends NBYTES random bytes, shuts its side down, reads what
comes back until EOF: prints "tcp local PORT sent N sha256 HEX received M
sha256 HEX" and exits 0 when both are the same, 1 otherwise.
"""
import hashlib
import os
import select
import signal
import socket
import sys
import threading
import time

TIMEOUT = 10


def out(line):
    print(line, flush=True)


def serve_tcp(conn, peer):
    conn.settimeout(TIMEOUT)
    data = bytearray()
    try:
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        out("tcp from %s:%d received %d sha256 %s" %
            (peer[0], peer[1], len(data), hashlib.sha256(data).hexdigest()))
        conn.sendall(data)
    except OSError as e:
        out("tcp from %s:%d error %s" % (peer[0], peer[1], e))
    finally:
        conn.close()


def serve(ready, addr, tcpport, udpport, seconds):
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind((addr, int(tcpport)))
    t.listen(8)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind((addr, int(udpport)))
    open(ready, "w").close()
    deadline = time.monotonic() + float(seconds)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        r, _, _ = select.select([t, u], [], [], left)
        if u in r:
            data, peer = u.recvfrom(65536)
            out("udp from %s:%d %s" %
                (peer[0], peer[1], data.decode(errors="replace")))
            u.sendto(b"reply " + data, peer)
        if t in r:
            conn, peer = t.accept()
            threading.Thread(target=serve_tcp, args=(conn, peer),
                             daemon=True).start()
    return 0


def udp(addr, port, payload):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((addr, int(port)))
    local = s.getsockname()[1]
    s.settimeout(5)
    s.send(payload.encode())
    try:
        data, peer = s.recvfrom(65536)
    except ConnectionRefusedError:
        out("udp local %d refused" % local)
        return 3
    except socket.timeout:
        out("udp local %d no reply" % local)
        return 1
    out("udp local %d reply from %s:%d: %s" %
        (local, peer[0], peer[1], data.decode(errors="replace")))
    return 0


def tcp(addr, port, nbytes):
    sent = os.urandom(int(nbytes))
    s = socket.create_connection((addr, int(port)), timeout=TIMEOUT)
    local = s.getsockname()[1]
    s.sendall(sent)
    s.shutdown(socket.SHUT_WR)
    got = bytearray()
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    s.close()
    a, b = hashlib.sha256(sent).hexdigest(), hashlib.sha256(got).hexdigest()
    out("tcp local %d sent %d sha256 %s received %d sha256 %s" %
        (local, len(sent), a, len(got), b))
    return 0 if a == b and len(sent) == len(got) else 1


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "serve" and len(args) == 5:
        return serve(*args)
    if cmd == "udp" and len(args) == 3:
        return udp(*args)
    if cmd == "tcp" and len(args) == 3:
        return tcp(*args)
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
