#!/usr/bin/env bash
# access.sh: who may do what.  The socket file is root:GROUP, mode 0660;
# root, or a member of divertd's group (-g), may divert, on real packets;
# anyone else is refused with EPERM, by the file's mode and by the daemon
# itself (SO_PEERCRED); changing the rules takes root; connection ids are
# secrets, so no client can bind or write in another's name; divertd keeps
# only CAP_NET_ADMIN and CAP_NET_RAW, and with -u runs as that user and
# still changes rules and diverts; -c bounds the clients with ENOBUFS;
# 1024 divert ports and 1100 clients (descriptors past 1024) work.
. "$(dirname "$0")/lib.sh"
need_root
DCTL=$BUILD/divertctl
PY=/usr/bin/python3
PYDIR=$(cd "$(dirname "$0")/../python" && pwd)
if ! command -v setpriv >/dev/null; then
	skip "setpriv is not installed: no access test can run"; summary; exit 0
fi
NOBODY=65534
GROUPNAME=$(getent group "$NOBODY" | cut -d: -f1)
[ -n "$GROUPNAME" ] || { skip "no group with gid $NOBODY"; summary; exit 0; }
chmod 755 "$TMP"		# the unprivileged programs run from here
mkdir -m 1777 "$TMP/w"		# and write their ready files here

netns_add H host && netns_add P peer || { bad "create namespaces"; summary; exit 1; }
link "$H" eth0 192.0.2.1/24 "$P" eth0 192.0.2.2/24
SOCK=$TMP/divertd.sock
printf '100 divert 8668 icmp from any to any in icmptypes 8\n' >"$TMP/d.conf"
pings() { ip netns exec "$P" ping -n -q -c "$1" -i 0.05 -W 2 192.0.2.1 2>/dev/null |
	awk '/packets transmitted/ { print $4 }'; }
caps() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
NOBODY_=(setpriv --reuid=$NOBODY --regid=$NOBODY --clear-groups)
MEMBER_=(setpriv --reuid=$NOBODY --regid=$NOBODY --groups=$NOBODY)
OTHER_=(setpriv --reuid=$((NOBODY - 1)) --regid=$((NOBODY - 1)) --clear-groups)
as_nobody() { "${NOBODY_[@]}" "$@"; }
as_member() { "${MEMBER_[@]}" "$@"; }
as_other() { "${OTHER_[@]}" "$@"; }
start() { # start ARGS...: divertd with extra options, wait until ready
	ip netns exec "$H" "$DIVERTD" -d -f "$TMP/d.conf" -s "$SOCK" "$@" \
		>"$TMP/divertd.log" 2>&1 &
	DIVERTD_PID=$!; PIDS+=($!)
	for _ in $(seq 200); do
		[ -e "$SOCK" ] && grep -q 'ready:' "$TMP/divertd.log" && return 0
		kill -0 "$DIVERTD_PID" 2>/dev/null || break
		sleep 0.05
	done
	sed 's/^/# divertd: /' "$TMP/divertd.log"; return 1
}

# --- root only (no -g)
start || { bad "divertd starts"; summary; exit 1; }
check "the socket is root:root, mode 0660 ($(stat -c '%U:%G %a' "$SOCK"))" \
	test "$(stat -c '%U:%G %a' "$SOCK")" = "root:root 660"
check "divertd keeps CAP_NET_ADMIN and CAP_NET_RAW only: effective, permitted, bounding ($(caps "$DIVERTD_PID" CapEff) $(caps "$DIVERTD_PID" CapPrm) $(caps "$DIVERTD_PID" CapBnd))" \
	test "$(caps "$DIVERTD_PID" CapEff)/$(caps "$DIVERTD_PID" CapPrm)/$(caps "$DIVERTD_PID" CapBnd)" = \
		"0000000000003000/0000000000003000/0000000000003000"
out=$(ip netns exec "$H" "${NOBODY_[@]}" env LD_PRELOAD="$PRELOAD" DIVERT_SOCKET="$SOCK" "$PROGS/div_nonroot" 2>&1); rc=$?
check "an unprivileged user: socket() fails with EPERM ($(echo $out))" test $rc -eq 0
# past the file's mode, the daemon's own check: it tells EPERM, then closes
chmod 666 "$SOCK"
out=$(as_nobody $PY "$PYDIR/conn_secret.py" "$SOCK" welcome 2>&1)
check "... and with the file opened to all, divertd itself refuses: welcome with EPERM ($out)" \
	test "${out%% conn*}" = "arg 1"
out=$(ip netns exec "$H" "${NOBODY_[@]}" env LD_PRELOAD="$PRELOAD" DIVERT_SOCKET="$SOCK" "$PROGS/div_nonroot" 2>&1); rc=$?
check "... which the shim's socket() returns as EPERM ($(echo $out))" test $rc -eq 0
chmod 660 "$SOCK"
out=$($PY "$PYDIR/conn_secret.py" "$SOCK" guess 7000 2>&1); rc=$?
check "connection ids are secrets: binds and writes in other ids' names refused, the victim keeps its port ($out)" \
	test $rc -eq 0
stop_divertd

# --- root and a group: -g, and -u to run as nobody
start -g "$GROUPNAME" -u nobody || { bad "divertd -g -u starts"; summary; exit 1; }
check "-g: the socket is root:$GROUPNAME, mode 0660" \
	test "$(stat -c '%U:%G %a' "$SOCK")" = "root:$GROUPNAME 660"
check "-u nobody: divertd runs as uid $NOBODY with CAP_NET_ADMIN and CAP_NET_RAW (uid $(caps "$DIVERTD_PID" Uid), eff $(caps "$DIVERTD_PID" CapEff), ambient $(caps "$DIVERTD_PID" CapAmb))" \
	test "$(caps "$DIVERTD_PID" Uid)/$(caps "$DIVERTD_PID" CapEff)/$(caps "$DIVERTD_PID" CapAmb)" = \
		"$NOBODY/0000000000003000/0000000000003000"
ip netns exec "$H" "${MEMBER_[@]}" env LD_PRELOAD="$PRELOAD" DIVERT_SOCKET="$SOCK" \
	"$PROGS/div_echo" 8668 1000 30 "$TMP/w/echo.ready" >"$TMP/echo.out" 2>"$TMP/echo.err" &
EPID=$!; PIDS+=($EPID)
wait_for "$TMP/w/echo.ready" 5 || sed "s/^/# div_echo: /" "$TMP/echo.err"
n=$(pings 4)
check "a group member's divert program gets the pings and writes them back (4 answered: $n, seen $(grep -c '^pkt ' "$TMP/echo.out"))" \
	test "$n/$(grep -c '^pkt ' "$TMP/echo.out")" = "4/4"
out=$(as_member "$DCTL" -s "$SOCK" list 2>&1); rc=$?
check "a group member may look: divertctl list exits 0 ($out)" \
	test "$rc/$out" = "0/00100 divert 8668 icmp from any to any in icmptypes 8"
out=$(as_member "$DCTL" -s "$SOCK" add 200 count ip from any to any 2>&1); rc=$?
check "... not change: divertctl add exits 1, permission denied ($out)" \
	test "$rc/$out" = "1/divertctl: add: permission denied: only root changes the rules and counters"
out=$(as_member "$DCTL" -s "$SOCK" zero 2>&1); rc=$?
check "... nor zero the counters (exit $rc)" test "$rc" = 1
out=$(as_other "$DCTL" -s "$SOCK" list 2>&1); rc=$?
check "someone outside the group cannot connect at all (exit $rc: $out)" \
	bash -c "[ $rc = 1 ] && grep -q 'Permission denied' <<<\"\$1\"" _ "$out"
out=$("$DCTL" -s "$SOCK" add 200 count icmp from any to any 2>&1); rc=$?
n=$(pings 2)
check "root changes the rules through a divertd running as nobody: iptables-restore runs with its capabilities (exit $rc, 2 pings answered: $n, rule 200 counted $("$DCTL" -s "$SOCK" show 200 | awk '{ print $2 }'))" \
	test "$rc/$n/$("$DCTL" -s "$SOCK" show 200 | awk '{ print $2 }')" = "0/2/4"
kill "$EPID" 2>/dev/null; wait "$EPID" 2>/dev/null
stop_divertd
check "divertd as nobody removes its rules at exit" \
	bash -c "! ip netns exec '$H' iptables-save -t mangle | grep -q divertd"

# --- -c: a bounded number of clients, then ENOBUFS
start -c 2 || { bad "divertd -c 2 starts"; summary; exit 1; }
exec 7< <(sleep 30)	# keeps two connections open below
$PY - "$SOCK" <<'PY' >"$TMP/limit.out" 2>&1 &
import socket, struct, sys, time
H = struct.Struct("=HHIQII16s")
conns = []
for i in range(3):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(3)
    s.connect(sys.argv[1])
    print("conn", i, "arg", H.unpack(s.recv(100)[:40])[2], flush=True)
    conns.append(s)
time.sleep(30)
PY
LPID=$!; PIDS+=($LPID)
for _ in $(seq 100); do [ "$(grep -c '^conn' "$TMP/limit.out")" = 3 ] && break; sleep 0.05; done
check "-c 2: two clients welcome, the third refused with ENOBUFS ($(tr '\n' ' ' <"$TMP/limit.out"))" \
	test "$(awk '{ print $4 }' "$TMP/limit.out" | tr '\n' ' ')" = "0 0 105 "
out=$(ip netns exec "$H" env LD_PRELOAD="$PRELOAD" DIVERT_SOCKET="$SOCK" "$PROGS/div_cycle" 1 7000 2>&1)
check "... and a divert program's socket() fails with ENOBUFS ($out)" \
	bash -c "grep -q 'No buffer space available' <<<'$out'"
kill "$LPID" 2>/dev/null; wait "$LPID" 2>/dev/null
for _ in $(seq 100); do [ "$("$DCTL" -s "$SOCK" stats | awk '$1 == "clients" { print $2 }')" = 1 ] && break; sleep 0.05; done
out=$(ip netns exec "$H" env LD_PRELOAD="$PRELOAD" DIVERT_SOCKET="$SOCK" "$PROGS/div_cycle" 1 7000 2>&1)
check "... once they are gone, sockets work again ($out)" test "$out" = "cycles 1 failed 0"
stop_divertd

# --- many descriptors: 1024 divert ports (a queue socket each) and 1100
# clients put divertd's descriptors past 1024, where select() cannot go:
# libnftables waits on its socket with select(), so its context is made
# before them (firewall.c), or removing the rules at exit aborts divertd
for i in $(seq 1024); do
	echo "$i divert $((20000 + i)) udp from 192.0.2.2 to 192.0.2.1 9"
done >"$TMP/d.conf"
if start -c 2000; then
	out=$("$DCTL" -s "$SOCK" add 2000 divert 7 udp from any to any 2>&1); rc=$?
	check "1024 divert ports: a 1025th is refused, nothing changed (rc $rc: $out)" \
		bash -c "[ $rc -ne 0 ] && grep -q 'more than 1024 divert and tee ports' <<<'$out' &&
			[ \$('$DCTL' -s '$SOCK' list | wc -l) -eq 1024 ]"
	$PY - "$SOCK" 1100 <<'PY' >"$TMP/many.out" 2>&1 &
import resource, socket, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
conns = []
for i in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(5)
    s.connect(sys.argv[1])
    s.recv(100)                 # its welcome
    conns.append(s)
print("connected", len(conns), flush=True)
time.sleep(30)
PY
	MPID=$!; PIDS+=($MPID)
	for _ in $(seq 200); do grep -q '^connected' "$TMP/many.out" && break; sleep 0.05; done
	check "1100 clients connected ($(cat "$TMP/many.out"))" grep -q '^connected 1100' "$TMP/many.out"
	out=$("$DCTL" -s "$SOCK" delete 1024 2>&1); rc=$?
	check "... a rule change goes through with them (rc $rc $out, $("$DCTL" -s "$SOCK" list | wc -l) rules)" \
		bash -c "[ $rc -eq 0 ] && [ \$('$DCTL' -s '$SOCK' list | wc -l) -eq 1023 ]"
	check "... divertd's highest descriptor is past 1024 ($(ls "/proc/$DIVERTD_PID/fd" | sort -n | tail -1))" \
		test "$(ls "/proc/$DIVERTD_PID/fd" | sort -n | tail -1)" -gt 1024
	kill -TERM "$DIVERTD_PID"; wait "$DIVERTD_PID"; rc=$?
	check "... and divertd exits 0 on SIGTERM (rc $rc$(grep -m1 -o 'bit out of range.*' "$TMP/divertd.log"))" test $rc -eq 0
	check "... having removed its rules" \
		bash -c "! ip netns exec '$H' iptables-save -t mangle | grep -q divertd"
	kill "$MPID" 2>/dev/null; wait "$MPID" 2>/dev/null
else bad "divertd starts with 1024 divert ports"; fi
summary
