#!/usr/bin/env bash
# nat.sh: examples/divert_nat as natd on a gateway, on real packets.
#
#   route    the server has no route to the private network: only the
#            translation can bring its answers back
#   icmp     the client's pings through the NAT are answered; the server
#            received them from the public address only
#   udp      a datagram's answer comes back to the client's socket; the
#            server saw the public address and a port of -p's range
#   error    a datagram to a closed port: the server's port unreachable
#            is translated back (the client's socket gets ECONNREFUSED)
#   tcp      1,048,576 bytes to the server and back, byte-exact (sha256 of
#            what was sent, what the server got and what came back); the
#            server saw the public address
#   gateway  the server's pings to the public address itself match no
#            entry, pass unchanged and are answered by the gateway
#   table    SIGUSR1 prints one line per flow: its private end, the public
#            port the server saw, the remote end, TCP closing after FIN;
#            SIGHUP flushes them; divertctl counted the diverted packets
#   exit     SIGTERM: table and totals, exit status 0
#   expiry   with -u 1 -c 1 a UDP entry expires by itself, a TCP one after
#            its FINs (its established timeout stays 7440 s); -v says so
# Topology: client (192.0.2.2) --veth-- gateway (192.0.2.1 | 198.51.100.1,
# forwarding, divertd with "divert 8668 ip from any to any via eth1" and
# divert_nat -a 198.51.100.1) --veth-- server (198.51.100.2, no routes
# beyond its own /24).
. "$(dirname "$0")/lib.sh"
need_root

netns_add C client && netns_add G gw && netns_add S server ||
	{ bad "create namespaces"; summary; exit 1; }
link "$C" eth0 192.0.2.2/24 "$G" eth0 192.0.2.1/24
link "$G" eth1 198.51.100.1/24 "$S" eth0 198.51.100.2/24
ip -n "$C" route add default via 192.0.2.1
ip netns exec "$G" sysctl -qw net.ipv4.ip_forward=1
SOCK=$TMP/divertd.sock
PYTHON=/usr/bin/python3
PEER=$(cd "$(dirname "$0")/../python" && pwd)/nat_peer.py
PUB=198.51.100.1

# wait_line FILE REGEX [SECONDS]: bounded wait for a line in a file
wait_line() {
	for _ in $(seq $(( ${3:-10} * 20 ))); do
		grep -Eq -- "$2" "$1" 2>/dev/null && return 0
		sleep 0.05
	done
	echo "# timed out waiting for '$2' in $1" >&2
	return 1
}

# nat_start OUT ARGS...: divert_nat under the shim on the gateway, waiting
# until it has bound its port.  What divert_prog does, as a simple command,
# so that $! is the program itself and signals reach it.
nat_start() {
	local out=$1; shift
	ip netns exec "$G" env LD_PRELOAD="$PRELOAD" DIVERT_SOCKET="$SOCK" \
		"$PROGS/divert_nat" "$@" >"$out" 2>&1 &
	NAT_PID=$!
	PIDS+=("$NAT_PID")
	wait_line "$out" '^divert_nat: reading divert port 8668' 5
}

# nat_stop: SIGTERM; the program's exit status
nat_stop() {
	kill -TERM "$NAT_PID" 2>/dev/null
	wait_exit "$NAT_PID" 10 || kill -KILL "$NAT_PID" 2>/dev/null
	wait "$NAT_PID"
}

# nat_signal SIGNAL OUT REGEX: send it, wait for what it prints
nat_signal() {
	kill -"$1" "$NAT_PID" && wait_line "$2" "$3" 5
}

# table_row OUT PROTO PRIVATE PUBLIC REMOTE STATE: the last table printed
# (from its last "N entries" line on) has that row
table_row() {
	awk '/^divert_nat: [0-9]+ entries$/ { n = NR } { l[NR] = $0 }
		END { for (i = n; i <= NR; i++) print l[i] }' "$1" |
		awk -v p="$2" -v a="$3" -v u="$4" -v r="$5" -v s="$6" \
			'$1 == p && $2 == a && $3 == u && $4 == r && $5 == s { f = 1 }
			END { exit !f }'
}

# ipt_count NS COMMENT: packets counted by the INPUT rule so named
ipt_count() {
	ip netns exec "$1" iptables -L INPUT -v -x -n |
		awk -v c="/* $2 */" 'index($0, c) { n = $1 } END { print n + 0 }'
}

# in the range -p gives
in_range() { [ "$1" -ge 50000 ] && [ "$1" -le 50099 ]; }

check "route: the server has no route to 192.0.2.0/24" \
	bash -c "! ip -n '$S' route get 192.0.2.2 >/dev/null 2>&1"

# What the server receives, by source: the public address, or anything else.
ip netns exec "$S" iptables -A INPUT -s $PUB -m comment --comment from-public
ip netns exec "$S" iptables -A INPUT ! -s $PUB -m comment --comment from-other
ip netns exec "$S" iptables -A INPUT -p icmp --icmp-type echo-request -s $PUB \
	-m comment --comment echo-from-public

printf '%s\n' '# natd on the public interface, both passes' \
	'100 divert 8668 ip from any to any via eth1' >"$TMP/nat.conf"
if ! start_divertd "$G" "$TMP/nat.conf" "$SOCK"; then
	bad "divertd started"; summary; exit 1
fi

rm -f "$TMP/server.ready"
ip netns exec "$S" "$PYTHON" "$PEER" serve "$TMP/server.ready" 198.51.100.2 5001 5353 120 \
	>"$TMP/server.out" 2>&1 &
SERVER_PID=$!; PIDS+=("$SERVER_PID")
wait_for "$TMP/server.ready" 10 || { bad "server ready"; cat "$TMP/server.out"; summary; exit 1; }

OUT=$TMP/nat.out
if nat_start "$OUT" -v -a $PUB -p 50000-50099 8668; then
	ok "divert_nat bound divert port 8668"
	line=$(ip netns exec "$G" "$BUILD/divertctl" -s "$SOCK" sockets | awk '$1 == 8668')
	check "divertctl sockets shows divert_nat on 8668 ($line)" \
		grep -q divert_nat <<<"$line"

	# --- icmp
	ip netns exec "$C" ping -n -c 3 -i 0.2 -W 2 198.51.100.2 >"$TMP/ping.out" 2>&1
	check "icmp: 3 pings through the NAT answered" test $? -eq 0
	n=$(ipt_count "$S" echo-from-public)
	check "icmp: the server got 3 echo requests from $PUB ($n)" test "$n" -eq 3
	id=$(awk '$2 == "new" && $3 == "icmp" { split($4, a, ":"); print a[2]; exit }' "$OUT")
	icmp_pub=$(awk '$2 == "new" && $3 == "icmp" { split($6, a, ":"); print a[2]; exit }' "$OUT")
	check "icmp: -v showed the new entry, echo id $id as $PUB:$icmp_pub" \
		grep -Eq "^divert_nat: new icmp 192\.0\.2\.2:$id as $PUB:$icmp_pub to 198\.51\.100\.2$" "$OUT"

	# --- udp
	r=$(ip netns exec "$C" "$PYTHON" "$PEER" udp 198.51.100.2 5353 hello-nat 2>&1)
	check "udp: the answer came back through the NAT ($r)" \
		grep -Eq '^udp local [0-9]+ reply from 198\.51\.100\.2:5353: reply hello-nat$' <<<"$r"
	udp_local=$(awk '{ print $3 }' <<<"$r")
	saw=$(awk '$1 == "udp" && $4 == "hello-nat" { print $3 }' "$TMP/server.out")
	udp_pub=${saw#"$PUB":}
	check "udp: the server saw $PUB and a port of 50000-50099 ($saw)" \
		eval 'test "${saw%:*}" = $PUB && in_range "$udp_pub"'

	# --- error: the port unreachable, translated back
	r=$(ip netns exec "$C" "$PYTHON" "$PEER" udp 198.51.100.2 5999 nobody 2>&1)
	check "error: port unreachable translated back: the client's socket refused ($r)" \
		grep -Eq '^udp local [0-9]+ refused$' <<<"$r"

	# --- tcp: 1 MiB there and back
	r=$(ip netns exec "$C" "$PYTHON" "$PEER" tcp 198.51.100.2 5001 1048576 2>&1)
	check "tcp: 1048576 bytes there and back, byte-exact ($r)" \
		grep -Eq '^tcp local [0-9]+ sent 1048576 sha256 ([0-9a-f]{64}) received 1048576 sha256 \1$' <<<"$r"
	tcp_local=$(awk '{ print $3 }' <<<"$r")
	sum=$(awk '{ print $7 }' <<<"$r")
	wait_line "$TMP/server.out" '^tcp from ' 5
	saw=$(awk '$1 == "tcp" { print $3 }' "$TMP/server.out")
	tcp_pub=${saw#"$PUB":}
	check "tcp: the server saw $PUB and a port of 50000-50099 ($saw)" \
		eval 'test "${saw%:*}" = $PUB && in_range "$tcp_pub"'
	check "tcp: the server received the same 1048576 bytes" \
		grep -qx "tcp from $saw received 1048576 sha256 $sum" "$TMP/server.out"

	# --- gateway: not for a flow, so unchanged
	ip netns exec "$S" ping -n -c 2 -i 0.2 -W 2 $PUB >/dev/null 2>&1
	check "gateway: pings to $PUB itself pass unchanged and are answered" test $? -eq 0

	n=$(ipt_count "$S" from-other)
	check "the server received nothing from an address other than $PUB ($n)" test "$n" -eq 0
	n=$(ipt_count "$S" from-public)
	check "... and $n packets from $PUB" test "$n" -gt 0

	# --- table
	if nat_signal USR1 "$OUT" '^divert_nat: 4 entries$'; then
		ok "table: SIGUSR1 printed 4 entries"
		sed -n '/^divert_nat: 4 entries$/,$p' "$OUT" | sed 's/^/# /'
		check "table: icmp 192.0.2.2:$id as $icmp_pub to 198.51.100.2, two-way" \
			table_row "$OUT" icmp "192.0.2.2:$id" "$icmp_pub" 198.51.100.2 two-way
		check "table: udp 192.0.2.2:$udp_local as $udp_pub (what the server saw), two-way" \
			table_row "$OUT" udp "192.0.2.2:$udp_local" "$udp_pub" 198.51.100.2:5353 two-way
		check "table: udp to the closed port 5999, one-way" \
			grep -Eq '^udp +192\.0\.2\.2:[0-9]+ +500[0-9]{2} +198\.51\.100\.2:5999 +one-way ' "$OUT"
		check "table: tcp 192.0.2.2:$tcp_local as $tcp_pub (what the server saw), closing after FIN" \
			table_row "$OUT" tcp "192.0.2.2:$tcp_local" "$tcp_pub" 198.51.100.2:5001 closing
	else
		bad "table: SIGUSR1 printed 4 entries"; sed 's/^/# /' "$OUT" | tail -20
	fi
	# every packet the table counts was diverted by rule 100
	show=$(ip netns exec "$G" "$BUILD/divertctl" -s "$SOCK" show | awk '$1 == "00100" { print $2 }')
	seen=$(sed -n '/^divert_nat: 4 entries$/,$p' "$OUT" |
		awk '$1 ~ /^(tcp|udp|icmp)$/ { n += $6 + $7 } END { print n + 0 }')
	check "divertctl show: rule 100 diverted ${show:-none} packets, the table counts $seen" \
		test "${show:-0}" -ge "$seen" -a "$seen" -gt 0
	check "table: SIGHUP flushes the 4 entries" \
		nat_signal HUP "$OUT" '^divert_nat: SIGHUP: flushing 4 entries$'
	check "table: ... and -v named each" \
		test "$(grep -c '^divert_nat: flushed ' "$OUT")" -eq 4
	check "table: SIGUSR1 after the flush: 0 entries" \
		nat_signal USR1 "$OUT" '^divert_nat: 0 entries$'

	# --- exit
	nat_stop
	check "exit: SIGTERM, exit status 0" test $? -eq 0
	tail -1 "$OUT" | sed 's/^/# /'
	check "exit: totals: 1 ICMP error, nothing dropped, 4 entries made and flushed" \
		grep -Eq '^divert_nat: translated [0-9]+ out, [0-9]+ in \(1 ICMP errors\); .*dropped 0 for want of a port, 0 untranslatable; entries 4 made, 0 expired, 4 flushed$' "$OUT"
else
	bad "divert_nat bound divert port 8668"; sed 's/^/# /' "$OUT"
fi

# --- expiry: short timeouts, no traffic needed to expire
OUT=$TMP/expiry.out
if nat_start "$OUT" -v -a $PUB -u 1 -c 1 8668; then
	r=$(ip netns exec "$C" "$PYTHON" "$PEER" udp 198.51.100.2 5353 short-lived 2>&1)
	check "expiry: a UDP round trip ($r)" grep -q 'reply short-lived$' <<<"$r"
	local_port=$(awk '{ print $3 }' <<<"$r")
	check "expiry: the UDP entry expires by itself after 1 s idle" \
		wait_line "$OUT" "^divert_nat: expired udp 192\.0\.2\.2:$local_port as $PUB:[0-9]+ to 198\.51\.100\.2:5353 \(idle [12]s\)$" 10
	r=$(ip netns exec "$C" "$PYTHON" "$PEER" tcp 198.51.100.2 5001 10000 2>&1)
	check "expiry: a TCP exchange of 10000 bytes ($r)" \
		grep -Eq '^tcp local [0-9]+ sent 10000 sha256 ([0-9a-f]{64}) received 10000 sha256 \1$' <<<"$r"
	local_port=$(awk '{ print $3 }' <<<"$r")
	check "expiry: the TCP entry expires 1 s after its FINs (-t stays 7440 s)" \
		wait_line "$OUT" "^divert_nat: expired tcp 192\.0\.2\.2:$local_port as $PUB:[0-9]+ to 198\.51\.100\.2:5001 \(idle [12]s\)$" 10
	check "expiry: SIGUSR1: 0 entries left" nat_signal USR1 "$OUT" '^divert_nat: 0 entries$'
	nat_stop
	check "expiry: SIGTERM, exit status 0" test $? -eq 0
	check "expiry: totals: 2 made, 2 expired" \
		grep -Eq 'entries 2 made, 2 expired, 0 flushed$' "$OUT"
else
	bad "expiry: divert_nat bound divert port 8668"; sed 's/^/# /' "$OUT"
fi

kill -TERM "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null
stop_divertd
rc=$?
check "divertd exits 0 on SIGTERM ($rc)" test $rc -eq 0
[ $rc -eq 0 ] || sed 's/^/# divertd: /' "$TMP/divertd-$G.log"
summary
