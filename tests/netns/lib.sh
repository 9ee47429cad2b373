# lib.sh: shared pieces of the network-namespace suites.
#
# Each suite sources this file, builds its own namespaces (names carry the
# suite's pid, so runs never collide), and registers cleanup with a trap on
# EXIT: namespaces, daemons and programs go away on every exit path.
# Addresses come only from 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24
# and 2001:db8::/32, and only inside these namespaces.
#
# Environment: BUILD (build directory with divertd, libdivert_shim.so and
# the test programs), PRELOAD (what LD_PRELOAD gets; the ASan run puts
# libasan first).

set -u
BUILD=${BUILD:?BUILD must name the build directory}
PRELOAD=${PRELOAD:-$BUILD/libdivert_shim.so}
DIVERTD=$BUILD/divertd
PROGS=$BUILD
TMP=$(mktemp -d /tmp/divertd-test.XXXXXX)
NS_PREFIX="dvt$$"
NAMESPACES=()
PIDS=()
PASS=0
FAIL=0
SKIP=0

cleanup() {
	local p ns
	for p in "${PIDS[@]}"; do
		kill -TERM "$p" 2>/dev/null
	done
	for p in "${PIDS[@]}"; do
		# bounded wait for a clean exit, then force
		for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$p" 2>/dev/null
	done
	for ns in "${NAMESPACES[@]}"; do
		ip netns del "$ns" 2>/dev/null
	done
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ok()   { PASS=$((PASS + 1)); echo "ok - $*"; }
bad()  { FAIL=$((FAIL + 1)); echo "not ok - $*"; }
skip() { SKIP=$((SKIP + 1)); echo "skip - $*"; }
check() { # check NAME COMMAND...: ok when the command succeeds
	local name=$1; shift
	if "$@"; then ok "$name"; else bad "$name"; fi
}

# summary: the closing line the runner reads
summary() {
	echo "$PASS passed, $FAIL failed, $SKIP skipped"
	[ "$FAIL" -eq 0 ]
}

need_root() {
	if [ "$(id -u)" != 0 ]; then
		echo "skip - network namespace suites need root"
		SKIP=$((SKIP + 1))
		summary
		exit 0
	fi
}

# netns_add VAR NAME: create a namespace with lo up; its full name goes
# into VAR (no command substitution: the cleanup list must see it)
netns_add() {
	local ns="$NS_PREFIX-$2"
	ip netns add "$ns" || return 1
	NAMESPACES+=("$ns")
	ip -n "$ns" link set lo up
	printf -v "$1" '%s' "$ns"
}

# link NS1 IF1 ADDR1 NS2 IF2 ADDR2: a veth pair between two namespaces
link() {
	ip link add "$2" netns "$1" type veth peer name "$5" netns "$4" || return 1
	ip -n "$1" addr add "$3" dev "$2"
	ip -n "$4" addr add "$6" dev "$5"
	ip -n "$1" link set "$2" up
	ip -n "$4" link set "$5" up
}

# wait_for FILE [SECONDS]: readiness by file, bounded
wait_for() {
	local i
	for i in $(seq $(( ${2:-10} * 20 ))); do
		[ -e "$1" ] && return 0
		sleep 0.05
	done
	echo "# timed out waiting for $1" >&2
	return 1
}

# wait_exit PID [SECONDS]: bounded wait for a process to end
wait_exit() {
	local i
	for i in $(seq $(( ${2:-10} * 20 ))); do
		kill -0 "$1" 2>/dev/null || return 0
		sleep 0.05
	done
	return 1
}

# start_divertd NS CONFIG SOCKET [ARGS...]: runs divertd in NS (with
# ARGS), waits for its socket
start_divertd() {
	local ns=$1 conf=$2 sock=$3
	shift 3
	ip netns exec "$ns" "$DIVERTD" -d -f "$conf" -s "$sock" "$@" \
		>"$TMP/divertd-$ns.log" 2>&1 &
	PIDS+=($!)
	DIVERTD_PID=$!
	# the socket file, and this daemon's word that it is ready (a file
	# left by a killed daemon must not count)
	local i
	for i in $(seq 200); do
		[ -e "$sock" ] && grep -q 'ready:' "$TMP/divertd-$ns.log" && return 0
		kill -0 "$DIVERTD_PID" 2>/dev/null || break
		sleep 0.05
	done
	sed 's/^/# divertd: /' "$TMP/divertd-$ns.log"
	return 1
}

# fw_rules NS: what divertd installed in NS, whichever backend it picked:
# the divertd lines of iptables-save (IPv4 and IPv6 mangle) and the nft
# table inet divertd (chains in_N, out_N; the iptables backend has only
# the lost_* chains there)
fw_rules() {
	ip netns exec "$1" iptables-save -t mangle 2>/dev/null | grep divertd
	ip netns exec "$1" ip6tables-save -t mangle 2>/dev/null | grep divertd
	ip netns exec "$1" nft list table inet divertd 2>/dev/null
	return 0
}

# stop_divertd: SIGTERM, and the daemon must exit 0 by itself
stop_divertd() {
	kill -TERM "$DIVERTD_PID" 2>/dev/null
	wait "$DIVERTD_PID"
}

# divert_prog NS SOCKET PROG ARGS...: a FreeBSD-style program under the shim
divert_prog() {
	local ns=$1 sock=$2 prog=$3; shift 3
	ip netns exec "$ns" env LD_PRELOAD="$PRELOAD" DIVERT_SOCKET="$sock" \
		"$PROGS/$prog" "$@"
}

# icmp_in_echos NS: the Icmp InEchos counter of /proc/net/snmp in NS
icmp_in_echos() {
	ip netns exec "$1" awk '/^Icmp:/ { if (!h) { for (i = 1; i <= NF; i++) c[$i] = i; h = 1 } else print $c["InEchos"] }' /proc/net/snmp
}
