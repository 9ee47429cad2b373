#!/usr/bin/env bash
# kernel.sh: what the kernel must do for the direct path (docs/DIRECT.md),
# on the kernel the suites run on (ours, and Debian's stock kernel in the
# VM): a queue's netlink socket handed to another process over SCM_RIGHTS
# works there (reads, verdicts), an epoll fd of it and an eventfd is
# readable exactly when either is, a packet a dead holder read stays
# queued while the socket lives, another socket cannot bind the queue
# meanwhile (EPERM), and unbind + bind drops what was held
# (tests/kernel/nfq_handover.c makes each check).
. "$(dirname "$0")/lib.sh"
need_root

netns_add H host || { bad "create namespace"; summary; exit 1; }
ip -n "$H" addr add 192.0.2.1/32 dev lo || { bad "an address"; summary; exit 1; }
# UDP from this host to 192.0.2.1:9999 goes to queue 4242 (no bypass: a
# packet nobody takes is dropped, so a lost handover shows)
ip netns exec "$H" iptables -t mangle -A OUTPUT -p udp -d 192.0.2.1 --dport 9999 \
	-j NFQUEUE --queue-num 4242 || { bad "the NFQUEUE rule"; summary; exit 1; }

ip netns exec "$H" timeout 60 "$BUILD/nfq_handover" 4242 192.0.2.1 9999 >"$TMP/out" 2>&1
rc=$?
grep -E '^(ok|not ok) - ' "$TMP/out"
grep -vE '^(ok|not ok) - |^[0-9]+ passed' "$TMP/out" | sed 's/^/# /'
line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$TMP/out" | tail -1)
if [ -n "$line" ]; then
	read -r p _ f _ <<<"$(tr -d ',' <<<"$line")"
	PASS=$((PASS + p)) FAIL=$((FAIL + f))
fi
check "nfq_handover ran to its end (exit $rc)" test -n "$line" -a "$rc" = "$([ "${f:-1}" = 0 ] && echo 0 || echo 1)"
summary
