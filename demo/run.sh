#!/usr/bin/env bash
# demo/run.sh: divertd at work on real traffic, in network namespaces: a NAT
# gateway in the manner of natd.
#
#   client (192.0.2.2) ---- gateway (192.0.2.1 | 198.51.100.1) ---- server (198.51.100.2)
#          private network                            public network
#
# The gateway forwards and runs divertd with natd's rule (everything
# crossing its public interface eth1, both ways, to divert port 8668), and
# an unmodified FreeBSD-style divert program, examples/divert_nat.c, under
# LD_PRELOAD=libdivert_shim.so: it gives the client's packets the public
# address 198.51.100.1 and a port of its own, and the answers the client's
# address back.  The server has no route to 192.0.2.0/24, so only the
# translation brings answers back.  The client pings the server, sends it a
# UDP datagram and 1 MiB over TCP (which the server sends back); the server
# prints the address each peer had, then divertctl shows the daemon's view
# (rules with their counts, sockets, counters) and divert_nat its
# translation table (SIGUSR1) and, stopped, its totals.
# Everything is removed on exit.  Needs root; installs its build
# dependencies (Debian 12) and builds into build/ first.
set -eu
cd "$(dirname "$0")/.."
TOP=$PWD
[ "$(id -u)" = 0 ] || { echo "demo: run as root (it creates network namespaces)"; exit 1; }
bash tests/deps.sh
cmake -S . -B build >/dev/null && cmake --build build -j"$(nproc)" >/dev/null

TMP=$(mktemp -d /tmp/divertd-demo.XXXXXX)
C=divertd-demo-client G=divertd-demo-gateway S=divertd-demo-server
PYTHON=/usr/bin/python3
PEER=$TOP/tests/python/nat_peer.py
PIDS=()
cleanup() {
	set +e
	for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
	for ns in $C $G $S; do ip netns del $ns 2>/dev/null; done
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() { echo "demo: $*" >&2; exit 1; }
# until SECONDS COMMAND...: bounded wait for a command to succeed
until_ok() {
	local n=$(( $1 * 20 )); shift
	while ! "$@" 2>/dev/null; do
		n=$((n - 1)); [ "$n" -gt 0 ] || return 1
		sleep 0.05
	done
}
ctl() { ip netns exec $G build/divertctl -s "$SOCK" "$@"; }

for ns in $C $G $S; do
	ip netns del $ns 2>/dev/null || true	# left by a run that was killed
	ip netns add $ns; ip -n $ns link set lo up
done
ip link add eth0 netns $C type veth peer name eth0 netns $G
ip link add eth1 netns $G type veth peer name eth0 netns $S
ip -n $C addr add 192.0.2.2/24 dev eth0
ip -n $G addr add 192.0.2.1/24 dev eth0
ip -n $G addr add 198.51.100.1/24 dev eth1
ip -n $S addr add 198.51.100.2/24 dev eth0
for l in "$C eth0" "$G eth0" "$G eth1" "$S eth0"; do set -- $l; ip -n $1 link set $2 up; done
ip -n $C route add default via 192.0.2.1
ip netns exec $G sysctl -qw net.ipv4.ip_forward=1
# what the server receives, by source address
ip netns exec $S iptables -A INPUT -s 198.51.100.1 -m comment --comment "from 198.51.100.1"
ip netns exec $S iptables -A INPUT ! -s 198.51.100.1 -m comment --comment "from elsewhere"

echo "== the server's routes: none to the client's 192.0.2.0/24"
ip -n $S route | sed 's/^/   /'
echo

cat >"$TMP/divertd.conf" <<'CONF'
# natd's rule: everything crossing the public interface, in and out
100 divert 8668 ip from any to any via eth1
CONF
echo "== /etc/divertd.conf of the gateway:"
sed 's/^/   /' "$TMP/divertd.conf"
echo
echo "== the iptables rules divertd generates for it (divertd -n):"
build/divertd -n -f "$TMP/divertd.conf" | sed -n '/^# iptables:/,/^COMMIT/p' | sed 's/^/   /'
echo

SOCK=$TMP/divertd.sock
ip netns exec $G build/divertd -d -f "$TMP/divertd.conf" -s "$SOCK" 2>"$TMP/divertd.log" &
DPID=$!; PIDS+=($DPID)
until_ok 10 test -e "$SOCK" || fail "divertd did not start: $(cat "$TMP/divertd.log")"
ip netns exec $G env LD_PRELOAD="$TOP/build/libdivert_shim.so" DIVERT_SOCKET="$SOCK" \
	build/divert_nat -v -a 198.51.100.1 8668 >"$TMP/nat.out" 2>&1 &
NPID=$!; PIDS+=($NPID)
until_ok 10 eval 'ctl sockets | grep -q "^ *8668 .*divert_nat"' ||
	fail "divert_nat did not bind: $(cat "$TMP/nat.out")"
rm -f "$TMP/server.ready"
ip netns exec $S $PYTHON "$PEER" serve "$TMP/server.ready" 198.51.100.2 5001 5353 40 \
	>"$TMP/server.out" 2>&1 &
SPID=$!; PIDS+=($SPID)
until_ok 10 test -e "$TMP/server.ready" || fail "the server did not start: $(cat "$TMP/server.out")"

echo "== divertctl list / sockets on the gateway: divert_nat reads port 8668"
ctl list | sed 's/^/   /'
ctl sockets | sed 's/^/   /'
echo

echo "== the client pings the server 3 times through the NAT:"
ip netns exec $C ping -n -c 3 -i 0.2 -W 2 198.51.100.2 | sed 's/^/   /'
echo
echo "== the client sends the server a UDP datagram (port 5353) and waits for the answer:"
ip netns exec $C $PYTHON "$PEER" udp 198.51.100.2 5353 hello-from-192.0.2.2 | sed 's/^/   /'
echo
echo "== the client sends 1 MiB over TCP (port 5001); the server sends it back:"
ip netns exec $C $PYTHON "$PEER" tcp 198.51.100.2 5001 1048576 | sed 's/^/   /'
until_ok 5 grep -q '^tcp from' "$TMP/server.out" || true
echo
echo "== what the server saw: every peer had the gateway's public address"
sed 's/^/   /' "$TMP/server.out"
ip netns exec $S iptables -L INPUT -v -x -n |
	awk -F'/\\* | \\*/' '/\/\* from/ { split($1, f, " "); printf "   %s: %d packets\n", $2, f[1] }'
echo

echo "== divert_nat so far: a line per entry as it was made (-v), then its"
echo "   translation table (kill -USR1):"
kill -USR1 $NPID
until_ok 5 grep -q '^divert_nat: [0-9]* entries$' "$TMP/nat.out" || true
sed 's/^/   /' "$TMP/nat.out"
shown=$(wc -l <"$TMP/nat.out")
echo
echo "== divertctl show: rule 100 with its packet and byte counts, as ipfw show"
echo "   (each packet crossing eth1, both ways; GSO hands TCP over in packets of"
echo "   up to 64 KiB, so 2 MiB of TCP is a few dozen):"
ctl show | sed 's/^/   /'
echo
echo "== divertctl sockets:"
ctl sockets | sed 's/^/   /'
echo
echo "== divertctl stats:"
ctl stats | sed 's/^/   /'
kill -TERM $NPID; wait $NPID || true
echo
echo "== divert_nat, stopped with SIGTERM: its table and its totals"
tail -n +$((shown + 1)) "$TMP/nat.out" | sed 's/^/   /'
kill -TERM $DPID; wait $DPID || true
echo
echo "== divertd's log:"
sed 's/^/   /' "$TMP/divertd.log"
