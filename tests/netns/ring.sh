#!/usr/bin/env bash
# ring.sh: the shared-memory ring between divertd and the shim, on real
# packets, and clients that abuse it.
#
#   - div_pollpass, a pass-through program that waits before it reads
#     (poll or select on a blocking socket, epoll or edge-triggered epoll
#     draining an O_NONBLOCK one until EAGAIN, or spinning on EAGAIN), with
#     the ring and with DIVERT_RING=0 (the socket), with the default
#     SO_RCVBUF and the largest: bursts of UDP datagrams of 28 to 1400
#     bytes and some of about 8000 (records wrap in the ring); backlogs
#     that divertd posts in full batches (divertd stopped while they
#     queue); fills (the program stopped: its buffer fills, divertd pauses
#     the queue and must resume); a burst after; a ping-pong of 200 lone
#     datagrams.  Every packet divertd diverted is written back and
#     delivered intact (receiver got = sent - full - kernel_drops), and the
#     program never stalls.  A lost wakeup (a DW_KICK owed and not sent:
#     the ring went from empty to not empty twice in one batch, which a
#     reader that drains its ring while divertd posts makes happen) leaves
#     the program waiting for good with packets in its ring: divertd holds
#     them, the traffic never gets through, the program does not stop;
#   - the program maps the ring (/proc/PID/maps: divertd-ring), not with
#     DIVERT_RING=0;
#   - hostile ring clients (tests/python/ring_hostile.py): a tx ring broken
#     in each way the format can be gets the client disconnected and
#     counted (bad_writes), a well-formed wrap is followed; a client that
#     lies in its rx ring (head, taken, count) hurts only itself; the memfd
#     is sealed; a client that asks for the ring after bind is refused
#     (EISCONN) and gets its packets on the socket.  divertd keeps serving
#     a well-behaved program on another port meanwhile.
# Topology: peer (192.0.2.2) --veth, MTU 9000-- host (192.0.2.1 and
# 192.0.2.3, runs divertd, the programs and a receiver on UDP ports 9 and 7).
. "$(dirname "$0")/lib.sh"
need_root

SRC=$(cd "$(dirname "$0")/../.." && pwd)
DCTL=$BUILD/divertctl
PY=/usr/bin/python3
CC=${CC:-cc}
HOSTILE=$SRC/tests/python/ring_hostile.py
if [ ! -x "$PY" ]; then
	skip "ring: $PY is missing (the traffic and the hostile clients are Python)"
	summary; exit 0
fi

netns_add H host && netns_add P peer || { bad "create namespaces"; summary; exit 1; }
link "$H" eth0 192.0.2.1/24 "$P" eth0 192.0.2.2/24
ip -n "$H" addr add 192.0.2.3/24 dev eth0
ip -n "$H" link set eth0 mtu 9000
ip -n "$P" link set eth0 mtu 9000
SOCK=$TMP/divertd.sock
cat >"$TMP/ring.conf" <<'CONF'
100 divert 8668 udp from any to 192.0.2.1 9 in
110 divert 8668 udp from any to 192.0.2.1 7 in
200 divert 8669 icmp from any to 192.0.2.1 in icmptypes 8
300 divert 8670 ip from any to 192.0.2.3 in
CONF

ctl() { "$DCTL" -s "$SOCK" "$@"; }
stat() { ctl stats | awk -v k="$1" '$1 == k { print $2 }'; }
# snap ARRAY: every counter of divertctl stats, at one moment
snap() {
	local -n _s=$1
	local k v
	_s=()
	while read -r k v; do _s[$k]=$v; done < <(ctl stats)
}
# d A B NAME: how much counter NAME grew from snapshot A to B
d() {
	local -n _a=$1 _b=$2
	echo $(( ${_b[$3]:-0} - ${_a[$3]:-0} ))
}
queued() { ip netns exec "$H" awk -v q="$1" '$1 == q { print $3 }' /proc/net/netfilter/nfnetlink_queue; }
snmp() { # snmp NS PROTO FIELD
	ip netns exec "$1" awk -v p="$2:" -v f="$3" '$1 == p { if (!h) { for (i = 1; i <= NF; i++) c[$i] = i; h = 1 } else print $c[f] }' /proc/net/snmp
}
pings() { # pings DEST COUNT: how many were answered
	ip netns exec "$P" ping -n -q -c "$2" -i 0.05 -W 1 "$1" 2>/dev/null |
		awk '/packets transmitted/ { print $4 }'
}
port_free() { ! ctl sockets | awk -v p="$1" '$1 == p { f = 1 } END { exit !f }'; }

# --- traffic: a receiver in the host, bursts and a ping-pong from the peer
cat >"$TMP/traffic.py" <<'EOF'
import os, select, signal, socket, sys, time

def pattern(n, cache={}):
    p = cache.get(n)
    if p is None:
        p = cache[n] = bytes((k * 131 + n) & 0xff for k in range(n))
    return p

def ip_size(i, big):
    """IP sizes 28 to 1400, and every big-th one about 8000 (big -1: all
    28, empty datagrams)."""
    if big < 0:
        return 28
    if big and i % big == big - 1:
        return 7990 + i % 17
    return 28 + (i * 7919) % 1373

def receive(ready, countfile):
    """Port 9: count datagrams and bytes, check the bytes.  Port 7: echo.
    The counts go to countfile whenever a quiet 50 ms follows a change."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    socks = []
    for port in (9, 7):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, 33, 32 << 20)   # SO_RCVBUFFORCE
        s.bind(("192.0.2.1", port))
        s.setblocking(False)
        socks.append(s)
    n = nbytes = bad = echoed = 0
    written = None
    open(ready, "w").close()
    deadline = time.monotonic() + 600
    while not stop and time.monotonic() < deadline:
        r, _, _ = select.select(socks, [], [], 0.05)
        if not r:
            state = (n, nbytes, bad, echoed)
            if state != written:
                with open(countfile + ".tmp", "w") as f:
                    f.write("%d %d %d %d\n" % state)
                os.rename(countfile + ".tmp", countfile)
                written = state
            continue
        for s in r:
            while True:
                try:
                    data, addr = s.recvfrom(65535)
                except BlockingIOError:
                    break
                if s is socks[0]:
                    n += 1
                    nbytes += len(data)
                    bad += data != pattern(len(data))
                else:
                    s.sendto(data, addr)
                    echoed += 1

def burst(count, big, dest):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sent = nbytes = 0
    for i in range(count):
        p = pattern(ip_size(i, big) - 28)
        try:
            s.sendto(p, (dest, 9))
        except OSError:
            continue
        sent += 1
        nbytes += len(p)
    print(sent, nbytes)

def pingpong(count):
    """One datagram at a time to port 7, each waiting (2 s) for its echo;
    three unanswered in a row end it."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(("192.0.2.1", 7))
    answered = misses = 0
    for i in range(count):
        m = b"pingpong %d" % i
        s.send(m)
        deadline = time.monotonic() + 2
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                misses += 1
                break
            s.settimeout(left)
            try:
                if s.recv(100) == m:
                    answered += 1
                    misses = 0
                    break
            except (socket.timeout, OSError):
                pass
        if misses >= 3:
            break
    print(answered)

what = sys.argv[1]
if what == "receive":
    receive(sys.argv[2], sys.argv[3])
elif what == "burst":
    burst(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
else:
    pingpong(int(sys.argv[2]))
EOF
# burst COUNT BIG [DEST]: COUNT datagrams from the peer; prints "sent bytes"
burst() { ip netns exec "$P" "$PY" "$TMP/traffic.py" burst "$1" "$2" "${3:-192.0.2.1}"; }
pingpong() { ip netns exec "$P" timeout 60 "$PY" "$TMP/traffic.py" pingpong "$1"; }
# received: what the receiver counted: "datagrams bytes corrupt echoed"
received() { cat "$TMP/recv.count" 2>/dev/null || echo "0 0 0 0"; }
# wait_received N: bounded wait for the receiver to have counted N datagrams
wait_received() {
	for _ in $(seq 100); do
		[ "$(received | cut -d' ' -f1)" -ge "$1" ] && break
		sleep 0.05
	done
	received | cut -d' ' -f1
}

ip netns exec "$H" "$PY" "$TMP/traffic.py" receive "$TMP/recv.ready" "$TMP/recv.count" \
	>"$TMP/recv.out" 2>&1 &
PIDS+=($!)
wait_for "$TMP/recv.ready" 10 || { bad "the receiver started"; summary; exit 1; }

ip netns exec "$H" "$DIVERTD" -d -t 60000 -f "$TMP/ring.conf" -s "$SOCK" \
	>"$TMP/divertd.log" 2>&1 &
DIVERTD_PID=$!; PIDS+=($!)
for _ in $(seq 200); do
	[ -e "$SOCK" ] && grep -q 'ready:' "$TMP/divertd.log" && break
	kill -0 "$DIVERTD_PID" 2>/dev/null || break
	sleep 0.05
done
if ! grep -q 'ready:' "$TMP/divertd.log"; then
	sed 's/^/# divertd: /' "$TMP/divertd.log"
	bad "divertd started"; summary; exit 1
fi
ip netns exec "$P" ping -n -q -c 1 -W 1 192.0.2.1 >/dev/null	# neighbours known

# settle PORT: bounded wait (15 s) until divertd holds nothing, the port's
# queue is empty and nothing more arrives: every packet is through
settle() {
	local r prev=
	for _ in $(seq 300); do
		r=$(ctl stats | awk '$1 == "held" || $1 == "received" { printf "%s ", $2 }')
		if [ "${r% }" = "${prev% }" ] && [ "${r#* }" = "0 " ] && [ "$(queued "$1")" = 0 ]; then
			return 0
		fi
		prev=$r
		sleep 0.05
	done
	echo "# not settled: received held = $r, queue $1: $(queued "$1")"
	return 1
}

# pollpass ENV... -- ARGS...: div_pollpass in the host, in the background;
# PP_BG = the job, PP_PID = the program (from its ready file)
pollpass() {
	local envs=()
	while [ "$1" != -- ]; do envs+=("$1"); shift; done
	shift
	rm -f "$TMP/pp.ready"
	ip netns exec "$H" env LD_PRELOAD="$PRELOAD" DIVERT_SOCKET="$SOCK" "${envs[@]}" \
		"$PROGS/div_pollpass" -r "$TMP/pp.ready" "$@" >"$TMP/pp.out" 2>"$TMP/pp.err" &
	PP_BG=$!; PIDS+=("$PP_BG")
	PP_PID=
	wait_for "$TMP/pp.ready" 10 || { sed 's/^/# div_pollpass: /' "$TMP/pp.err"; return 1; }
	PP_PID=$(cat "$TMP/pp.ready")
}

# reap JOB PID [SECONDS]: bounded wait for a program started by pollpass
# (JOB) to end by itself, killed after that (a program stuck for good in
# a read); its exit status
reap() {
	if ! wait_exit "$1" "${3:-10}"; then
		echo "# div_pollpass did not end (waits in $(cat "/proc/$2/wchan" 2>/dev/null)): killed"
		kill -KILL "$2" 2>/dev/null
	fi
	wait "$1"
}

# phase NAME A B SENT R0: the checks of one phase, from snapshot A to B, in
# which the peer sent SENT datagrams and the receiver had counted R0 before
phase() {
	local name=$1 sent=$4 r0=$5 dv ri fu kd lost got corrupt
	dv=$(d "$2" "$3" diverted); ri=$(d "$2" "$3" reinjected_in)
	fu=$(d "$2" "$3" full); kd=$(d "$2" "$3" kernel_drops)
	lost=$(( $(d "$2" "$3" evicted) + $(d "$2" "$3" expired) + $(d "$2" "$3" no_socket) ))
	got=$(( $(wait_received $(( r0 + sent - fu - kd ))) - r0 ))
	corrupt=$(received | cut -d' ' -f3)
	check "$name: every packet diverted was written back (diverted $dv, reinjected $ri, evicted+expired+no_socket $lost)" \
		test "$dv/$lost" = "$ri/0"
	check "$name: the receiver got sent - full - kernel_drops ($sent - $fu - $kd = $(( sent - fu - kd )), got $got, corrupt so far $corrupt)" \
		test "$got/$corrupt" = "$(( sent - fu - kd ))/0"
	PH_FULL=$fu PH_KD=$kd
}

# wait_state PID STATE SIGNAL: send SIGNAL, bounded wait for the state
# (T stopped; anything else: not stopped any more)
wait_state() {
	local st
	kill "$3" "$1"
	for _ in $(seq 100); do
		st=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)
		if [ "$2" = T ]; then [ "$st" = T ] && return 0
		else [ "$st" != T ] && return 0; fi
		sleep 0.01
	done
	return 1
}

# The traffic of the phases; each prints how many datagrams were sent.
# bursts: 28 to 1400 bytes, the first 3,000 with every 41st about 8000
# (records wrap in the ring)
tr_bursts() {
	local a b
	read -r a _ < <(burst 3000 41)
	read -r b _ < <(burst 3000 0)
	echo $(( a + b ))
}
# backlogs: six times divertd stopped while datagrams queue in the
# kernel (300 of about 8000 bytes, or 600 of 28 to 1400), so that it posts
# them in full batches while the program reads.  A reader that drains its
# ring as it fills (epoll, spin) empties it in the middle of a batch, the
# more often the longer divertd takes over each packet
tr_backlog() {
	local n sum=0 k
	for k in 1 2 3 4 5 6; do
		wait_state "$DIVERTD_PID" T -STOP
		if [ $(( k % 2 )) = 1 ]; then
			read -r n _ < <(burst 300 1)
		else
			read -r n _ < <(burst 600 $(( k * 7 )))
		fi
		wait_state "$DIVERTD_PID" S -CONT
		sum=$(( sum + n ))
	done
	echo "$sum"
}
# a fill: the program stopped, 3,000 more (every 20th about 8000): its
# ring (or buffer) fills, divertd drops the rest and pauses the queue
# (kernel drops); once the program goes on, divertd must resume
tr_fill() {
	local n
	wait_state "$PP_PID" T -STOP
	read -r n _ < <(burst "${1:-3000}" "${2:-20}")
	wait_state "$PP_PID" S -CONT
	echo "$n"
}
# the same with 5,000 of 28 bytes: with a large SO_RCVBUF the most
# packets a ring may hold is reached before its bytes
tr_fill_small() { tr_fill 5000 -1; }
tr_after() { burst 1000 41 | cut -d' ' -f1; }

# run_phase NAME TRAFFIC: one phase of pass_run and its checks; 1 when the
# traffic never got through (the program stalled): the run ends there
# shellcheck disable=SC2034  # filled and read through namerefs
declare -A SA SB S0 S1
run_phase() {
	local n r0
	snap SA; r0=$(received | cut -d' ' -f1)
	n=$($2)
	if ! settle 8668; then
		bad "$1: the traffic got through (stalled: divertd holds $(stat held) packets never written back)"
		return 1
	fi
	snap SB
	phase "$1" SA SB "$n" "$r0"
}

# pass_run PATH MODE [RCVBUF]: one div_pollpass (PATH ring or socket, MODE
# its wait, RCVBUF its SO_RCVBUF) through bursts, a backlog, fills, a
# burst after them and a ping-pong.  A reader that drains its ring as it
# fills (epoll, spin) empties it in the middle of divertd's batches: each
# time the ring goes from empty to not empty it is owed a wakeup, and one
# lost leaves it waiting for good with packets in its ring.
pass_run() {
	local path=$1 mode=$2 rcvbuf=${3:-} name envs=() opts=() n out rc maps
	name="$path/$mode${rcvbuf:+ SO_RCVBUF $rcvbuf}"
	[ "$path" = socket ] && envs=(DIVERT_RING=0)
	[ -n "$rcvbuf" ] && opts=(-b "$rcvbuf")
	if ! pollpass "${envs[@]}" -- -m "$mode" -w 15000 "${opts[@]}" 8668; then
		bad "$name: div_pollpass started"; kill "$PP_BG" 2>/dev/null; return
	fi
	maps=$(grep -c 'divertd-ring' "/proc/$PP_PID/maps")
	if [ "$path" = ring ]; then
		check "$name: the program maps the ring (/proc/PID/maps: $(grep -m1 -o '/memfd:divertd-ring.*' "/proc/$PP_PID/maps"))" \
			test "$maps" -ge 1
	else
		check "$name: with DIVERT_RING=0 the program maps no ring ($maps divertd-ring mappings)" \
			test "$maps" = 0
	fi

	snap S0
	while :; do
		run_phase "$name: bursts of 3000+3000" tr_bursts || break
		run_phase "$name: 6 backlogs read by divertd in full batches" tr_backlog || break
		run_phase "$name: a fill while the program was stopped" tr_fill || break
		check "$name: ... the buffer filled and divertd paused the queue (full $PH_FULL, kernel drops $PH_KD)" \
			test "$PH_KD" -gt 0
		if [ -n "$rcvbuf" ]; then
			run_phase "$name: a fill of 5000 small datagrams while the program was stopped" tr_fill_small || break
			check "$name: ... the buffer filled and divertd paused the queue (full $PH_FULL, kernel drops $PH_KD)" \
				test "$PH_KD" -gt 0
		fi
		run_phase "$name: a burst of 1000 after the fills: the queue resumed" tr_after || break
		# lone packets, one at a time: each must wake the program
		n=$(pingpong 200)
		check "$name: afterwards a ping-pong of 200 lone datagrams: all answered ($n)" test "$n" = 200
		settle 8668
		break
	done
	snap S1

	kill -TERM "$PP_PID" 2>/dev/null
	reap "$PP_BG" "$PP_PID"; rc=$?
	out=$(tail -1 "$TMP/pp.out")
	n=$(d S0 S1 diverted)
	check "$name: the program never stalled: it ran until told to stop, and passed all $n diverted to it, intact ($out, status $rc)" \
		test "$rc/$out" = "0/passed $n bytes $(awk '{ print $4 }' <<<"$out") malformed 0 write_errors 0 end stopped"
	if [ -s "$TMP/pp.err" ]; then sed 's/^/# div_pollpass: /' "$TMP/pp.err"; fi
	for _ in $(seq 100); do port_free 8668 && break; sleep 0.05; done
}

for run in "ring poll" "ring select" "ring epoll" "ring epollet" "ring spin" \
	   "ring poll 1864135" "ring spin 1864135" \
	   "socket poll" "socket select" "socket epoll" "socket epollet" "socket spin" \
	   "socket poll 1864135"; do
	# shellcheck disable=SC2086
	pass_run $run
	kill -0 "$DIVERTD_PID" 2>/dev/null || { bad "divertd died"; summary; exit 1; }
done

# --- a shaper: each write-back, then a pause before the next read --------
# With packets still unread in its ring, the shim puts off waking divertd
# for a write-back (one wakeup answers a batch); divertd must look at the
# ring by itself, or the paced packets leave only when the ring empties.
# A burst of 3, all waiting for the program (stopped meanwhile), each
# passed 1.5 s after the one before: the first must reach the receiver
# while the program still pauses after writing it back.
for path in ring socket; do
	envs=(); [ "$path" = socket ] && envs=(DIVERT_RING=0)
	if pollpass "${envs[@]}" -- -p 1500 -w 10000 -n 3 8668; then
		r0=$(received | cut -d' ' -f1)
		wait_state "$PP_PID" T -STOP
		burst 3 -1 >/dev/null
		for _ in $(seq 100); do [ "$(stat held)" = 3 ] && break; sleep 0.02; done
		wait_state "$PP_PID" S -CONT
		for _ in $(seq 200); do [ "$(received | cut -d' ' -f1)" -gt "$r0" ] && break; sleep 0.01; done
		wrote=$(grep -c '^wrote' "$TMP/pp.out")
		check "shaper/$path: the first paced packet arrives while the program pauses, two unread (received +$(( $(received | cut -d' ' -f1) - r0 )), the program had written $wrote)" \
			test "$(( $(received | cut -d' ' -f1) - r0 ))/$wrote" = "1/1"
		reap "$PP_BG" "$PP_PID" 10; rc=$?
		check "shaper/$path: ... and all 3, paced, by the end ($(tail -1 "$TMP/pp.out"), status $rc, received +$(( $(wait_received $(( r0 + 3 ))) - r0 )))" \
			test "$rc/$(( $(received | cut -d' ' -f1) - r0 ))" = "0/3"
		for _ in $(seq 100); do port_free 8668 && break; sleep 0.05; done
	else bad "shaper/$path: div_pollpass started"; kill "$PP_BG" 2>/dev/null; fi
done

# --- hostile ring clients -----------------------------------------------
# The layout of the ring and the wire header, from the header itself.
cat >"$TMP/layout.c" <<'EOF'
#include <stdio.h>
#include <stddef.h>
#include "divert_wire.h"
#define V(n, v) printf("%s %llu\n", n, (unsigned long long)(v))
#define O(n, t, m) V(n, offsetof(t, m))
#define W(n, t, m) V(n "_width", sizeof(((t *)0)->m))
#define R(r, f) O(#r "_" #f, struct dw_ring_map, r.f); W(#r "_" #f, struct dw_ring_map, r.f)
int main(void)
{
	V("ring_hdr", DW_RING_HDR); V("ring_rx", DW_RING_RX); V("ring_tx", DW_RING_TX);
	V("ring_magic", DW_RING_MAGIC); V("rec_wrap", DW_REC_WRAP);
	V("maxpkt", DIVERT_WIRE_MAXPKT);
	O("map_magic", struct dw_ring_map, magic); O("map_version", struct dw_ring_map, version);
	O("map_rx_size", struct dw_ring_map, rx_size); O("map_tx_size", struct dw_ring_map, tx_size);
	R(rx, head); R(rx, tail); R(rx, count); R(rx, wake); R(rx, taken);
	R(tx, head); R(tx, tail); R(tx, count); R(tx, wake);
	V("rec_sizeof", sizeof(struct dw_rec));
	O("rec_size", struct dw_rec, size); O("rec_len", struct dw_rec, len);
	O("rec_addr", struct dw_rec, addr);
	V("wire_hdr_size", sizeof(struct divert_wire_hdr));
	O("wire_type", struct divert_wire_hdr, type); O("wire_version", struct divert_wire_hdr, version);
	O("wire_arg", struct divert_wire_hdr, arg); O("wire_conn", struct divert_wire_hdr, conn);
	O("wire_val", struct divert_wire_hdr, val); O("wire_addr", struct divert_wire_hdr, addr);
	V("DW_WELCOME", DW_WELCOME); V("DW_PACKET", DW_PACKET); V("DW_BIND", DW_BIND);
	V("DW_REPLY", DW_REPLY); V("DW_RING", DW_RING); V("DW_KICK", DW_KICK);
	return 0;
}
EOF
hostile() { ip netns exec "$H" timeout 90 "$PY" "$HOSTILE" "$TMP/layout.txt" "$SOCK" "$@"; }

if ! $CC -std=gnu11 -I"$SRC/src" -o "$TMP/layout" "$TMP/layout.c" >"$TMP/layout.err" 2>&1 ||
   ! "$TMP/layout" >"$TMP/layout.txt"; then
	sed 's/^/# /' "$TMP/layout.err"
	skip "hostile ring clients: cannot build the layout helper against src/divert_wire.h with $CC"
else
	# a well-behaved program on another port all along
	if pollpass -- -m poll -w 60000 8669; then
		BY_BG=$PP_BG BY_PID=$PP_PID
		mv "$TMP/pp.out" "$TMP/by.out"; mv "$TMP/pp.err" "$TMP/by.err"
		n=$(pings 192.0.2.1 5)
		check "hostile: a well-behaved program on port 8669 answers (5 pings: $n)" test "$n" = 5
	else
		bad "hostile: a well-behaved program on port 8669 started"; BY_BG="" BY_PID=""
	fi

	# broken tx rings: each client hung up on and counted, once
	for case in tail-odd tail-beyond tail-back rec-small rec-len rec-mismatch \
		    rec-past-tail rec-past-end wrap-at-start good-then-bad; do
		b0=$(stat bad_writes); np0=$(snmp "$H" Udp NoPorts)
		out=$(hostile scribble 8670 "$case" 2>&1); rc=$?
		b1=$(stat bad_writes)
		check "hostile: tx ring broken ($case): divertd hangs up on the client ($out) and counts it (bad_writes +$(( b1 - b0 )))" \
			test "$rc/$(( b1 - b0 ))" = "0/1"
		if [ "$case" = good-then-bad ]; then
			for _ in $(seq 40); do [ "$(snmp "$H" Udp NoPorts)" -gt "$np0" ] && break; sleep 0.05; done
			check "hostile: ... the well-formed record before the broken one was still handled (a datagram to port 5 reached the host: Udp NoPorts +$(( $(snmp "$H" Udp NoPorts) - np0 )))" \
				test $(( $(snmp "$H" Udp NoPorts) - np0 )) = 1
		fi
		for _ in $(seq 100); do port_free 8670 && break; sleep 0.05; done
	done
	check "hostile: divertd still runs after 10 broken rings" kill -0 "$DIVERTD_PID"

	# a well-formed ring that wraps: followed, no disconnect
	ni0=$(stat no_interface); b0=$(stat bad_writes)
	out=$(hostile goodwrap 8670 2>&1); rc=$?
	n=$(awk '/^records/ { print $2 }' <<<"$out")
	check "hostile: a tx ring that wraps (a wrap mark, then records at the start) is followed: $out; each counted (no_interface +$(( $(stat no_interface) - ni0 ))), none as bad (bad_writes +$(( $(stat bad_writes) - b0 )))" \
		test "$rc/$(( $(stat no_interface) - ni0 ))/$(( $(stat bad_writes) - b0 ))" = "0/${n:-x}/0"
	for _ in $(seq 100); do port_free 8670 && break; sleep 0.05; done

	# the memfd is sealed; a second DW_RING is refused
	hostile seal >"$TMP/seal.out" 2>&1; rc=$?
	while IFS= read -r line; do
		case $line in
		"ok - "*) ok "hostile: seal: ${line#ok - }" ;;
		"not ok - "*) bad "hostile: seal: ${line#not ok - }" ;;
		*) echo "# seal: $line" ;;
		esac
	done <"$TMP/seal.out"
	check "hostile: seal: the client ran to the end (status $rc)" test "$rc" = 0

	# clients that lie in their rx ring hurt only themselves
	for how in ahead taken negative; do
		rm -f "$TMP/lie.ready" "$TMP/lie.done"
		hostile rxlie 8670 "$how" "$TMP/lie.ready" "$TMP/lie.done" >"$TMP/lie.out" 2>&1 &
		lp=$!; PIDS+=("$lp")
		if ! wait_for "$TMP/lie.ready" 10; then
			bad "hostile: rx liar ($how) started"; sed 's/^/# /' "$TMP/lie.out"; continue
		fi
		snap S0
		liar=$(pings 192.0.2.3 5)
		read -r sent _ < <(burst 3000 41 192.0.2.3)
		n=$(pings 192.0.2.1 10)
		snap S1
		touch "$TMP/lie.done"
		wait_exit "$lp" 10; wait "$lp"; rc=$?
		case $how in
		ahead) desc="rx head beyond its tail, count huge" ;;
		taken) desc="rx taken beyond what was posted" ;;
		*) desc="rx count far below zero" ;;
		esac
		check "hostile: rx liar ($desc, $(tail -1 "$TMP/lie.out")): divertd keeps running and serves the others (10 pings to port 8669: $n answered)" \
			bash -c "kill -0 $DIVERTD_PID && [ '$n' = 10 ] && [ $rc = 0 ]"
		# (what was reinjected meanwhile: the other program's pings)
		check "hostile: ... the liar's own traffic is what suffers: 5 pings, $liar answered; of $sent datagrams none passed (reinjected +$(d S0 S1 reinjected_in), the other program's $n pings), full +$(d S0 S1 full), kernel drops +$(d S0 S1 kernel_drops)" \
			test "$liar/$(( $(d S0 S1 reinjected_in) - n ))/$(( $(d S0 S1 full) + $(d S0 S1 kernel_drops) > 0 ))" = "0/0/1"
		# gone: its port works again, through a new program
		for _ in $(seq 100); do port_free 8670 && [ "$(queued 8670)" = 0 ] && break; sleep 0.05; done
		if pollpass -- -m poll -n 3 -w 5000 8670; then
			n=$(ip netns exec "$P" ping -n -q -c 3 -i 0.1 -W 2 192.0.2.3 2>/dev/null |
				awk '/packets transmitted/ { print $4 }')
			reap "$PP_BG" "$PP_PID"; rc=$?
			check "hostile: ... once the liar is gone its port works again (3 pings answered: $n; $(tail -1 "$TMP/pp.out"), status $rc)" \
				test "$n/$rc" = "3/0"
		else
			bad "hostile: a program binds the liar's port afterwards"
		fi
		for _ in $(seq 100); do port_free 8670 && break; sleep 0.05; done
	done

	# DW_RING after bind: refused, and the socket carries the packets
	rm -f "$TMP/late.ready"
	hostile late 8670 "$TMP/late.ready" 3 >"$TMP/late.out" 2>&1 &
	lp=$!; PIDS+=("$lp")
	if wait_for "$TMP/late.ready" 10; then
		n=$(ip netns exec "$P" ping -n -q -c 3 -i 0.1 -W 2 192.0.2.3 2>/dev/null |
			awk '/packets transmitted/ { print $4 }')
		wait_exit "$lp" 15; wait "$lp"; rc=$?
		check "hostile: DW_RING after bind is refused with EISCONN (106), no descriptor ($(grep '^ring after' "$TMP/late.out"))" \
			grep -q '^ring after bind: arg 106 fds 0$' "$TMP/late.out"
		check "hostile: ... its packets still come on the socket: 3 pings read and written back ($(grep '^packets' "$TMP/late.out")), $n answered" \
			test "$rc/$n/$(grep -c '^packets 3 written 3$' "$TMP/late.out")" = "0/3/1"
	else
		bad "hostile: the late client bound"; sed 's/^/# /' "$TMP/late.out"
	fi

	if [ -n "$BY_BG" ]; then
		n=$(pings 192.0.2.1 20)
		kill -TERM "$BY_PID" 2>/dev/null
		reap "$BY_BG" "$BY_PID"; rc=$?
		check "hostile: after all this the well-behaved program still answers (20 pings: $n) and never stalled ($(tail -1 "$TMP/by.out"), status $rc)" \
			bash -c "[ '$n' = 20 ] && [ $rc = 0 ] && grep -q 'end stopped\$' '$TMP/by.out'"
	fi
fi

kill -TERM "$DIVERTD_PID"; wait "$DIVERTD_PID"; rc=$?
check "divertd exits 0 on SIGTERM after all this" test "$rc" = 0
check "no sanitizer report" bash -c "! grep -Eq 'ERROR: (Address|Leak)Sanitizer|runtime error' '$TMP/divertd.log' '$TMP/pp.err' '$TMP/by.err' 2>/dev/null"
summary
