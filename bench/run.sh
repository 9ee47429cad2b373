#!/usr/bin/env bash
# bench/run.sh: divertd's benchmark (issue 5).  Not part of the test suite.
#
#	sudo bash bench/run.sh [--quick] [--json FILE] [--reps N] [--no-profile]
#		[--only cases,latency,memory,cores,profile] [--cases A,B,C,D,E]
#
# Three network namespaces on this machine, a sender, a router and a
# receiver, joined by veth pairs:
#
#	sender 192.0.2.2 --- 192.0.2.1 router 198.51.100.1 --- 198.51.100.2 receiver
#
# The router forwards; what sits on its FORWARD path is the case:
#	A  nothing: the kernel path, no queue
#	B  iptables mangle FORWARD -j NFQUEUE to nfq_baseline, the thinnest
#	   NFQUEUE consumer (batched receive, batched NF_ACCEPT)
#	C  divertd with "divert 8668 ip4 from any to any out" and div_pass, an
#	   unmodified FreeBSD-style pass-through program, under the shim
#	D  C with "tee" instead of "divert"; the program only reads (an IDS)
#	E  C's rules, but divertd lends the queue to direct_client -b
#	   (tests/kernel/direct_client.c): the direct path's floor, batched
#	   NF_REPEAT verdicts with the re-entry mark and no copy to a
#	   program (docs/DIRECT.md)
# and the same traffic crosses each: 64-byte and 1400-byte UDP floods
# (bounded counts), a TCP bulk transfer (GSO-sized packets), and UDP
# ping-pong at light load for latency; then A, B and C side by side in one
# router, their round trips interleaved.  Then, once: divertd's memory while
# 10,000 packets are held, two divert ports against one (and B's two
# queues against one), one port's program stopped while another's traffic
# is measured, and (unless --quick or --no-profile) perf profiles of
# divertd and the program during the 64-byte flood and the TCP transfer.
#
# Everything runs in namespaces named dvb<pid>-*, with addresses only from
# 192.0.2.0/24 and 198.51.100.0/24; every process and namespace goes away on
# every exit path (trap), divertd by SIGTERM so that it removes its rules.
# Every traffic loop is bounded by a count and by time.  The numbers go to
# a table on stdout and to JSON (default bench/results/latest.json); see
# bench/README.md for what each figure means.
set -u
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BUILD=${BUILD:-$ROOT/build}
PYTHON=/usr/bin/python3

QUICK=0
PROFILE=1
ONLY=cases,latency,memory,cores,profile
CASES="A B C D E"
PASS_OPTS=${PASS_OPTS:-}	# extra div_pass options in C and D (experiments)
DIRECT_OPTS=${DIRECT_OPTS:-}	# extra direct_client options in E (-A)
RCVBUF=1048576			# div_pass's SO_RCVBUF (0: FreeBSD's default)
RING=1				# 0: the shim without its ring (DIVERT_RING=0)
REPS=
JSON_OUT=$HERE/results/latest.json
usage() {
	echo "usage: sudo bash bench/run.sh [--quick] [--json FILE] [--reps N] [--no-profile]" >&2
	echo "       [--only cases,latency,memory,cores,profile] [--cases A,B,C,D,E]" >&2
	echo "       [--rcvbuf BYTES] [--no-ring]" >&2
	exit 2
}
while [ $# -gt 0 ]; do
	case $1 in
	--quick) QUICK=1 ;;
	--json) [ $# -ge 2 ] || usage; JSON_OUT=$2; shift ;;
	--reps) [ $# -ge 2 ] || usage; REPS=$2; shift ;;
	--no-profile) PROFILE=0 ;;
	--only) [ $# -ge 2 ] || usage; ONLY=$2; shift ;;
	--cases) [ $# -ge 2 ] || usage; CASES=${2//,/ }; shift ;;
	--rcvbuf) [ $# -ge 2 ] || usage; RCVBUF=$2; shift ;;
	--no-ring) RING=0 ;;
	-h|--help) usage ;;
	*) usage ;;
	esac
	shift
done
case $JSON_OUT in /*) ;; *) JSON_OUT=$PWD/$JSON_OUT ;; esac

# --- sizes of everything ----------------------------------------------------
if [ "$QUICK" = 1 ]; then
	REPS=${REPS:-1}
	N64=300000		# 64-byte flood, packets
	N1400=150000		# 1400-byte flood, packets
	TCP_BYTES=$((256 << 20))
	NSCALE=200000		# per flow, in the two-port runs
	TMAX=15			# seconds: the bound on any one traffic run
	PROFILE=0
else
	REPS=${REPS:-3}
	N64=2000000
	N1400=1000000
	TCP_BYTES=$((2 << 30))
	NSCALE=1000000
	TMAX=30
fi
NRTT=10000			# round trips measured per case (after 200 warm-up)
NHOLD=10000			# packets held for the memory figure
HOLD_PORTS=4			# spread over this many programs: divertd lets one
				# client hold at most 4096
HOLD_SIZE=1400			# bytes, IPv4 packet
STALL_PPS=20000			# paced traffic to the stopped program
QUEUE=8668			# divert port = NFQUEUE number, B uses it too

# --- prerequisites ------------------------------------------------------------
if [ "$(id -u)" != 0 ]; then
	echo "bench/run.sh: needs root (network namespaces, iptables, NFQUEUE)" >&2
	exit 1
fi
for t in ip iptables iptables-save cc pkg-config timeout; do
	command -v "$t" >/dev/null || { echo "bench/run.sh: $t is missing" >&2; exit 1; }
done
[ -x "$PYTHON" ] || { echo "bench/run.sh: $PYTHON is missing (apt install python3)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/divertd-bench.XXXXXX)
BIN=$WORK/bin
RAW=$WORK/raw.tsv
NS_PREFIX="dvb$$"
NAMESPACES=()
PIDS=()
S='' R='' D=''

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

# stop_pid PID: continue it (a stopped process cannot act on SIGTERM),
# SIGTERM, a bounded wait, then SIGKILL; reap it
stop_pid() {
	local p=$1 i
	kill -0 "$p" 2>/dev/null || { wait "$p" 2>/dev/null; return 0; }
	kill -CONT "$p" 2>/dev/null
	kill -TERM "$p" 2>/dev/null
	for i in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
	kill -KILL "$p" 2>/dev/null
	wait "$p" 2>/dev/null
}

cleanup() {
	local p ns
	trap - EXIT INT TERM
	# programs first, divertd (which removes its rules) with them
	for p in "${PIDS[@]}"; do stop_pid "$p"; done
	for ns in "${NAMESPACES[@]}"; do ip netns del "$ns" 2>/dev/null; done
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# bg NS CMD...: start CMD in namespace NS in the background; its pid goes
# into BG_PID and the cleanup list (ip netns exec and env exec, so $! is
# the program itself)
bg() {
	local ns=$1; shift
	ip netns exec "$ns" "$@" &
	BG_PID=$!
	PIDS+=("$BG_PID")
}

# forget PID: it has ended (or been stopped and reaped)
forget() {
	local p keep=()
	for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
	PIDS=("${keep[@]}")
}

# finish PID: stop it and forget it
finish() { stop_pid "$1"; forget "$1"; }

# wait_exit PID SECONDS: a bounded wait for a process to end by itself
wait_exit() {
	local i
	for i in $(seq $(( $2 * 20 ))); do
		kill -0 "$1" 2>/dev/null || { wait "$1" 2>/dev/null; forget "$1"; return 0; }
		sleep 0.05
	done
	log "pid $1 did not end within $2 s"
	finish "$1"
	return 1
}

# wait_file FILE SECONDS: readiness by file, bounded
wait_file() {
	local i
	for i in $(seq $(( $2 * 20 ))); do
		[ -e "$1" ] && return 0
		sleep 0.05
	done
	log "timed out waiting for $1"
	return 1
}

# kv FILE KEY: the value after KEY on the last "key value ..." line of FILE
kv() {
	awk -v k="$2" 'NF { line = $0 } END { n = split(line, f, " ");
		for (i = 1; i < n; i += 2) if (f[i] == k) { print f[i + 1]; exit } }' "$1" 2>/dev/null
}

# rec TEST CASE KEY VALUE: one raw measurement of this repetition
REP=0
rec() { printf '%s\t%s\t%s\t%s\t%s\n' "$REP" "$1" "$2" "$3" "${4:-}" >>"$RAW"; }

# cpu_ns PID: CPU time the task has used (ns, /proc/PID/schedstat)
cpu_ns() { awk '{ print $1 }' "/proc/$1/schedstat" 2>/dev/null || echo 0; }

# rss_kb PID: resident memory (VmRSS, kB)
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null; }

# queue_stat NS FIELD: the sum of a column of nfnetlink_queue over all
# queues in NS (3: held, 6: queue full drops, 7: user (socket) drops)
# shellcheck disable=SC2016
queue_stat() {
	ip netns exec "$1" awk -v f="$2" '{ s += $f } END { print s + 0 }' \
		/proc/net/netfilter/nfnetlink_queue 2>/dev/null || echo 0
}
# shellcheck disable=SC2016
queue_held() {	# queue_held NS QUEUE: packets waiting for a verdict there
	ip netns exec "$1" awk -v q="$2" '$1 == q { print $3; f = 1 } END { if (!f) print 0 }' \
		/proc/net/netfilter/nfnetlink_queue
}

# --- build ------------------------------------------------------------------
build() {
	local t missing=0
	for t in divertd divertctl libdivert_shim.so; do
		[ -e "$BUILD/$t" ] || missing=1
	done
	if [ "$missing" = 1 ]; then
		log "building divertd in $BUILD"
		{ cmake -S "$ROOT" -B "$BUILD" && cmake --build "$BUILD" -j2; } >"$WORK/build.log" 2>&1 ||
			{ cat "$WORK/build.log" >&2; exit 1; }
	fi
	mkdir -p "$BIN"
	local f flags=(-O2 -Wall -Wextra -Wshadow -Wstrict-prototypes -Wformat=2)
	for f in udp_flood udp_sink udp_rtt tcp_bulk; do
		cc "${flags[@]}" -o "$BIN/$f" "$HERE/$f.c" || exit 1
	done
	cc "${flags[@]}" -I"$ROOT/include" -o "$BIN/div_pass" "$HERE/div_pass.c" || exit 1
	# shellcheck disable=SC2046
	cc "${flags[@]}" -o "$BIN/nfq_baseline" "$HERE/nfq_baseline.c" \
		$(pkg-config --cflags --libs libnetfilter_queue libmnl) || exit 1
	# shellcheck disable=SC2046
	cc "${flags[@]}" -I"$ROOT/src" -o "$BIN/direct_client" "$ROOT/tests/kernel/direct_client.c" \
		$(pkg-config --cflags --libs libnetfilter_queue libmnl) || exit 1
}

# --- topology -----------------------------------------------------------------
ns_add() {	# ns_add VAR NAME
	local ns="$NS_PREFIX-$2"
	ip netns add "$ns" || return 1
	NAMESPACES+=("$ns")
	ip -n "$ns" link set lo up
	# no IPv6 on the links: no router solicitations or ND in the way
	ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 \
		net.ipv6.conf.default.disable_ipv6=1
	printf -v "$1" '%s' "$ns"
}

mac() { ip -n "$1" -br link show "$2" | awk '{ print $3 }'; }

topo_up() {
	ns_add S snd && ns_add R rtr && ns_add D rcv || return 1
	ip link add s0 netns "$S" type veth peer name r0 netns "$R" || return 1
	ip link add r1 netns "$R" type veth peer name d0 netns "$D" || return 1
	ip -n "$S" addr add 192.0.2.2/24 dev s0
	ip -n "$R" addr add 192.0.2.1/24 dev r0
	ip -n "$R" addr add 198.51.100.1/24 dev r1
	ip -n "$D" addr add 198.51.100.2/24 dev d0
	ip -n "$S" link set s0 up
	ip -n "$R" link set r0 up
	ip -n "$R" link set r1 up
	ip -n "$D" link set d0 up
	ip -n "$S" route add default via 192.0.2.1
	ip -n "$D" route add default via 198.51.100.1
	ip netns exec "$R" sysctl -qw net.ipv4.ip_forward=1
	# permanent neighbours: no ARP in the middle of a measurement
	ip -n "$S" neigh replace 192.0.2.1 lladdr "$(mac "$R" r0)" dev s0 nud permanent
	ip -n "$R" neigh replace 192.0.2.2 lladdr "$(mac "$S" s0)" dev r0 nud permanent
	ip -n "$R" neigh replace 198.51.100.2 lladdr "$(mac "$D" d0)" dev r1 nud permanent
	ip -n "$D" neigh replace 198.51.100.1 lladdr "$(mac "$R" r1)" dev d0 nud permanent
}

topo_down() {
	local ns
	for ns in "${NAMESPACES[@]}"; do ip netns del "$ns" 2>/dev/null; done
	NAMESPACES=()
	S='' R='' D=''
}

# --- the cases ------------------------------------------------------------------
# CASE_PIDS: "name:pid" of the processes doing the case's per-packet work,
# whose CPU time is measured around each flood
CASE_PIDS=()
DIVERTD_PID=
SOCK=

# start_divertd CONF [ARGS...]: divertd in the router namespace, waited for
# as tests/netns/lib.sh does: the socket file and its "ready:" line
start_divertd() {
	local conf=$1 i; shift
	SOCK=$WORK/divertd.sock
	rm -f "$SOCK"
	bg "$R" "$BUILD/divertd" -d -f "$conf" -s "$SOCK" "$@" >"$WORK/divertd.log" 2>&1
	DIVERTD_PID=$BG_PID
	for i in $(seq 200); do
		[ -e "$SOCK" ] && grep -q 'ready:' "$WORK/divertd.log" && return 0
		kill -0 "$DIVERTD_PID" 2>/dev/null || break
		sleep 0.05
	done
	log "divertd did not start:"; sed 's/^/  divertd: /' "$WORK/divertd.log" >&2
	return 1
}

# divert_prog NAME ARGS...: a FreeBSD-style program under the shim
divert_prog() {
	local ready=$WORK/$1.ready out=$WORK/$1.out; shift
	rm -f "$ready"
	local buf=()
	[ "$RCVBUF" != 0 ] && buf=(-b "$RCVBUF")
	bg "$R" env LD_PRELOAD="$BUILD/libdivert_shim.so" DIVERT_SOCKET="$SOCK" \
		DIVERT_RING="$RING" "$BIN/div_pass" -r "$ready" "${buf[@]}" "$@" >"$out" 2>&1
	wait_file "$ready" 10
}

stop_divertd() {
	[ -n "$DIVERTD_PID" ] || return 0
	kill -TERM "$DIVERTD_PID" 2>/dev/null
	wait_exit "$DIVERTD_PID" 10
	DIVERTD_PID=
	if ip netns exec "$R" iptables-save -t mangle 2>/dev/null | grep -q divertd; then
		log "warning: divertd left rules behind"
	fi
}

# divertd_stats TEST CASE: divertd's counters, recorded
divertd_stats() {
	local out=$WORK/stats.txt k
	ip netns exec "$R" "$BUILD/divertctl" -s "$SOCK" stats >"$out" 2>/dev/null || return 0
	for k in received diverted teed full kernel_drops evicted expired verdict_errors; do
		rec "$1" "$2" "divertd_$k" "$(awk -v k=$k '$1 == k { print $2 }' "$out")"
	done
}

# dstats FILE: divertd's counters now (empty when no divertd runs)
dstats() {
	: >"$1"
	[ -n "$DIVERTD_PID" ] || return 0
	ip netns exec "$R" "$BUILD/divertctl" -s "$SOCK" stats >"$1" 2>/dev/null
}

# dstats_record TEST CASE BEFORE AFTER: what divertd counted in between
dstats_record() {
	local k b a
	[ -s "$4" ] || return 0
	for k in received diverted teed full kernel_drops evicted expired verdicts; do
		b=$(awk -v k=$k '$1 == k { print $2 }' "$3")
		a=$(awk -v k=$k '$1 == k { print $2 }' "$4")
		[ -n "$a" ] && rec "$1" "$2" "divertd_$k" $((a - ${b:-0}))
	done
}

case_start() {
	CASE_PIDS=()
	case $1 in
	A) ;;
	B)
		rm -f "$WORK/nfqb.ready"
		bg "$R" "$BIN/nfq_baseline" -r "$WORK/nfqb.ready" "$QUEUE" >"$WORK/nfqb.out" 2>&1
		CASE_PIDS=("nfq_baseline:$BG_PID")
		wait_file "$WORK/nfqb.ready" 10 || return 1
		ip netns exec "$R" iptables -t mangle -A FORWARD -j NFQUEUE --queue-num "$QUEUE"
		;;
	C|D)
		local action=divert ro=
		[ "$1" = D ] && { action='tee'; ro='-n'; }
		echo "100 $action $QUEUE ip4 from any to any out" >"$WORK/case.conf"
		start_divertd "$WORK/case.conf" || return 1
		# shellcheck disable=SC2086
		divert_prog pass $ro $PASS_OPTS "$QUEUE" || return 1
		CASE_PIDS=("divertd:$DIVERTD_PID" "div_pass:$BG_PID")
		;;
	E)
		echo "100 divert $QUEUE ip4 from any to any out" >"$WORK/case.conf"
		start_divertd "$WORK/case.conf" || return 1
		rm -f "$WORK/direct.ready"
		# shellcheck disable=SC2086
		bg "$R" "$BIN/direct_client" -b ${DIRECT_OPTS:-} -r "$WORK/direct.ready" "$SOCK" "$QUEUE" \
			>"$WORK/direct.out" 2>&1
		CASE_PIDS=("divertd:$DIVERTD_PID" "direct_client:$BG_PID")
		wait_file "$WORK/direct.ready" 10 || return 1
		grep -q '^granted direct' "$WORK/direct.out" || { log "E: the queue was not lent"; return 1; }
		;;
	esac
}

# case_stop CASE [TEST]: stop the case's processes; with divertd, record
# its counters under TEST (default "all") first
case_stop() {
	local p
	if [ -n "$DIVERTD_PID" ]; then
		divertd_stats "${2:-all}" "$1"
	fi
	for p in "${CASE_PIDS[@]}"; do
		case $p in divertd:*) ;; *) finish "${p#*:}" ;; esac
	done
	stop_divertd
	CASE_PIDS=()
}

# --- traffic ------------------------------------------------------------------
PERF_OK=0		# 1 when perf can count system calls here
PERF_INSN=0		# 1 when it can count instructions too
PERF_EVENTS=raw_syscalls:sys_enter,context-switches
PERF_WHY=

cpu_snapshot() {	# cpu_snapshot VAR: "name:ns name:ns ..."
	local p out=
	for p in "${CASE_PIDS[@]}"; do out+="${p%%:*}:$(cpu_ns "${p#*:}") "; done
	printf -v "$1" '%s' "$out"
}

# cpu_record TEST CASE BEFORE AFTER: CPU ns used by each case process
cpu_record() {
	local b a name
	for a in $4; do
		name=${a%%:*}
		for b in $3; do
			[ "${b%%:*}" = "$name" ] && rec "$1" "$2" "cpu_ns_$name" $(( ${a#*:} - ${b#*:} ))
		done
	done
}

# perf_start: count, for each case process, its system calls, context
# switches and (where the machine has a PMU) instructions.  perf starts
# with its counters off and turns them on when told on its control fd; its
# "ack" on the other fd is the signal that counting runs.
PERF_PIDS=()
perf_start() {
	local p name c a
	PERF_PIDS=()
	[ "$PERF_OK" = 1 ] || return 0
	for p in "${CASE_PIDS[@]}"; do
		name=${p%%:*}
		rm -f "$WORK/pctl-$name" "$WORK/pack-$name"
		mkfifo "$WORK/pctl-$name" "$WORK/pack-$name"
		exec {c}<>"$WORK/pctl-$name" {a}<>"$WORK/pack-$name"
		perf stat --control "fd:$c,$a" -D -1 -e "$PERF_EVENTS" -x, \
			-o "$WORK/perf-$name.csv" -p "${p#*:}" 2>/dev/null &
		PERF_PIDS+=("$name:$!:$c:$a")
		PIDS+=("$!")
		echo enable >&"$c"
		read -r -t 10 -u "$a" _ || log "perf stat for $name did not start"
	done
}
perf_stop() {	# perf_stop TEST CASE
	local p name pid c a ev v
	for p in "${PERF_PIDS[@]}"; do
		IFS=: read -r name pid c a <<<"$p"
		kill -INT "$pid" 2>/dev/null
		wait_exit "$pid" 5
		exec {c}>&- {a}>&-
		for ev in instructions raw_syscalls:sys_enter context-switches; do
			v=$(awk -F, -v e="$ev" '$3 == e && $1 ~ /^[0-9]+$/ { print $1 }' "$WORK/perf-$name.csv")
			[ -n "$v" ] && rec "$1" "$2" "${ev##*:}_$name" "$v"
		done
	done
	PERF_PIDS=()
}

# udp_run TEST CASE SIZE COUNT [PORT [RATE]]: one flood through the router,
# flat out or at RATE packets/s
udp_run() {
	local test=$1 cs=$2 size=$3 count=$4 port=${5:-9000} rate=${6:-0} sink before after q0 q1
	rm -f "$WORK/sink.ready"
	bg "$D" "$BIN/udp_sink" -p "$port" -n "$count" -t "$TMAX" -i 500 \
		-r "$WORK/sink.ready" >"$WORK/sink.out" 2>&1
	sink=$BG_PID
	wait_file "$WORK/sink.ready" 10 || return 1
	q0=$(( $(queue_stat "$R" 6) + $(queue_stat "$R" 7) ))
	dstats "$WORK/dstats0"
	perf_start
	cpu_snapshot before
	ip netns exec "$S" timeout $((TMAX + 10)) "$BIN/udp_flood" -d 198.51.100.2 \
		-p "$port" -s "$size" -n "$count" -r "$rate" -t "$TMAX" >"$WORK/flood.out" 2>&1
	wait_exit "$sink" $((TMAX + 5))
	cpu_snapshot after
	perf_stop "$test" "$cs"
	dstats "$WORK/dstats1"
	dstats_record "$test" "$cs" "$WORK/dstats0" "$WORK/dstats1"
	q1=$(( $(queue_stat "$R" 6) + $(queue_stat "$R" 7) ))
	cpu_record "$test" "$cs" "$before" "$after"
	rec "$test" "$cs" size "$size"
	rec "$test" "$cs" sent "$(kv "$WORK/flood.out" sent)"
	rec "$test" "$cs" send_pps "$(kv "$WORK/flood.out" pps)"
	rec "$test" "$cs" received "$(kv "$WORK/sink.out" received)"
	rec "$test" "$cs" unique "$(kv "$WORK/sink.out" unique)"
	rec "$test" "$cs" bytes "$(kv "$WORK/sink.out" bytes)"
	rec "$test" "$cs" seconds "$(kv "$WORK/sink.out" seconds)"
	rec "$test" "$cs" first_ns "$(kv "$WORK/sink.out" first_ns)"
	rec "$test" "$cs" last_ns "$(kv "$WORK/sink.out" last_ns)"
	rec "$test" "$cs" queue_drops $((q1 - q0))
	log "  $test $cs: $(tail -1 "$WORK/sink.out")"
}

# tcp_run CASE [TEST]: one bulk transfer through the router
tcp_run() {
	local cs=$1 test=${2:-tcp} rcv p0 b0 p1 b1
	rm -f "$WORK/tcp.ready"
	bg "$D" "$BIN/tcp_bulk" -l 5201 -r "$WORK/tcp.ready" -t "$TMAX" >"$WORK/tcprx.out" 2>&1
	rcv=$BG_PID
	wait_file "$WORK/tcp.ready" 10 || return 1
	p0=$(ip netns exec "$R" cat /sys/class/net/r1/statistics/tx_packets)
	b0=$(ip netns exec "$R" cat /sys/class/net/r1/statistics/tx_bytes)
	dstats "$WORK/dstats0"
	perf_start
	cpu_snapshot before
	ip netns exec "$S" timeout $((TMAX + 10)) "$BIN/tcp_bulk" -c 198.51.100.2 -p 5201 \
		-n "$TCP_BYTES" -t "$TMAX" >"$WORK/tcptx.out" 2>&1
	wait_exit "$rcv" 10
	cpu_snapshot after
	perf_stop "$test" "$cs"
	dstats "$WORK/dstats1"
	dstats_record "$test" "$cs" "$WORK/dstats0" "$WORK/dstats1"
	p1=$(ip netns exec "$R" cat /sys/class/net/r1/statistics/tx_packets)
	b1=$(ip netns exec "$R" cat /sys/class/net/r1/statistics/tx_bytes)
	cpu_record "$test" "$cs" "$before" "$after"
	rec "$test" "$cs" bytes "$(kv "$WORK/tcprx.out" bytes)"
	rec "$test" "$cs" seconds "$(kv "$WORK/tcprx.out" seconds)"
	rec "$test" "$cs" router_packets $((p1 - p0))
	rec "$test" "$cs" router_bytes $((b1 - b0))
	log "  $test $cs: $(tail -1 "$WORK/tcprx.out") ($((p1 - p0)) packets forwarded)"
}

# rtt_run CASE: UDP ping-pong, one in flight
rtt_run() {
	local cs=$1 echo_pid k
	rm -f "$WORK/echo.ready"
	bg "$D" "$BIN/udp_rtt" -l 7007 -r "$WORK/echo.ready" -t $((TMAX * 2)) >"$WORK/echo.out" 2>&1
	echo_pid=$BG_PID
	wait_file "$WORK/echo.ready" 10 || return 1
	ip netns exec "$S" timeout $((TMAX * 2 + 10)) "$BIN/udp_rtt" -c 198.51.100.2 -p 7007 \
		-n "$NRTT" -t $((TMAX * 2)) >"$WORK/rtt.out" 2>&1
	finish "$echo_pid"
	for k in count lost mean_us p50_us p90_us p99_us p999_us max_us; do
		rec rtt "$cs" "$k" "$(kv "$WORK/rtt.out" $k)"
	done
	log "  rtt $cs: $(tail -1 "$WORK/rtt.out")"
}

# --- phases -------------------------------------------------------------------
# one case, all traffic, on a fresh topology
phase_case() {
	local cs=$1
	topo_up || { log "cannot build the namespaces"; return 1; }
	if case_start "$cs"; then
		udp_run udp64 "$cs" 64 "$N64"
		udp_run udp1400 "$cs" 1400 "$N1400"
		tcp_run "$cs"
		rtt_run "$cs"
	else
		log "case $cs did not start"
	fi
	case_stop "$cs"
	topo_down
}

# Latency of A, B and C at the same moments: one router holds all three
# paths, told apart by UDP port (7001 plain, 7002 to nfq_baseline, 7003
# diverted to div_pass, both directions), and udp_rtt takes them in turn,
# one round trip each.  Machine noise then hits the three alike.  A's
# packets cross divertd's rules without matching (and conntrack is on).
phase_latency() {
	local k cs port echo_pid nq
	topo_up || return 1
	rm -f "$WORK/nfqb.ready"
	bg "$R" "$BIN/nfq_baseline" -r "$WORK/nfqb.ready" 8002 >"$WORK/nfqb.out" 2>&1; nq=$BG_PID
	printf '%s\n' "100 divert $QUEUE udp from any to any 7003 out" \
		"110 divert $QUEUE udp from any 7003 to any out" >"$WORK/lat.conf"
	CASE_PIDS=("nfq_baseline:$nq")
	if wait_file "$WORK/nfqb.ready" 10 && start_divertd "$WORK/lat.conf" &&
	   divert_prog pass "$QUEUE"; then
		CASE_PIDS+=("div_pass:$BG_PID")
		ip netns exec "$R" iptables -t mangle -A FORWARD -p udp -m multiport \
			--ports 7002 -j NFQUEUE --queue-num 8002
		rm -f "$WORK/echo.ready"
		bg "$D" "$BIN/udp_rtt" -l 7001,7002,7003 -r "$WORK/echo.ready" -t $((TMAX * 3)) \
			>"$WORK/echo.out" 2>&1
		echo_pid=$BG_PID
		if wait_file "$WORK/echo.ready" 10; then
			ip netns exec "$S" timeout $((TMAX * 3 + 10)) "$BIN/udp_rtt" -c 198.51.100.2 \
				-p 7001,7002,7003 -n "$NRTT" -t $((TMAX * 3)) >"$WORK/rtt.out" 2>&1
			for cs in A B C; do
				case $cs in A) port=7001 ;; B) port=7002 ;; C) port=7003 ;; esac
				grep "^port $port " "$WORK/rtt.out" >"$WORK/rtt-$cs.out"
				for k in count lost mean_us p50_us p90_us p99_us p999_us max_us; do
					rec rtt_mix "$cs" "$k" "$(kv "$WORK/rtt-$cs.out" $k)"
				done
				log "  rtt_mix $cs: $(cat "$WORK/rtt-$cs.out")"
			done
		fi
		finish "$echo_pid"
	fi
	case_stop C latency_total
	topo_down
}

# divertd's resident memory while NHOLD packets are held
phase_memory() {
	local i port conf=$WORK/hold.conf idle held missing have need dh
	local per=$((NHOLD / HOLD_PORTS)) seq=0
	local -a hold_pids=()
	topo_up || return 1
	{
		echo "100 divert $QUEUE udp from any to any 9000 out"
		for i in $(seq $HOLD_PORTS); do
			echo "$((100 + i * 10)) divert $((8000 + i)) udp from any to any $((9000 + i)) out"
		done
	} >"$conf"
	# held for 2 minutes: far longer than the measurement
	start_divertd "$conf" -t 120000 || { topo_down; return 1; }
	divert_prog pass "$QUEUE"
	CASE_PIDS=("div_pass:$BG_PID")
	for i in $(seq $HOLD_PORTS); do
		divert_prog "hold$i" -n $((8000 + i))
		hold_pids+=("$BG_PID")
	done
	# warm-up: as many packets of the same size through a pass-through
	# port, so buffers used once by any traffic are counted as idle (the
	# receiver has them all: divertd is done with them)
	udp_run mem_warmup C "$HOLD_SIZE" "$NHOLD" 9000 20000
	idle=$(rss_kb "$DIVERTD_PID")
	# NHOLD packets spread over the holding programs, paced so that none
	# overflows its socket; top up what was lost, a bounded number of times
	for _ in 1 2 3 4 5; do
		missing=0
		for i in $(seq $HOLD_PORTS); do
			port=$((8000 + i))
			have=$(queue_held "$R" "$port")
			need=$((per - have))
			[ "$need" -gt 0 ] || continue
			missing=$((missing + need))
			ip netns exec "$S" timeout $((TMAX + 5)) "$BIN/udp_flood" -d 198.51.100.2 \
				-p $((9000 + i)) -s "$HOLD_SIZE" -n "$need" -r 20000 -q "$seq" \
				-t "$TMAX" >/dev/null 2>&1
			seq=$((seq + need))
		done
		[ "$missing" = 0 ] && break
		# the last packets reach the queue within milliseconds; the
		# count in the kernel's queue table is the signal
		for _ in $(seq 40); do
			held=0
			for i in $(seq $HOLD_PORTS); do held=$((held + $(queue_held "$R" $((8000 + i))))); done
			[ "$held" -ge $((per * HOLD_PORTS)) ] && break
			sleep 0.05
		done
	done
	held=0
	for i in $(seq $HOLD_PORTS); do held=$((held + $(queue_held "$R" $((8000 + i))))); done
	# divertd has them all once the programs have read them: its count
	for _ in $(seq 100); do
		dh=$(ip netns exec "$R" "$BUILD/divertctl" -s "$SOCK" stats 2>/dev/null | awk '$1 == "held" { print $2 }')
		[ "${dh:-0}" -ge "$held" ] && break
		sleep 0.05
	done
	REP=0
	rec memory C packet_size "$HOLD_SIZE"
	rec memory C held_kernel "$held"
	rec memory C held_divertd "${dh:-}"
	rec memory C rss_idle_kb "$idle"
	rec memory C rss_held_kb "$(rss_kb "$DIVERTD_PID")"
	log "  memory: divertd RSS ${idle} kB idle, $(rss_kb "$DIVERTD_PID") kB with $held packets held (divertd counts ${dh:-?})"
	ip netns exec "$R" "$BUILD/divertctl" -s "$SOCK" sockets >"$WORK/hold-sockets.txt" 2>&1
	for i in "${hold_pids[@]}"; do finish "$i"; done
	case_stop C memory_total
	topo_down
}

# two divert ports against one, B's two queues against one, and one
# program stopped while another port's traffic is measured.  A flood flat
# out takes a whole CPU for the sender (and the kernel's forwarding up to
# the queue, which runs in its system calls): two of them would leave
# nothing of a two-CPU machine to the consumers.  So the one-port capacity
# is measured flat out first, and then one flow and two flows are offered
# at 1.5 times that each, paced.
phase_scaling() {
	local conf=$WORK/scale.conf a b rate
	# --- C: one port, then two ports at once
	topo_up || return 1
	printf '%s\n' "100 divert 8668 udp from any to any 9000 out" \
		"200 divert 8669 udp from any to any 9001 out" >"$conf"
	start_divertd "$conf" || { topo_down; return 1; }
	divert_prog pass "$QUEUE"; a=$BG_PID
	divert_prog pass2 8669; b=$BG_PID
	CASE_PIDS=("divertd:$DIVERTD_PID" "div_pass:$a" "div_pass2:$b")
	udp_run scale0 C 64 "$NSCALE" 9000
	rate=$(awk '{ printf "%d", $0 * 1.5 }' <<<"$(kv "$WORK/sink.out" pps)")
	udp_run scale1 C 64 "$NSCALE" 9000 "$rate"
	two_flows scale2 C 64 "$NSCALE" "$rate"
	# the program on port 8669 stops; 8668's flood is measured while
	# paced traffic keeps coming for the stopped one
	kill -STOP "$b"
	stall_run C
	kill -CONT "$b"
	case_stop C scaling_total
	topo_down

	# --- B: one queue, then two queues (two consumers) at once
	topo_up || return 1
	rm -f "$WORK/nfqb.ready" "$WORK/nfqb2.ready"
	bg "$R" "$BIN/nfq_baseline" -r "$WORK/nfqb.ready" 8668 >"$WORK/nfqb.out" 2>&1; a=$BG_PID
	bg "$R" "$BIN/nfq_baseline" -r "$WORK/nfqb2.ready" 8669 >"$WORK/nfqb2.out" 2>&1; b=$BG_PID
	CASE_PIDS=("nfq_baseline:$a" "nfq_baseline2:$b")
	if wait_file "$WORK/nfqb.ready" 10 && wait_file "$WORK/nfqb2.ready" 10; then
		ip netns exec "$R" iptables -t mangle -A FORWARD -p udp --dport 9000 -j NFQUEUE --queue-num 8668
		ip netns exec "$R" iptables -t mangle -A FORWARD -p udp --dport 9001 -j NFQUEUE --queue-num 8669
		udp_run scale0 B 64 "$NSCALE" 9000
		rate=$(awk '{ printf "%d", $0 * 1.5 }' <<<"$(kv "$WORK/sink.out" pps)")
		udp_run scale1 B 64 "$NSCALE" 9000 "$rate"
		two_flows scale2 B 64 "$NSCALE" "$rate"
	fi
	case_stop B
	topo_down
}

# two_flows TEST CASE SIZE COUNT RATE: floods to ports 9000 and 9001 at once,
# RATE packets/s each
two_flows() {
	local test=$1 cs=$2 size=$3 count=$4 rate=$5 s1 s2 f1 f2 before after
	rm -f "$WORK/sink1.ready" "$WORK/sink2.ready"
	bg "$D" "$BIN/udp_sink" -p 9000 -n "$count" -t "$TMAX" -i 500 -r "$WORK/sink1.ready" >"$WORK/sink1.out" 2>&1; s1=$BG_PID
	bg "$D" "$BIN/udp_sink" -p 9001 -n "$count" -t "$TMAX" -i 500 -r "$WORK/sink2.ready" >"$WORK/sink2.out" 2>&1; s2=$BG_PID
	wait_file "$WORK/sink1.ready" 10 && wait_file "$WORK/sink2.ready" 10 || return 1
	dstats "$WORK/dstats0"
	cpu_snapshot before
	bg "$S" timeout $((TMAX + 10)) "$BIN/udp_flood" -d 198.51.100.2 -p 9000 -s "$size" -n "$count" -r "$rate" -t "$TMAX" >"$WORK/flood1.out" 2>&1; f1=$BG_PID
	bg "$S" timeout $((TMAX + 10)) "$BIN/udp_flood" -d 198.51.100.2 -p 9001 -s "$size" -n "$count" -r "$rate" -t "$TMAX" >"$WORK/flood2.out" 2>&1; f2=$BG_PID
	wait_exit "$f1" $((TMAX + 15)); wait_exit "$f2" $((TMAX + 15))
	wait_exit "$s1" $((TMAX + 5)); wait_exit "$s2" $((TMAX + 5))
	cpu_snapshot after
	dstats "$WORK/dstats1"
	dstats_record "$test" "$cs" "$WORK/dstats0" "$WORK/dstats1"
	cpu_record "$test" "$cs" "$before" "$after"
	rec "$test" "$cs" offered_pps "$rate"
	local i
	for i in 1 2; do
		rec "$test" "$cs" "received_$i" "$(kv "$WORK/sink$i.out" received)"
		rec "$test" "$cs" "sent_$i" "$(kv "$WORK/flood$i.out" sent)"
		rec "$test" "$cs" "first_ns_$i" "$(kv "$WORK/sink$i.out" first_ns)"
		rec "$test" "$cs" "last_ns_$i" "$(kv "$WORK/sink$i.out" last_ns)"
		rec "$test" "$cs" "pps_$i" "$(kv "$WORK/sink$i.out" pps)"
	done
	log "  $test $cs: port 9000 $(kv "$WORK/sink1.out" pps) pps, port 9001 $(kv "$WORK/sink2.out" pps) pps"
}

# stall_run CASE: flood port 9000 while port 9001's program is stopped and
# paced traffic keeps coming for it
stall_run() {
	local cs=$1 s2 f2 full0
	rm -f "$WORK/sink2.ready"
	bg "$D" "$BIN/udp_sink" -p 9001 -t "$TMAX" -i 2000 -r "$WORK/sink2.ready" >"$WORK/sink2.out" 2>&1; s2=$BG_PID
	wait_file "$WORK/sink2.ready" 10 || return 1
	# the stopped program's traffic starts first, fills its socket and
	# the daemon's hold limit, and goes on through the whole measurement
	dstats "$WORK/dstats0"
	bg "$S" timeout $((TMAX + 10)) "$BIN/udp_flood" -d 198.51.100.2 -p 9001 -s 64 \
		-n $((STALL_PPS * (TMAX + 5))) -r "$STALL_PPS" -t $((TMAX + 5)) >"$WORK/flood2.out" 2>&1; f2=$BG_PID
	# the signal that the stopped program's socket is full: divertd
	# starts counting drops for it
	full0=$(awk '$1 == "full" { print $2 }' "$WORK/dstats0")
	for _ in $(seq 200); do
		dstats "$WORK/dstats1"
		[ "$(awk '$1 == "full" { print $2 }' "$WORK/dstats1")" -gt "${full0:-0}" ] 2>/dev/null && break
		sleep 0.05
	done
	udp_run stall "$cs" 64 "$NSCALE" 9000
	rec stall "$cs" stalled_held "$(queue_held "$R" 8669)"
	finish "$f2"
	finish "$s2"
	rec stall "$cs" stalled_sent "$(kv "$WORK/flood2.out" sent)"
	rec stall "$cs" stalled_received "$(kv "$WORK/sink2.out" received)"
}

# profile_reports DIR: what perf.data says, as text: the share of each
# process, user space against kernel, the system calls (with what they
# run inside them: the verdict's re-injection, a wakeup), the hottest
# symbols, and divertd's call graphs
profile_reports() {
	local dir=$1 d=$1/perf.data
	{
		echo "# share of the samples by process and object"
		perf report -i "$d" --stdio --no-children --sort comm,dso -g none 2>/dev/null | grep -v '^#' | grep -v '^$'
		echo
		echo "# system calls and the loop, inclusive (children), per process"
		perf report -i "$d" --stdio --children --sort comm,sym -g none 2>/dev/null |
			grep -E '__x64_sys_|epoll_wait|nfqnl_reinject|net_rx_action|schedule$|XXH3|cksum|divert_sock|nfqb_|client_' | head -40
		echo
		echo "# hottest symbols, self time"
		perf report -i "$d" --stdio --no-children --sort comm,dso,sym -g none \
			--percent-limit 0.5 2>/dev/null | grep -v '^#' | grep -v '^$'
	} >"$dir/perf-summary.txt"
	perf report -i "$d" --stdio --no-children --comm divertd --percent-limit 1.5 \
		>"$dir/perf-divertd-callgraph.txt" 2>/dev/null
	perf report -i "$d" --stdio --no-children --comm div_pass --percent-limit 1.5 \
		>"$dir/perf-div_pass-callgraph.txt" 2>/dev/null
}

# record_profile NAME CMD...: perf record of divertd and the program while
# CMD runs; perf starts disabled and its "ack" says sampling runs
record_profile() {
	local name=$1 perf_pid c a; shift
	rm -f "$WORK/rctl" "$WORK/rack"
	mkfifo "$WORK/rctl" "$WORK/rack"
	exec {c}<>"$WORK/rctl" {a}<>"$WORK/rack"
	perf record --control "fd:$c,$a" -D -1 -e cpu-clock -F 2999 -g \
		-o "$WORK/perf.data" -p "$DIVERTD_PID,${CASE_PIDS[1]#*:}" \
		>"$WORK/perf-record.log" 2>&1 &
	perf_pid=$!; PIDS+=("$perf_pid")
	echo enable >&"$c"
	read -r -t 10 -u "$a" _ || log "perf record did not start"
	"$@"
	kill -INT "$perf_pid"; wait_exit "$perf_pid" 30
	exec {c}>&- {a}>&-
	mkdir -p "$PROFILE_DIR/$name"
	mv "$WORK/perf.data" "$PROFILE_DIR/$name/perf.data"
	profile_reports "$PROFILE_DIR/$name"
	log "  profile: $PROFILE_DIR/$name/perf-*.txt (perf report -i $PROFILE_DIR/$name/perf.data)"
}

# perf profiles of divertd and div_pass (case C) during the 64-byte flood
# and during the TCP transfer
phase_profile() {
	topo_up || return 1
	if case_start C; then
		record_profile udp64 udp_run profile C 64 "$N64"
		record_profile tcp tcp_run C profile_tcp
	fi
	case_stop C profile
	topo_down
}

# --- main ---------------------------------------------------------------------
START=$(date +%s)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
# other namespaces on the machine (other benchmarks, test suites): noise
OTHER_NS=$(ip netns list 2>/dev/null | grep -vc "^$NS_PREFIX-")
build
: >"$RAW"
if command -v perf >/dev/null; then
	perf stat -e "$PERF_EVENTS" -x, true 2>&1 | grep -q '^[0-9]' && PERF_OK=1
	if perf stat -e instructions -x, true 2>&1 | grep -q '^[0-9]'; then
		PERF_INSN=1
		PERF_EVENTS=instructions,$PERF_EVENTS
	else
		PERF_WHY="perf cannot count instructions here: $(perf stat -e instructions -x, true 2>&1 | awk -F, 'NF > 2 { print $1; exit }') (no hardware PMU in this VM)"
	fi
else
	PERF_WHY="perf is not installed"
	PROFILE=0
fi
[ -n "$PERF_WHY" ] && log "$PERF_WHY"

want() { case ",$ONLY," in *",$1,"*) return 0 ;; esac; return 1; }
log "benchmark: $REPS repetition(s), floods of $N64 x 64 B and $N1400 x 1400 B, TCP $((TCP_BYTES >> 20)) MiB, $NRTT round trips"
for REP in $(seq "$REPS"); do
	if want cases; then
		for cs in $CASES; do
			log "repetition $REP, case $cs"
			phase_case "$cs"
		done
	fi
	if want latency; then
		log "repetition $REP, latency of A, B and C interleaved"
		phase_latency
	fi
done
REP=0
if want memory; then
	log "memory: $NHOLD packets of $HOLD_SIZE bytes held"
	phase_memory
fi
if want cores; then
	log "two ports, and a stopped program"
	phase_scaling
fi
mkdir -p "$(dirname "$JSON_OUT")"
if [ "$PROFILE" = 1 ] && want profile; then
	log "profile (perf record) of divertd and div_pass: 64-byte flood, TCP"
	PROFILE_DIR="$(dirname "$JSON_OUT")/profile"
	phase_profile
fi

META=$WORK/meta.tsv
{
	printf 'date\t%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
	printf 'kernel\t%s\n' "$(uname -r)"
	printf 'cpus\t%s\n' "$(nproc)"
	printf 'cpu_model\t%s\n' "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
	printf 'git\t%s\n' "$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
	printf 'quick\t%s\n' "$QUICK"
	printf 'reps\t%s\n' "$REPS"
	printf 'n64\t%s\n' "$N64"
	printf 'n1400\t%s\n' "$N1400"
	printf 'tcp_bytes\t%s\n' "$TCP_BYTES"
	printf 'nrtt\t%s\n' "$NRTT"
	printf 'nhold\t%s\n' "$NHOLD"
	printf 'rcvbuf\t%s\n' "$RCVBUF"
	printf 'ring\t%s\n' "$RING"
	printf 'perf_insn\t%s\n' "$PERF_INSN"
	printf 'perf_why\t%s\n' "$PERF_WHY"
	printf 'profile\t%s\n' "$PROFILE"
	printf 'seconds\t%s\n' "$(( $(date +%s) - START ))"
	printf 'loadavg_start\t%s\n' "$LOAD_START"
	printf 'loadavg_end\t%s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
	printf 'other_netns_at_start\t%s\n' "$OTHER_NS"
} >"$META"
"$PYTHON" "$HERE/report.py" "$RAW" "$META" "$JSON_OUT"
