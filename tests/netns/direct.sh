#!/usr/bin/env bash
# direct.sh: divertd's side of the direct path (docs/DIRECT.md), driven
# by tests/kernel/direct_client.c as the shim will drive it: a root
# client that asks for its port's queue gets it (the queue's socket and
# the view of the rules) and its pings re-enter after the divert rule
# without divertd touching them; a rule change sends it the new view; a
# client that dies holding a packet has it dropped, and divertd reads the
# queue again (no socket: dropped and counted); the port can then be bound
# and read through divertd as before.
. "$(dirname "$0")/lib.sh"
need_root
DCTL=$BUILD/divertctl
CLIENT=$BUILD/direct_client

netns_add H host && netns_add P peer || { bad "create namespaces"; summary; exit 1; }
link "$H" eth0 192.0.2.1/24 "$P" eth0 192.0.2.2/24
SOCK=$TMP/divertd.sock
ctl() { "$DCTL" -s "$SOCK" "$@"; }
stat() { ctl stats | awk -v k="$1" '$1 == k { print $2 }'; }
queued() { ip netns exec "$H" awk -v q="$1" '$1 == q { print $3 }' /proc/net/netfilter/nfnetlink_queue; }
ping1() { ip netns exec "$P" ping -n -q -c "${2:-1}" -i 0.05 -W "$1" 192.0.2.1 2>/dev/null | awk '/packets transmitted/ { print $4 }'; }

# rule 100 diverts echo requests; 200 counts what re-enters after it
printf '100 divert 8668 icmp from any to any in icmptypes 8\n200 count icmp from any to any in icmptypes 8\n' >"$TMP/d.conf"
start_divertd "$H" "$TMP/d.conf" "$SOCK" || { bad "divertd starts"; summary; exit 1; }
ip netns exec "$P" ping -n -q -c 1 -W 1 192.0.2.2 >/dev/null 2>&1	# neighbours

# --- a root client reads its queue itself
ip netns exec "$H" "$CLIENT" -n 3 -v -r "$TMP/c.ready" "$SOCK" 8668 >"$TMP/c.out" 2>&1 &
CP=$!; PIDS+=($CP)
wait_for "$TMP/c.ready" 5
check "a root client asking for its queue gets it, with the view of the rules (2 numbers, 0 tees)" \
	test "$(head -2 "$TMP/c.out" | tr '\n' /)" = "granted direct/view 2 numbers 0 tees/"
d0=$(stat diverted)
n=$(ping1 2 2)
check "its pings are answered through it (2 of 2)" test "$n" = 2
check "... each read with tag 100 and given back to resume after rule 100" \
	test "$(grep -c '^pkt [0-9]* tag 100 resume 100$' "$TMP/c.out")" = 2
check "... without divertd touching them (diverted $d0 -> $(stat diverted))" test "$(stat diverted)" = "$d0"
c200=$(ctl show 200 | awk '{ print $2 }')
check "... and they went on at rule 200 (its count: $c200)" test "${c200:-0}" -ge 2

# --- a rule change: the client gets the new view
printf '100 divert 8668 icmp from any to any in icmptypes 8\n150 count ip from any to any\n200 count icmp from any to any in icmptypes 8\n' >"$TMP/d.conf"
kill -HUP "$DIVERTD_PID"
for _ in $(seq 100); do [ "$(ctl list | wc -l)" = 3 ] && break; sleep 0.05; done
n=$(ping1 2)
wait "$CP"; rc=$?
check "after SIGHUP the client got the new view (3 numbers) and its third ping was answered ($n)" \
	test "$(grep -c '^view 3 numbers 0 tees$' "$TMP/c.out")/$n/$rc" = "1/1/0"

# --- the client gone: divertd reads the queue again
n=$(ping1 1)
ns=$(stat no_socket)
check "once it exited divertd reads the queue again: a ping finds no socket (answered $n, no_socket $ns)" \
	test "$n/${ns:-0}" = "0/1"

# --- a client that dies holding a packet
rm -f "$TMP/c.ready"
ip netns exec "$H" "$CLIENT" -n 0 -k -r "$TMP/c.ready" "$SOCK" 8668 >"$TMP/k.out" 2>&1 &
CP=$!; PIDS+=($CP)
wait_for "$TMP/c.ready" 5
ip netns exec "$P" ping -n -q -c 1 -W 3 192.0.2.1 >"$TMP/kping.out" 2>&1 &
PP=$!
wait "$CP"
check "a client read a ping, gave it no verdict and exited ($(tail -1 "$TMP/k.out"))" grep -q '^held ' "$TMP/k.out"
for _ in $(seq 40); do [ "$(queued 8668)" = 0 ] && break; sleep 0.05; done
check "... divertd took the queue back and the kernel dropped what it held ($(queued 8668) queued)" test "$(queued 8668)" = 0
wait "$PP"
check "... that ping was never answered" grep -q ' 0 received' "$TMP/kping.out"

# --- the port through divertd again
divert_prog "$H" "$SOCK" div_echo 8668 2 5 "$TMP/e.ready" >"$TMP/e.out" 2>&1 &
EP=$!; PIDS+=($EP)
wait_for "$TMP/e.ready" 5
n=$(ping1 2 2)
wait "$EP"
check "a program under the shim then binds the port and its pings go through divertd (answered $n, read $(grep -c '^pkt ' "$TMP/e.out"))" \
	test "$n/$(grep -c '^pkt ' "$TMP/e.out")" = "2/2"

# --- not root: the relay
if id nobody >/dev/null 2>&1 && command -v setpriv >/dev/null; then
	stop_divertd
	start_divertd "$H" "$TMP/d.conf" "$SOCK" -g nogroup || bad "divertd -g nogroup starts"
	chmod 755 "$TMP"
	out=$(ip netns exec "$H" setpriv --reuid nobody --regid nogroup --clear-groups \
		"$CLIENT" -n 0 "$SOCK" 8668 2>&1)
	check "a client that is not root (divertd's group) is given the relay ($out)" test "$out" = "granted relay"
else
	skip "not root: the relay (no user nobody or no setpriv)"
fi
stop_divertd
summary
