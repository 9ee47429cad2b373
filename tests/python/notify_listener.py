#!/usr/bin/python3
"""notify_listener.py: stand in for systemd's notification socket.

    notify_listener.py SOCKET OUTFILE SECONDS

Binds a datagram socket at SOCKET and writes each message it receives to
OUTFILE as one line (newlines inside a message become ';'), for at most
SECONDS; also notes whether the daemon's client socket existed when each
message came, if $DIVERT_SOCKET_CHECK names it ("sock=yes|no").
"""
import os
import socket
import sys
import time


def main():
    path, out, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    check = os.environ.get("DIVERT_SOCKET_CHECK")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    deadline = time.monotonic() + seconds
    with open(out, "a", buffering=1) as f:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            s.settimeout(left)
            try:
                msg = s.recv(4096).decode(errors="replace")
            except socket.timeout:
                break
            note = ""
            if check:
                note = " sock=%s" % ("yes" if os.path.exists(check) else "no")
            f.write(msg.replace("\n", ";") + note + "\n")


if __name__ == "__main__":
    main()
