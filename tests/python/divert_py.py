#!/usr/bin/python3
"""divert socket tests in the style of FreeBSD's tests/sys/common/divert.py.

Run under the shim, in the namespace where divertd runs:

    LD_PRELOAD=libdivert_shim.so DIVERT_SOCKET=... \\
        /usr/bin/python3 divert_py.py --test_name NAME --dip ADDR [...]

Python makes the socket the older way, socket(AF_INET, SOCK_RAW,
IPPROTO_DIVERT): CPython creates a socket of family 44 (PF_DIVERT) but
cannot bind it, since it knows no address format for that family.

Each test raises (exit status 1) when a call does not return what FreeBSD's
would, and prints "ok - NAME" otherwise.  Whether the packets arrived is
for the caller to see (the receiver's Icmp InEchos / Icmp6InEchos).
"""

import argparse
import logging
import socket
import sys

logging.getLogger("scapy").setLevel(logging.CRITICAL)
import scapy.all as sc  # noqa: E402  (after quieting scapy)

IPPROTO_DIVERT = 258


def parse_args():
    parser = argparse.ArgumentParser(description="divert socket tester")
    parser.add_argument("--dip", type=str, help="destination packet IP")
    parser.add_argument("--sip", type=str, help="source packet IP")
    parser.add_argument("--divert_port", type=int, default=6668,
                        help="divert port to use")
    parser.add_argument("--via", type=str,
                        help="IPv4 address of the receiving interface")
    parser.add_argument("--tag", type=int, default=0,
                        help="the rule number a diverted packet must carry "
                        "(echo)")
    parser.add_argument("--ready", type=str,
                        help="file to create once bound (echo)")
    parser.add_argument("--test_name", type=str, required=True,
                        help="test name to run")
    return parser.parse_args()


def divert_socket(args):
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_DIVERT)
    s.bind(("0.0.0.0", args.divert_port))
    return s


def send(s, packet, addr):
    data = bytes(packet)
    n = s.sendto(data, addr)
    if n != len(data):
        raise AssertionError("sendto returned %d for %d bytes"
                             % (n, len(data)))


def ipdivert_ip_output_remote_success(args):
    """An IPv4 echo request written as outgoing leaves for args.dip."""
    packet = sc.IP(dst=args.dip) / sc.ICMP(type="echo-request")
    with divert_socket(args) as s:
        send(s, packet, ("0.0.0.0", 0))


def ipdivert_ip6_output_remote_success(args):
    """An IPv6 echo request written as outgoing leaves for args.dip."""
    packet = sc.IPv6(dst=args.dip) / sc.ICMPv6EchoRequest()
    with divert_socket(args) as s:
        send(s, packet, ("0.0.0.0", 0))


def ipdivert_ip_input_local_success(args):
    """An IPv4 echo request written as incoming, to a local address."""
    ip = sc.IP(dst=args.dip, src=args.sip) if args.sip else sc.IP(dst=args.dip)
    packet = ip / sc.ICMP(type="echo-request")
    with divert_socket(args) as s:
        send(s, packet, (args.dip, 0))


def ipdivert_ip6_input_local_success(args):
    """An IPv6 echo request written as incoming: the address names the
    receiving interface by one of its IPv4 addresses (args.via)."""
    packet = sc.IPv6(dst=args.dip, src=args.sip) / sc.ICMPv6EchoRequest()
    with divert_socket(args) as s:
        send(s, packet, (args.via, 0))


def ipdivert_echo(args):
    """Read one diverted echo request and write it back where it was."""
    with divert_socket(args) as s:
        if args.ready:
            open(args.ready, "w").close()
        s.settimeout(10)
        data, addr = s.recvfrom(65536)
        packet = sc.IP(data)
        if not packet.haslayer(sc.ICMP) or packet[sc.ICMP].type != 8:
            raise AssertionError("not an echo request: %r" % packet)
        if packet.len != len(data):
            raise AssertionError("ip_len %d, read %d" % (packet.len,
                                                         len(data)))
        # the tag is a host-order number in sin_port, and CPython turns
        # sin_port through ntohs(), on FreeBSD as here; sendto() turns it
        # back with htons(), so the address goes back as it came
        want = (args.dip, socket.ntohs(args.tag))
        if addr != want:
            raise AssertionError("address %r, expected %r" % (addr, want))
        send(s, data, addr)


def main():
    args = parse_args()
    test_ptr = globals()[args.test_name]
    test_ptr(args)
    print("ok - %s" % args.test_name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
