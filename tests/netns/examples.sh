#!/usr/bin/env bash
# examples.sh: the programs in examples/ on real packets, as a user runs
# them (under the shim, stopped with SIGTERM or SIGINT), and the installed
# pkg-config file.
#
#   count    divert_count counts exactly the pings that crossed it, per
#            protocol and direction, packets and bytes (IPv4 both ways,
#            IPv6 only in: the directions can't be swapped unseen); -v
#            prints a line per packet; the pings still succeed
#   rewrite  divert_rewrite sets TTL/hop limit and DSCP: counters matching
#            the new values (-m ttl / -m hl, -m dscp) count every packet
#            where it is received, and the pings succeed (an incoming IPv4
#            packet with a wrong header checksum would be dropped, so this
#            checks both the incremental and the -c checksum)
#   filter   divert_filter drops what matches -p, -P, -s (all of them when
#            several are given) and passes the rest: a matching ping fails
#            and is never received, matching UDP datagrams never reach the
#            listening socket, the others do; its summary counts both
#   pkg-config  after cmake --install, pkg-config --cflags --libs
#            divert_shim builds an example linked against the shim, which
#            then counts pings without LD_PRELOAD
# Topology: peer (192.0.2.2, 2001:db8::2) --veth-- host (192.0.2.1,
# 2001:db8::1, runs divertd and the examples).
. "$(dirname "$0")/lib.sh"
need_root

netns_add H host && netns_add P peer || { bad "create namespaces"; summary; exit 1; }
link "$H" eth0 192.0.2.1/24 "$P" eth0 192.0.2.2/24
ip -n "$H" addr add 2001:db8::1/64 dev eth0 nodad
ip -n "$P" addr add 2001:db8::2/64 dev eth0 nodad
SOCK=$TMP/divertd.sock
PYTHON=/usr/bin/python3

# wait_line FILE REGEX [SECONDS]: bounded wait for a line in a file
wait_line() {
	for _ in $(seq $(( ${3:-10} * 20 ))); do
		grep -Eq -- "$2" "$1" 2>/dev/null && return 0
		sleep 0.05
	done
	echo "# timed out waiting for '$2' in $1" >&2
	return 1
}

# example_start NAME OUT ARGS...: an example under the shim in the host
# namespace, stdout and stderr in OUT; waits until it has bound its port.
# What divert_prog does, but as a simple command, so that $! is the
# program itself (ip netns exec and env exec it) and a signal reaches it.
example_start() {
	local name=$1 out=$2; shift 2
	ip netns exec "$H" env LD_PRELOAD="$PRELOAD" DIVERT_SOCKET="$SOCK" \
		"$PROGS/$name" "$@" >"$out" 2>&1 &
	EX_PID=$!
	PIDS+=("$EX_PID")
	wait_line "$out" "^$name: reading divert port" 5
}

# example_stop [SIGNAL]: stop it as a user does (SIGTERM or SIGINT); the
# program's exit status
example_stop() {
	kill -"${1:-TERM}" "$EX_PID" 2>/dev/null
	wait_exit "$EX_PID" 5 || kill -KILL "$EX_PID" 2>/dev/null
	wait "$EX_PID"
}

# with_rules NAME RULES: divertd in the host namespace with these rules
with_rules() {
	printf '%s\n' "$2" >"$TMP/$1.conf"
	start_divertd "$H" "$TMP/$1.conf" "$SOCK"
}

# ipt_count NS COMMAND COMMENT: packets counted by the INPUT rule so named
ipt_count() {
	ip netns exec "$1" "$2" -L INPUT -v -x -n |
		awk -v c="/* $3 */" 'index($0, c) { n = $1 } END { print n + 0 }'
}

# A UDP listener: prints "PORT PAYLOAD" per datagram received, exits 0 on
# the payload "end" (sent last, on a port nothing drops: every datagram
# that was going to arrive has), 1 after 10 s without it.
cat >"$TMP/udp_listen.py" <<'PY'
import select, socket, sys, time
ready, binds = sys.argv[1], sys.argv[2:]
socks = []
for b in binds:
    addr, port = b.rsplit(":", 1)
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET,
                      socket.SOCK_DGRAM)
    s.bind((addr, int(port)))
    socks.append(s)
open(ready, "w").close()
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    r, _, _ = select.select(socks, [], [], max(0, deadline - time.monotonic()))
    for s in r:
        data = s.recv(65536)
        print(s.getsockname()[1], data.decode(errors="replace"), flush=True)
        if data == b"end":
            sys.exit(0)
sys.exit(1)
PY

# udp_listen OUT ADDR:PORT...: the listener in the host namespace
udp_listen() {
	local out=$1; shift
	rm -f "$TMP/udp.ready"
	ip netns exec "$H" "$PYTHON" "$TMP/udp_listen.py" "$TMP/udp.ready" "$@" >"$out" 2>&1 &
	UDP_PID=$!
	PIDS+=("$UDP_PID")
	wait_for "$TMP/udp.ready" 5
}

# udp_send ADDR PORT PAYLOAD: one datagram from the peer
udp_send() {
	ip netns exec "$P" bash -c 'printf %s "$3" >"/dev/udp/$1/$2"' _ "$@"
}

# udp_got OUT PORT PAYLOAD: the listener received exactly this datagram
udp_got() { grep -qx -- "$2 $3" "$1"; }

# --- count ---------------------------------------------------------------
if with_rules count "100 divert 8668 icmp from any to any
200 divert 8668 ipv6-icmp from any to any in icmptypes 128"; then
	if example_start divert_count "$TMP/count.out" -v 8668; then
		ip netns exec "$P" ping -n -c 3 -i 0.2 -W 2 192.0.2.1 >/dev/null
		check "count: 3 pings across divert_count succeed" test $? -eq 0
		ip netns exec "$P" ping -6 -n -c 2 -i 0.2 -W 2 2001:db8::1 >/dev/null
		check "count: 2 IPv6 pings succeed" test $? -eq 0
		example_stop TERM
		check "count: exits 0 on SIGTERM" test $? -eq 0
		sed 's/^/# /' "$TMP/count.out"
		check "count: summary: 3 echo requests in, 252 bytes" \
			grep -Eqx 'ip/icmp +in +3 +252' "$TMP/count.out"
		check "count: summary: 3 echo replies out, 252 bytes" \
			grep -Eqx 'ip/icmp +out +3 +252' "$TMP/count.out"
		check "count: summary: 2 IPv6 echo requests in, 208 bytes" \
			grep -Eqx 'ip6/ipv6-icmp +in +2 +208' "$TMP/count.out"
		check "count: summary: 8 packets, 712 bytes in all, nothing else" \
			test "$(grep -Ec '^ip6?/' "$TMP/count.out")" -eq 3 -a \
			"$(grep -Ec '^total +8 +712$' "$TMP/count.out")" -eq 1
		n=$(grep -Ec '^(in |out) ip6?/' "$TMP/count.out")
		check "count: -v printed a line per packet ($n)" test "$n" -eq 8
		check "count: -v shows the incoming packet with its rule and interface" \
			grep -qx 'in  ip/icmp 84 bytes 192.0.2.2 > 192.0.2.1 rule 100 via eth0' "$TMP/count.out"
		check "count: -v shows the outgoing reply" \
			grep -qx 'out ip/icmp 84 bytes 192.0.2.1 > 192.0.2.2 rule 100' "$TMP/count.out"
	else
		bad "count: divert_count bound its port"; sed 's/^/# /' "$TMP/count.out"
	fi
	stop_divertd
else
	bad "count: divertd started"
fi

# --- rewrite -------------------------------------------------------------
# Counters where the packets are received: how many carry the new values.
ipt_rules() { # ipt_rules NS: IPv4 and IPv6 counters in INPUT, reset
	ip netns exec "$1" iptables -F INPUT
	ip netns exec "$1" ip6tables -F INPUT
	ip netns exec "$1" iptables -A INPUT -p icmp -m ttl --ttl-eq 42 -m comment --comment ttl42
	ip netns exec "$1" iptables -A INPUT -p icmp -m dscp --dscp 46 -m comment --comment dscp46
	ip netns exec "$1" iptables -A INPUT -p icmp -m ecn --ecn-ip-ect 1 -m comment --comment ect1
	ip netns exec "$1" ip6tables -A INPUT -p ipv6-icmp -m hl --hl-eq 42 -m comment --comment hl42
	ip netns exec "$1" ip6tables -A INPUT -p ipv6-icmp -m dscp --dscp 46 -m comment --comment dscp46
}

# rewrite_in NAME ARGS...: the peer's echo requests rewritten as the host
# receives them; the IPv4 ones leave the peer with ECN codepoint ECT(1)
rewrite_in() {
	local name=$1; shift
	ipt_rules "$H"
	if example_start divert_rewrite "$TMP/$name.out" "$@" 8668; then
		ip netns exec "$P" ping -n -c 3 -i 0.2 -W 2 -Q 1 192.0.2.1 >/dev/null
		check "$name: 3 pings succeed (the rewritten header's checksum is valid)" test $? -eq 0
		ip netns exec "$P" ping -6 -n -c 2 -i 0.2 -W 2 2001:db8::1 >/dev/null
		check "$name: 2 IPv6 pings succeed" test $? -eq 0
		example_stop TERM
		check "$name: exits 0 on SIGTERM" test $? -eq 0
		check "$name: the host received 3 echo requests with TTL 42 ($(ipt_count "$H" iptables ttl42))" \
			test "$(ipt_count "$H" iptables ttl42)" -eq 3
		check "$name: ... and DSCP 46 ($(ipt_count "$H" iptables dscp46))" \
			test "$(ipt_count "$H" iptables dscp46)" -eq 3
		check "$name: ... and their ECN bits as sent ($(ipt_count "$H" iptables ect1))" \
			test "$(ipt_count "$H" iptables ect1)" -eq 3
		check "$name: 2 IPv6 echo requests with hop limit 42 ($(ipt_count "$H" ip6tables hl42))" \
			test "$(ipt_count "$H" ip6tables hl42)" -eq 2
		check "$name: ... and DSCP 46 ($(ipt_count "$H" ip6tables dscp46))" \
			test "$(ipt_count "$H" ip6tables dscp46)" -eq 2
		check "$name: summary: 5 rewritten, 3 IPv4, 2 IPv6" grep -qx \
			'divert_rewrite: rewrote 5 packets (3 IPv4, 2 IPv6), passed 0 unchanged' "$TMP/$name.out"
	else
		bad "$name: divert_rewrite bound its port"; sed 's/^/# /' "$TMP/$name.out"
	fi
}

if with_rules rewrite-in "100 divert 8668 icmp from any to any in icmptypes 8
200 divert 8668 ipv6-icmp from any to any in icmptypes 128"; then
	rewrite_in "rewrite in (incremental checksum)" -t 42 -d 46
	rewrite_in "rewrite in (-c, full checksum)" -c -t 42 -d 46
	ip netns exec "$H" iptables -F INPUT
	ip netns exec "$H" ip6tables -F INPUT
	stop_divertd
else
	bad "rewrite in: divertd started"
fi

# outgoing, and one field at a time: the peer sees what the host sent
if with_rules rewrite-out "100 divert 8668 icmp from any to any out icmptypes 8
200 divert 8668 ipv6-icmp from any to any out icmptypes 128"; then
	ipt_rules "$P"
	if example_start divert_rewrite "$TMP/rewrite-out.out" -t 42 8668; then
		ip netns exec "$H" ping -n -c 3 -i 0.2 -W 2 192.0.2.2 >/dev/null
		check "rewrite out: 3 pings from the host succeed" test $? -eq 0
		ip netns exec "$H" ping -6 -n -c 2 -i 0.2 -W 2 2001:db8::2 >/dev/null
		check "rewrite out: 2 IPv6 pings succeed" test $? -eq 0
		example_stop TERM
		check "rewrite out: exits 0 on SIGTERM" test $? -eq 0
		check "rewrite out: the peer received 3 echo requests with TTL 42" \
			test "$(ipt_count "$P" iptables ttl42)" -eq 3
		check "rewrite out: ... and 2 IPv6 ones with hop limit 42" \
			test "$(ipt_count "$P" ip6tables hl42)" -eq 2
		check "rewrite out: -t alone leaves DSCP as it was (0)" \
			test "$(ipt_count "$P" iptables dscp46)" -eq 0 -a \
			"$(ipt_count "$P" ip6tables dscp46)" -eq 0
	else
		bad "rewrite out: divert_rewrite bound its port"; sed 's/^/# /' "$TMP/rewrite-out.out"
	fi
	ip netns exec "$P" iptables -F INPUT
	ip netns exec "$P" ip6tables -F INPUT
	stop_divertd
else
	bad "rewrite out: divertd started"
fi

# --- filter --------------------------------------------------------------
# every IPv4 packet from the peer, and IPv6 UDP
if with_rules filter "100 divert 8668 ip from 192.0.2.2 to any in
200 divert 8668 udp from 2001:db8::2 to any in"; then
	# -p icmp: pings are dropped, UDP passes
	if example_start divert_filter "$TMP/filter-p.out" -v -p icmp 8668; then
		before=$(icmp_in_echos "$H")
		ip netns exec "$P" ping -n -c 2 -i 0.2 -W 1 192.0.2.1 >/dev/null
		check "filter -p icmp: the ping fails" test $? -ne 0
		after=$(icmp_in_echos "$H")
		check "filter -p icmp: no echo request reached the host (InEchos +$((after - before)))" \
			test "$after" -eq "$before"
		if udp_listen "$TMP/filter-p.udp" 192.0.2.1:5354; then
			udp_send 192.0.2.1 5354 end
			wait "$UDP_PID"
			check "filter -p icmp: a UDP datagram still arrives" udp_got "$TMP/filter-p.udp" 5354 end
		else
			bad "filter -p icmp: UDP listener ready"
		fi
		example_stop INT
		check "filter -p icmp: exits 0 on SIGINT" test $? -eq 0
		check "filter -p icmp: summary: dropped 2, passed 1" \
			grep -qx 'divert_filter: dropped 2, passed 1' "$TMP/filter-p.out"
		check "filter -p icmp: -v printed each drop" \
			test "$(grep -cx 'dropped 84 bytes (in)' "$TMP/filter-p.out")" -eq 2
	else
		bad "filter -p icmp: divert_filter bound its port"; sed 's/^/# /' "$TMP/filter-p.out"
	fi

	# -P 5353: UDP to that port is dropped, IPv4 and IPv6; other ports pass
	if example_start divert_filter "$TMP/filter-P.out" -P 5353 8668; then
		if udp_listen "$TMP/filter-P.udp" 192.0.2.1:5353 192.0.2.1:5354 \
			2001:db8::1:5353 2001:db8::1:5354; then
			udp_send 192.0.2.1 5353 v4-5353
			udp_send 192.0.2.1 5354 v4-5354
			udp_send 2001:db8::1 5353 v6-5353
			udp_send 2001:db8::1 5354 v6-5354
			udp_send 192.0.2.1 5354 end
			wait "$UDP_PID"
			check "filter -P 5353: the listener saw the end" udp_got "$TMP/filter-P.udp" 5354 end
			check "filter -P 5353: IPv4 to 5353 dropped" bash -c "! grep -q v4-5353 '$TMP/filter-P.udp'"
			check "filter -P 5353: IPv6 to 5353 dropped" bash -c "! grep -q v6-5353 '$TMP/filter-P.udp'"
			check "filter -P 5353: IPv4 to 5354 passes" udp_got "$TMP/filter-P.udp" 5354 v4-5354
			check "filter -P 5353: IPv6 to 5354 passes" udp_got "$TMP/filter-P.udp" 5354 v6-5354
		else
			bad "filter -P 5353: UDP listener ready"
		fi
		ip netns exec "$P" ping -n -c 1 -W 2 192.0.2.1 >/dev/null
		check "filter -P 5353: a ping passes" test $? -eq 0
		example_stop TERM
		check "filter -P 5353: exits 0 on SIGTERM" test $? -eq 0
		check "filter -P 5353: summary: dropped 2, passed 4" \
			grep -qx 'divert_filter: dropped 2, passed 4' "$TMP/filter-P.out"
	else
		bad "filter -P 5353: divert_filter bound its port"; sed 's/^/# /' "$TMP/filter-P.out"
	fi

	# -s with -p and -P: only a packet matching all three is dropped
	if example_start divert_filter "$TMP/filter-s.out" -p udp -P 5353 -s attack 8668; then
		if udp_listen "$TMP/filter-s.udp" 192.0.2.1:5353 192.0.2.1:5354; then
			udp_send 192.0.2.1 5353 hello
			udp_send 192.0.2.1 5353 "an attack here"
			udp_send 192.0.2.1 5354 attack
			udp_send 192.0.2.1 5353 end
			wait "$UDP_PID"
			check "filter -s: the listener saw the end" udp_got "$TMP/filter-s.udp" 5353 end
			check "filter -s: 'an attack here' to 5353 dropped" \
				bash -c "! grep -q 'an attack here' '$TMP/filter-s.udp'"
			check "filter -s: 'hello' to 5353 passes" udp_got "$TMP/filter-s.udp" 5353 hello
			check "filter -s: 'attack' to 5354 passes (-P does not match)" \
				udp_got "$TMP/filter-s.udp" 5354 attack
		else
			bad "filter -s: UDP listener ready"
		fi
		example_stop TERM
		check "filter -s: exits 0 on SIGTERM" test $? -eq 0
		check "filter -s: summary: dropped 1, passed 3" \
			grep -qx 'divert_filter: dropped 1, passed 3' "$TMP/filter-s.out"
	else
		bad "filter -s: divert_filter bound its port"; sed 's/^/# /' "$TMP/filter-s.out"
	fi
	stop_divertd
else
	bad "filter: divertd started"
fi

# --- pkg-config ----------------------------------------------------------
PREFIX=$TMP/prefix
if cmake --install "$BUILD" --prefix "$PREFIX" >"$TMP/install.log" 2>&1; then
	export PKG_CONFIG_PATH=$PREFIX/lib/pkgconfig
	flags=$(pkg-config --cflags --libs divert_shim 2>&1 | sed 's/ *$//')
	check "pkg-config: --cflags --libs divert_shim ($flags)" \
		test "$flags" = "-I$PREFIX/include -L$PREFIX/lib -ldivert_shim"
	check "pkg-config: the examples' sources are installed" test -f \
		"$PREFIX/share/doc/divertd/examples/divert_count.c" -a -f \
		"$PREFIX/share/doc/divertd/examples/divert_filter.c" -a -f \
		"$PREFIX/share/doc/divertd/examples/divert_rewrite.c"
	# shellcheck disable=SC2086
	if cc -Wall -Werror -o "$TMP/linked_count" \
		"$PREFIX/share/doc/divertd/examples/divert_count.c" $flags 2>"$TMP/cc.log"; then
		ok "pkg-config: the installed divert_count.c builds with its flags"
		# linked, not preloaded (the ASan run still preloads libasan)
		pre=${PRELOAD%"$BUILD/libdivert_shim.so"}
		if with_rules linked "100 divert 8668 icmp from any to any in icmptypes 8"; then
			ip netns exec "$H" env LD_PRELOAD="$pre" LD_LIBRARY_PATH="$PREFIX/lib" \
				DIVERT_SOCKET="$SOCK" "$TMP/linked_count" 8668 >"$TMP/linked.out" 2>&1 &
			EX_PID=$!; PIDS+=("$EX_PID")
			if wait_line "$TMP/linked.out" '^divert_count: reading divert port' 5; then
				ip netns exec "$P" ping -n -c 2 -i 0.2 -W 2 192.0.2.1 >/dev/null
				check "pkg-config: pings across the linked divert_count succeed" test $? -eq 0
				example_stop TERM
				check "pkg-config: ... and it counted them" \
					grep -Eqx 'ip/icmp +in +2 +168' "$TMP/linked.out"
			else
				bad "pkg-config: the linked divert_count bound its port"
				sed 's/^/# /' "$TMP/linked.out"
			fi
			stop_divertd
		else
			bad "pkg-config: divertd started"
		fi
	else
		bad "pkg-config: the installed divert_count.c builds with its flags"
		sed 's/^/# /' "$TMP/cc.log"
	fi
else
	bad "pkg-config: cmake --install"; sed 's/^/# /' "$TMP/install.log"
fi

summary
