#!/usr/bin/env bash
# divertctl.sh: divertctl against a running divertd.  list shows the
# config's rules; add/delete/flush change what traffic does at once (pings
# reach a divert program only while a rule sends them there) and leave the
# config file alone (SIGHUP puts it back); a bad rule is refused with the
# parser's message and changes nothing; stats move with traffic; sockets
# names the bound program; rules is what the kernel holds (with the
# backend divertd picked: nftables where nft queue exists); show
# counts each rule's packets and bytes as ipfw show does, zero clears them,
# rule changes keep them; -j is JSON with the same numbers; add/delete
# under a steady stream lose no
# packet; a missing socket or a non-root caller get a clear message.
. "$(dirname "$0")/lib.sh"
need_root
DCTL=$BUILD/divertctl

netns_add H host && netns_add P peer || { bad "create namespaces"; summary; exit 1; }
# IPv4 only: fresh veths send IPv6 autoconfiguration packets for seconds,
# which the counting rules below would see between two reads
for ns in "$H" "$P"; do
	ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
done
link "$H" eth0 192.0.2.1/24 "$P" eth0 192.0.2.2/24
SOCK=$TMP/divertd.sock
CONF=$TMP/divertd.conf
ECHO_RULE="150 divert 8668 icmp from any to any in icmptypes 8"

ctl() { "$DCTL" -s "$SOCK" "$@"; }
# pings N: send N pings from the peer, print how many were answered
pings() {
	ip netns exec "$P" ping -n -q -c "$1" -i 0.05 -W 2 192.0.2.1 2>/dev/null |
		awk '/packets transmitted/ { print $4 }'
}
# echoed: packets the divert program has seen so far
echoed() { grep -c '^pkt ' "$TMP/echo.out"; }
# stat NAME [-j]: one counter from divertctl stats (text or JSON)
stat() {
	if [ "${2:-}" = -j ]; then
		ctl -j stats | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"
	else
		ctl stats | awk -v k="$1" '$1 == k { print $2 }'
	fi
}
is_json() { /usr/bin/python3 -c 'import json,sys; json.load(sys.stdin)'; }
# mangle: what the kernel holds of ours (either backend), counters aside
mangle() { fw_rules "$H" | sed -E 's/counter packets [0-9]+ bytes [0-9]+/counter/'; }
# kernel_count LABEL: the packets the kernel counted for one rule line of
# ours ("rule 150 #1"), from iptables-save -c or nft's counter
kernel_count() {
	{ ip netns exec "$H" iptables-save -c -t mangle
	  ip netns exec "$H" ip6tables-save -c -t mangle
	} 2>/dev/null | grep -F -- "--comment \"$1\"" | sed 's/^\[\([0-9]*\):.*/\1/'
	ip netns exec "$H" nft list table inet divertd 2>/dev/null |
		grep -F "comment \"$1\"" | sed -n 's/.*counter packets \([0-9]*\) .*/\1/p'
}

printf '100 count ip from any to any\n200 allow tcp from any to me 22 in\n' >"$CONF"
ip netns exec "$H" "$DIVERTD" -d -f "$CONF" -s "$SOCK" \
	>"$TMP/divertd.log" 2>&1 &
DIVERTD_PID=$!; PIDS+=($!)
for _ in $(seq 200); do
	[ -e "$SOCK" ] && grep -q 'ready:' "$TMP/divertd.log" && break
	sleep 0.05
done
[ -e "$SOCK" ] || { bad "divertd starts"; sed 's/^/# /' "$TMP/divertd.log"; summary; exit 1; }
BACKEND=$(ctl stats | awk '$1 == "backend" { print $2 }')
echo "# divertd picked the $BACKEND backend"

# --- list
out=$(ctl list); rc=$?
check "list: exit 0, the config's rules as ipfw lines" \
	test "$rc/$out" = "0/00100 count ip from any to any
00200 allow tcp from any to me 22 in"

# a divert program on port 8668, which no rule uses yet
divert_prog "$H" "$SOCK" div_echo 8668 100000 60 "$TMP/echo.ready" >"$TMP/echo.out" 2>&1 &
EPID=$!; PIDS+=($EPID)
wait_for "$TMP/echo.ready" 5
PROG_PID=$(pgrep -P "$EPID" -x div_echo)	# $! is the shell running it
n=$(pings 3)
check "before add: pings answered without the program (3 answered, $(echoed) seen)" \
	test "$n/$(echoed)" = "3/0"

# --- add
out=$(ctl add $ECHO_RULE); rc=$?
check "add: exit 0, prints the rule added ($out)" \
	test "$rc/$out" = "0/00150 divert 8668 icmp from any to any in icmptypes 8"
check "... list shows it between 100 and 200" \
	test "$(ctl list | cut -c1-5 | tr '\n' ' ')" = "00100 00150 00200 "
n=$(pings 3)
check "... pings now go through the program (3 answered, $(echoed) seen)" \
	test "$n/$(echoed)" = "3/3"

# --- stats move with traffic; text and JSON agree
d0=$(stat diverted); r0=$(stat reinjected_in); q0=$(stat received)
n=$(pings 5)
d1=$(stat diverted); r1=$(stat reinjected_in); q1=$(stat received)
check "stats: 5 pings diverted ($d0 -> $d1), re-injected in ($r0 -> $r1), received ($q0 -> $q1)" \
	test "$n/$((d1 - d0))/$((r1 - r0))/$((q1 - q0))" = "5/5/5/5"
check "stats -j: JSON, same numbers (diverted $d1, reinjected_in $r1, backend $BACKEND)" \
	test "$(stat diverted -j)/$(stat reinjected_in -j)/$(stat backend -j)" = "$d1/$r1/$BACKEND"
ctl -j stats | is_json
check "stats -j parses as JSON" test $? -eq 0

# --- sockets
line=$(ctl sockets | awk '$1 == 8668')
check "sockets: port 8668, pid $PROG_PID, div_echo, 0 held ($line)" \
	test "$(echo "$line" | awk '{ print $1 "/" $2 "/" $3 "/" $4 }')" = "8668/$PROG_PID/div_echo/0"
j=$(ctl -j sockets | /usr/bin/python3 -c 'import json,sys
for s in json.load(sys.stdin): print("%d/%d/%s/%d" % (s["port"], s["pid"], s["program"], s["held"]))')
check "sockets -j: the same entry ($j)" test "$j" = "8668/$PROG_PID/div_echo/0"

# --- list -j
j=$(ctl -j list | /usr/bin/python3 -c 'import json,sys
print(" ".join("%d:%s:%s" % (r["number"], r["action"], r.get("port", "")) for r in json.load(sys.stdin)))')
check "list -j: JSON with the same rules ($j)" test "$j" = "100:count: 150:divert:8668 200:allow:"
j=$(ctl -j list | /usr/bin/python3 -c 'import json,sys
print("\n".join(r["rule"] for r in json.load(sys.stdin)))')
check "list -j: each entry carries the list line" test "$j" = "$(ctl list)"

# --- rules is what the kernel holds
if [ "$BACKEND" = iptables ]; then
	gen=$(ctl rules --iptables | sed -n '/^# iptables:/,/^# ip6tables:/p' | grep -E '^-A divertd-in(-150)? ')
	have=$(ip netns exec "$H" iptables-save -t mangle | grep -E '^-A divertd-in(-150)? ')
	check "rules --iptables: chains divertd-in and divertd-in-150 as iptables-save shows them ($(echo "$gen" | wc -l) lines)" \
		test -n "$gen" -a "$gen" = "$have"
else
	# nft prints what it was given in its own words; the chains, and
	# what each line is (its comment), are the same
	# (in an order of its own: chains a reload added come last)
	gen=$(ctl rules --nft | grep -oE 'chain [a-z_0-9]+|comment "[^"]*"' | sort)
	have=$(mangle | grep -oE 'chain [a-z_0-9]+|comment "[^"]*"' | sort)
	check "rules --nft: the chains and rule lines nft list shows ($(echo "$gen" | grep -c comment) lines, in_150 among them)" \
		test -n "$gen" -a "$gen" = "$have" -a -n "$(grep 'chain in_150' <<<"$have")"
	[ "$gen" = "$have" ] || diff <(echo "$gen") <(echo "$have") | sed 's/^/# /'
fi
gen=$(ctl rules --nft); rc=$?
check "rules --nft: the nftables table" \
	bash -c "[ $rc = 0 ] && grep -q '^table inet divertd' <<<'$gen' && grep -q 'queue num 8668' <<<'$gen'"

# --- a bad rule: exit 1, the parser's message, nothing changed
before_list=$(ctl list); before_fw=$(mangle)
err=$(ctl add 300 divrt 1 ip from any to any 2>&1 >/dev/null); rc=$?
check "add with a typo: exit 1 and the parser's message ($err)" \
	test "$rc/$err" = "1/divertctl: add: unknown action 'divrt'"
err=$(ctl add 300 divert 8668 tcp from any to any icmptypes 8 2>&1 >/dev/null); rc=$?
check "add with an option that does not fit: exit 1 ($err)" \
	test "$rc/$err" = "1/divertctl: add: icmptypes needs protocol icmp or ipv6-icmp"
check "... neither changed the list nor the kernel's rules" \
	test "$(ctl list)/$(mangle)" = "$before_list/$before_fw"

# --- add without a number: the last one + 100
out=$(ctl add count udp from any to any); rc=$?
check "add without a number: 200 + 100 ($out)" \
	test "$rc/$out" = "0/00300 count udp from any to any"

# --- delete
out=$(ctl delete 150 300); rc=$?
check "delete 150 300: exit 0, the list is the config's again" \
	test "$rc/$(ctl list)" = "0/00100 count ip from any to any
00200 allow tcp from any to me 22 in"
before=$(echoed)
n=$(pings 3)
check "... pings no longer reach the program (3 answered, seen $before -> $(echoed))" \
	test "$n/$(echoed)" = "3/$before"
check "... and queue 8668 is unbound" \
	bash -c "! ip netns exec '$H' awk '\$1 == 8668' /proc/net/netfilter/nfnetlink_queue | grep -q ."
err=$(ctl delete 150 2>&1); rc=$?
check "delete of a number no rule has: exit 1 ($err)" \
	test "$rc/$err" = "1/divertctl: delete: no rule numbered 150; nothing changed"

# --- add and delete while a steady stream is diverted: no packet lost
ctl add $ECHO_RULE >/dev/null
before=$(echoed)
ip netns exec "$P" ping -n -q -c 400 -i 0.01 -W 2 192.0.2.1 >"$TMP/ping.out" 2>&1 &
PPID_=$!; PIDS+=($PPID_)
okc=0
for round in 1 2 3; do
	sleep 0.2
	ctl add 50 count icmp from any to any >/dev/null && okc=$((okc + 1))
	ctl add 250 divert 9000 udp from any to any 9 >/dev/null && okc=$((okc + 1))
	sleep 0.2
	ctl delete 50 250 >/dev/null && okc=$((okc + 1))
done
wait "$PPID_"
received=$(awk '/packets transmitted/ { print $4 }' "$TMP/ping.out")
check "9 changes under a steady stream: all 400 pings answered ($received), each through the program ($(( $(echoed) - before )))" \
	test "$okc/$received/$(( $(echoed) - before ))" = "9/400/400"

# --- show and zero: each rule's counts, as ipfw show prints them
# counts NUM [-j]: "PACKETS/BYTES" of rule NUM from show (text or JSON)
counts() {
	if [ "${2:-}" = -j ]; then
		ctl -j show | /usr/bin/python3 -c 'import json,sys
for r in json.load(sys.stdin):
    if r["number"] == int(sys.argv[1]): print("%d/%d" % (r["packets"], r["bytes"]))' "$1"
	else
		ctl show | awk -v n="$1" '$1 + 0 == n { print $2 "/" $3 }'
	fi
}
out=$(ctl zero); rc=$?
check "zero: exit 0, ipfw's words ($out)" test "$rc/$out" = "0/Accounting cleared."
check "... every rule shows 0 packets, 0 bytes" \
	test "$(ctl show | awk '{ print $2 "/" $3 }' | sort -u)" = "0/0"
n=$(pings 4)
# an echo request of ping's default size is 84 bytes of IP
check "show: the divert rule counted the 4 echo requests, 336 bytes ($(counts 150))" \
	test "$n/$(counts 150)" = "4/4/336"
c100=$(counts 100)
check "... the count rule saw them in and their replies out (${c100%/*} >= 8)" \
	test "${c100%/*}" -ge 8
check "... the allow rule for tcp saw none ($(counts 200))" test "$(counts 200)" = "0/0"
check "... show -j: the same numbers ($(counts 150 -j), $(counts 100 -j))" \
	test "$(counts 150 -j)/$(counts 100 -j)" = "4/336/$c100"
check "... each line is the list line with the counts after the number" \
	test "$(ctl show | awk '{ $2 = ""; $3 = ""; print }' | tr -s ' ')" = "$(ctl list)"
out=$(ctl show 150); rc=$?
check "show 150: that rule only ($out)" \
	test "$rc/$(echo "$out" | wc -l)/${out%% *}" = "0/1/00150"
out=$(ctl zero 150); rc=$?
check "zero 150: exit 0, 'Entry 150 cleared'; rule 150 at 0, rule 100 untouched" \
	test "$rc/$out/$(counts 150)/$(counts 100)" = "0/Entry 150 cleared/0/0/$c100"
pings 2 >/dev/null
ctl add 300 count udp from any to any >/dev/null
check "a rule change keeps the counts of the rules that stay ($(counts 150) after add)" \
	test "$(counts 150)/$(counts 300)" = "2/168/0/0"
ctl delete 300 >/dev/null
check "... and after delete ($(counts 150))" test "$(counts 150)" = "2/168"
err=$(ctl zero 999 2>&1); rc=$?
check "zero of a number no rule has: exit 1 ($err)" \
	test "$rc/$err" = "1/divertctl: zero: no rule numbered 999; nothing changed"
check "... and nothing was zeroed" test "$(counts 150)" = "2/168"
err=$(ctl show 12x 2>&1); rc=$?
check "show of a word that is no number: exit 1 ($err)" \
	test "$rc/$err" = "1/divertctl: show: '12x' is not a rule number (1..65534)"
pings 1 >/dev/null
pk=$(kernel_count "rule 150 #1" | awk '{ n += $1 } END { print n + 0 }')
check "the kernel's counters name the rule and count since the last change: $BACKEND has 1 for \"rule 150 #1\" ($pk), show 3 ($(counts 150))" \
	test "$pk/$(counts 150)" = "1/3/252"

# --- flush, then SIGHUP puts the file's rules back
out=$(ctl flush); rc=$?
check "flush: exit 0, the list is empty" test "$rc/$(ctl list)" = "0/"
no_rules() { ! mangle | grep -Eq '^:divertd-in-[0-9]|chain in_[0-9]|rule [0-9]+ #'; }
check "... our chains hold no rule any more" no_rules
before=$(echoed)
n=$(pings 2)
check "... pings answered without the program (2 answered, seen $before -> $(echoed))" \
	test "$n/$(echoed)" = "2/$before"
check "... the config file is unchanged" \
	test "$(cat "$CONF")" = "100 count ip from any to any
200 allow tcp from any to me 22 in"
kill -HUP "$DIVERTD_PID"
for _ in $(seq 100); do [ -n "$(ctl list)" ] && break; sleep 0.05; done
check "SIGHUP: the file's rules are back" \
	test "$(ctl list)" = "00100 count ip from any to any
00200 allow tcp from any to me 22 in"

# --- a reply longer than one message (DW_CTL_MAXREPLY): many rules, under
# ten numbers (the iptables-nft backend takes no more than 13 distinct
# numbers: its chains go deeper than nf_tables' jump limit)
for i in $(seq 1 500); do echo "$(( (i % 9 + 1) * 100 )) count udp from any to any $i"; done >"$TMP/big.conf"
cp "$TMP/big.conf" "$CONF"
kill -HUP "$DIVERTD_PID"
for _ in $(seq 200); do [ "$(ctl list | wc -l)" = 500 ] && break; sleep 0.05; done
check "500 rules: list has them all, by number, file order within one, whole" \
	test "$(ctl list | awk '{ print $1 + 0, $NF }' | tr '\n' ' ')" = "$(sort -s -n -k1,1 "$TMP/big.conf" | awk '{ print $1, $NF }' | tr '\n' ' ')"
ctl rules --iptables >"$TMP/big.ctl"
"$DIVERTD" -n -f "$TMP/big.conf" | sed -n '/^# iptables:/,$p' >"$TMP/big.n"
check "... rules --iptables ($(wc -c <"$TMP/big.ctl") bytes, several messages) is what divertd -n prints" \
	bash -c "[ \$(wc -c <'$TMP/big.ctl') -gt 40000 ] && cmp -s '$TMP/big.ctl' '$TMP/big.n'"
ctl -j list | is_json
check "... list -j of 500 rules parses as JSON" test $? -eq 0

# --- usage and access
err=$("$DCTL" -s "$TMP/nowhere.sock" list 2>&1); rc=$?
check "no daemon on the socket: exit 1, the message names it" \
	bash -c "[ $rc = 1 ] && grep -q 'cannot connect to divertd at $TMP/nowhere.sock' <<<'$err'"
err=$(DIVERT_SOCKET=$SOCK "$DCTL" frobnicate 2>&1); rc=$?
check "\$DIVERT_SOCKET finds the daemon; an unknown command: exit 2 ($err)" \
	bash -c "[ $rc = 2 ] && grep -q \"unknown command or arguments: 'frobnicate'\" <<<\"\$1\"" _ "$err"
"$DCTL" -h | grep -q '^usage: divertctl'
check "-h: usage on stdout" test $? -eq 0
if command -v setpriv >/dev/null; then
	chmod 755 "$TMP"
	err=$(setpriv --reuid=65534 --regid=65534 --clear-groups "$DCTL" -s "$SOCK" list 2>&1); rc=$?
	check "not root: refused, exit 1 ($err)" \
		bash -c "[ $rc = 1 ] && grep -q 'Permission denied' <<<\"\$1\"" _ "$err"
else
	skip "setpriv is not installed"
fi

kill "$EPID" 2>/dev/null; wait "$EPID" 2>/dev/null
kill -TERM "$DIVERTD_PID"; wait "$DIVERTD_PID"; rc=$?
check "divertd exits 0 on SIGTERM after all this" test "$rc" -eq 0
summary
