#!/usr/bin/env bash
# security.sh: what a local user, or a member of divertd's group, cannot do.
#   - the socket's directory: one an unprivileged user owns (with a swapper
#     racing to plant symlinks), one anyone can write, one that is a
#     symlink: refused with a message, and no file outside it changes;
#   - -F and a program that never reads: what it cannot take is dropped and
#     counted, never passed past the later rules (a deny still denies);
#   - a member of the group (-g) may not inject from an unbound socket, nor
#     make a packet arrive on loopback when no rule names it; root may;
#   - the shim's debug output never shows a connection id (a secret).
. "$(dirname "$0")/lib.sh"
need_root
DCTL=$BUILD/divertctl
PY=/usr/bin/python3
if ! command -v setpriv >/dev/null; then
	skip "setpriv is not installed: no security test can run"; summary; exit 0
fi
NOBODY=65534
GROUPNAME=$(getent group "$NOBODY" | cut -d: -f1)
[ -n "$GROUPNAME" ] || { skip "no group with gid $NOBODY"; summary; exit 0; }
chmod 755 "$TMP"
mkdir -m 1777 "$TMP/w"
MEMBER_=(setpriv --reuid=$NOBODY --regid=$NOBODY --groups=$NOBODY)
NOBODY_=(setpriv --reuid=$NOBODY --regid=$NOBODY --clear-groups)

netns_add H host && netns_add P peer || { bad "create namespaces"; summary; exit 1; }
link "$H" eth0 192.0.2.1/24 "$P" eth0 192.0.2.2/24
ip netns exec "$P" ping -n -q -c 1 -W 1 192.0.2.1 >/dev/null	# neighbours
printf '100 divert 8668 icmp from any to any in icmptypes 8\n' >"$TMP/d.conf"

# try_dir DIR: divertd with its socket in DIR; must refuse: exit non-zero
# with a message naming the directory; no socket made there
try_dir() {
	local out rc
	out=$(timeout 20 ip netns exec "$H" "$DIVERTD" -d -f "$TMP/d.conf" \
		-s "$1/divertd.sock" 2>&1); rc=$?
	echo "$out" | grep -q "socket's directory $1" && [ "$rc" != 0 ] &&
		[ "$rc" != 124 ] && [ -z "$(find "$1/" -maxdepth 1 -type s)" ]
}
victim=$TMP/victim
echo "root's secret" >"$victim"; chmod 600 "$victim"
before=$(stat -c '%U:%G %a %s' "$victim")

# --- a directory an unprivileged user owns, with a swapper racing in it
mkdir "$TMP/nobodys"; chown "$NOBODY:$NOBODY" "$TMP/nobodys"
"${NOBODY_[@]}" bash -c '
	end=$((SECONDS + 8))
	while [ $SECONDS -lt $end ]; do
		for p in $(seq $1 $(( $1 + 300 ))); do
			ln -sfn "$2" "$3/divertd.sock.$p" 2>/dev/null
		done
		ln -sfn "$2" "$3/divertd.sock" 2>/dev/null
	done' _ "$(( $$ + 1 ))" "$victim" "$TMP/nobodys" &
SWAP=$!; PIDS+=($SWAP)
refused=0
for _ in 1 2 3 4 5; do try_dir "$TMP/nobodys" && refused=$((refused + 1)); done
kill "$SWAP" 2>/dev/null; wait "$SWAP" 2>/dev/null
check "a socket directory owned by nobody, a swapper planting symlinks in it: refused with a message 5 times of 5 ($refused)" \
	test "$refused" = 5
check "... and the file the symlinks point to is untouched ($before -> $(stat -c '%U:%G %a %s' "$victim"))" \
	test "$(stat -c '%U:%G %a %s' "$victim")" = "$before"
mkdir -m 0777 "$TMP/open"
check "a socket directory anyone can write (root's, mode 0777): refused" try_dir "$TMP/open"
mkdir -m 0755 "$TMP/real"; ln -s "$TMP/real" "$TMP/link"
check "a socket directory that is a symlink: refused" try_dir "$TMP/link"
out=$(timeout 20 ip netns exec "$H" "$DIVERTD" -d -f "$TMP/d.conf" -s "$TMP/open/divertd.sock" 2>&1)
check "... the message says why ($(echo "$out" | grep directory | head -1))" \
	grep -q "writable by others than root" <<<"$out"

# --- -F, and a program that never reads: a later deny still denies
SOCK=$TMP/divertd.sock
cat >"$TMP/f.conf" <<'CONF'
100 divert 8668 udp from any to any 9 in
200 deny udp from any to any 9 in
CONF
ip netns exec "$H" "$DIVERTD" -d -F -t 60000 -f "$TMP/f.conf" -s "$SOCK" >"$TMP/f.log" 2>&1 &
DIVERTD_PID=$!; PIDS+=($!)
for _ in $(seq 200); do [ -e "$SOCK" ] && grep -q 'ready:' "$TMP/f.log" && break; sleep 0.05; done
# the host's receiver on port 9, counting what reaches it
ip netns exec "$H" $PY -c 'import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("192.0.2.1", 9)); s.settimeout(0.5)
open(sys.argv[1], "w").close()
n = 0
try:
    while True:
        s.recv(2048); n += 1
except socket.timeout:
    pass
print(n)' "$TMP/rx.ready" >"$TMP/rx.out" &
RX=$!; PIDS+=($RX)
wait_for "$TMP/rx.ready" 5
divert_prog "$H" "$SOCK" div_echo 8668 1000000 60 "$TMP/lazy.ready" >"$TMP/lazy.out" 2>&1 &
LZ=$!; PIDS+=($LZ)
wait_for "$TMP/lazy.ready" 5
kill -STOP "$(pgrep -P "$LZ" | head -1)"		# it reads no more
sent=$(ip netns exec "$P" $PY -c 'import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
n = 0
for _ in range(3000):
    try:
        s.sendto(b"x" * 1000, ("192.0.2.1", 9)); n += 1
    except OSError:
        pass
print(n)')
wait "$RX"
got=$(cat "$TMP/rx.out")
stat() { "$DCTL" -s "$SOCK" stats | awk -v k="$1" '$1 == k { print $2 }'; }
# (and what waits unread in the paused queue: the kernel's queue holds
# those and the packets the program holds)
queued=$(ip netns exec "$H" awk '$1 == 8668 { print $3 }' /proc/net/netfilter/nfnetlink_queue)
queued=$(( ${queued:-0} - $(stat held) ))
acc=$(( $(stat diverted) + $(stat full) + $(stat kernel_drops) + queued ))
check "-F, a program that reads nothing: none of the $sent datagrams passes the later deny (received: $got)" \
	test "$got" = 0
check "... every one is counted: diverted $(stat diverted) + full $(stat full) + kernel_drops $(stat kernel_drops) + waiting in the queue $queued = $acc" \
	test "$acc" = "$sent"
kill -CONT "$(pgrep -P "$LZ" | head -1)"; kill "$(pgrep -P "$LZ" | head -1)"; wait "$LZ" 2>/dev/null
kill -TERM "$DIVERTD_PID"; wait "$DIVERTD_PID"

# --- what a member of the group may inject
ip netns exec "$H" "$DIVERTD" -d -g "$GROUPNAME" -f "$TMP/d.conf" -s "$SOCK" >"$TMP/g.log" 2>&1 &
DIVERTD_PID=$!; PIDS+=($!)
for _ in $(seq 200); do [ -e "$SOCK" ] && grep -q 'ready:' "$TMP/g.log" && break; sleep 0.05; done
inject() { # inject WHO BIND ARGS...: div_inject as root or a member
	local who=$1 bind=$2; shift 2
	if [ "$who" = member ]; then
		ip netns exec "$H" "${MEMBER_[@]}" env LD_PRELOAD="$PRELOAD" \
			DIVERT_SOCKET="$SOCK" ${bind:+DIV_BIND=$bind} "$PROGS/div_inject" "$@" 2>&1
	else
		ip netns exec "$H" env LD_PRELOAD="$PRELOAD" DIVERT_SOCKET="$SOCK" \
			${bind:+DIV_BIND=$bind} "$PROGS/div_inject" "$@" 2>&1
	fi
}
e0=$(icmp_in_echos "$P")
out=$(inject member "" out 192.0.2.1 192.0.2.2 1)
check "a member's unbound socket may not inject: EPERM ($(echo $out))" \
	grep -q "Operation not permitted" <<<"$out"
out=$(inject member 8670 out 192.0.2.1 192.0.2.2 1)
check "... a bound one may ($(echo $out))" test "$out" = "sent 1"
out=$(inject member 8671 in 192.0.2.2 127.0.0.1 1 lo)
check "... but not as arriving on loopback, which no rule names: EADDRNOTAVAIL ($(echo $out))" \
	grep -q "Cannot assign requested address" <<<"$out"
out=$(inject root "" out 192.0.2.1 192.0.2.2 1)
check "root may inject from an unbound socket, as on FreeBSD ($(echo $out))" test "$out" = "sent 1"
out=$(inject root "" in 192.0.2.2 127.0.0.1 1 lo)
check "... and as arriving on loopback ($(echo $out))" test "$out" = "sent 1"
for _ in $(seq 40); do [ $(( $(icmp_in_echos "$P") - e0 )) -ge 2 ] && break; sleep 0.05; done
check "the two outgoing ones reached the peer (InEchos +$(( $(icmp_in_echos "$P") - e0 )))" \
	test $(( $(icmp_in_echos "$P") - e0 )) = 2

# --- the shim's debug output
out=$(ip netns exec "$H" env LD_PRELOAD="$PRELOAD" DIVERT_SOCKET="$SOCK" DIVERT_DEBUG=1 \
	"$PROGS/div_inject" out 192.0.2.1 192.0.2.2 1 2>&1)
check "DIVERT_DEBUG tells what happens ($(grep -c libdivert_shim <<<"$out") lines) and never a connection id" \
	bash -c 'grep -q "libdivert_shim: .*divert socket" <<<"$1" && ! grep -Eiq "connection [0-9]{6,}" <<<"$1"' _ "$out"
kill -TERM "$DIVERTD_PID"; wait "$DIVERTD_PID"; rc=$?
check "divertd exits 0 on SIGTERM ($rc)" test "$rc" = 0
summary
