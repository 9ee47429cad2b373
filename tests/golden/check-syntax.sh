#!/bin/sh
# check-syntax.sh: load every golden ruleset into the running kernel.
#
# test_rules proves the generator writes exactly the golden files; this
# proves the golden files are what the kernel accepts.  For each NAME.conf
# under tests/golden/ and contrib/nft-rules/:
#   NAME.ipt4  iptables-restore --test, then a real load (--test alone does
#              not exercise every kernel-side check), then the chains removed
#   NAME.ipt6  the same with ip6tables-restore
#   NAME.nft   nft -c -f (a kernel-side check, nothing stays loaded), after
#              replacing "queue num N [bypass]" with "drop": some kernels are built
#              without CONFIG_NFT_QUEUE (this one is) and reject the native
#              queue statement; NFQUEUE through iptables-nft still works, and
#              the rest of each rule is checked all the same.
# All of it happens in a network namespace created here and deleted on exit,
# so the host's firewall is never touched.
#
# Needs root, ip(8), nft(8), iptables-restore and ip6tables-restore; skips
# (exit 77) without them.  Prints "ok NAME" or "FAIL NAME: why" per ruleset
# and exits 1 if anything failed.
#
#   sudo tests/golden/check-syntax.sh [NAME.conf...]

set -u

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
ns=divertd-syntax-$$
tmp=

skip() {
	echo "SKIP: $*"
	exit 77
}

[ "$(id -u)" = 0 ] || skip "needs root (creates a network namespace)"
for tool in ip nft iptables-restore ip6tables-restore iptables ip6tables; do
	command -v "$tool" >/dev/null 2>&1 || skip "$tool not found"
done

# shellcheck disable=SC2317  # called from the trap
cleanup() {
	ip netns del "$ns" 2>/dev/null
	[ -n "$tmp" ] && rm -f "$tmp" "$tmp.err"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

ip netns add "$ns" || { echo "FAIL: cannot create namespace $ns"; exit 1; }
tmp=$(mktemp) || exit 1

in_ns() {
	ip netns exec "$ns" "$@"
}

# The first lines of an error message, on one line.
oneline() {
	head -n 3 "$@" | tr -s '\n\t' '  '
}

# Remove whatever the previous ruleset left in the namespace's mangle table.
ipt_clear() {
	in_ns "$1" -t mangle -F && in_ns "$1" -t mangle -X
}

# check_ipt RESTORE-TOOL TABLES-TOOL FILE: the reason on stdout if bad
check_ipt() {
	if ! in_ns "$1" --test --noflush <"$3" >"$tmp.err" 2>&1; then
		echo "$(basename "$3"): $1 --test: $(oneline "$tmp.err")"
		return 1
	fi
	if ! in_ns "$1" --noflush <"$3" >"$tmp.err" 2>&1; then
		echo "$(basename "$3"): $1: $(oneline "$tmp.err")"
		return 1
	fi
	if ! in_ns "$2" -t mangle -S divertd-in >/dev/null 2>&1; then
		echo "$(basename "$3"): loaded, but chain divertd-in is missing"
		return 1
	fi
	ipt_clear "$2"
}

check_nft() {
	sed 's/queue num [0-9][0-9]*\( bypass\)\{0,1\}/drop/' "$1" >"$tmp"
	if ! in_ns nft -c -f "$tmp" >"$tmp.err" 2>&1; then
		echo "$(basename "$1"): nft -c: $(sed "s|$tmp|$1|" "$tmp.err" |
			oneline)"
		return 1
	fi
}

if [ $# -gt 0 ]; then
	confs="$*"
else
	confs=$(ls "$top"/tests/golden/*.conf "$top"/contrib/nft-rules/*.conf)
fi

failed=0
for conf in $confs; do
	base=${conf%.conf}
	name=${base#"$top"/}
	why=
	for f in "$base.ipt4" "$base.ipt6" "$base.nft"; do
		[ -f "$f" ] || why="${why:+$why; }$(basename "$f") missing"
	done
	if [ -z "$why" ]; then
		why=$(check_ipt iptables-restore iptables "$base.ipt4")
		r=$(check_ipt ip6tables-restore ip6tables "$base.ipt6")
		why=${why:+$why${r:+; }}$r
		r=$(check_nft "$base.nft")
		why=${why:+$why${r:+; }}$r
	fi
	if [ -z "$why" ]; then
		echo "ok $name"
	else
		echo "FAIL $name: $why"
		failed=1
		# leave nothing behind for the next ruleset
		ipt_clear iptables 2>/dev/null
		ipt_clear ip6tables 2>/dev/null
	fi
done
exit $failed
