#!/usr/bin/env bash
# daq.sh: Debian's unmodified daq_ipfw.so (libdaq2, Snort's packet
# acquisition library; a FreeBSD divert program, its socket made as
# socket(AF_INET, SOCK_RAW, 254)) inline on a gateway through divertd,
# driven by tests/daq/daq_client under the shim.
#
#   module   the client loaded the module "ipfw" from daq_ipfw.so as the
#            libdaq2 package installed it (dpkg -S, its md5sum); divertd
#            sees daq_client bound to the divert port (divertctl sockets)
#   ping     pings across the gateway cross the DAQ both ways with the
#            verdict pass and are answered; the client's counters and the
#            DAQ's own stats count exactly those packets
#   udp      -b udp:5353: datagrams to 5353 never reach the server's
#            listener, those to 5354 all do; blocked and passed counts
#            match, in the client and in the DAQ's verdict stats
#   icmp     -b icmp: a ping fails, no echo request reaches the server;
#            SIGINT stops the client as SIGTERM does
#   limits   -n: the client stops by itself after N packets (the ping it
#            let through still answered); -t: it stops after the time with
#            nothing read (daq_breakloop from SIGALRM, daq_ipfw in select)
# Skips, naming why, when libdaq2 is not installed or daq_client was not
# built (libdaq-dev missing when cmake ran).
# Topology: client (192.0.2.2) --veth-- gateway (192.0.2.1 | 198.51.100.1,
# divertd and daq_client) --veth-- server (198.51.100.2).
. "$(dirname "$0")/lib.sh"
need_root

DAQ_CLIENT=$PROGS/daq_client
IPFW=$(dpkg-query -L libdaq2 2>/dev/null | grep '/daq/daq_ipfw\.so$' | head -1)
if [ -z "$IPFW" ] || [ ! -f "$IPFW" ]; then
	skip "daq: libdaq2's daq_ipfw.so is not installed (tests/deps.sh installs libdaq2 libdaq-dev)"
	summary; exit 0
fi
if [ ! -x "$DAQ_CLIENT" ]; then
	skip "daq: $DAQ_CLIENT was not built (libdaq-dev was not found when cmake configured $BUILD)"
	summary; exit 0
fi
MODDIR=$(dirname "$IPFW")
PYTHON=/usr/bin/python3

netns_add C client && netns_add G gateway && netns_add S server ||
	{ bad "create namespaces"; summary; exit 1; }
link "$C" eth0 192.0.2.2/24 "$G" eth0 192.0.2.1/24
link "$G" eth1 198.51.100.1/24 "$S" eth0 198.51.100.2/24
ip -n "$C" route add default via 192.0.2.1
ip -n "$S" route add default via 198.51.100.1
ip netns exec "$G" sysctl -qw net.ipv4.ip_forward=1
SOCK=$TMP/divertd.sock

# Everything between the two sides, both ways, in the incoming pass: each
# packet crosses the DAQ once on its way through the gateway.
cat >"$TMP/daq.conf" <<'CONF'
100 divert 8668 ip from 192.0.2.0/24 to 198.51.100.0/24 in recv eth0
200 divert 8668 ip from 198.51.100.0/24 to 192.0.2.0/24 in recv eth1
CONF

# wait_line FILE REGEX [SECONDS]: bounded wait for a line in a file
wait_line() {
	for _ in $(seq $(( ${3:-10} * 20 ))); do
		grep -Eq -- "$2" "$1" 2>/dev/null && return 0
		sleep 0.05
	done
	echo "# timed out waiting for '$2' in $1" >&2
	return 1
}

# daq_start OUT ARGS...: daq_client under the shim in the gateway, output
# in OUT; waits until daq_ipfw has bound the divert port (daq_start done).
# ip netns exec and env exec it, so $! is the client and a signal reaches it.
daq_start() {
	local out=$1; shift
	ip netns exec "$G" env LD_PRELOAD="$PRELOAD" DIVERT_SOCKET="$SOCK" \
		"$DAQ_CLIENT" -d "$MODDIR" "$@" >"$out" 2>&1 &
	DAQ_PID=$!
	PIDS+=("$DAQ_PID")
	wait_line "$out" '^daq_client: reading divert port 8668 ' 5
}

# daq_stop [SIGNAL]: stop it as a user stops Snort; its exit status
daq_stop() {
	kill -"${1:-TERM}" "$DAQ_PID" 2>/dev/null
	wait_exit "$DAQ_PID" 5 || kill -KILL "$DAQ_PID" 2>/dev/null
	wait "$DAQ_PID"
}

# counts OUT: "seen/passed/blocked/bad" as the client counted them
counts() {
	awk '/^daq_client: seen / { print $3 "/" $5 "/" $7 "/" $9 }' "$1"
}

# daq_stats OUT: "received/pass/block" from the DAQ's own daq_get_stats
daq_stats() {
	awk '/^daq_client: daq / { print $6 "/" $12 "/" $14 }' "$1"
}

# show OUT: the client's output as comments, for a reader of the log
show() { sed 's/^/# /' "$1"; }

# pings N: N pings from the client to the server; prints how many were
# answered
pings() {
	ip netns exec "$C" ping -n -q -c "$1" -i 0.2 -W 2 198.51.100.2 2>/dev/null |
		awk '/received/ { for (i = 1; i <= NF; i++) if ($i ~ /^received/) print $(i - 1) }'
}

if ! start_divertd "$G" "$TMP/daq.conf" "$SOCK"; then
	bad "divertd started"; summary; exit 1
fi

# --- module ----------------------------------------------------------------
if daq_start "$TMP/module.out" 8668; then
	show "$TMP/module.out"
	path=$(awk '/^daq_client: module / { print $NF }' "$TMP/module.out")
	check "module: ipfw loaded from libdaq2's $IPFW (loaded: $path)" \
		grep -Eq "^daq_client: module ipfw version [0-9]+ type 0x[0-9a-f]+ path $IPFW\$" "$TMP/module.out"
	owner=$(dpkg -S "$path" 2>/dev/null)
	check "module: dpkg -S: $owner (libdaq2 $(dpkg-query -W -f='${Version}' libdaq2))" \
		grep -Eq "^libdaq2(:[a-z0-9]+)?: $IPFW\$" <<<"$owner"
	sum=$(md5sum <"$IPFW" | cut -d' ' -f1)
	pkgsum=$(cat /var/lib/dpkg/info/libdaq2.md5sums /var/lib/dpkg/info/libdaq2:*.md5sums 2>/dev/null |
		awk -v f="${IPFW#/}" '$2 == f { print $1 }')
	check "module: unmodified, its md5sum as the package recorded it ($sum)" \
		test -n "$sum" -a "$sum" = "$pkgsum"
	line=$("$BUILD/divertctl" -s "$SOCK" sockets 2>&1 | awk '$1 == 8668')
	check "module: divertd has port 8668 bound by daq_client, pid $DAQ_PID ($line)" \
		test "$(awk '{ print $1 "/" $2 "/" $3 }' <<<"$line")" = "8668/$DAQ_PID/daq_client"
	daq_stop TERM
	check "module: exits 0 on SIGTERM" test $? -eq 0
	check "module: stopped by the signal, nothing read" test \
		"$(grep -c -e '^daq_client: stopped by signal$' \
			-e '^daq_client: seen 0 passed 0 blocked 0 bad 0$' "$TMP/module.out")" -eq 2
else
	bad "module: daq_client bound its port"; show "$TMP/module.out"
fi

# --- ping --------------------------------------------------------------------
if daq_start "$TMP/ping.out" -v 8668; then
	before=$(icmp_in_echos "$S")
	n=$(pings 3)
	check "ping: 3 pings across the DAQ answered ($n)" test "${n:-0}" -eq 3
	after=$(icmp_in_echos "$S")
	check "ping: the server received 3 echo requests (InEchos +$((after - before)))" \
		test $((after - before)) -eq 3
	daq_stop TERM
	check "ping: exits 0 on SIGTERM" test $? -eq 0
	show "$TMP/ping.out"
	c=$(counts "$TMP/ping.out")
	check "ping: the client saw 6 packets, passed 6, blocked 0 ($c)" test "$c" = "6/6/0/0"
	s=$(daq_stats "$TMP/ping.out")
	check "ping: the DAQ's stats: received 6, verdict pass 6, block 0 ($s)" test "$s" = "6/6/0"
	n=$(grep -c '^pkt .* proto 1 verdict pass$' "$TMP/ping.out")
	check "ping: a line per packet, all ICMP ($n)" test "$n" -eq 6
else
	bad "ping: daq_client bound its port"; show "$TMP/ping.out"
fi

# --- udp ---------------------------------------------------------------------
# The listener in the server: prints "PORT PAYLOAD" per datagram, exits 0
# on the payload "end" (sent last, to a port passed: every datagram that
# was going to arrive has, one queue keeps them in order), 1 after 10 s.
cat >"$TMP/udp_listen.py" <<'PY'
import select, socket, sys, time
ready, binds = sys.argv[1], sys.argv[2:]
socks = []
for b in binds:
    addr, port = b.rsplit(":", 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
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

# udp_send PORT PAYLOAD: one datagram from the client to the server
udp_send() {
	ip netns exec "$C" bash -c 'printf %s "$2" >"/dev/udp/198.51.100.2/$1"' _ "$@"
}

if daq_start "$TMP/udp.out" -b udp:5353 8668; then
	rm -f "$TMP/udp.ready"
	ip netns exec "$S" "$PYTHON" "$TMP/udp_listen.py" "$TMP/udp.ready" \
		198.51.100.2:5353 198.51.100.2:5354 >"$TMP/udp.got" 2>&1 &
	UDP_PID=$!; PIDS+=("$UDP_PID")
	if wait_for "$TMP/udp.ready" 5; then
		for i in 1 2 3 4 5; do
			udp_send 5353 "blocked-$i"
			udp_send 5354 "passed-$i"
		done
		udp_send 5354 end
		wait "$UDP_PID"
		check "udp: the listener got the end marker" grep -qx '5354 end' "$TMP/udp.got"
		n=$(grep -c '^5353 ' "$TMP/udp.got")
		check "udp: no datagram to the blocked port 5353 arrived ($n)" test "$n" -eq 0
		n=$(grep -c '^5354 passed-[1-5]$' "$TMP/udp.got")
		check "udp: all 5 datagrams to 5354 arrived ($n)" test "$n" -eq 5
	else
		bad "udp: listener ready"
	fi
	daq_stop TERM
	check "udp: exits 0 on SIGTERM" test $? -eq 0
	show "$TMP/udp.out"
	c=$(counts "$TMP/udp.out")
	check "udp: the client saw 11, passed 6, blocked 5 ($c)" test "$c" = "11/6/5/0"
	s=$(daq_stats "$TMP/udp.out")
	check "udp: the DAQ's stats: received 11, verdict pass 6, block 5 ($s)" test "$s" = "11/6/5"
else
	bad "udp: daq_client bound its port"; show "$TMP/udp.out"
fi

# --- icmp --------------------------------------------------------------------
if daq_start "$TMP/icmp.out" -b icmp 8668; then
	before=$(icmp_in_echos "$S")
	ip netns exec "$C" ping -n -c 1 -W 1 198.51.100.2 >/dev/null 2>&1
	check "icmp: with -b icmp the ping fails" test $? -ne 0
	after=$(icmp_in_echos "$S")
	check "icmp: no echo request reached the server (InEchos +$((after - before)))" \
		test "$after" -eq "$before"
	daq_stop INT
	check "icmp: exits 0 on SIGINT" test $? -eq 0
	show "$TMP/icmp.out"
	check "icmp: stopped by the signal" grep -qx 'daq_client: stopped by signal' "$TMP/icmp.out"
	c=$(counts "$TMP/icmp.out")
	check "icmp: the client saw 1, blocked 1 ($c)" test "$c" = "1/0/1/0"
	s=$(daq_stats "$TMP/icmp.out")
	check "icmp: the DAQ's stats: received 1, verdict block 1 ($s)" test "$s" = "1/0/1"
else
	bad "icmp: daq_client bound its port"; show "$TMP/icmp.out"
fi

# --- limits ------------------------------------------------------------------
# -n 2: one ping is an echo request and its reply; then the client is done
if daq_start "$TMP/count.out" -n 2 8668; then
	n=$(pings 1)
	check "limits: -n 2: the ping crossing it answered ($n)" test "${n:-0}" -eq 1
	if wait_exit "$DAQ_PID" 5; then
		wait "$DAQ_PID"
		check "limits: -n 2: exits 0 by itself after 2 packets" test $? -eq 0
	else
		bad "limits: -n 2: exits by itself after 2 packets"
		daq_stop TERM
	fi
	show "$TMP/count.out"
	check "limits: -n 2: stopped by the packet limit, 2 seen" test \
		"$(grep -c -e '^daq_client: stopped by packet limit$' \
			-e '^daq_client: seen 2 passed 2 blocked 0 bad 0$' "$TMP/count.out")" -eq 2
else
	bad "limits: -n 2: daq_client bound its port"; show "$TMP/count.out"
fi

# -t 1, no traffic: SIGALRM's breakloop ends daq_ipfw's select()
if daq_start "$TMP/time.out" -t 1 8668; then
	if wait_exit "$DAQ_PID" 5; then
		wait "$DAQ_PID"
		check "limits: -t 1: exits 0 by itself" test $? -eq 0
	else
		bad "limits: -t 1: exits by itself within 5 s"
		daq_stop TERM
	fi
	show "$TMP/time.out"
	check "limits: -t 1: stopped by the time limit, nothing seen" test \
		"$(grep -c -e '^daq_client: stopped by time limit$' \
			-e '^daq_client: seen 0 passed 0 blocked 0 bad 0$' "$TMP/time.out")" -eq 2
else
	bad "limits: -t 1: daq_client bound its port"; show "$TMP/time.out"
fi

stop_divertd
check "divertd exits 0 on SIGTERM" test $? -eq 0

summary
