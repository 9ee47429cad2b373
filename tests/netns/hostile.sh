#!/usr/bin/env bash
# hostile.sh: no client message can crash divertd.  A hostile client
# (tests/python/hostile_client.py, seeded) sends thousands of malformed,
# lying and abusive messages while real traffic is diverted; afterwards the
# daemon must still be alive, divert and re-inject a ping, and exit 0 on
# SIGTERM (under the ASan run, with no sanitizer report).
. "$(dirname "$0")/lib.sh"
need_root
HOSTILE=$(dirname "$0")/../python/hostile_client.py

netns_add H host && netns_add P peer || { bad "create namespaces"; summary; exit 1; }
link "$H" eth0 192.0.2.1/24 "$P" eth0 192.0.2.2/24
SOCK=$TMP/divertd.sock
cat >"$TMP/h.conf" <<'CONF'
100 divert 8668 icmp from any to any in icmptypes 8
CONF
if start_divertd "$H" "$TMP/h.conf" "$SOCK"; then
	# traffic flows through a real program while the hostile client runs
	divert_prog "$H" "$SOCK" div_echo 8668 100000 3 "$TMP/bg.ready" >"$TMP/bg.out" 2>&1 &
	PIDS+=($!); bg=$!
	wait_for "$TMP/bg.ready" 5
	ip netns exec "$P" ping -n -q -c 200 -i 0.01 -W 1 192.0.2.1 >/dev/null 2>&1 &
	PIDS+=($!)
	for seed in 1 2 3; do
		out=$(ip netns exec "$H" timeout 60 /usr/bin/python3 "$HOSTILE" "$SOCK" "$seed" 3000 2>&1)
		check "hostile client seed $seed ran ($out)" grep -q '^sent [0-9]' <<<"$out"
	done
	check "divertd survived" kill -0 "$DIVERTD_PID"
	wait "$bg"
	check "the program beside the hostile client got its packets ($(tail -1 "$TMP/bg.out"))" \
		grep -Eq '^total [1-9]' "$TMP/bg.out"
	divert_prog "$H" "$SOCK" div_echo 8668 1 3 "$TMP/after.ready" >"$TMP/after.out" 2>&1 &
	PIDS+=($!); ap=$!
	wait_for "$TMP/after.ready" 5
	ip netns exec "$P" ping -n -c 1 -W 2 192.0.2.1 >/dev/null
	check "afterwards a ping is still diverted and answered" test $? -eq 0
	wait "$ap"
	check "... through the program" grep -q '^total 1$' "$TMP/after.out"
	stop_divertd
	check "divertd exits 0 on SIGTERM after the abuse" test $? -eq 0
	check "no sanitizer report" bash -c "! grep -Eq 'ERROR: (Address|Leak)Sanitizer|runtime error' '$TMP/divertd-$H.log'"
	grep -E 'stats:' "$TMP/divertd-$H.log" | tail -1 | sed 's/^/# /'
else
	bad "divertd started"
fi
summary
