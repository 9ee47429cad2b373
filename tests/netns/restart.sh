#!/usr/bin/env bash
# restart.sh: restarts on either side, as long-running programs meet them.
#   - a program holding packets, killed (SIGKILL) and started again with no
#     delay, binds its port the first time, 100 times in a row;
#   - divertd killed (SIGKILL) three times and stopped (SIGTERM) once under
#     a steady ping stream that crosses four programs in a row (select(),
#     poll(), epoll on a non-blocking socket, a blocking read): no program
#     exits, reads 0 bytes or gets an errno; each new divertd has the
#     traffic flowing through all four again within 1 s of its readiness;
#   - every ping lost is counted: no_divertd (while none ran), no_socket
#     (before its program was bound again);
#   - a new packet written while divertd is away waits for it 1 s (or
#     DIVERT_WAIT ms: three times divertd's start where that is longer), then
#     fails with ENOBUFS and is counted (away_refused).
. "$(dirname "$0")/lib.sh"
need_root
DCTL=$BUILD/divertctl

netns_add H host && netns_add P peer || { bad "create namespaces"; summary; exit 1; }
link "$H" eth0 192.0.2.1/24 "$P" eth0 192.0.2.2/24
SOCK=$TMP/divertd.sock
cat >"$TMP/d.conf" <<'CONF'
100 divert 8669 icmp from any to any in icmptypes 8
110 divert 8670 icmp from any to any in icmptypes 8
120 divert 8671 icmp from any to any in icmptypes 8
130 divert 8672 icmp from any to any in icmptypes 8
200 divert 8668 udp from any to any 9 in
CONF
ctl() { "$DCTL" -s "$SOCK" "$@"; }
held() { ctl sockets 2>/dev/null | awk -v p="$1" '$1 == p { print $4 }'; }
child() { pgrep -P "$1" | head -1; }
# start: divertd, and the longest it took from exec to ready (START_MS)
START_MS=0
start() {
	local t0=$(date +%s%N) rc
	start_divertd "$H" "$TMP/d.conf" "$SOCK"; rc=$?
	local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
	[ "$ms" -gt "$START_MS" ] && START_MS=$ms
	return $rc
}
ip netns exec "$P" ping -n -q -c 1 -W 1 192.0.2.1 >/dev/null	# neighbours known
start || { bad "divertd starts"; summary; exit 1; }

# --- a program holding packets, killed and started again at once
sink() { # sink N: div_sink on 8668 in the background, its output in sink.N
	rm -f "$TMP/sink.ready"
	divert_prog "$H" "$SOCK" div_sink 8668 1000000 120 "$TMP/sink.ready" \
		>"$TMP/sink.$1" 2>&1 &
	SINK=$!; PIDS+=($SINK)
}
udp2() { ip netns exec "$P" bash -c 'for i in 1 2; do echo x >/dev/udp/192.0.2.1/9; done' 2>/dev/null; }
sink 0
wait_for "$TMP/sink.ready" 5
bound=0 held_ok=0
for i in $(seq 100); do
	udp2
	for _ in $(seq 100); do [ "$(held 8668)" = 2 ] && break; sleep 0.02; done
	[ "$(held 8668)" = 2 ] && held_ok=$((held_ok + 1))
	kill -KILL "$(child "$SINK")"; wait "$SINK" 2>/dev/null	# reaped
	sink "$i"
	for _ in $(seq 100); do
		[ -e "$TMP/sink.ready" ] && break
		grep -q bind "$TMP/sink.$i" && break
		sleep 0.02
	done
	if [ -e "$TMP/sink.ready" ]; then
		bound=$((bound + 1))
	else
		echo "# try $i: $(cat "$TMP/sink.$i")"
	fi
done
check "a killed program held its 2 packets each time ($held_ok of 100)" test "$held_ok" = 100
check "... and the same program, started at once after it was reaped, bound its port the first time ($bound of 100)" \
	test "$bound" = 100
kill "$(child "$SINK")" 2>/dev/null; wait "$SINK" 2>/dev/null

# --- divertd restarted under a steady stream
progs() { # the four programs, in the order the rules send to them
	local spec i=0
	for spec in "8669 -m select" "8670 -m poll" "8671 -m epoll -n" "8672 -m block"; do
		set -- $spec
		local port=$1; shift
		rm -f "$TMP/p$port.ready"
		divert_prog "$H" "$SOCK" div_select "$@" -t 90 "$port" "$TMP/p$port.ready" \
			>"$TMP/p$port.out" 2>&1 &
		PROG[$i]=$!; PIDS+=($!); i=$((i + 1))
		wait_for "$TMP/p$port.ready" 5 || sed "s/^/# $port: /" "$TMP/p$port.out"
	done
}
pkts() { grep -c '^pkt' "$TMP/p$1.out"; }
# flowing PORT...: each program has read a packet more than at the mark,
# within 1 s
mark_all() { for p in 8669 8670 8671 8672; do MARK[$p]=$(pkts $p); done; }
flowing() {
	local t p all
	for t in $(seq 50); do
		all=1
		for p in 8669 8670 8671 8672; do
			[ "$(pkts $p)" -gt "${MARK[$p]}" ] || all=0
		done
		[ "$all" = 1 ] && return 0
		sleep 0.02
	done
	for p in 8669 8670 8671 8672; do echo "# $p: ${MARK[$p]} -> $(pkts $p)"; done
	return 1
}
declare -a PROG
declare -A MARK
declare -A KIND=([8669]=select [8670]=poll [8671]="epoll, non-blocking" [8672]="blocking read")
progs
ip netns exec "$P" ping -n -q -c 300 -i 0.05 -W 1 192.0.2.1 >"$TMP/ping.out" 2>&1 &
PING=$!; PIDS+=($PING)
mark_all
check "the stream crosses all four programs" flowing
nodivertd() { ctl stats | awk '$1 == "no_divertd" { print $2 }'; }
# diverted to a port before its program had bound it again
nosocket() { ctl stats | awk '$1 == "no_socket" { s += $2 } END { print s + 0 }'; }
counted=0
AWAY_MS=0	# how long no divertd ran, from each kill to the next ready
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
for k in 1 2 3; do
	counted=$((counted + $(nosocket)))
	t0=$(now_ms)
	kill -KILL "$DIVERTD_PID"; wait "$DIVERTD_PID" 2>/dev/null
	sleep 0.3		# the programs wait without divertd
	start || bad "divertd starts again ($k)"
	AWAY_MS=$((AWAY_MS + $(now_ms) - t0))
	mark_all
	n=$(nodivertd); counted=$((counted + ${n:-0}))
	echo "# divertd $k: $n pings found no divertd while it was away"
	check "SIGKILL $k: within 1 s of the new divertd's readiness all four programs read again" flowing
done
counted=$((counted + $(nosocket)))
t0=$(now_ms)
kill -TERM "$DIVERTD_PID"; wait "$DIVERTD_PID"; rc=$?
check "SIGTERM: divertd exits 0 ($rc)" test "$rc" = 0
sleep 0.3		# no rules: the pings pass untouched
start || bad "divertd starts again (after SIGTERM)"
AWAY_MS=$((AWAY_MS + $(now_ms) - t0))
mark_all
n=$(nodivertd)
check "after SIGTERM the rules were gone: no ping found a divertd missing ($n)" test "$n" = 0
check "SIGTERM and start: within 1 s all four programs read again" flowing
wait "$PING"
counted=$((counted + $(nosocket)))
sent=$(awk '/packets transmitted/ { print $1 }' "$TMP/ping.out")
recv=$(awk '/packets transmitted/ { print $4 }' "$TMP/ping.out")
alive=0
for i in 0 1 2 3; do kill -0 "$(child "${PROG[$i]}")" 2>/dev/null && alive=$((alive + 1)); done
check "no program exited ($alive of 4 alive)" test "$alive" = 4
for i in 0 1 2 3; do kill "$(child "${PROG[$i]}")" 2>/dev/null; wait "${PROG[$i]}" 2>/dev/null; done
for p in 8669 8670 8671 8672; do
	sum=$(grep '^reads' "$TMP/p$p.out")
	check "port $p (${KIND[$p]}): no 0-byte read, no errno ($sum)" \
		grep -q 'zero 0 errors 0 ' <<<"$sum"
done
# what was lost: the pings that found no divertd, each dropped and counted
# by the rules the killed one left, and told by the next (no_divertd)
# the stream went on: at most the pings sent while no divertd ran (one
# each 50 ms) are lost, and those of the second each program may take to
# read again after each restart
most=$((AWAY_MS / 50 + 4 * 20))
check "the stream went on: $recv of $sent pings answered across 4 restarts, no more lost than those sent in the $AWAY_MS ms without divertd and 1 s after each restart ($most)" \
	test $((sent - recv)) -le "$most"
# (but one a SIGKILL may catch inside divertd: the kernel drops what the
# killed one had read and not yet answered with its queue, uncounted)
lost=$((sent - recv))
check "every ping lost was counted: $lost lost, $counted counted (no_divertd, no_socket), at most one in divertd at each of the 3 SIGKILLs" \
	test "$counted" -le "$lost" -a $((lost - counted)) -le 3
n=$(ctl stats | awk '$1 == "reattached" { print $2 }')
check "divertctl stats counts the 4 sockets attached again to this divertd, as each was before ($n)" \
	test "${n:-0}" -ge 4

# --- a new packet written while divertd is away: it waits for the next
# one (1 s, or DIVERT_WAIT ms), then ENOBUFS (FreeBSD's errno for a full
# buffer), counted.  Where divertd takes longer than 1 s to start (an
# emulated VM) the wait is three times its longest start here.
WAIT=$(( START_MS * 3 > 1000 ? START_MS * 3 : 1000 ))
echo "# divertd took at most $START_MS ms to start; the shim waits $WAIT ms"
rm -f "$TMP/w.ready"
DIVERT_WAIT=$WAIT divert_prog "$H" "$SOCK" div_select -w 192.0.2.2 -t 90 8668 "$TMP/w.ready" >"$TMP/w.out" 2>&1 &
WP=$!; PIDS+=($WP)
wait_for "$TMP/w.ready" 5
writes() { grep -c '^write' "$TMP/w.out"; }
ask_write() { # ask_write N: SIGUSR1, then wait for the Nth write line
	kill -USR1 "$(child "$WP")"
	for _ in $(seq $(( (WAIT + 5000) / 50 ))); do [ "$(writes)" -ge "$1" ] && break; sleep 0.05; done
	sed -n "$1{/^write/p}" <(grep '^write' "$TMP/w.out")
}
r=$(ask_write 1)
check "a new packet written while divertd runs: $r" test "$r" = "write OK"
kill -KILL "$DIVERTD_PID"; wait "$DIVERTD_PID" 2>/dev/null
r=$(ask_write 2)
check "... while divertd is away: ENOBUFS after waiting for it ($r)" test "$r" = "write errno 105"
start || bad "divertd starts again (writes)"
for _ in $(seq 100); do ctl sockets | grep -q '^ *8668 ' && break; sleep 0.02; done
n=$(ctl stats | awk '$1 == "away_refused" { print $2 }')
check "... counted by the next divertd (away_refused $n)" test "${n:-0}" = 1
r=$(ask_write 3)
check "... and once it is back, a new packet goes out again: $r" test "$r" = "write OK"
kill -KILL "$DIVERTD_PID"; wait "$DIVERTD_PID" 2>/dev/null
kill -USR1 "$(child "$WP")"	# it writes, and waits: divertd comes back
start || bad "divertd starts again (writes 2)"
for _ in $(seq $(( (WAIT + 5000) / 50 ))); do [ "$(writes)" -ge 4 ] && break; sleep 0.05; done
r=$(sed -n '4{/^write/p}' <(grep '^write' "$TMP/w.out"))
check "a new packet written while divertd is away goes out if it is back within the wait: $r" \
	test "$r" = "write OK"
kill "$(child "$WP")" 2>/dev/null; wait "$WP" 2>/dev/null
check "the writer read 0 bytes never, and had no error ($(grep '^reads' "$TMP/w.out"))" \
	grep -q 'zero 0 errors 0 ' "$TMP/w.out"
stop_divertd
summary
