#!/usr/bin/env bash
# bench/soak.sh: divertd's soak (issue 6).  Not part of the test suite.
#
#	sudo bash bench/soak.sh [--quick] [--seconds N] [--json FILE]
#		[--rate PPS] [--size BYTES] [--restart-every S]
#		[--stable-rcvbuf BYTES]
#
# Ten minutes (--seconds N; --quick: 60 s) of UDP at half the measured
# capacity through divertd, while the program on one of its two divert
# ports is killed and started again every 3 seconds.  It checks that every
# packet the semantics say must pass does pass, and that divertd's memory
# and descriptors end where they began.
#
# The binaries.  divertd, divertctl and libdivert_shim.so are copied from
# build/ (BUILD=DIR to change) into a temporary directory first, and the
# copies run: build/ may be rebuilt while the soak runs.  A copy taken
# while the linker writes the file is detected (size and time before and
# after, cmp) and taken again.  udp_flood, udp_sink and div_pass are
# compiled there too.  The JSON records the copies' SHA-256 and the git
# revision (with -dirty: other work in the tree went into the build).
#
# The topology is bench/run.sh's (namespaces dvs<pid>-*, addresses only
# from 192.0.2.0/24 and 198.51.100.0/24):
#
#	sender 192.0.2.2 --- 192.0.2.1 router 198.51.100.1 --- 198.51.100.2 receiver
#
# with divertd on the router's FORWARD path ("out", as run.sh does):
#
#	100 divert 8668 udp from any to any 5001 out	restarting program
#	200 divert 8669 udp from any to any 5002 out	stable program
#
# Both programs are bench/div_pass (an unmodified FreeBSD-style pass-through
# program under the shim).  The restarting one keeps the divert socket's
# default buffer.  The stable one sets SO_RCVBUF to 1864135 bytes, the
# most the shim allows (--stable-rcvbuf; 0 keeps the default): its stream
# is the control that shows the restarts next door lose nothing of it,
# and with the default buffer (about 700 small packets, some 60 ms at
# 11,000 packets/s) a program that a busy machine keeps off the CPU
# longer than that falls behind, and its packets are dropped as divert(4)
# says (kernel_drops: its queue paused; full), which would hide that.
#
# 1. Capacity: both streams flat out at once for 5 s, with a program on
#    each port; the capacity is the sum of the two rates the receiver
#    measures (udp_sink, over its receive window).  Both at once because
#    the soak's traffic crosses both ports; the two flat-out senders take
#    CPU from divertd on this two-CPU machine, so the figure is the
#    capacity of the whole setup here, and errs low (a gentler soak).
# 2. Soak: each stream paced (udp_flood -r) at a quarter of the capacity,
#    so the total is half; SIZE-byte IPv4 packets (default 64: per-packet
#    work is what a soak should repeat most).  udp_flood sends exactly
#    rate x seconds packets, each numbered, so udp_sink counts unique ones.
#    Port 8669's program runs throughout.  Port 8668's is stopped every
#    RESTART seconds (3), alternately with SIGTERM (it exits cleanly) and
#    SIGKILL, and a new one is started as soon as the old has gone (no
#    overlap: the port has one owner).
# 3. Memory and descriptors: divertd's VmRSS (/proc/PID/status) and open
#    descriptors (/proc/PID/fd) at the start, 10 s after the traffic began
#    (warm-up), every 30 s for the log, and at the end, after the traffic
#    has stopped and everything sent has arrived: once before the end's
#    own divertctl commands ("stopped") and once after them ("end", which
#    the criteria use; every divertctl command it follows has run before
#    the start too).  Each sample is taken in the same state: both
#    programs bound, no divertctl connection open (descriptors read until
#    two reads 100 ms apart agree).  The peak (VmHWM) is logged too.
#
# The accounting.  divertctl stats counts divertd's drops daemon-wide; the
# kernel's queue table (/proc/net/netfilter/nfnetlink_queue in the router)
# has, per queue, the packets queued (id_sequence), the queue-full drops and
# the netlink-socket drops.  All figures are differences between a snapshot
# before the soak's traffic and one after it has all arrived.
#   - 5002 (stable program): every packet must arrive, once.  A loss here
#     is a failure whatever counted it (at half the capacity there should
#     be none); what was lost where is reported (kernel queue, in divertd:
#     queued - netlink drops - received, outside: veth/UDP counters).
#     kernel_drops is not only the kernel's overflow: a program that falls
#     behind has its port's queue paused and shortened to what it holds,
#     and the kernel drops its packets on arrival (divert(4)); the
#     per-second monitor (below) shows which it was.
#   - 5001 (restarting program): what is lost is exactly what the
#     semantics allow: packets that came while no program was bound
#     (no_socket), those held by or queued to a program when it went
#     (evicted), those dropped for a full socket (full: also a send to a
#     program that has just died), those held too long (expired), and the
#     kernel's drops on queue 8668 (kernel_drops):
#	sent_5001 == received_5001 + no_socket + evicted + full + expired
#		     + kernel_drops_8668
#     divertd's counters are daemon-wide: port 8669's share (what divertd
#     had of it and the receiver did not get) comes off.  Across both
#     streams, every packet lost must be one of divertd's drop counts.
#     One more term: a program that has more packets unread than divertd
#     holds for one client (4096) has the oldest evicted (dropped in the
#     kernel) while it still has them; when it writes one back, the write
#     answers nothing and goes out as a new packet (injected_out), so it
#     arrives after all.  injected_out comes off the drops (no program
#     here writes anything else); the receiver's total must equal
#     reinjected_out + injected_out.
#   - divertd's own books must balance: received = diverted + no_socket +
#     full; diverted = reinjected_out + evicted + expired (+ held, 0 at the
#     end); received = what the two queues handed it.
#   - drops outside divertd (veth, the receiver's UDP buffer, the router's
#     forwarding) are recorded and must be 0: if the kernel drops under
#     this load, that is a finding, not divertd's semantics.
#   - a monitor reads, once a second, each queue's length and drops, the
#     CPU time divertd and the stable program spent running and waiting
#     for a CPU (schedstat), the load and the CPU pressure: when packets
#     are dropped, it says whether divertd or the program was starved by
#     other work on the machine.
#
# Pass (exit 0) only when all of these hold: 5002 complete, no duplicate on
# either stream, the 5001 identity exact, every loss of both streams one of
# divertd's drop counts, divertd's books balanced, no drop
# outside divertd, no verdict error, every restart bound its port within
# 10 s, divertd alive to the end and exiting 0 on SIGTERM with its rules
# gone, descriptors at the end == at the start, VmRSS end - start <= 256
# KiB.  A table goes to stdout, JSON to bench/results/soak.json (--json),
# the logs (divertd's, restarts, samples) to bench/results/soak-logs/.
#
# Every wait is bounded, every traffic run bounded by count and time; every
# process and namespace goes away on every exit path (trap), divertd by
# SIGTERM so that it removes its rules.  Needs root, iproute2, a C compiler,
# Debian's /usr/bin/python3 (the report), and divertd's run-time needs
# (nftables or iptables, NFQUEUE).
set -u
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BUILD=${BUILD:-$ROOT/build}
PYTHON=/usr/bin/python3

SECONDS_RUN=600
RATE=			# per stream, packets/s; empty: a quarter of the capacity
SIZE=64			# IPv4 packet bytes
RESTART=3		# seconds between restarts of port 8668's program
STABLE_RCVBUF=1864135	# SO_RCVBUF of port 8669's program (0: the default)
JSON_OUT=$HERE/results/soak.json
CAP_SECONDS=5		# the capacity measurement
WARMUP=10		# seconds of soak traffic before the first sample
SAMPLE_EVERY=30
RSS_LIMIT_KB=256

usage() {
	echo "usage: sudo bash bench/soak.sh [--quick] [--seconds N] [--json FILE]" >&2
	echo "       [--rate PPS] [--size BYTES] [--restart-every S] [--stable-rcvbuf BYTES]" >&2
	exit 2
}
isnum() { case $1 in ''|*[!0-9]*) return 1 ;; esac; }
while [ $# -gt 0 ]; do
	case $1 in
	--quick) SECONDS_RUN=60 ;;
	--seconds) [ $# -ge 2 ] && isnum "$2" && [ "$2" -ge 20 ] || usage; SECONDS_RUN=$2; shift ;;
	--json) [ $# -ge 2 ] || usage; JSON_OUT=$2; shift ;;
	--rate) [ $# -ge 2 ] && isnum "$2" && [ "$2" -gt 0 ] || usage; RATE=$2; shift ;;
	--size) [ $# -ge 2 ] && isnum "$2" && [ "$2" -ge 36 ] && [ "$2" -le 1500 ] || usage; SIZE=$2; shift ;;
	--restart-every) [ $# -ge 2 ] && isnum "$2" && [ "$2" -ge 1 ] || usage; RESTART=$2; shift ;;
	--stable-rcvbuf) [ $# -ge 2 ] && isnum "$2" || usage; STABLE_RCVBUF=$2; shift ;;
	-h|--help) usage ;;
	*) usage ;;
	esac
	shift
done
case $JSON_OUT in /*) ;; *) JSON_OUT=$PWD/$JSON_OUT ;; esac
LOG_DIR=$(dirname "$JSON_OUT")/soak-logs

# --- prerequisites ------------------------------------------------------------
if [ "$(id -u)" != 0 ]; then
	echo "bench/soak.sh: needs root (network namespaces, nftables, NFQUEUE)" >&2
	exit 1
fi
for t in ip cc timeout sha256sum cmp; do
	command -v "$t" >/dev/null || { echo "bench/soak.sh: $t is missing" >&2; exit 1; }
done
[ -x "$PYTHON" ] || { echo "bench/soak.sh: $PYTHON is missing (apt install python3)" >&2; exit 1; }
for t in divertd divertctl libdivert_shim.so; do
	[ -e "$BUILD/$t" ] || {
		echo "bench/soak.sh: $BUILD/$t is missing: cmake -S . -B build && cmake --build build" >&2
		exit 1
	}
done

WORK=$(mktemp -d /tmp/divertd-soak.XXXXXX)
BIN=$WORK/bin
RAW=$WORK/raw.tsv		# key<TAB>value: every figure the report uses
SAMPLES=$WORK/samples.tsv	# t_s label rss_kb fds clients held restarts hwm_kb
RESTARTS=$WORK/restarts.tsv	# one line per restart of port 8668's program
NS_PREFIX="dvs$$"
NAMESPACES=()
PIDS=()
S='' R='' D=''
DIVERTD_PID=
SOCK=$WORK/divertd.sock

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
rec() { printf '%s\t%s\n' "$1" "${2:-}" >>"$RAW"; }

# stop_pid PID: continue it, SIGTERM, a bounded wait, SIGKILL; reap it
stop_pid() {
	local p=$1 i
	kill -0 "$p" 2>/dev/null || { wait "$p" 2>/dev/null; return 0; }
	kill -CONT "$p" 2>/dev/null
	kill -TERM "$p" 2>/dev/null
	for i in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
	kill -KILL "$p" 2>/dev/null
	wait "$p" 2>/dev/null
}

save_logs() {
	[ -d "$WORK" ] || return 0
	mkdir -p "$LOG_DIR" 2>/dev/null || return 0
	local f
	for f in divertd.log samples.tsv restarts.tsv raw.tsv cap-sink1.out cap-sink2.out \
		cap-flood1.out cap-flood2.out sink1.out sink2.out flood1.out flood2.out \
		pass8669.out stats-end.txt sockets-end.txt monitor.tsv program-warnings.txt; do
		[ -e "$WORK/$f" ] && cp "$WORK/$f" "$LOG_DIR/"
	done
}

cleanup() {
	local p ns
	trap - EXIT INT TERM
	# our processes: programs, traffic, then divertd (it removes its rules
	# on SIGTERM), newest first
	touch "$WORK/monitor.stop" 2>/dev/null
	for ((p = ${#PIDS[@]} - 1; p >= 0; p--)); do stop_pid "${PIDS[p]}"; done 2>/dev/null
	# anything else still inside our namespaces (a program started just
	# as we were interrupted): those are ours too
	for ns in "${NAMESPACES[@]}"; do
		for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
	done
	for ns in "${NAMESPACES[@]}"; do ip netns del "$ns" 2>/dev/null; done
	save_logs
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# bg NS CMD...: CMD in namespace NS in the background; its pid (ip netns
# exec and env exec, so $! is the program itself) in BG_PID and the
# cleanup list
bg() {
	local ns=$1; shift
	ip netns exec "$ns" "$@" &
	BG_PID=$!
	PIDS+=("$BG_PID")
}
forget() {
	local p keep=()
	for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
	PIDS=("${keep[@]}")
}
finish() { stop_pid "$1"; forget "$1"; }

# wait_exit PID SECONDS: a bounded wait for a process to end by itself;
# its exit status in EXIT_RC
wait_exit() {
	local i
	EXIT_RC=
	for i in $(seq $(( $2 * 50 ))); do
		if ! kill -0 "$1" 2>/dev/null; then
			wait "$1" 2>/dev/null; EXIT_RC=$?
			forget "$1"
			return 0
		fi
		sleep 0.02
	done
	log "pid $1 did not end within $2 s"
	kill -KILL "$1" 2>/dev/null
	wait "$1" 2>/dev/null; EXIT_RC=$?
	forget "$1"
	return 1
}
wait_file() {	# wait_file FILE SECONDS: readiness by file, bounded
	local i
	for i in $(seq $(( $2 * 50 ))); do
		[ -e "$1" ] && return 0
		sleep 0.02
	done
	return 1
}
# kv FILE KEY: the value after KEY on the last "key value ..." line of FILE
kv() {
	awk -v k="$2" 'NF { line = $0 } END { n = split(line, f, " ");
		for (i = 1; i < n; i += 2) if (f[i] == k) { print f[i + 1]; exit } }' "$1" 2>/dev/null
}
# NOW_MS: milliseconds (wall clock, for intervals within this run)
tick() { local t=${EPOCHREALTIME/./}; NOW_MS=$(( t / 1000 )); }

# --- the binaries ---------------------------------------------------------------
# copy_stable SRC DST: a copy that no rebuild overwrote while it was taken
copy_stable() {
	local src=$1 dst=$2 a b i
	for i in 1 2 3 4 5 6 7 8 9 10; do
		a=$(stat -L -c '%s %Y' "$src" 2>/dev/null)
		cp -L "$src" "$dst" 2>/dev/null
		sleep 0.2
		b=$(stat -L -c '%s %Y' "$src" 2>/dev/null)
		if [ -n "$a" ] && [ "$a" = "$b" ] && [ -s "$dst" ] && cmp -s "$src" "$dst"; then
			# a file finished more than 2 s ago: no linker is at it
			[ $(( $(date +%s) - ${b#* } )) -ge 2 ] && return 0
		fi
		sleep 2
	done
	echo "bench/soak.sh: $src keeps changing (a build is running?)" >&2
	return 1
}

build_tools() {
	local f flags=(-O2 -Wall -Wextra -Wshadow -Wstrict-prototypes -Wformat=2)
	mkdir -p "$BIN"
	copy_stable "$BUILD/divertd" "$BIN/divertd" || exit 1
	copy_stable "$BUILD/divertctl" "$BIN/divertctl" || exit 1
	copy_stable "$BUILD/libdivert_shim.so" "$BIN/libdivert_shim.so" || exit 1
	"$BIN/divertd" -h >/dev/null 2>&1 || { echo "bench/soak.sh: the copied divertd does not run" >&2; exit 1; }
	for f in udp_flood udp_sink; do
		cc "${flags[@]}" -o "$BIN/$f" "$HERE/$f.c" || exit 1
	done
	cc "${flags[@]}" -I"$ROOT/include" -o "$BIN/div_pass" "$HERE/div_pass.c" || exit 1
	for f in divertd divertctl libdivert_shim.so; do
		rec "bin.$f.sha256" "$(sha256sum "$BIN/$f" | cut -d' ' -f1)"
		rec "bin.$f.mtime" "$(date -u -r "$BUILD/$f" +%Y-%m-%dT%H:%M:%SZ)"
	done
}

# --- topology -----------------------------------------------------------------
ns_add() {	# ns_add VAR NAME
	local ns="$NS_PREFIX-$2"
	ip netns add "$ns" || return 1
	NAMESPACES+=("$ns")
	ip -n "$ns" link set lo up
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
	# permanent neighbours: no ARP during the soak
	ip -n "$S" neigh replace 192.0.2.1 lladdr "$(mac "$R" r0)" dev s0 nud permanent
	ip -n "$R" neigh replace 192.0.2.2 lladdr "$(mac "$S" s0)" dev r0 nud permanent
	ip -n "$R" neigh replace 198.51.100.2 lladdr "$(mac "$D" d0)" dev r1 nud permanent
	ip -n "$D" neigh replace 198.51.100.1 lladdr "$(mac "$R" r1)" dev d0 nud permanent
}

# --- divertd and its programs ---------------------------------------------------
ctl() { ip netns exec "$R" "$BIN/divertctl" -s "$SOCK" "$@"; }
dstat() { ctl stats 2>/dev/null | awk -v k="$1" '$1 == k { print $2 }'; }
rss_kb() { awk -v k="${1:-VmRSS}:" '$1 == k { print $2 }' "/proc/$DIVERTD_PID/status" 2>/dev/null; }
nfds() { ls "/proc/$DIVERTD_PID/fd" 2>/dev/null | wc -l; }
# settled_fds: divertd's descriptor count once two reads 100 ms apart agree
# (a divertctl connection just closed may be open in divertd a moment more)
settled_fds() {
	local a b i
	a=$(nfds)
	for i in $(seq 50); do sleep 0.1; b=$(nfds); [ "$a" = "$b" ] && break; a=$b; done
	echo "$b"
}

start_divertd() {
	local i
	rm -f "$SOCK"
	bg "$R" "$BIN/divertd" -d -f "$WORK/soak.conf" -s "$SOCK" >"$WORK/divertd.log" 2>&1
	DIVERTD_PID=$BG_PID
	for i in $(seq 200); do
		[ -e "$SOCK" ] && grep -q 'ready:' "$WORK/divertd.log" && return 0
		kill -0 "$DIVERTD_PID" 2>/dev/null || break
		sleep 0.05
	done
	log "divertd did not start:"; sed 's/^/  divertd: /' "$WORK/divertd.log" >&2
	return 1
}

# pass_start PORT OUT READY [OPTIONS...]: div_pass on PORT under the shim;
# pid in BG_PID
pass_start() {
	local port=$1 out=$2 ready=$3; shift 3
	rm -f "$ready"
	bg "$R" env LD_PRELOAD="$BIN/libdivert_shim.so" DIVERT_SOCKET="$SOCK" \
		"$BIN/div_pass" -r "$ready" "$@" "$port" >"$out" 2>&1
}

# --- counters -------------------------------------------------------------------
# snap TAG: every counter the accounting uses, as TAG.* keys in RAW
snap() {
	local t=$1 ns ifc k
	ctl stats >"$WORK/stats-$t.txt" 2>&1
	ctl sockets >"$WORK/sockets-$t.txt" 2>&1	# (every command the end uses, the start has seen)
	awk -v t="$t" 'NF == 2 && $2 ~ /^[0-9]+$/ { printf "%s.d.%s\t%s\n", t, $1, $2 }' \
		"$WORK/stats-$t.txt" >>"$RAW"
	# per rule (ipfw show): number, packets, bytes
	ctl show 2>/dev/null | awk -v t="$t" '$1 ~ /^[0-9]+$/ { printf "%s.rule.%d\t%s\n", t, $1, $2 }' >>"$RAW"
	# per queue: queued now, queue-full drops, netlink drops, last id
	ip netns exec "$R" awk -v t="$t" '{ printf "%s.q.%s.held\t%s\n%s.q.%s.qdrop\t%s\n%s.q.%s.udrop\t%s\n%s.q.%s.idseq\t%s\n",
		t, $1, $3, t, $1, $6, t, $1, $7, t, $1, $8 }' /proc/net/netfilter/nfnetlink_queue >>"$RAW"
	# the links: drops and packets on each end
	for ifc in "$S:s0" "$R:r0" "$R:r1" "$D:d0"; do
		ns=${ifc%%:*}; ifc=${ifc#*:}
		for k in rx_packets tx_packets rx_dropped tx_dropped; do
			rec "$t.if.$ifc.$k" "$(ip netns exec "$ns" cat "/sys/class/net/$ifc/statistics/$k")"
		done
	done
	# the stacks: /proc/net/snmp in each namespace (name line, value line)
	for ns in "snd:$S" "rtr:$R" "rcv:$D"; do
		ip netns exec "${ns#*:}" awk -v t="$t.snmp.${ns%%:*}" '
			$1 == "Ip:" || $1 == "Udp:" {
				if (!(($1) in h)) { h[$1] = 1; for (i = 2; i <= NF; i++) n[$1, i] = $i }
				else for (i = 2; i <= NF; i++) printf "%s.%s%s\t%s\n", t, substr($1, 1, length($1) - 1), n[$1, i], $i
			}' /proc/net/snmp >>"$RAW"
	done
}

# sample LABEL: divertd's memory and descriptors, with both programs bound
SAMPLE_T0=0
sample() {
	local fds rss hwm clients held
	fds=$(settled_fds)
	rss=$(rss_kb); hwm=$(rss_kb VmHWM)
	clients=$(dstat clients); held=$(dstat held)
	tick
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' $(( (NOW_MS - SAMPLE_T0) / 1000 )) "$1" \
		"${rss:-0}" "$fds" "${clients:-}" "${held:-}" "$NSTARTED" "${hwm:-0}" >>"$SAMPLES"
	log "  sample $1: t=$(( (NOW_MS - SAMPLE_T0) / 1000 ))s VmRSS ${rss} kB (peak $hwm), ${fds} fds, ${clients} clients, ${held} held, $NSTARTED restarts"
	LAST_RSS=$rss; LAST_FDS=$fds
}

# --- port 8668's restarting program ---------------------------------------------
PROG_PID=
NSTARTED=0		# restarts (programs started after the first)
NSTART_FAIL=0
NTERM=0 NKILL=0
NEXT_SIG=TERM

# prog_kill: stop the current program with NEXT_SIG (alternating), wait
prog_kill() {
	local sig=$NEXT_SIG rc
	tick; KILL_MS=$NOW_MS
	# (stderr off: bash's "Killed" notice for a SIGKILL'd job)
	{ kill -"$sig" "$PROG_PID"; wait_exit "$PROG_PID" 5; } 2>/dev/null ||
		log "port 8668's program (pid $PROG_PID) did not end within 5 s of SIG$sig"
	rc=$EXIT_RC
	tick; DEAD_MS=$NOW_MS
	if [ "$sig" = TERM ]; then NTERM=$((NTERM + 1)); NEXT_SIG=KILL
	else NKILL=$((NKILL + 1)); NEXT_SIG=TERM; fi
	KILLED_SIG=$sig KILLED_RC=$rc
	PROG_PID=
}

# prog_start: a new program on 8668, bound within 10 s (three tries)
prog_start() {
	local try out
	for try in 1 2 3; do
		out=$WORK/p8668/$((NSTARTED + 1)).out
		pass_start 8668 "$out" "$WORK/p8668.ready"
		PROG_PID=$BG_PID
		if wait_file "$WORK/p8668.ready" 10; then
			tick; READY_MS=$NOW_MS
			return 0
		fi
		NSTART_FAIL=$((NSTART_FAIL + 1))
		log "port 8668's program did not bind within 10 s (try $try): $(tail -2 "$out" | tr '\n' ' ')"
		finish "$PROG_PID"; PROG_PID=
	done
	return 1
}

# restart: kill the current program, start the next, record the gap
restart() {
	prog_kill
	NSTARTED=$((NSTARTED + 1))
	prog_start || { READY_MS=0; printf '%s\t%s\t%s\t%s\t-1\t-1\n' "$NSTARTED" "$KILLED_SIG" \
		"$KILLED_RC" $((DEAD_MS - KILL_MS)) >>"$RESTARTS"; return 1; }
	printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$NSTARTED" "$KILLED_SIG" "$KILLED_RC" \
		$((DEAD_MS - KILL_MS)) $((READY_MS - DEAD_MS)) $((READY_MS - KILL_MS)) >>"$RESTARTS"
}

# --- the per-second monitor ----------------------------------------------------
# monitor: once a second until monitor.stop appears (at most MON_MAX
# times), one line: the time (ms); per queue the packets waiting and the
# drops (queue full, netlink) from /proc/DIVERTD_PID/net, which is the
# router's namespace; divertd's and the stable program's CPU time running
# and waiting to run (schedstat, ns: waiting is CPU taken by others); the
# load average and runnable tasks; the machine's CPU pressure (PSI "some"
# total, us).  Builtins only, but for the one sleep: it costs nothing the
# soak measures.  When the kernel's queue overflows, this says whether
# divertd was running, waiting for a CPU, or idle.
MON_MAX=0
monitor() {
	local i q tot qd ud run wt srun swt l1 rq psi k v out
	for ((i = 0; i < MON_MAX; i++)); do
		[ -e "$WORK/monitor.stop" ] && break
		tick; out=$NOW_MS
		declare -A Qm=()
		while read -r q _ tot _ _ qd ud _; do Qm[$q]="$tot	$qd	$ud"; done \
			<"/proc/$DIVERTD_PID/net/netfilter/nfnetlink_queue" 2>/dev/null
		out+="	${Qm[8668]:-0	0	0}	${Qm[8669]:-0	0	0}"
		run=0 wt=0 srun=0 swt=0 psi=0
		read -r run wt _ <"/proc/$DIVERTD_PID/schedstat" 2>/dev/null
		read -r srun swt _ <"/proc/$STABLE_PID/schedstat" 2>/dev/null
		read -r l1 _ _ rq _ </proc/loadavg
		if [ -r /proc/pressure/cpu ]; then
			read -r _ _ _ _ v </proc/pressure/cpu
			psi=${v#total=}
		fi
		printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$out" "$run" "$wt" "$srun" "$swt" \
			"$l1" "${rq%/*}" "$psi" >>"$WORK/monitor.tsv"
		sleep 1
	done
}

# --- main -------------------------------------------------------------------------
START=$(date +%s)
rec meta.date "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
rec meta.kernel "$(uname -r)"
rec meta.cpus "$(nproc)"
rec meta.git "$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
rec meta.loadavg_start "$(cut -d' ' -f1-3 /proc/loadavg)"
rec meta.other_netns_at_start "$(ip netns list 2>/dev/null | grep -vc "^$NS_PREFIX-")"
rec meta.seconds "$SECONDS_RUN"
rec meta.size "$SIZE"
rec meta.restart_every "$RESTART"
rec meta.stable_rcvbuf "$STABLE_RCVBUF"
rec meta.rss_limit_kb "$RSS_LIMIT_KB"
build_tools
mkdir -p "$WORK/p8668"
: >"$SAMPLES"; : >"$RESTARTS"

topo_up || { log "cannot build the namespaces"; exit 1; }
printf '%s\n' "100 divert 8668 udp from any to any 5001 out" \
	"200 divert 8669 udp from any to any 5002 out" >"$WORK/soak.conf"
start_divertd || exit 1
rec meta.backend "$(ctl stats 2>/dev/null | awk '$1 == "backend" { print $2 }')"
stable_opts=()
[ "$STABLE_RCVBUF" -gt 0 ] && stable_opts=(-b "$STABLE_RCVBUF")
pass_start 8669 "$WORK/pass8669.out" "$WORK/p8669.ready" "${stable_opts[@]}"; STABLE_PID=$BG_PID
wait_file "$WORK/p8669.ready" 10 || { log "port 8669's program did not bind"; exit 1; }
prog_start || { log "port 8668's program did not bind"; exit 1; }

# --- 1. capacity: both streams flat out at once
if [ -z "$RATE" ]; then
	log "capacity: both streams flat out for ${CAP_SECONDS} s, $SIZE-byte packets"
	capn=$(( 2000000 * CAP_SECONDS ))	# a bound the time bound meets first
	bg "$D" "$BIN/udp_sink" -p 5001 -t $((CAP_SECONDS + 15)) -i 1000 -b 33554432 \
		-r "$WORK/cs1.ready" >"$WORK/cap-sink1.out" 2>&1; cs1=$BG_PID
	bg "$D" "$BIN/udp_sink" -p 5002 -t $((CAP_SECONDS + 15)) -i 1000 -b 33554432 \
		-r "$WORK/cs2.ready" >"$WORK/cap-sink2.out" 2>&1; cs2=$BG_PID
	wait_file "$WORK/cs1.ready" 10 && wait_file "$WORK/cs2.ready" 10 || { log "sinks did not start"; exit 1; }
	snap cap0
	bg "$S" timeout $((CAP_SECONDS + 10)) "$BIN/udp_flood" -d 198.51.100.2 -p 5001 -s "$SIZE" \
		-n "$capn" -t "$CAP_SECONDS" >"$WORK/cap-flood1.out" 2>&1; cf1=$BG_PID
	bg "$S" timeout $((CAP_SECONDS + 10)) "$BIN/udp_flood" -d 198.51.100.2 -p 5002 -s "$SIZE" \
		-n "$capn" -t "$CAP_SECONDS" >"$WORK/cap-flood2.out" 2>&1; cf2=$BG_PID
	wait_exit "$cf1" $((CAP_SECONDS + 15)); wait_exit "$cf2" $((CAP_SECONDS + 15))
	wait_exit "$cs1" $((CAP_SECONDS + 20)); wait_exit "$cs2" $((CAP_SECONDS + 20))
	snap cap1
	p1=$(kv "$WORK/cap-sink1.out" pps); p2=$(kv "$WORK/cap-sink2.out" pps)
	CAPACITY=$(( ${p1:-0} + ${p2:-0} ))
	rec cap.pps_5001 "${p1:-0}"; rec cap.pps_5002 "${p2:-0}"
	for i in 1 2; do
		rec "cap.sent_$i" "$(kv "$WORK/cap-flood$i.out" sent)"
		rec "cap.send_pps_$i" "$(kv "$WORK/cap-flood$i.out" pps)"
		rec "cap.received_$i" "$(kv "$WORK/cap-sink$i.out" received)"
	done
	log "  capacity: $CAPACITY packets/s ($p1 through 8668, $p2 through 8669; offered $(kv "$WORK/cap-flood1.out" pps) + $(kv "$WORK/cap-flood2.out" pps))"
	[ "$CAPACITY" -gt 1000 ] || { log "capacity too low to soak ($CAPACITY pps)"; exit 1; }
	RATE=$(( CAPACITY / 4 ))
	rec cap.total_pps "$CAPACITY"
	rec rate.source measured
else
	rec rate.source given
fi
rec rate.per_stream_pps "$RATE"
NPKT=$(( RATE * SECONDS_RUN ))
rec rate.count_per_stream "$NPKT"

# everything from the capacity run delivered or dropped: nothing held
for _ in $(seq 100); do [ "$(dstat held)" = 0 ] && break; sleep 0.1; done

# --- 2. the soak
log "soak: $SECONDS_RUN s, $RATE packets/s per stream ($((2 * RATE)) in all, $SIZE bytes), port 8668's program restarted every $RESTART s"
rm -f "$WORK/s1.ready" "$WORK/s2.ready"
bg "$D" "$BIN/udp_sink" -p 5001 -n "$NPKT" -t $((SECONDS_RUN + 120)) -i 5000 -b 33554432 \
	-r "$WORK/s1.ready" >"$WORK/sink1.out" 2>&1; SINK1=$BG_PID
bg "$D" "$BIN/udp_sink" -p 5002 -n "$NPKT" -t $((SECONDS_RUN + 120)) -i 5000 -b 33554432 \
	-r "$WORK/s2.ready" >"$WORK/sink2.out" 2>&1; SINK2=$BG_PID
wait_file "$WORK/s1.ready" 10 && wait_file "$WORK/s2.ready" 10 || { log "sinks did not start"; exit 1; }
snap s0
MON_MAX=$(( SECONDS_RUN + 150 ))
rm -f "$WORK/monitor.stop"; : >"$WORK/monitor.tsv"
monitor & MON_PID=$!; PIDS+=("$MON_PID")
tick; SAMPLE_T0=$NOW_MS; T0=$NOW_MS
rec soak.t0_ms "$T0"
bg "$S" timeout $((SECONDS_RUN + 90)) "$BIN/udp_flood" -d 198.51.100.2 -p 5001 -s "$SIZE" \
	-n "$NPKT" -r "$RATE" -t $((SECONDS_RUN + 60)) >"$WORK/flood1.out" 2>&1; FLOOD1=$BG_PID
bg "$S" timeout $((SECONDS_RUN + 90)) "$BIN/udp_flood" -d 198.51.100.2 -p 5002 -s "$SIZE" \
	-n "$NPKT" -r "$RATE" -t $((SECONDS_RUN + 60)) >"$WORK/flood2.out" 2>&1; FLOOD2=$BG_PID

floods_running() { kill -0 "$FLOOD1" 2>/dev/null || kill -0 "$FLOOD2" 2>/dev/null; }
HARD_MS=$(( T0 + (SECONDS_RUN + 100) * 1000 ))
NEXT_SAMPLE=$(( T0 + WARMUP * 1000 ))
HAVE_START=0
SOAK_OK=1
tick; READY_MS=$NOW_MS		# the capacity phase's program counts as just started
while :; do
	# the program is bound: let it work RESTART seconds, sampling when due
	while tick; [ "$NOW_MS" -lt $(( READY_MS + RESTART * 1000 )) ]; do
		floods_running || break 2
		if [ "$NOW_MS" -ge "$NEXT_SAMPLE" ]; then
			if [ "$HAVE_START" = 0 ]; then
				sample start; HAVE_START=1
				RSS0=$LAST_RSS FDS0=$LAST_FDS
			else
				sample "t+$(( (NOW_MS - T0) / 1000 ))s"
			fi
			NEXT_SAMPLE=$(( NEXT_SAMPLE + SAMPLE_EVERY * 1000 ))
			continue
		fi
		sleep 0.1
	done
	floods_running || break
	[ "$NOW_MS" -lt "$HARD_MS" ] || { log "the floods outlived their bound"; SOAK_OK=0; break; }
	restart || { log "port 8668 has no program: the soak stops"; SOAK_OK=0; break; }
done
for f in "$FLOOD1" "$FLOOD2"; do wait_exit "$f" 100; done
tick; rec soak.traffic_ms $(( NOW_MS - T0 ))
log "traffic over after $(( (NOW_MS - T0) / 1000 )) s; $NSTARTED restarts"
# the end state is the start's: both programs bound
[ -n "$PROG_PID" ] || prog_start || SOAK_OK=0

# --- 3. the end: everything delivered, then the counters and the sample
for _ in $(seq 100); do
	[ "$(dstat held)" = 0 ] &&
		[ "$(ip netns exec "$R" awk '{ s += $3 } END { print s + 0 }' /proc/net/netfilter/nfnetlink_queue)" = 0 ] && break
	sleep 0.1
done
# the sinks end 5 s after their last datagram (5002's at once when it has
# them all)
wait_exit "$SINK1" 30; wait_exit "$SINK2" 30
[ "$HAVE_START" = 1 ] && sample stopped	# before the end's own divertctl commands
touch "$WORK/monitor.stop"; wait_exit "$MON_PID" 5
snap s1
ctl stats >"$WORK/stats-end.txt" 2>&1
ctl sockets >"$WORK/sockets-end.txt" 2>&1
[ "$HAVE_START" = 1 ] || { sample start; RSS0=$LAST_RSS FDS0=$LAST_FDS; }
sample end
rec mem.rss_start_kb "$RSS0"; rec mem.rss_end_kb "$LAST_RSS"
rec mem.fds_start "$FDS0"; rec mem.fds_end "$LAST_FDS"

for i in 1 2; do
	for k in sent errors pps; do rec "flood$i.$k" "$(kv "$WORK/flood$i.out" $k)"; done
	for k in received unique pps seconds; do rec "sink$i.$k" "$(kv "$WORK/sink$i.out" $k)"; done
done
rec restarts.total "$NSTARTED"
rec restarts.sigterm "$NTERM"
rec restarts.sigkill "$NKILL"
rec restarts.start_failures "$NSTART_FAIL"
rec soak.loop_ok "$SOAK_OK"
# what the programs SIGTERM'd (and the last, stopped now) said on leaving
finish_prog_rc=
if [ -n "$PROG_PID" ]; then
	kill -TERM "$PROG_PID"; wait_exit "$PROG_PID" 5; finish_prog_rc=$EXIT_RC; PROG_PID=
fi
kill -TERM "$STABLE_PID"; wait_exit "$STABLE_PID" 5; rec stable.exit "$EXIT_RC"
rec last8668.exit "$finish_prog_rc"
for k in packets written write_errors; do
	rec "stable.$k" "$(kv "$WORK/pass8669.out" $k)"
	rec "p8668.$k" "$(cat "$WORK"/p8668/*.out 2>/dev/null | awk -v k=$k '
		{ for (i = 1; i < NF; i += 2) if ($i == k) s += $(i + 1) } END { print s + 0 }')"
done
rec p8668.clean_exits "$(cat "$WORK"/p8668/*.out 2>/dev/null | grep -c '^packets ')"
# anything else the programs said (warnings: a failed sendto, say)
for f in "$WORK"/p8668/*.out "$WORK/pass8669.out"; do
	grep -v '^packets ' "$f" | sed "s|^|$(basename "$f" .out): |"
done >"$WORK/program-warnings.txt" 2>/dev/null

# divertd: alive until now, exits 0 on SIGTERM, leaves no rule behind
if kill -0 "$DIVERTD_PID" 2>/dev/null; then rec divertd.alive 1; else rec divertd.alive 0; fi
kill -TERM "$DIVERTD_PID"; wait_exit "$DIVERTD_PID" 10; rec divertd.exit "$EXIT_RC"
left=0
ip netns exec "$R" nft list ruleset 2>/dev/null | grep -qi divert && left=1
ip netns exec "$R" iptables-save 2>/dev/null | grep -qi divert && left=1
rec divertd.rules_left "$left"
rec divertd.log_lines "$(grep -vc 'ready:' "$WORK/divertd.log")"
rec meta.loadavg_end "$(cut -d' ' -f1-3 /proc/loadavg)"
rec meta.other_netns_at_end "$(ip netns list 2>/dev/null | grep -vc "^$NS_PREFIX-")"
rec meta.wall_seconds $(( $(date +%s) - START ))

mkdir -p "$(dirname "$JSON_OUT")"
save_logs
# --- the report: the table, the JSON, the verdict (exit status)
"$PYTHON" - "$RAW" "$SAMPLES" "$RESTARTS" "$WORK/stats-end.txt" "$WORK/divertd.log" "$JSON_OUT" \
	"$WORK/monitor.tsv" "$WORK/program-warnings.txt" <<'PY'
import json, sys

raw_f, samples_f, restarts_f, stats_f, dlog_f, out_f, mon_f, warn_f = sys.argv[1:9]
raw = {}
for line in open(raw_f):
    k, _, v = line.rstrip("\n").partition("\t")
    raw[k] = v

def num(k, default=0):
    v = raw.get(k, "")
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return default

def delta(key):
    return num("s1." + key) - num("s0." + key)

samples = []
for line in open(samples_f):
    f = line.rstrip("\n").split("\t")
    if len(f) == 8:
        samples.append({"t_s": int(f[0]), "label": f[1], "rss_kb": int(f[2] or 0),
                        "fds": int(f[3] or 0), "clients": f[4], "held": f[5],
                        "restarts": int(f[6]), "rss_peak_kb": int(f[7] or 0)})
restarts = []
for line in open(restarts_f):
    f = line.rstrip("\n").split("\t")
    if len(f) == 6:
        restarts.append({"n": int(f[0]), "signal": f[1], "exit": f[2],
                         "exit_ms": int(f[3]), "bind_ms": int(f[4]), "gap_ms": int(f[5])})
stats_end = {}
for line in open(stats_f):
    f = line.split()
    if len(f) == 2:
        stats_end[f[0]] = int(f[1]) if f[1].isdigit() else f[1]
dlog = [l.rstrip("\n") for l in open(dlog_f) if "ready:" not in l]
try:
    warnings = [l.rstrip("\n") for l in open(warn_f)]
except OSError:
    warnings = []

# the per-second monitor: intervals between its lines
mon = []
try:
    for line in open(mon_f):
        f = line.rstrip("\n").split("\t")
        if len(f) == 14:
            mon.append([int(x) if x.isdigit() else float(x) for x in f])
except (OSError, ValueError):
    pass
t0 = num("soak.t0_ms")
intervals = []
for a, b in zip(mon, mon[1:]):
    dt = (b[0] - a[0]) / 1000.0
    if dt <= 0:
        continue
    intervals.append({
        "t_s": round((b[0] - t0) / 1000.0, 1),
        "drops_8668": (b[2] - a[2]) + (b[3] - a[3]), "drops_8669": (b[5] - a[5]) + (b[6] - a[6]),
        "queued_8668": b[1], "queued_8669": b[4],
        "divertd_run": (b[7] - a[7]) / 1e9 / dt, "divertd_wait": (b[8] - a[8]) / 1e9 / dt,
        "stable_run": (b[9] - a[9]) / 1e9 / dt, "stable_wait": (b[10] - a[10]) / 1e9 / dt,
        "load1": b[11], "runnable": b[12], "cpu_pressure": (b[13] - a[13]) / 1e6 / dt,
    })
def mean(xs):
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None
drop_iv = [iv for iv in intervals if iv["drops_8668"] + iv["drops_8669"] > 0]
calm_iv = [iv for iv in intervals if iv["drops_8668"] + iv["drops_8669"] == 0]
def profile(ivs):
    return {k: mean(iv[k] for iv in ivs) for k in ("divertd_run", "divertd_wait", "stable_run",
            "stable_wait", "load1", "runnable", "cpu_pressure")} if ivs else None
monitor = {
    "intervals": len(intervals), "intervals_with_kernel_drops": len(drop_iv),
    "max_queued_8668": max((iv["queued_8668"] for iv in intervals), default=None),
    "max_queued_8669": max((iv["queued_8669"] for iv in intervals), default=None),
    "without_drops": profile(calm_iv), "with_drops": profile(drop_iv),
    "worst": sorted(drop_iv, key=lambda iv: -(iv["drops_8668"] + iv["drops_8669"]))[:8],
}

D = {k: delta("d." + k) for k in ("received", "diverted", "teed", "no_socket", "full",
     "reinjected_out", "reinjected_in", "injected_out", "injected_in", "inject_errors",
     "expired", "evicted", "bad_writes", "verdicts", "verdict_errors", "malformed",
     "kernel_drops")}
Q = {}
for q in ("8668", "8669"):
    Q[q] = {k: delta("q.%s.%s" % (q, k)) for k in ("qdrop", "udrop", "idseq")}
    Q[q]["kernel_drops"] = Q[q]["qdrop"] + Q[q]["udrop"]
    Q[q]["to_divertd"] = Q[q]["idseq"] - Q[q]["udrop"]
    Q[q]["reached_queue"] = Q[q]["idseq"] + Q[q]["qdrop"]
    Q[q]["held_end"] = num("s1.q.%s.held" % q)

streams = {}
for i, port, q in ((1, "5001", "8668"), (2, "5002", "8669")):
    sent, uniq, rcv = num("flood%d.sent" % i), num("sink%d.unique" % i), num("sink%d.received" % i)
    streams[port] = {
        "divert_port": int(q), "sent": sent, "send_errors": num("flood%d.errors" % i),
        "send_pps": num("flood%d.pps" % i), "received": rcv, "unique": uniq,
        "duplicates": rcv - uniq, "lost": sent - uniq,
        "loss_ratio": (sent - uniq) / sent if sent else None,
        "receive_pps": num("sink%d.pps" % i),
        "reached_queue": Q[q]["reached_queue"],
        "rule_packets": delta("rule.%d" % (100 if q == "8668" else 200)),
    }

# outside divertd: links, the receiver's UDP buffer, the router's forwarding
outside = {
    "veth_s0_tx_dropped": delta("if.s0.tx_dropped"), "veth_r0_rx_dropped": delta("if.r0.rx_dropped"),
    "veth_r1_tx_dropped": delta("if.r1.tx_dropped"), "veth_d0_rx_dropped": delta("if.d0.rx_dropped"),
    "sender_udp_sndbuf_errors": delta("snmp.snd.UdpSndbufErrors"),
    "router_ip_in_discards": delta("snmp.rtr.IpInDiscards"),
    "router_ip_out_discards": delta("snmp.rtr.IpOutDiscards"),
    "router_ip_out_no_routes": delta("snmp.rtr.IpOutNoRoutes"),
    "receiver_udp_rcvbuf_errors": delta("snmp.rcv.UdpRcvbufErrors"),
    "receiver_udp_in_errors": delta("snmp.rcv.UdpInErrors"),
    "receiver_udp_no_ports": delta("snmp.rcv.UdpNoPorts"),
}
outside_total = sum(v for k, v in outside.items() if k != "receiver_udp_rcvbuf_errors")
# (RcvbufErrors are also counted in InErrors)

s1, s2 = streams["5001"], streams["5002"]
# port 8669's packets that divertd had and the receiver did not get
lost_in_divertd_8669 = Q["8669"]["to_divertd"] - s2["unique"]
# divertd's drop counters are daemon-wide; port 8669's share of them is
# what divertd had of 8669's and the receiver did not get (nothing is lost
# after divertd: the outside counters say so), all "full" (its program
# never closes, and holds far fewer than the 4096 that would evict)
acc = {
    "no_socket": D["no_socket"], "evicted": D["evicted"], "full": D["full"],
    "expired": D["expired"], "less port 8669's share (full)": -lost_in_divertd_8669,
    "less evicted but written back after all (injected_out)": -D["injected_out"],
    "kernel_drops_8668": Q["8668"]["kernel_drops"],
}
acc_sum = sum(acc.values())
acc_diff = s1["lost"] - acc_sum
all_lost = s1["lost"] + s2["lost"]
all_counted = (D["no_socket"] + D["evicted"] + D["full"] + D["expired"] + D["kernel_drops"]
               - D["injected_out"])
books = {
    "received == diverted + no_socket + full (+ teed)":
        (D["received"], D["diverted"] + D["no_socket"] + D["full"] + D["teed"]),
    "diverted == reinjected_out + reinjected_in + evicted + expired":
        (D["diverted"], D["reinjected_out"] + D["reinjected_in"] + D["evicted"] + D["expired"]),
    "received == handed over by queues 8668 + 8669":
        (D["received"], Q["8668"]["to_divertd"] + Q["8669"]["to_divertd"]),
    "kernel_drops (divertd) == queue 8668 + 8669 drops":
        (D["kernel_drops"], Q["8668"]["kernel_drops"] + Q["8669"]["kernel_drops"]),
    "receiver got (both streams) == reinjected_out + injected_out":
        (s1["unique"] + s2["unique"], D["reinjected_out"] + D["injected_out"]),
}
gaps = [r["gap_ms"] for r in restarts if r["gap_ms"] >= 0]
cap_d = {k: num("cap1.d." + k) - num("cap0.d." + k) for k in ("received", "diverted", "full",
         "no_socket", "evicted", "expired", "kernel_drops", "reinjected_out", "injected_out")}
rate = num("rate.per_stream_pps")
rss0, rss1 = num("mem.rss_start_kb"), num("mem.rss_end_kb")
fds0, fds1 = num("mem.fds_start"), num("mem.fds_end")
wrong_exits = [r for r in restarts if (r["signal"] == "TERM" and r["exit"] != "0")
               or (r["signal"] == "KILL" and r["exit"] != "137")]

criteria = [
    ("stream 5002 (stable program) complete: unique received == sent",
     "%d of %d" % (s2["unique"], s2["sent"]), s2["sent"] > 0 and s2["unique"] == s2["sent"]),
    ("no duplicates on either stream",
     "%d, %d" % (s1["duplicates"], s2["duplicates"]), s1["duplicates"] == 0 and s2["duplicates"] == 0),
    ("5001: sent == received + no_socket + evicted + full + expired + kernel_drops_8668",
     "%d == %d + %d (difference %d)" % (s1["sent"], s1["unique"], acc_sum, acc_diff),
     s1["sent"] > 0 and acc_diff == 0),
    ("both streams: lost == no_socket + evicted + full + expired + kernel_drops - injected_out",
     "%d == %d" % (all_lost, all_counted), all_lost == all_counted),
    ("divertd's books balance", "; ".join("%d/%d" % v for v in books.values()),
     all(a == b for a, b in books.values())),
    ("no verdict errors, no malformed", "%d, %d" % (D["verdict_errors"], D["malformed"]),
     D["verdict_errors"] == 0 and D["malformed"] == 0),
    ("no drops outside divertd (veth, router IP, receiver UDP)", str(outside_total), outside_total == 0),
    ("no send errors", "%d, %d" % (s1["send_errors"], s2["send_errors"]),
     s1["send_errors"] == 0 and s2["send_errors"] == 0),
    ("every restart bound port 8668 within 10 s; SIGTERM exits 0, SIGKILL 137",
     "%d restarts, %d failed starts, %d odd exits" % (num("restarts.total"), num("restarts.start_failures"), len(wrong_exits)),
     num("restarts.total") > 0 and num("restarts.start_failures") == 0 and not wrong_exits and num("soak.loop_ok") == 1),
    ("divertd alive at the end, exits 0 on SIGTERM, no rules left",
     "alive %s, exit %s, rules left %s" % (raw.get("divertd.alive"), raw.get("divertd.exit"), raw.get("divertd.rules_left")),
     raw.get("divertd.alive") == "1" and raw.get("divertd.exit") == "0" and raw.get("divertd.rules_left") == "0"),
    ("divertd's descriptors: end == start", "%d -> %d" % (fds0, fds1), fds0 > 0 and fds0 == fds1),
    ("divertd's VmRSS: end - start <= %d KiB" % num("meta.rss_limit_kb"),
     "%d -> %d kB (%+d)" % (rss0, rss1, rss1 - rss0), rss0 > 0 and rss1 - rss0 <= num("meta.rss_limit_kb")),
]
ok = all(c[2] for c in criteria)

W = 64
def row(name, value):
    print("  %-*s %s" % (W, name, value))
print()
print("divertd soak: %s s requested, traffic %.1f s, %s-byte packets, git %s, kernel %s, %s CPUs, %s backend"
      % (raw.get("meta.seconds"), num("soak.traffic_ms") / 1000, raw.get("meta.size"), raw.get("meta.git"),
         raw.get("meta.kernel"), raw.get("meta.cpus"), raw.get("meta.backend")))
print("port 8668's program restarted every %s s; port 8669's program SO_RCVBUF %s"
      % (raw.get("meta.restart_every"), raw.get("meta.stable_rcvbuf") if num("meta.stable_rcvbuf") else "default"))
print("binaries copied from the build directory: " + ", ".join("%s %s (built %s)" % (f, raw.get("bin.%s.sha256" % f, "?")[:12],
      raw.get("bin.%s.mtime" % f, "?")) for f in ("divertd", "divertctl", "libdivert_shim.so")))
print("load average %s at start, %s at end; other namespaces on the machine: %s at start, %s at end"
      % (raw.get("meta.loadavg_start"), raw.get("meta.loadavg_end"),
         raw.get("meta.other_netns_at_start"), raw.get("meta.other_netns_at_end")))
print()
print("rate")
if raw.get("rate.source") == "measured":
    row("capacity, both streams flat out (received packets/s)", "%d (%d via 8668 + %d via 8669; offered %s + %s)"
        % (num("cap.total_pps"), num("cap.pps_5001"), num("cap.pps_5002"), raw.get("cap.send_pps_1"), raw.get("cap.send_pps_2")))
    row("... divertd: received / full / kernel_drops / evicted / injected_out", " / ".join(str(cap_d[k]) for k in
        ("received", "full", "kernel_drops", "evicted", "injected_out")))
row("soak rate per stream (packets/s) %s" % ("= capacity / 4" if raw.get("rate.source") == "measured" else "(given)"),
    "%d (total %d)" % (rate, 2 * rate))
print()
print("streams                                      5001 (restarting)     5002 (stable)")
for k, label in (("sent", "sent"), ("send_pps", "send rate (packets/s)"), ("rule_packets", "matched the divert rule"),
                 ("reached_queue", "reached the kernel queue"), ("received", "received"), ("unique", "unique"),
                 ("duplicates", "duplicates"), ("lost", "lost (sent - unique)"), ("receive_pps", "receive rate (packets/s)")):
    a, b = s1[k], s2[k]
    print("  %-42s %18s %18s" % (label, a if not isinstance(a, float) else "%.0f" % a,
                                  b if not isinstance(b, float) else "%.0f" % b))
print("  %-42s %17.4f%% %17.4f%%" % ("loss", 100 * (s1["loss_ratio"] or 0), 100 * (s2["loss_ratio"] or 0)))
print()
print("5001's losses, accounted for (divertd's counters are daemon-wide: port 8669's share comes off)")
for k, v in acc.items():
    row(k, v)
row("sum", acc_sum)
row("lost - sum (must be 0)", acc_diff)
row("5002's losses: kernel queue 8669 (overflow or paused) / in divertd (full)",
    "%d / %d" % (Q["8669"]["kernel_drops"], lost_in_divertd_8669))
row("both streams: lost / divertd's drop counters in all", "%d / %d" % (all_lost, all_counted))
if gaps:
    row("restart gap, kill to new program bound (ms): mean / max", "%.1f / %d" % (sum(gaps) / len(gaps), max(gaps)))
    row("rate x sum of gaps (no_socket stays below)", "%d" % (rate * sum(gaps) / 1000))
print()
print("divertd's books (delta over the soak)")
for name, (a, b) in books.items():
    row(name, "%d / %d %s" % (a, b, "ok" if a == b else "MISMATCH"))
print()
print("outside divertd (delta over the soak)")
for k, v in outside.items():
    row(k, v)
print()
print("restarts of port 8668's program")
row("restarts (SIGTERM / SIGKILL)", "%d (%d / %d)" % (num("restarts.total"), num("restarts.sigterm"), num("restarts.sigkill")))
row("failed starts", num("restarts.start_failures"))
row("SIGTERM'd programs: read / written / write errors",
    "%d / %d / %d" % (num("p8668.packets"), num("p8668.written"), num("p8668.write_errors")))
row("stable program 8669: read / written / write errors",
    "%d / %d / %d" % (num("stable.packets"), num("stable.written"), num("stable.write_errors")))
print()
print("divertd's memory and descriptors (both programs bound, no divertctl open; clients counts divertctl's own)")
for s in samples:
    print("  t=%4ds %-8s VmRSS %6d kB (peak %6d)  fds %3d  clients %s  held %4s  restarts %d"
          % (s["t_s"], s["label"], s["rss_kb"], s["rss_peak_kb"], s["fds"], s["clients"], s["held"], s["restarts"]))
print()
print("divertctl stats at the end")
for k, v in stats_end.items():
    print("  %-16s %s" % (k, v))
if dlog:
    print()
    print("divertd's log (%d lines besides ready; the last 10)" % len(dlog))
    for l in dlog[-10:]:
        print("  " + l)
if intervals:
    print()
    print("per-second monitor: %d intervals, %d with kernel queue drops; most queued: 8668 %s, 8669 %s"
          % (len(intervals), len(drop_iv), monitor["max_queued_8668"], monitor["max_queued_8669"]))
    print("  (CPU shares of one CPU: run = running, wait = runnable but waiting for a CPU; pressure = PSI cpu some)")
    for name, p in (("without drops", monitor["without_drops"]), ("with drops", monitor["with_drops"])):
        if p:
            print("  %-14s divertd run %5.2f wait %5.2f | stable div_pass run %5.2f wait %5.2f | load %5.2f runnable %4.1f pressure %4.2f"
                  % (name, p["divertd_run"], p["divertd_wait"], p["stable_run"], p["stable_wait"],
                     p["load1"], p["runnable"], p["cpu_pressure"]))
    for iv in monitor["worst"]:
        print("  t=%6.1fs drops %6d + %6d  queued %5d / %5d  divertd run %4.2f wait %4.2f  stable run %4.2f wait %4.2f  load %5.2f  pressure %4.2f"
              % (iv["t_s"], iv["drops_8668"], iv["drops_8669"], iv["queued_8668"], iv["queued_8669"],
                 iv["divertd_run"], iv["divertd_wait"], iv["stable_run"], iv["stable_wait"], iv["load1"], iv["cpu_pressure"]))
if warnings:
    print()
    print("the programs said (%d lines; the first 5)" % len(warnings))
    for l in warnings[:5]:
        print("  " + l)
print()
print("criteria")
for name, value, met in criteria:
    print("  %-4s %-78s %s" % ("ok" if met else "FAIL", name, value))
print()
print("soak %s" % ("PASSED" if ok else "FAILED"))

result = {
    "meta": {k[5:]: raw[k] for k in raw if k.startswith("meta.")},
    "binaries": {k[4:]: raw[k] for k in raw if k.startswith("bin.")},
    "capacity": dict({k[4:]: num(k) for k in raw if k.startswith("cap.")}, divertd_delta=cap_d)
                if raw.get("rate.source") == "measured" else None,
    "rate": {"source": raw.get("rate.source"), "per_stream_pps": rate, "total_pps": 2 * rate,
             "count_per_stream": num("rate.count_per_stream"), "traffic_seconds": num("soak.traffic_ms") / 1000},
    "streams": streams,
    "accounting_5001": dict(acc, sum=acc_sum, lost=s1["lost"], difference=acc_diff),
    "lost_in_divertd_8669": lost_in_divertd_8669,
    "all_streams": {"lost": all_lost, "divertd_drop_counters": all_counted},
    "monitor": dict(monitor, each=intervals),
    "program_warnings": warnings,
    "queues": Q,
    "divertd_delta": D,
    "books": {k: {"left": a, "right": b, "ok": a == b} for k, (a, b) in books.items()},
    "outside_divertd": outside,
    "restarts": {"total": num("restarts.total"), "sigterm": num("restarts.sigterm"),
                 "sigkill": num("restarts.sigkill"), "start_failures": num("restarts.start_failures"),
                 "gap_ms_mean": sum(gaps) / len(gaps) if gaps else None,
                 "gap_ms_max": max(gaps) if gaps else None, "odd_exits": wrong_exits, "each": restarts},
    "programs": {"stable_8669": {k: num("stable." + k) for k in ("packets", "written", "write_errors", "exit")},
                 "sigtermed_8668": {k: num("p8668." + k) for k in ("packets", "written", "write_errors", "clean_exits")}},
    "memory": {"rss_start_kb": rss0, "rss_end_kb": rss1, "rss_delta_kb": rss1 - rss0,
               "rss_limit_kb": num("meta.rss_limit_kb"), "fds_start": fds0, "fds_end": fds1, "samples": samples},
    "divertd": {"alive_at_end": raw.get("divertd.alive") == "1", "exit": num("divertd.exit", None),
                "rules_left": raw.get("divertd.rules_left") == "1", "stats_end": stats_end,
                "log_lines": len(dlog), "log_tail": dlog[-20:]},
    "criteria": [{"name": n, "value": v, "met": m} for n, v, m in criteria],
    "passed": ok,
}
with open(out_f, "w") as f:
    json.dump(result, f, indent=1)
    f.write("\n")
print("JSON: %s" % out_f)
sys.exit(0 if ok else 1)
PY
