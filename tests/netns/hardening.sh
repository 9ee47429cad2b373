#!/usr/bin/env bash
# hardening.sh: what a local user cannot do to divertd, and what a third
# party's rules cannot do to it.
#   - the lock (one divertd per network namespace) is a file only root can
#     take: a user squatting the old abstract name and trying the lock file
#     does not keep divertd from starting, nor, after divertd was killed
#     (SIGKILL), the next one from removing the dead one's rules (three
#     times in a row); a second divertd in the same namespace is refused
#     with a message and leaves the first's rules alone; one in another
#     namespace starts; a lock directory or file that is not root's alone,
#     or a symlink, is refused with a message (in a private /run);
#   - a member of divertd's group (-g) flooding `divertctl show` from many
#     connections does not stall the packet loop: a steady ping stream
#     through a divert program is answered, every ping within 1 s; the
#     member's counts catch up with root's within a second;
#   - a third party's long rule jumping into divertd's chains (iptables)
#     is removed at start and at exit, with nothing overrun (under ASan).
. "$(dirname "$0")/lib.sh"
need_root
DCTL=$BUILD/divertctl
PY=/usr/bin/python3
if ! command -v setpriv >/dev/null || ! command -v unshare >/dev/null; then
	skip "setpriv or unshare is not installed"; summary; exit 0
fi
NOBODY=65534
GROUPNAME=$(getent group "$NOBODY" | cut -d: -f1)
[ -n "$GROUPNAME" ] || { skip "no group with gid $NOBODY"; summary; exit 0; }
chmod 755 "$TMP"			# the unprivileged programs run from here
mkdir -m 1777 "$TMP/w"			# and write here
NOBODY_=(setpriv --reuid=$NOBODY --regid=$NOBODY --clear-groups)
MEMBER_=(setpriv --reuid=$NOBODY --regid=$NOBODY --groups=$NOBODY)
LOCKDIR=/run/divertd

netns_add H host && netns_add P peer && netns_add B other &&
	netns_add L private && netns_add X third ||
	{ bad "create namespaces"; summary; exit 1; }
link "$H" eth0 192.0.2.1/24 "$P" eth0 192.0.2.2/24
ip netns exec "$P" ping -n -q -c 1 -W 1 192.0.2.1 >/dev/null	# neighbours
CONF=$TMP/d.conf
printf '100 divert 8668 icmp from any to any in icmptypes 8\n' >"$CONF"
SOCK=$TMP/divertd.sock
ctl() { "$DCTL" -s "$SOCK" "$@"; }
# netns_ino NS: the inode of NS's /proc/self/ns/net, which names its lock
netns_ino() { ip netns exec "$1" stat -L -c %i /proc/self/ns/net; }
# pings N [WAIT]: N pings from the peer; prints how many were answered
pings() { ip netns exec "$P" ping -n -q -c "$1" -i 0.05 -W "${2:-1}" 192.0.2.1 2>/dev/null |
	awk '/packets transmitted/ { print $4 }'; }
echoed() { grep -c '^pkt ' "$TMP/echo.out"; }
# start NS SOCKET LOG ARGS...: divertd in NS, waits until it is ready
start() {
	local ns=$1 sock=$2 log=$3; shift 3
	ip netns exec "$ns" "$DIVERTD" -d -f "$CONF" -s "$sock" "$@" >"$log" 2>&1 &
	DIVERTD_PID=$!; PIDS+=($!)
	for _ in $(seq 200); do
		[ -e "$sock" ] && grep -q 'ready:' "$log" && return 0
		kill -0 "$DIVERTD_PID" 2>/dev/null || break
		sleep 0.05
	done
	sed 's/^/# divertd: /' "$log"; return 1
}
# through N: within 2 s the stream goes through the program again (the
# shim attaches it to a new divertd within 50 ms), then N more pings are
# answered, each seen by the program
through() {
	local before
	for _ in $(seq 20); do
		[ "$(pings 1 0.1)" = 1 ] && break
	done
	before=$(echoed)
	[ "$(pings "$1")" = "$1" ] && [ $(( $(echoed) - before )) -ge "$1" ]
}

# --- the lock's directory and file must be root's alone: each tried in a
# private /run (a tmpfs in a mount namespace of its own), in namespace L
INO_L=$(netns_ino "$L")
# private SCRIPT: bash SCRIPT in namespace L with an empty private /run
private() {
	ip netns exec "$L" unshare -m --propagation private bash -c \
		"mount -t tmpfs -o mode=0755 hardening /run && $1"
}
# refused NAME MESSAGE SETUP: divertd in L after SETUP exits 1 with MESSAGE
refused() {
	local out rc
	out=$(private "$3 && exec timeout 20 '$DIVERTD' -d -f '$CONF' -s '$TMP/l.sock'" 2>&1); rc=$?
	check "$1: refused, exit 1 ($(echo "$out" | grep -m1 -F "$2" || echo "$out" | tail -1))" \
		bash -c '[ "$1" = 1 ] && grep -qF -- "$2" <<<"$3"' _ "$rc" "$2" "$out"
}
LF=$LOCKDIR/netns-$INO_L.lock
echo "nobody's file" >"$TMP/w/target"; chown "$NOBODY:$NOBODY" "$TMP/w/target"
target0=$(stat -c '%U %a %s %Y' "$TMP/w/target")
refused "the lock's directory a symlink" "$LOCKDIR, where the lock is: a symlink or not a directory: refused" \
	"mkdir -m 0755 /run/elsewhere && ln -s elsewhere $LOCKDIR"
refused "the lock's directory owned by nobody" "$LOCKDIR, where the lock is, is writable by others than root (owner $NOBODY, mode 0755)" \
	"mkdir -m 0755 $LOCKDIR && chown $NOBODY $LOCKDIR"
refused "the lock's directory group-writable" "$LOCKDIR, where the lock is, is writable by others than root (owner 0, mode 0775)" \
	"mkdir -m 0775 $LOCKDIR"
refused "the lock file a symlink (to a file of nobody's)" "$LF: a symlink: refused" \
	"mkdir -m 0755 $LOCKDIR && ln -s $TMP/w/target $LF"
check "... which stays as it was ($target0 -> $(stat -c '%U %a %s %Y' "$TMP/w/target"))" \
	test "$target0" = "$(stat -c '%U %a %s %Y' "$TMP/w/target")"
refused "the lock file owned by nobody" "$LF is not root's alone (owner $NOBODY, mode 0600)" \
	"mkdir -m 0755 $LOCKDIR && install -m 0600 -o $NOBODY /dev/null $LF"
refused "the lock file readable by others (flock needs no more)" "$LF is not root's alone (owner 0, mode 0644)" \
	"mkdir -m 0755 $LOCKDIR && install -m 0644 /dev/null $LF"
out=$(private "umask 077; '$DIVERTD' -d -f '$CONF' -s '$TMP/l.sock' >'$TMP/l.log' 2>&1 & p=\$!
	for _ in \$(seq 200); do [ -e '$TMP/l.sock' ] && break; sleep 0.05; done
	stat -c '%U %a' $LOCKDIR $LF | tr '\n' ' '
	kill -TERM \$p
	for _ in \$(seq 100); do kill -0 \$p 2>/dev/null || break; sleep 0.1; done
	kill -KILL \$p 2>/dev/null; wait \$p; echo \"rc \$? left \$(ls -A $LOCKDIR | wc -l)\"" 2>&1)
check "no $LOCKDIR: divertd makes it root's, 0755 (umask 077 or not), the lock file root's, 0600; removes the file at exit ($out)" \
	test "$out" = "root 755 root 600 rc 0 left 0"

# --- a squatter: nobody binds the old abstract name (again whenever it is
# free: the moment a divertd holding it dies) and tries the lock file and
# its directory, every 50 ms for 150 s at most
INO=$(netns_ino "$H")
LOCK=$LOCKDIR/netns-$INO.lock
squat() {
	rm -f "$TMP/w/squat"
	ip netns exec "$H" "${NOBODY_[@]}" $PY - "$LOCK" "$TMP/w/squat" <<'PY' &
import errno, fcntl, os, socket, sys, time
lock, out = sys.argv[1], sys.argv[2]
held, abstract = [], None
def attempt():
    global abstract
    r = []
    for flags in (os.O_RDONLY, os.O_RDWR | os.O_CREAT):
        try:
            fd = os.open(lock, flags | os.O_NOFOLLOW, 0o666)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            r.append("HELD")
            held.append(fd)
        except OSError as e:
            r.append(errno.errorcode[e.errno])
    try:                        # the directory itself, which may not exist yet
        d = os.open(os.path.dirname(lock), os.O_RDONLY)
        fcntl.flock(d, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.append(d)
        r.append("dir:flocked")
    except OSError as e:
        r.append("dir:" + errno.errorcode[e.errno])
    if abstract is None:        # the lock of divertd before
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(b"\0divertd-netns-lock")
            abstract = s
        except OSError:
            pass
    r.append("abstract:" + ("bound" if abstract else "taken"))
    return r
def note(name, r):
    with open(name + ".tmp", "w") as f:
        f.write(" ".join(r) + "\n")
    os.rename(name + ".tmp", name)
note(out, attempt())
end = time.monotonic() + 150
while time.monotonic() < end:
    r = attempt()
    note(out + ".last", r)
    if "HELD" in r:
        note(out + ".held", r)
    time.sleep(0.05)
PY
	SQUAT=$!; PIDS+=($SQUAT)
	wait_for "$TMP/w/squat" 10
}
squat
check "nobody squats: binds the old abstract name, cannot open the lock file ($(cat "$TMP/w/squat" 2>/dev/null))" \
	bash -c 'grep -Eq "^(EACCES|ENOENT) (EACCES|ENOENT) .* abstract:bound" "$1" && ! grep -q HELD "$1"' _ "$TMP/w/squat"
start "$H" "$SOCK" "$TMP/divertd.log" -g "$GROUPNAME"
rc=$?
check "... divertd starts all the same" test $rc = 0
if [ $rc != 0 ]; then	# the rest needs a divertd: start one without the
	kill "$SQUAT" 2>/dev/null; wait "$SQUAT" 2>/dev/null	# squatter,
	start "$H" "$SOCK" "$TMP/divertd.log" -g "$GROUPNAME" || { summary; exit 1; }
	squat		# which then waits for its chance again
fi
FIRST=$DIVERTD_PID
check "the lock file is $LOCK, root's, mode 0600 ($(stat -c '%U %a' "$LOCK" 2>&1))" \
	test "$(stat -c '%U %a' "$LOCK")" = "root 600"
divert_prog "$H" "$SOCK" div_echo 8668 1000000 150 "$TMP/echo.ready" >"$TMP/echo.out" 2>&1 &
EPID=$!; PIDS+=($EPID)
wait_for "$TMP/echo.ready" 5
check "pings go through the divert program (5 answered, each seen)" through 5

# --- a second divertd in the same namespace: refused, the first untouched
rules0=$(ip netns exec "$H" iptables-save -t mangle | grep -c divertd)
nft0=$(ip netns exec "$H" nft list table inet divertd 2>/dev/null | grep -c .)
out=$(timeout 20 ip netns exec "$H" "$DIVERTD" -d -f "$CONF" -s "$TMP/second.sock" 2>&1); rc=$?
check "a second divertd in the namespace: exit 1, 'another divertd runs in this network namespace (it holds $LOCK)' ($out)" \
	bash -c '[ "$1" = 1 ] && grep -qF "another divertd runs in this network namespace (it holds $2)" <<<"$3"' _ "$rc" "$LOCK" "$out"
check "... the first's rules are as they were ($rules0 iptables lines, $nft0 nft lines), it runs, pings still go through its program" \
	bash -c '[ "$(ip netns exec "$1" iptables-save -t mangle | grep -c divertd)" = "$2" ] &&
		[ "$(ip netns exec "$1" nft list table inet divertd 2>/dev/null | grep -c .)" = "$3" ] &&
		kill -0 "$4"' _ "$H" "$rules0" "$nft0" "$FIRST"
check "... (5 pings through the program)" through 5

# --- another namespace: its own lock
INO_B=$(netns_ino "$B")
start "$B" "$TMP/other.sock" "$TMP/other.log"; rc=$?
OTHER=$DIVERTD_PID
check "a divertd in another namespace starts (its lock: netns-$INO_B.lock, root 600: $(stat -c '%U %a' "$LOCKDIR/netns-$INO_B.lock" 2>&1))" \
	test "$rc/$(stat -c '%U %a' "$LOCKDIR/netns-$INO_B.lock" 2>/dev/null)" = "0/root 600"
kill -TERM "$OTHER"; wait "$OTHER"; rc=$?
check "... and exits 0 on SIGTERM, its lock file removed, the first's kept" \
	test "$rc/$([ -e "$LOCKDIR/netns-$INO_B.lock" ] && echo kept)/$([ -e "$LOCK" ] && echo kept)" = "0//kept"

# --- divertd killed with the squatter waiting: the next start removes the
# dead one's rules and diverts again, every time
DIVERTD_PID=$FIRST
ok_rounds=0
for round in 1 2 3; do
	kill -KILL "$DIVERTD_PID"; wait "$DIVERTD_PID" 2>/dev/null
	dead=$(pings 2)
	start "$H" "$SOCK" "$TMP/divertd.$round.log" -g "$GROUPNAME" || { bad "round $round: divertd starts"; break; }
	if [ "$dead" = 0 ] && grep -q 'packets found no divertd since the last one ended' "$TMP/divertd.$round.log" &&
		through 5; then
		ok_rounds=$((ok_rounds + 1))
	else
		echo "# round $round: while dead $dead of 2 answered; $(grep -c 'found no divertd' "$TMP/divertd.$round.log") count lines"
	fi
done
check "SIGKILL with the squatter waiting, 3 times: the dead one's rules dropped the pings, the next divertd counted them, removed its rules and diverts again ($ok_rounds of 3)" \
	test "$ok_rounds" = 3
check "... the squatter, trying all along, never held the lock (its last try: $(cat "$TMP/w/squat.last"))" \
	bash -c '[ ! -e "$1.held" ] && grep -q "^EACCES EACCES" "$1.last"' _ "$TMP/w/squat"
kill "$SQUAT" 2>/dev/null; wait "$SQUAT" 2>/dev/null
if ! kill -0 "$DIVERTD_PID" 2>/dev/null; then	# the rest needs a divertd
	start "$H" "$SOCK" "$TMP/divertd.log" -g "$GROUPNAME" || { summary; exit 1; }
fi

# --- a group member floods show from 16 connections, 64 requests in
# flight on each (what divertd reads of them at one wakeup), for 12 s at
# most, while 200 pings at 20/s go through the divert program
ip netns exec "$H" "${MEMBER_[@]}" $PY - "$SOCK" 16 64 12 3000000 "$TMP/w/flood" <<'PY' >"$TMP/flood.out" 2>&1 &
import socket, struct, sys, time
H = struct.Struct("=HHIQII16s")
path, nconn, depth, secs, maxreq, ready = sys.argv[1], int(sys.argv[2]), \
    int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
req = H.pack(7, 1, 0, 0, 0, 0, b"\0" * 16) + b"show\0"     # DW_CTL "show"
conns = []
for i in range(nconn):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(60)
    s.connect(path)
    w = H.unpack(s.recv(100)[:40])
    if w[0] != 1 or w[2] != 0:
        print("refused", w); sys.exit(1)
    conns.append(s)
open(ready, "w").close()
end = time.monotonic() + secs
sent = answered = 0
last = b""
while time.monotonic() < end and sent < maxreq:
    for s in conns:
        for _ in range(depth):
            s.send(req)
        sent += depth
    for s in conns:
        got = 0
        while got < depth:
            m = s.recv(70000)
            h = H.unpack(m[:40])
            if h[0] == 8 and h[4] == 0:     # DW_CTLREPLY, the last part
                got += 1
                last = m[40:]
        answered += got
print("sent", sent, "answered", answered, "status", h[2],
      "last", last.decode().split()[:3], flush=True)
PY
FLOOD=$!; PIDS+=($FLOOD)
wait_for "$TMP/w/flood" 10
ip netns exec "$P" ping -n -c 200 -i 0.05 -W 1 -w 30 192.0.2.1 >"$TMP/ping.out" 2>&1
wait "$FLOOD"
intime=$(awk -F'time=' '/time=/ { split($2, a, " "); if (a[1] + 0 < 1000) n++ } END { print n + 0 }' "$TMP/ping.out")
slowest=$(awk -F/ '/^rtt/ { print $6 }' "$TMP/ping.out")
flood=$(cat "$TMP/flood.out")
read -r _ sent _ answered _ <<<"$flood"
check "a member floods show (16 connections x 64 in flight, ${flood:-nothing}): 1,000 or more requests, every one answered with the rule and its counts" \
	bash -c '[ "${1:-0}" -ge 1000 ] && [ "$1" = "$2" ] &&
		grep -Eq "status 0 last \[.00100., .[0-9]+., .[0-9]+.\]" <<<"$3"' _ "$sent" "$answered" "$flood"
check "... meanwhile all 200 pings through the divert program were answered within 1 s ($intime; the slowest in ${slowest:-?} ms)" \
	test "$intime" = 200
member() { "${MEMBER_[@]}" "$DCTL" -s "$SOCK" show 100 | awk '{ print $2 }'; }
c0=$(member)
n=$(pings 3)
for _ in $(seq 30); do [ "$(member)" -ge $(( c0 + 3 )) ] && break; sleep 0.05; done
c1=$(member)
check "... a member's show counts 3 more pings within 1.5 s, as root's does ($c0 -> $c1, root's $(ctl show 100 | awk '{ print $2 }'))" \
	test "$n/$c1" = "3/$(( c0 + 3 ))" -a "$c1" = "$(ctl show 100 | awk '{ print $2 }')"
kill "$EPID" 2>/dev/null; wait "$EPID" 2>/dev/null
kill -TERM "$DIVERTD_PID"; wait "$DIVERTD_PID"; rc=$?
check "divertd exits 0 on SIGTERM after all this, its lock file removed" \
	test "$rc/$([ -e "$LOCK" ] && echo kept)" = "0/"

# --- a third party's long rule into divertd's chains (iptables)
# third FAMILY CHAIN: a rule of ~1,000 bytes (four 250-byte comments)
# jumping from PREROUTING to CHAIN, and the chain if it is missing
LONG=$(printf 'x%.0s' $(seq 250))
third() {
	local t=iptables; [ "$1" = 6 ] && t=ip6tables
	ip netns exec "$X" $t -t mangle -N "$2" 2>/dev/null
	ip netns exec "$X" $t -t mangle -A PREROUTING -m comment --comment "a$LONG" \
		-m comment --comment "b$LONG" -m comment --comment "c$LONG" \
		-m comment --comment "d$LONG" -j "$2"
}
left() { # what is left in X of divertd's chains and the long rules
	{ ip netns exec "$X" iptables-save -t mangle; ip netns exec "$X" ip6tables-save -t mangle; } |
		grep -c -e divertd -e "$LONG"
}
third 4 divertd-in && third 6 divertd-in && third 4 divertd-out
check "a third party's rules of $(ip netns exec "$X" iptables-save -t mangle | awk '/-j divertd-in/ { print length }') bytes jump into chains named divertd-*" \
	test "$(left)" -ge 5
start "$X" "$TMP/x.sock" "$TMP/x.log" -b iptables; rc=$?
check "divertd starts, removing them first ($(grep -c 'could not remove' "$TMP/x.log") failures to remove)" \
	bash -c '[ "$1" = 0 ] && ! grep -q -e "could not remove" -e AddressSanitizer "$2" &&
		! ip netns exec "$3" iptables-save -t mangle | grep -qF "$4" &&
		! ip netns exec "$3" ip6tables-save -t mangle | grep -qF "$4"' _ "$rc" "$TMP/x.log" "$X" "$LONG"
third 4 divertd-in && third 6 divertd-in
kill -TERM "$DIVERTD_PID"; wait "$DIVERTD_PID"; rc=$?
n=$(left)
check "with divertd running, the same into its own divertd-in: SIGTERM exits 0 and removes them with its chains (rc $rc, $n lines left)" \
	bash -c '[ "$1" = 0 ] && [ "$2" = 0 ] && ! grep -q -e "could not remove" -e AddressSanitizer "$3"' _ "$rc" "$n" "$TMP/x.log"
summary
