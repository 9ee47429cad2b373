#!/usr/bin/env bash
# service.sh: divertd as a service.  The systemd notification protocol
# against a listener of our own (READY once rules, queues and socket are up;
# RELOADING/READY around SIGHUP; STOPPING), reloads that change the rules
# while a steady stream is diverted and lose no packet, a reload with an
# error that changes nothing, recovery after SIGKILL, and the unit file.
. "$(dirname "$0")/lib.sh"
need_root
SRC=$(cd "$(dirname "$0")/../.." && pwd)
LISTENER=$SRC/tests/python/notify_listener.py

netns_add H host && netns_add P peer || { bad "create namespaces"; summary; exit 1; }
link "$H" eth0 192.0.2.1/24 "$P" eth0 192.0.2.2/24
SOCK=$TMP/divertd.sock
NOTIFY=$TMP/notify.sock
MSGS=$TMP/notify.log
CONF=$TMP/divertd.conf

# wait_msg PATTERN [SECONDS]: a notification matching PATTERN came
wait_msg() {
	local i
	for i in $(seq $(( ${2:-10} * 20 ))); do
		grep -Eq "$1" "$MSGS" 2>/dev/null && return 0
		sleep 0.05
	done
	return 1
}

printf '100 divert 8668 icmp from any to any in icmptypes 8\n' >"$CONF"
ip netns exec "$H" env DIVERT_SOCKET_CHECK="$SOCK" /usr/bin/python3 "$LISTENER" "$NOTIFY" "$MSGS" 120 &
PIDS+=($!); LPID=$!
wait_for "$NOTIFY" 5
ip netns exec "$H" env NOTIFY_SOCKET="$NOTIFY" "$DIVERTD" -d -f "$CONF" -s "$SOCK" \
	>"$TMP/divertd.log" 2>&1 &
DIVERTD_PID=$!; PIDS+=($!)

check "notify: READY=1 with MAINPID, once the client socket exists" \
	wait_msg "READY=1;MAINPID=$DIVERTD_PID;.*sock=yes" 10

# a steady stream through a divert program while the rules change
divert_prog "$H" "$SOCK" div_echo 8668 100000 60 "$TMP/echo.ready" >"$TMP/echo.out" 2>&1 &
EPID=$!; PIDS+=($EPID)
wait_for "$TMP/echo.ready" 5
ip netns exec "$P" ping -n -q -c 400 -i 0.01 -W 2 192.0.2.1 >"$TMP/ping.out" 2>&1 &
PPID_=$!; PIDS+=($PPID_)
for round in 1 2 3; do
	sleep 0.3
	printf '50 count icmp from any to any\n100 divert 8668 icmp from any to any in icmptypes 8\n200 divert 9000 udp from any to any 9\n' >"$CONF"
	kill -HUP "$DIVERTD_PID"
	wait_msg "RELOADING=1;MONOTONIC_USEC=[0-9]+" 10 || break
	sleep 0.3
	printf '100 divert 8668 icmp from any to any in icmptypes 8\n300 count ip from any to any\n' >"$CONF"
	kill -HUP "$DIVERTD_PID"
done
wait "$PPID_"
received=$(awk '/packets transmitted/ { print $4 }' "$TMP/ping.out")
check "reload x6 under a steady stream: all 400 pings answered ($received received)" test "$received" = 400
check "notify: RELOADING=1 then READY=1 around each reload" \
	test "$(grep -c 'RELOADING=1' "$MSGS")" -ge 6 -a "$(grep -c '^READY=1' "$MSGS")" -ge 7
# what the rules of either backend show: rule N's chain, queue N, the
# jump into rule 100's chain from the input hook; the rules counters aside
has_chain() { fw_rules "$H" | grep -Eq "^:divertd-in-$1 |chain in_$1 \{"; }
has_queue() { # nft lists "queue num N bypass" as "queue flags bypass to N"
	fw_rules "$H" | grep -Eq "queue-num $1 |queue (num|(flags [a-z,]+ )?to) $1( |$)"
}
jumps_in() { # (IPv4's; nft's inet table has one for both)
	{ ip netns exec "$H" iptables-save -t mangle
	  ip netns exec "$H" nft list table inet divertd 2>/dev/null
	} | grep -Ec -- '^-A PREROUTING -j divertd-in|jump in_100$'
}
rules_now() { fw_rules "$H" | sed -E 's/^\[[0-9]+:[0-9]+\] //; s/counter packets [0-9]+ bytes [0-9]+/counter/'; }
new_rules() {
	has_chain 300 && ! has_queue 9000 &&
		! ip netns exec "$H" awk '$1 == 9000' /proc/net/netfilter/nfnetlink_queue | grep -q .
}
check "the new rules are in place (rule 300 counts, queue 9000 unbound again)" new_rules

# a config with an error is refused, the running rules stay
rules_now >"$TMP/rules.before"
kept_rules() {
	grep -q "reload refused, the running rules stay: $CONF:2:" "$TMP/divertd.log" &&
		has_queue 8668 && rules_now | cmp -s - "$TMP/rules.before"
}
printf '100 divert 8668 icmp from any to any in icmptypes 8\n200 divrt 1 ip from any to any\n' >"$CONF"
kill -HUP "$DIVERTD_PID"
check "a bad config on reload: READY=1 with the error as STATUS" \
	wait_msg "READY=1;STATUS=reload refused: $CONF:2: unknown action" 10
check "... logged with FILE:LINE, and the running rules stay" kept_rules
rules_now | diff "$TMP/rules.before" - | sed 's/^/# /'
ip netns exec "$P" ping -n -c 1 -W 2 192.0.2.1 >/dev/null
check "... and still divert (ping through the program)" test $? -eq 0

# the program first: a divert socket outlives divertd, and its port would
# be taken to the next one
kill "$(pgrep -P "$EPID" | head -1)" 2>/dev/null; wait "$EPID" 2>/dev/null
kill -TERM "$DIVERTD_PID"; wait "$DIVERTD_PID"; rc=$?
check "SIGTERM: exit 0" test "$rc" -eq 0
check "notify: STOPPING=1" wait_msg "STOPPING=1" 5

# --- SIGKILL: what traffic does until the next start, and the next start
printf '100 divert 8668 icmp from any to any in icmptypes 8\n' >"$CONF"
if start_divertd "$H" "$CONF" "$SOCK"; then
	kill -KILL "$DIVERTD_PID"; wait "$DIVERTD_PID" 2>/dev/null
	check "after SIGKILL the rules are still there" test "$(jumps_in)" = 1
	ip netns exec "$P" ping -n -c 1 -W 1 192.0.2.1 >/dev/null
	check "... and traffic they divert is dropped (no listener on the queue), as with no socket bound" test $? -ne 0
	ip netns exec "$P" ping -6 -n -c 1 -W 1 2001:db8::1 >/dev/null 2>&1 || true
	if start_divertd "$H" "$CONF" "$SOCK"; then
		check "the next start clears what the dead one left: one jump into our chains" \
			test "$(jumps_in)" = 1
		divert_prog "$H" "$SOCK" div_echo 8668 1 3 "$TMP/after.ready" >"$TMP/after.out" 2>&1 &
		ap=$!; PIDS+=($ap)
		wait_for "$TMP/after.ready" 5
		ip netns exec "$P" ping -n -c 1 -W 2 192.0.2.1 >/dev/null
		check "... and diverts again" test $? -eq 0
		wait "$ap"
		stop_divertd
	else bad "restart after SIGKILL"; fi
else bad "SIGKILL: setup"; fi

# --- the unit file
if command -v systemd-analyze >/dev/null; then
	# the unit cmake made, pointed at this build's daemon and a config
	printf '100 count ip from any to any\n' >"$TMP/unit.conf"
	sed -e "s#^ExecStart=[^ ]*#ExecStart=$DIVERTD#" -e "s#/etc/divertd.conf#$TMP/unit.conf#g" \
		"$BUILD/divertd.service" >"$TMP/divertd.service"
	out=$(systemd-analyze verify --man=no "$TMP/divertd.service" 2>&1); rc=$?
	check "systemd-analyze verify passes on the unit ($out)" test "$rc" -eq 0
	check "the unit is Type=notify with ExecReload, RuntimeDirectory and the capabilities it needs" \
		bash -c "grep -q '^Type=notify' '$TMP/divertd.service' && grep -q '^ExecReload=' '$TMP/divertd.service' &&
			 grep -q '^RuntimeDirectory=divertd' '$TMP/divertd.service' &&
			 grep -q '^CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW$' '$TMP/divertd.service'"
else
	skip "systemd-analyze is not installed"
fi
kill "$LPID" 2>/dev/null
summary
