#!/usr/bin/env bash
# regression.sh: FreeBSD's divert regression scenarios on real packets.
#
#   1, 2  incoming echo requests diverted; the program drops / writes back
#   3, 4  outgoing echo replies diverted; the program drops / writes back
#   5     a router: rule 100 diverts incoming echo requests to one port,
#         rule 200 outgoing echo requests to another; ping across
#   6     the socket API (div_sockapi)
#   7     fabricated echo requests written as outgoing and as incoming
#   and the daemon's contract: lifecycle, refusal to run twice, cleanup.
# Topology: peer (192.0.2.2) --veth-- host (192.0.2.1, runs divertd),
# and for 5: a (192.0.2.2) -- router (192.0.2.1 | 198.51.100.1) -- b (198.51.100.2).
. "$(dirname "$0")/lib.sh"
need_root

netns_add H host && netns_add P peer || { bad "create namespaces"; summary; exit 1; }
link "$H" eth0 192.0.2.1/24 "$P" eth0 192.0.2.2/24
SOCK=$TMP/divertd.sock

# scenario NAME RULES PROG EXPECT_PING: one divert program, one ping
ping_scenario() {
	local name=$1 rules=$2 prog=$3 expect=$4 out rc
	printf '%s\n' "$rules" >"$TMP/$name.conf"
	if ! start_divertd "$H" "$TMP/$name.conf" "$SOCK"; then
		bad "$name: divertd started"; return
	fi
	rm -f "$TMP/$name.ready"
	divert_prog "$H" "$SOCK" "$prog" 8668 10 3 "$TMP/$name.ready" >"$TMP/$name.out" 2>&1 &
	local prog_pid=$!
	PIDS+=($prog_pid)
	if ! wait_for "$TMP/$name.ready" 5; then
		bad "$name: program bound"; cat "$TMP/$name.out"; stop_divertd; return
	fi
	ip netns exec "$P" ping -n -c 1 -W 2 192.0.2.1 >"$TMP/$name.ping" 2>&1
	rc=$?
	wait "$prog_pid"
	out=$(grep -c '^pkt ' "$TMP/$name.out")
	if [ "$expect" = success ]; then
		check "$name: ping succeeds" test "$rc" -eq 0
	else
		check "$name: ping fails" test "$rc" -ne 0
	fi
	check "$name: the program saw exactly one packet (saw $out)" test "$out" -eq 1
	stop_divertd
	check "$name: divertd exits 0 on SIGTERM" test $? -eq 0
}

ping_scenario s1-in-drop "100 divert 8668 icmp from any to any in icmptypes 8" div_sink fail
ping_scenario s2-in-echo "100 divert 8668 icmp from any to any in icmptypes 8" div_echo success
ping_scenario s3-out-drop "100 divert 8668 icmp from any to any out icmptypes 0" div_sink fail
ping_scenario s4-out-echo "100 divert 8668 icmp from any to any out icmptypes 0" div_echo success

# The address a program reads: tag 100, the receiving interface's address
# and name for incoming packets (FreeBSD div_input).
check "s2: incoming packet read with tag 100, 192.0.2.1, eth0" \
	grep -q 'tag 100 addr 192.0.2.1 if eth0' "$TMP/s2-in-echo.out"
check "s4: outgoing packet read with tag 100, INADDR_ANY, no interface" \
	grep -Eq 'tag 100 addr 0.0.0.0 if( |$)' "$TMP/s4-out-echo.out"

# --- 5: a router with two divert rules in a row --------------------------
netns_add A a && netns_add R router && netns_add B b || { bad "create router namespaces"; summary; exit 1; }
link "$A" eth0 192.0.2.2/24 "$R" eth0 192.0.2.1/24
link "$R" eth1 198.51.100.1/24 "$B" eth0 198.51.100.2/24
ip -n "$A" route add default via 192.0.2.1
ip -n "$B" route add default via 198.51.100.1
ip netns exec "$R" sysctl -qw net.ipv4.ip_forward=1
cat >"$TMP/s5.conf" <<'CONF'
100 divert 1000 icmp from any to any in icmptypes 8
200 divert 2000 icmp from any to any out icmptypes 8
CONF
RSOCK=$TMP/router.sock
if start_divertd "$R" "$TMP/s5.conf" "$RSOCK"; then
	divert_prog "$R" "$RSOCK" div_echo 1000 10 3 "$TMP/s5a.ready" >"$TMP/s5a.out" 2>&1 &
	pa=$!; PIDS+=($pa)
	divert_prog "$R" "$RSOCK" div_echo 2000 10 3 "$TMP/s5b.ready" >"$TMP/s5b.out" 2>&1 &
	pb=$!; PIDS+=($pb)
	if wait_for "$TMP/s5a.ready" 5 && wait_for "$TMP/s5b.ready" 5; then
		ip netns exec "$A" ping -n -c 1 -W 2 198.51.100.2 >"$TMP/s5.ping" 2>&1
		check "s5: ping across the router succeeds" test $? -eq 0
		wait "$pa"; wait "$pb"
		n1=$(grep -c '^pkt ' "$TMP/s5a.out"); n2=$(grep -c '^pkt ' "$TMP/s5b.out")
		check "s5: the rule-100 program saw one packet (saw $n1)" test "$n1" -eq 1
		check "s5: the rule-200 program saw one packet (saw $n2)" test "$n2" -eq 1
		check "s5: rule 100 read it incoming on eth0" grep -q 'tag 100 addr 192.0.2.1 if eth0' "$TMP/s5a.out"
		check "s5: rule 200 read it outgoing with the receiving interface" grep -Eq 'tag 200 addr 0.0.0.0 if eth0' "$TMP/s5b.out"
	else
		bad "s5: programs bound"
	fi
	stop_divertd
else
	bad "s5: divertd started"
fi

# --- 7 on the router: an echo request written as incoming on eth0 (named
# in sin_zero, tag 0, no divert rule left to catch it) is forwarded to b
printf '%s\n' "100 count ip from any to any" >"$TMP/s7r.conf"
if start_divertd "$R" "$TMP/s7r.conf" "$RSOCK"; then
	before=$(icmp_in_echos "$B")
	divert_prog "$R" "$RSOCK" div_inject in 192.0.2.2 198.51.100.2 2 eth0 >"$TMP/s7r.out" 2>&1
	for _ in $(seq 40); do [ "$(icmp_in_echos "$B")" -ge $((before + 2)) ] && break; sleep 0.05; done
	after=$(icmp_in_echos "$B")
	check "s7: echo requests written as incoming on a named interface are forwarded (b's InEchos +$((after - before)))" \
		test $((after - before)) -eq 2
	stop_divertd
else
	bad "s7 router: divertd started"
fi

# --- 6 and 7 share one daemon --------------------------------------------
printf '%s\n' "100 count ip from any to any" >"$TMP/s6.conf"
if start_divertd "$H" "$TMP/s6.conf" "$SOCK"; then
	if divert_prog "$H" "$SOCK" div_sockapi 7000 >"$TMP/s6.out" 2>&1; then
		ok "s6: socket API ($(tail -1 "$TMP/s6.out"))"
	else
		bad "s6: socket API"; grep -v '^ok' "$TMP/s6.out" | sed 's/^/# /'
	fi

	# creating a divert socket takes root: EPERM for anyone else
	if command -v setpriv >/dev/null; then
		out=$(ip netns exec "$H" env LD_PRELOAD="$PRELOAD" DIVERT_SOCKET="$SOCK" \
			setpriv --reuid=65534 --regid=65534 --clear-groups "$PROGS/div_nonroot" 2>&1)
		rc=$?
		check "s6: socket() as an unprivileged user fails with EPERM ($(echo $out))" test "$rc" -eq 0
	else
		skip "s6: EPERM for non-root (setpriv missing)"
	fi

	before=$(icmp_in_echos "$P")
	divert_prog "$H" "$SOCK" div_inject out 192.0.2.1 192.0.2.2 3 >"$TMP/s7out.out" 2>&1
	for _ in $(seq 40); do [ "$(icmp_in_echos "$P")" -ge $((before + 3)) ] && break; sleep 0.05; done
	after=$(icmp_in_echos "$P")
	check "s7: 3 echo requests written as outgoing reach the peer (InEchos +$((after - before)))" \
		test $((after - before)) -eq 3
	before=$after
	divert_prog "$H" "$SOCK" div_inject out 0.0.0.0 192.0.2.2 2 >/dev/null 2>&1
	for _ in $(seq 40); do [ "$(icmp_in_echos "$P")" -ge $((before + 2)) ] && break; sleep 0.05; done
	after=$(icmp_in_echos "$P")
	check "s7: written as outgoing with source 0.0.0.0, the stack fills it in (InEchos +$((after - before)))" \
		test $((after - before)) -eq 2

	before=$(icmp_in_echos "$H")
	ip netns exec "$H" iptables -A INPUT -i eth0 -p icmp --icmp-type 8 -m comment --comment s7-eth0
	divert_prog "$H" "$SOCK" div_inject in 192.0.2.2 192.0.2.1 3 >"$TMP/s7in.out" 2>&1
	for _ in $(seq 40); do [ "$(icmp_in_echos "$H")" -ge $((before + 3)) ] && break; sleep 0.05; done
	after=$(icmp_in_echos "$H")
	check "s7: 3 echo requests written as incoming reach the local stack (InEchos +$((after - before)))" \
		test $((after - before)) -eq 3
	n=$(ip netns exec "$H" iptables -L INPUT -v -x -n | awk '/s7-eth0/ { print $1 }')
	check "s7: ... received on eth0, the interface owning 192.0.2.1 ($n seen there)" test "$n" = 3
	ip netns exec "$H" iptables -F INPUT

	# an incoming write with a bad IPv4 header checksum is silently dropped
	before=$(icmp_in_echos "$H")
	divert_prog "$H" "$SOCK" div_inject inbad 192.0.2.2 192.0.2.1 2 >"$TMP/s7bad.out" 2>&1
	check "s7: writing a bad-checksum packet as incoming succeeds ($(cat "$TMP/s7bad.out"))" \
		grep -q '^sent 2$' "$TMP/s7bad.out"
	divert_prog "$H" "$SOCK" div_inject in 192.0.2.2 192.0.2.1 1 >/dev/null 2>&1
	for _ in $(seq 40); do [ "$(icmp_in_echos "$H")" -ge $((before + 1)) ] && break; sleep 0.05; done
	after=$(icmp_in_echos "$H")
	check "s7: ... but only the good one that followed arrives (InEchos +$((after - before)))" \
		test $((after - before)) -eq 1

	# what sendto() returns for new packets that cannot be delivered
	ip -n "$H" route add unreachable 203.0.113.0/24
	before=$(icmp_in_echos "$P")
	if divert_prog "$H" "$SOCK" div_errors 192.0.2.1 192.0.2.2 198.51.100.77 203.0.113.9 >"$TMP/errors.out" 2>&1; then
		ok "write errors: ENETUNREACH, EHOSTUNREACH, EMSGSIZE, EADDRNOTAVAIL ($(tail -1 "$TMP/errors.out"))"
	else
		bad "write errors"; grep -v '^ok' "$TMP/errors.out" | sed 's/^/# /'
	fi
	for _ in $(seq 40); do [ "$(icmp_in_echos "$P")" -ge $((before + 2)) ] && break; sleep 0.05; done
	after=$(icmp_in_echos "$P")
	check "the 84-byte and the fragmented 3000-byte new packets reach the peer (InEchos +$((after - before)))" \
		test $((after - before)) -eq 2

	# a second daemon on the same socket refuses, with a message
	ip netns exec "$H" "$DIVERTD" -d -f "$TMP/s6.conf" -s "$SOCK" >"$TMP/second.log" 2>&1
	rc=$?
	check "a second divertd on the same socket exits 1" test "$rc" -eq 1
	check "... saying why" grep -q "already listening on $SOCK" "$TMP/second.log"

	stop_divertd
	check "divertd exits 0 on SIGTERM" test $? -eq 0
	check "s7: the bad checksums were counted" grep -q ' 2 bad checksums' "$TMP/divertd-$H.log"
	check "the socket file is removed" test ! -e "$SOCK"
	check "no divertd chain is left (iptables)" \
		bash -c "! ip netns exec '$H' iptables-save -t mangle | grep -q divertd"
	check "no divertd chain is left (ip6tables)" \
		bash -c "! ip netns exec '$H' ip6tables-save -t mangle | grep -q divertd"
	check "the injection veth is removed" \
		bash -c "! ip -n '$H' link show divertd0 >/dev/null 2>&1"
else
	bad "s6: divertd started"
fi

summary
