#!/usr/bin/env bash
# shim.sh: what a FreeBSD divert program sees from the shim, on real packets.
#
#   - every receive call (recv, recvfrom, read, readv, recvmsg, recvmmsg)
#     and every send call (sendto, sendmsg, sendmmsg) echoes a ping, in the
#     CMake build and built here without fortification and with
#     -O2 -D_FORTIFY_SOURCE=2 and =3 (which call __recv_chk, __recvfrom_chk,
#     __read_chk); a fortified read longer than its buffer aborts;
#   - datagram semantics (conf_api): MSG_PEEK, MSG_TRUNC, MSG_DONTWAIT,
#     O_NONBLOCK, SO_RCVTIMEO, poll/select/epoll readiness, recvmmsg
#     (timeout, MSG_WAITFORONE), sendmmsg, F_DUPFD, close_range, errno;
#   - fork (child and parent keep a working socket), two threads on one
#     socket, a socket made in another library's constructor (preloaded
#     before and after the shim), a program linked with -ldivert_shim;
#   - nothing on stderr unless DIVERT_DEBUG is set;
#   - Python (/usr/bin/python3, scapy) in the style of FreeBSD's divert.py.
# Topology: peer (192.0.2.2, 2001:db8::2) --veth-- host (192.0.2.1,
# 2001:db8::1, runs divertd and the programs).
. "$(dirname "$0")/lib.sh"
need_root

SRC=$(cd "$(dirname "$0")/../.." && pwd)
CC=${CC:-cc}
PYTHON=/usr/bin/python3		# Debian's: the one with python3-scapy

netns_add H host && netns_add P peer || { bad "create namespaces"; summary; exit 1; }
link "$H" eth0 192.0.2.1/24 "$P" eth0 192.0.2.2/24
ip -n "$H" addr add 2001:db8::1/64 dev eth0 nodad
ip -n "$P" addr add 2001:db8::2/64 dev eth0 nodad
SOCK=$TMP/divertd.sock

# The shim itself and whatever else PRELOAD holds (libasan in the ASan run).
SHIM=
OTHER=
for lib in $PRELOAD; do
	case $lib in
	*/libdivert_shim.so*) SHIM=$lib ;;
	*) OTHER="${OTHER:+$OTHER }$lib" ;;
	esac
done
SHIMDIR=$(dirname "${SHIM:-$BUILD/libdivert_shim.so}")

# run_in ENV... -- PROG ARGS...: in the host namespace, under the shim
run_in() {
	local envs=()
	while [ "$1" != -- ]; do envs+=("$1"); shift; done
	shift
	ip netns exec "$H" env LD_PRELOAD="$PRELOAD" DIVERT_SOCKET="$SOCK" \
		"${envs[@]}" "$@"
}

shim_exec() { run_in -- "$@"; }
ping_once() { ip netns exec "$P" ping -n -c 1 -W 2 "$1" >/dev/null 2>&1; }

# icmp6_in_echos NS: Icmp6InEchos of /proc/net/snmp6 in NS
icmp6_in_echos() {
	ip netns exec "$1" awk '$1 == "Icmp6InEchos" { print $2 }' /proc/net/snmp6
}

# grows COUNTER NS BEFORE: bounded wait for COUNTER in NS to pass BEFORE
grows() {
	local i
	for i in $(seq 40); do
		[ "$($1 "$2")" -gt "$3" ] && return 0
		sleep 0.05
	done
	return 1
}

# tap_lines PREFIX FILE: every "ok - X" / "not ok - X" line becomes a check
tap_lines() {
	local line
	while IFS= read -r line; do
		case $line in
		"ok - "*) ok "$1: ${line#ok - }" ;;
		"not ok - "*) bad "$1: ${line#not ok - }" ;;
		esac
	done <"$2"
}

# --- the programs, four ways --------------------------------------------
# cmake: as the build made them; plain: -O0, no fortification; fortify2,
# fortify3: -O2 -D_FORTIFY_SOURCE=N.  Each includes only divert.h; like the
# CMake build they define _GNU_SOURCE (recvmmsg, sendmmsg: glibc hides them
# otherwise, where FreeBSD shows them by default).
declare -A VDIR=([cmake]=$BUILD)
VARIANTS=(cmake)
for v in plain:-O0 fortify2:-D_FORTIFY_SOURCE=2 fortify3:-D_FORTIFY_SOURCE=3; do
	name=${v%%:*} flag=${v#*:}
	mkdir -p "$TMP/$name"
	opt=-O2; [ "$flag" = -O0 ] && opt=
	if $CC -std=gnu11 -D_GNU_SOURCE -Wall -I"$SRC/include" $opt -U_FORTIFY_SOURCE $flag \
		-o "$TMP/$name/conf_echo" "$SRC/tests/progs/conf_echo.c" &&
	   $CC -std=gnu11 -D_GNU_SOURCE -Wall -I"$SRC/include" $opt -U_FORTIFY_SOURCE $flag \
		-o "$TMP/$name/conf_api" "$SRC/tests/progs/conf_api.c"; then
		VDIR[$name]=$TMP/$name
		VARIANTS+=("$name")
	else
		bad "$name: conf_echo and conf_api build ($CC $opt $flag)"
	fi
done

# fortified V: the build calls the fortified reads
fortified() {
	local syms
	syms=$(nm -D --undefined-only "${VDIR[$1]}/conf_echo" 2>/dev/null) || return 1
	grep -q ' __recv_chk' <<<"$syms" && grep -q ' __recvfrom_chk' <<<"$syms" &&
		grep -q ' __read_chk' <<<"$syms"
}
if command -v nm >/dev/null; then
	for v in fortify2 fortify3; do
		[ -n "${VDIR[$v]:-}" ] || continue
		check "$v: the build calls __recv_chk, __recvfrom_chk and __read_chk" fortified "$v"
	done
else
	skip "fortified builds call the _chk reads (no nm)"
fi

cat >"$TMP/echo.conf" <<'CONF'
100 divert 8668 icmp from any to any in icmptypes 8
200 divert 8700 icmp from any to 192.0.2.99 out
CONF
if ! start_divertd "$H" "$TMP/echo.conf" "$SOCK"; then
	bad "divertd started"; summary; exit 1
fi

# echo_steps NAME RUNNER PROG [OPTION...] -- STEP...: conf_echo (PROG, run
# by RUNNER PROG ARGS...), one ping per step, each a check; then its exit
# status, the address it read, and an empty stderr.
STEPS=(recv:sendto recvfrom:sendmsg read:sendmmsg readv:sendto
	recvmsg:sendmmsg recvmmsg:sendmsg recvmmsg:sendmmsg recvfrom:sendto)
echo_steps() {
	local name=$1 runner=$2 prog=$3 opts=() i rc step pid
	shift 3
	while [ "$1" != -- ]; do opts+=("$1"); shift; done
	shift
	rm -f "$TMP/$name.ready"
	"$runner" "$prog" "${opts[@]}" 8668 100 5 "$TMP/$name.ready" "$@" \
		>"$TMP/$name.out" 2>"$TMP/$name.err" &
	pid=$!; PIDS+=($pid)
	if ! wait_for "$TMP/$name.ready" 5; then
		bad "$name: the program started"; sed 's/^/# /' "$TMP/$name.err"
		kill "$pid" 2>/dev/null; return
	fi
	i=0
	for step in "$@"; do
		i=$((i + 1))
		ping_once 192.0.2.1; rc=$?
		# the line comes once the write returned: allow it a moment
		for _ in $(seq 20); do grep -q "ok $i " "$TMP/$name.out" && break; sleep 0.05; done
		if [ "$rc" -eq 0 ] && grep -q "^ok $i " "$TMP/$name.out"; then
			ok "$name: ${step%%:*} + ${step#*:} echo a ping"
		else
			bad "$name: ${step%%:*} + ${step#*:} echo a ping (ping rc $rc)"
			grep "^not ok $i " "$TMP/$name.out" | sed 's/^/# /'
		fi
	done
	wait_exit "$pid" 10
	wait "$pid"; rc=$?
	check "$name: exits 0 (status $rc)" test "$rc" -eq 0
	check "$name: the address is FreeBSD's (tag 100, 192.0.2.1, eth0)" \
		grep -q 'tag 100 addr 192.0.2.1 if eth0' "$TMP/$name.out"
	if [ -s "$TMP/$name.err" ]; then
		bad "$name: nothing on stderr"; sed 's/^/# /' "$TMP/$name.err"
	else
		ok "$name: nothing on stderr"
	fi
}

for v in "${VARIANTS[@]}"; do
	echo_steps "$v" shim_exec "${VDIR[$v]}/conf_echo" -- "${STEPS[@]}"
done

# --- datagram semantics ---------------------------------------------------
for v in "${VARIANTS[@]}"; do
	run_in -- "${VDIR[$v]}/conf_api" 8700 192.0.2.99 200 \
		>"$TMP/api.$v.out" 2>"$TMP/api.$v.err"
	rc=$?
	if [ "$v" = cmake ]; then
		tap_lines "api" "$TMP/api.$v.out"
	else
		n=$(grep -c '^ok - ' "$TMP/api.$v.out")
		if grep -q '^not ok' "$TMP/api.$v.out"; then
			bad "$v: api checks ($n passed)"; grep '^not ok' "$TMP/api.$v.out" | sed 's/^/# /'
		else
			ok "$v: all $n api checks pass"
		fi
	fi
	check "$v: api: ran to the end, exit 0, nothing on stderr (status $rc)" \
		bash -c "[ $rc -eq 0 ] && grep -q '^[0-9]* passed, 0 failed' '$TMP/api.$v.out' && [ ! -s '$TMP/api.$v.err' ]"

	# a fortified read longer than its buffer: glibc's check, then abort
	if [ "$v" != fortify2 ] && [ "$v" != fortify3 ] && ! fortified "$v"; then
		# plain, or the CMake build of a Debug (sanitizer) configuration
		check "$v: built without _FORTIFY_SOURCE, it calls the plain reads (no _chk, nothing to abort)" \
			bash -c "nm -D --undefined-only '${VDIR[$v]}/conf_echo' | grep -q ' recv' &&
				 ! nm -D --undefined-only '${VDIR[$v]}/conf_echo' | grep -Eq ' __(read|recv|recvfrom)_chk'"
	elif fortified "$v"; then
		for how in recv recvfrom read; do
			run_in -- "${VDIR[$v]}/conf_api" chk "$how" >"$TMP/chk.out" 2>"$TMP/chk.err"
			rc=$?
			check "$v: $how of 17 bytes into 16 aborts as glibc's check does (status $rc)" \
				bash -c "[ $rc -eq 134 ] && grep -q 'buffer overflow detected' '$TMP/chk.err'"
		done
	else
		bad "$v: built with _FORTIFY_SOURCE, yet no fortified reads to check"
	fi
done

# A write made just before close goes out, even with a packet left unread
# (FreeBSD's sendto() has sent it by the time it returns).  Three times.
before=$(icmp_in_echos "$P")
for _ in 1 2 3; do
	run_in -- "$PROGS/conf_api" lastwrite 8700 192.0.2.99 192.0.2.2 >"$TMP/lastwrite.out" 2>&1
	grep -v '^ok' "$TMP/lastwrite.out" | sed 's/^/# /'
done
for _ in $(seq 40); do [ "$(icmp_in_echos "$P")" -ge $((before + 3)) ] && break; sleep 0.05; done
check "close right after a write, a packet unread: the write still goes out, 3 of 3 (+$(( $(icmp_in_echos "$P") - before )))" \
	test "$(icmp_in_echos "$P")" -eq $((before + 3))

# --- fork -----------------------------------------------------------------
for mode in close keep; do
	rm -f "$TMP/fork.$mode.ready" "$TMP/fork.$mode.ready.2"
	run_in -- "$PROGS/conf_fork" 8668 3 20 "$TMP/fork.$mode.ready" "$mode" \
		>"$TMP/fork.$mode.out" 2>&1 &
	pid=$!; PIDS+=($pid)
	if wait_for "$TMP/fork.$mode.ready" 5; then
		ip netns exec "$P" ping -n -c 3 -i 0.2 -W 2 192.0.2.1 >"$TMP/fork.$mode.ping" 2>&1
		rc=$?
		if [ "$mode" = close ]; then
			check "fork: the parent closes its copy; the child reads and writes back 3 pings" \
				bash -c "[ $rc -eq 0 ] && grep -q '^child: ok 3' '$TMP/fork.$mode.out'"
		else
			check "fork: the child reads and writes back 3 pings" \
				bash -c "[ $rc -eq 0 ] && grep -q '^child: ok 3' '$TMP/fork.$mode.out'"
			if wait_for "$TMP/fork.$mode.ready.2" 5; then
				ping_once 192.0.2.1; rc=$?
			fi
			wait_exit "$pid" 5
			check "fork: after the child exits, the parent's socket still works" \
				bash -c "[ $rc -eq 0 ] && grep -q '^parent: ok' '$TMP/fork.$mode.out'"
		fi
		wait_exit "$pid" 5
		wait "$pid"
		check "fork ($mode): exits 0" test $? -eq 0
	else
		bad "fork ($mode): the program started"
	fi
	grep 'not ok' "$TMP/fork.$mode.out" | sed 's/^/# /'
done

# --- two threads on one socket ----------------------------------------------
for mode in split both; do
	rm -f "$TMP/threads.$mode.ready"
	run_in -- "$PROGS/conf_threads" "$mode" 8668 40 20 "$TMP/threads.$mode.ready" \
		>"$TMP/threads.$mode.out" 2>&1 &
	pid=$!; PIDS+=($pid)
	if wait_for "$TMP/threads.$mode.ready" 5; then
		ip netns exec "$P" ping -n -c 40 -i 0.02 -W 2 192.0.2.1 >"$TMP/threads.$mode.ping" 2>&1
		got=$(grep -o '[0-9]* received' "$TMP/threads.$mode.ping")
		wait_exit "$pid" 25
		wait "$pid"; rc=$?
		desc="one reads, the other writes back"
		[ "$mode" = both ] && desc="both read and write back"
		check "threads ($desc): 40 pings answered ($got)" test "${got% *}" = 40
		check "threads ($desc): 40 packets read once each, no duplicate, no loss" \
			bash -c "[ $rc -eq 0 ] && grep -q '^total 40 distinct 40 duplicates 0 write errors 0' '$TMP/threads.$mode.out'"
		grep '^thread\|^total' "$TMP/threads.$mode.out" | sed 's/^/# /'
	else
		bad "threads ($mode): the program started"
	fi
done

# --- a divert socket made in another library's constructor ------------------
cat >"$TMP/ctor.c" <<'EOF'
/* Makes and binds a divert socket before main, and checks a few calls. */
#include <sys/socket.h>
#include <netinet/in.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "divert.h"

__attribute__((constructor)) static void
ctor(void)
{
	struct sockaddr_in sin;
	char num[16], pkt[10] = { 0x45 };
	socklen_t len;
	int fd, v = 4096, got = 0;

	fd = socket(PF_DIVERT, SOCK_RAW, 0);
	if (fd == -1) {
		dprintf(1, "ctor: not ok - socket: %s\n", strerror(errno));
		return;
	}
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons(8668);
	if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == -1) {
		dprintf(1, "ctor: not ok - bind: %s\n", strerror(errno));
		return;
	}
	len = sizeof(got);
	if (setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &v, sizeof(v)) == -1 ||
	    getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &got, &len) == -1 ||
	    got != 4096) {
		dprintf(1, "ctor: not ok - SO_SNDBUF %d, not 4096\n", got);
		return;
	}
	sin.sin_port = 0;
	if (sendto(fd, pkt, sizeof(pkt), 0, (struct sockaddr *)&sin,
	    sizeof(sin)) != -1 || errno != EINVAL) {
		dprintf(1, "ctor: not ok - a 10-byte write did not fail EINVAL\n");
		return;
	}
	snprintf(num, sizeof(num), "%d", fd);
	setenv("CONF_CTOR_FD", num, 1);
	dprintf(1, "ctor: ok - fd %d\n", fd);
}
EOF
if $CC -shared -fPIC -I"$SRC/include" -o "$TMP/ctor.so" "$TMP/ctor.c"; then
	for order in before after; do
		if [ "$order" = before ]; then	# initialised after the shim
			pre="${OTHER:+$OTHER }$TMP/ctor.so $SHIM"
		else				# initialised first: the shim's constructor has not run
			pre="${OTHER:+$OTHER }$SHIM $TMP/ctor.so"
		fi
		ip netns exec "$H" env LD_PRELOAD="$pre" LD_DEBUG=libs /bin/true 2>&1 |
			grep 'calling init' | grep -o 'ctor.so\|libdivert_shim.so[.0-9]*' >"$TMP/ctor.$order.init"
		first=$(head -1 "$TMP/ctor.$order.init")
		echo "# LD_PRELOAD with ctor.so $order the shim: $(tr '\n' ' ' <"$TMP/ctor.$order.init")initialised in that order"
		if [ "$order" = after ]; then
			check "ctor: with ctor.so after the shim, its constructor runs before the shim's" \
				test "$first" = ctor.so
		fi
		PRELOAD_SAVED=$PRELOAD PRELOAD=$pre
		echo_steps "ctor-$order" shim_exec "$PROGS/conf_echo" -e CONF_CTOR_FD -- recvfrom:sendto recvmmsg:sendmmsg
		PRELOAD=$PRELOAD_SAVED
		check "ctor ($order the shim): the constructor's socket, bind, options and checks worked" \
			grep -q '^ctor: ok - fd' "$TMP/ctor-$order.out"
	done
else
	bad "ctor: build a library with a constructor"
fi

# --- linked with -ldivert_shim instead of preloaded -------------------------
# (the linker's warnings about libasan's tmpnam in the ASan run are noise)
if $CC -std=gnu11 -D_GNU_SOURCE -O2 -I"$SRC/include" -o "$TMP/conf_echo_linked" \
	"$SRC/tests/progs/conf_echo.c" -L"$SHIMDIR" -ldivert_shim \
	-Wl,-rpath,"$SHIMDIR" 2>"$TMP/linked.cc"; then
	check "linked: the program needs libdivert_shim.so" \
		bash -c "readelf -d '$TMP/conf_echo_linked' | grep -q 'NEEDED.*libdivert_shim'"
	# no shim in LD_PRELOAD (only libasan in the ASan run)
	linked_run() { ip netns exec "$H" env LD_PRELOAD="$OTHER" DIVERT_SOCKET="$SOCK" "$@"; }
	echo_steps linked linked_run "$TMP/conf_echo_linked" -- recvfrom:sendto read:sendmsg recvmmsg:sendmmsg
else
	bad "linked: build conf_echo with -ldivert_shim"; sed 's/^/# /' "$TMP/linked.cc"
fi

# --- stderr: nothing unless DIVERT_DEBUG ----------------------------------------
run_in DIVERT_SOCKET="$TMP/nodaemon.sock" -- "$PROGS/conf_api" nodaemon >"$TMP/nd.out" 2>"$TMP/nd.err"
rc=$?
check "no daemon: socket() fails with EPROTONOSUPPORT, nothing on stderr" \
	bash -c "[ $rc -eq 0 ] && [ ! -s '$TMP/nd.err' ]"
run_in DIVERT_SOCKET="$TMP/nodaemon.sock" DIVERT_DEBUG=0 -- "$PROGS/conf_api" nodaemon >/dev/null 2>"$TMP/nd0.err"
check "DIVERT_DEBUG=0: nothing on stderr" test ! -s "$TMP/nd0.err"
run_in DIVERT_SOCKET="$TMP/nodaemon.sock" DIVERT_DEBUG=1 -- "$PROGS/conf_api" nodaemon >/dev/null 2>"$TMP/nd1.err"
check "DIVERT_DEBUG=1: the shim says why on stderr" \
	grep -q "^libdivert_shim: \[[0-9]*\] connect $TMP/nodaemon.sock" "$TMP/nd1.err"

# --- Python ------------------------------------------------------------------------
PYT=$SRC/tests/python/divert_py.py
# py_run ARGS...: divert_py.py under the shim (no leak report for Python itself)
py_run() {
	run_in ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" -- "$PYTHON" "$PYT" "$@"
}
if [ ! -x "$PYTHON" ]; then
	skip "python: $PYTHON is missing"
elif ! "$PYTHON" -c 'import scapy.all' >/dev/null 2>&1; then
	skip "python: $PYTHON has no scapy (apt install python3-scapy)"
else
	rm -f "$TMP/py.ready"
	py_run --test_name ipdivert_echo --divert_port 8668 --dip 192.0.2.1 --tag 100 \
		--ready "$TMP/py.ready" >"$TMP/py.echo.out" 2>&1 &
	pid=$!; PIDS+=($pid)
	if wait_for "$TMP/py.ready" 20; then
		ping_once 192.0.2.1; rc=$?
		wait_exit "$pid" 15
		wait "$pid"; prc=$?
		check "python: recvfrom gives the packet and ('192.0.2.1', 100); sendto writes it back (ping rc $rc)" \
			bash -c "[ $prc -eq 0 ] && [ $rc -eq 0 ]"
	else
		bad "python: the echo script bound its socket"
	fi
	grep -v '^ok' "$TMP/py.echo.out" | sed 's/^/# /'

	# FreeBSD's divert.py tests: writes only, so no divert rule in the way
	stop_divertd
	printf '%s\n' "100 count ip from any to any" >"$TMP/py.conf"
	if start_divertd "$H" "$TMP/py.conf" "$SOCK"; then
		before=$(icmp_in_echos "$P")
		py_run --test_name ipdivert_ip_output_remote_success --divert_port 6668 \
			--dip 192.0.2.2 >"$TMP/py.out4" 2>&1
		rc=$?
		grows icmp_in_echos "$P" "$before"
		check "python: IPv4 echo request written as outgoing reaches the peer (Icmp InEchos $before -> $(icmp_in_echos "$P"))" \
			bash -c "[ $rc -eq 0 ] && [ $(icmp_in_echos "$P") -gt $before ]"

		before=$(icmp6_in_echos "$P")
		py_run --test_name ipdivert_ip6_output_remote_success --divert_port 6668 \
			--dip 2001:db8::2 >"$TMP/py.out6" 2>&1
		rc=$?
		grows icmp6_in_echos "$P" "$before"
		check "python: IPv6 echo request written as outgoing reaches the peer (Icmp6InEchos $before -> $(icmp6_in_echos "$P"))" \
			bash -c "[ $rc -eq 0 ] && [ $(icmp6_in_echos "$P") -gt $before ]"

		before=$(icmp_in_echos "$H")
		py_run --test_name ipdivert_ip_input_local_success --divert_port 6668 \
			--sip 192.0.2.2 --dip 192.0.2.1 >"$TMP/py.in4" 2>&1
		rc=$?
		grows icmp_in_echos "$H" "$before"
		check "python: IPv4 echo request written as incoming reaches the local stack (Icmp InEchos $before -> $(icmp_in_echos "$H"))" \
			bash -c "[ $rc -eq 0 ] && [ $(icmp_in_echos "$H") -gt $before ]"
		before=$(icmp6_in_echos "$H")
		py_run --test_name ipdivert_ip6_input_local_success --divert_port 6668 \
			--sip 2001:db8::2 --dip 2001:db8::1 --via 192.0.2.1 >"$TMP/py.in6" 2>&1
		rc=$?
		grows icmp6_in_echos "$H" "$before"
		check "python: IPv6 echo request written as incoming, interface named by its IPv4 address, reaches the local stack (Icmp6InEchos $before -> $(icmp6_in_echos "$H"))" \
			bash -c "[ $rc -eq 0 ] && [ $(icmp6_in_echos "$H") -gt $before ]"
		cat "$TMP"/py.out4 "$TMP"/py.out6 "$TMP"/py.in4 "$TMP"/py.in6 | grep -v '^ok' | sed 's/^/# /'
	else
		bad "python: divertd restarted"
	fi
fi

stop_divertd
check "divertd exits 0 on SIGTERM" test $? -eq 0

summary
