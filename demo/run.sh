#!/usr/bin/env bash
# demo/run.sh: divertd at work on real traffic, in network namespaces.
#
#   client (192.0.2.2) ---- gateway (192.0.2.1 | 198.51.100.1) ---- server (198.51.100.2)
#
# The gateway forwards, runs divertd with two ipfw rules, and an unmodified
# FreeBSD-style divert program (examples/divert_count.c, run under
# LD_PRELOAD=libdivert_shim.so) reads every diverted packet, prints it,
# writes it back and counts.  The client pings the server and sends it UDP;
# each packet is shown as the program sees it, then the program's totals and
# divertctl's view of the daemon (rules with their counts, sockets,
# counters).
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
PIDS=()
cleanup() {
	set +e
	for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
	for ns in $C $G $S; do ip netns del $ns 2>/dev/null; done
	rm -rf "$TMP"
}
trap cleanup EXIT
for ns in $C $G $S; do ip netns add $ns; ip -n $ns link set lo up; done
ip link add eth0 netns $C type veth peer name eth0 netns $G
ip link add eth1 netns $G type veth peer name eth0 netns $S
ip -n $C addr add 192.0.2.2/24 dev eth0
ip -n $G addr add 192.0.2.1/24 dev eth0
ip -n $G addr add 198.51.100.1/24 dev eth1
ip -n $S addr add 198.51.100.2/24 dev eth0
for l in "$C eth0" "$G eth0" "$G eth1" "$S eth0"; do set -- $l; ip -n $1 link set $2 up; done
ip -n $C route add default via 192.0.2.1
ip -n $S route add default via 198.51.100.1
ip netns exec $G sysctl -qw net.ipv4.ip_forward=1

cat >"$TMP/divertd.conf" <<'CONF'
# what enters the gateway from the client's network goes to port 8668
100 divert 8668 ip from 192.0.2.0/24 to any in recv eth0
# and everything else passes untouched
200 allow ip from any to any
CONF
echo "== /etc/divertd.conf of the gateway:"
cat "$TMP/divertd.conf"
echo
echo "== the iptables rules divertd generates for it (divertd -n):"
build/divertd -n -f "$TMP/divertd.conf" | sed -n '/^# iptables:/,/^COMMIT/p'
echo

SOCK=$TMP/divertd.sock
ip netns exec $G build/divertd -d -f "$TMP/divertd.conf" -s "$SOCK" 2>"$TMP/divertd.log" &
DPID=$!; PIDS+=($DPID)
for _ in $(seq 100); do [ -e "$SOCK" ] && break; sleep 0.05; done
ip netns exec $G env LD_PRELOAD="$TOP/build/libdivert_shim.so" DIVERT_SOCKET="$SOCK" \
	build/divert_count -v 8668 >"$TMP/prog.out" 2>&1 &
PPID_=$!; PIDS+=($PPID_)
for _ in $(seq 100); do
	ip netns exec $G build/divertctl -s "$SOCK" sockets 2>/dev/null | grep -q 8668 && break
	sleep 0.05
done
echo "== divertctl list / sockets on the gateway:"
ip netns exec $G build/divertctl -s "$SOCK" list | sed 's/^/   /'
ip netns exec $G build/divertctl -s "$SOCK" sockets | sed 's/^/   /'
echo

echo "== client pings the server 5 times through the gateway:"
ip netns exec $C ping -n -c 5 -i 0.2 -W 2 198.51.100.2 | sed 's/^/   /'
echo
echo "== client sends 3 UDP datagrams to the server (port 9):"
for i in 1 2 3; do
	ip netns exec $C bash -c "echo hello-$i >/dev/udp/198.51.100.2/9" 2>/dev/null || true
done
# the program has seen all 8 (5 pings, 3 datagrams) once rule 100 counted 8
for _ in $(seq 100); do
	n=$(ip netns exec $G build/divertctl -s "$SOCK" show 100 | awk '{ print $2 }')
	[ "${n:-0}" -ge 8 ] && break
	sleep 0.05
done
echo
echo "== divertctl show: each rule with its packet and byte counts, as ipfw show"
echo "   (100 diverted what came in from the client; 200 counts the rest of each"
echo "   pass: what the program wrote back, in and again out, the replies, and"
echo "   the hosts' own IPv6 neighbour discovery):"
ip netns exec $G build/divertctl -s "$SOCK" show | sed 's/^/   /'
echo
echo "== divertctl stats:"
ip netns exec $G build/divertctl -s "$SOCK" stats | sed 's/^/   /'
kill -TERM "$PPID_"; wait "$PPID_" || true
echo
echo "== what the divert program read, and its totals:"
sed 's/^/   /' "$TMP/prog.out"
kill -TERM "$DPID"; wait "$DPID" || true
echo
echo "== divertd's log:"
sed 's/^/   /' "$TMP/divertd.log"
