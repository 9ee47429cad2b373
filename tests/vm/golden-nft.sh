#!/usr/bin/env bash
# golden-nft.sh: load every golden nft ruleset as it is, native `queue`
# statements included, into the running kernel.
#
# tests/golden/check-syntax.sh replaces "queue num N [bypass]" with "drop"
# before its check, because our CI kernel has no nft queue; on a kernel
# that has it (Debian's stock kernel, in the VM:
# `tests/vm/run.sh -- tests/vm/golden-nft.sh`) this checks the files
# exactly as divertd would install them.  For each tests/golden/*.nft and
# contrib/nft-rules/*.nft, in a network namespace made here and deleted on
# exit:
#   1. nft -c -f FILE (the kernel's check, nothing stays loaded);
#   2. nft -f FILE, a real load; the table "inet divertd" must then list
#      as many queue statements as the file has;
#   3. the table deleted again.
# Prints "ok NAME (N queue)" or "not ok NAME: why" per file, then
# "N passed, N failed, N skipped".  Skips (exit 77) without root or nft,
# or on a kernel without nft queue (CONFIG_NFT_QUEUE).
#
#   tests/vm/golden-nft.sh [FILE.nft...]
set -u
top=$(cd "$(dirname "$0")/../.." && pwd)
ns=divertd-golden-$$
tmp=$(mktemp -d) || exit 1
pass=0 fail=0

skip() {
	echo "skip - $*"
	echo "0 passed, 0 failed, 1 skipped"
	exit 77
}

cleanup() {
	ip netns del "$ns" 2>/dev/null
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

[ "$(id -u)" = 0 ] || skip "needs root (creates a network namespace)"
command -v nft >/dev/null || skip "nft not found"
ip netns add "$ns" || skip "cannot create a network namespace"
in_ns() { ip netns exec "$ns" "$@"; }

if ! in_ns nft -c 'add table inet t; add chain inet t c { type filter hook prerouting priority 0; }; add rule inet t c queue num 1' 2>"$tmp/probe"; then
	skip "this kernel ($(uname -r)) has no nft queue (CONFIG_NFT_QUEUE): $(head -1 "$tmp/probe")"
fi
echo "# kernel $(uname -r), $(nft --version)"

if [ $# -gt 0 ]; then
	files=("$@")
else
	files=("$top"/tests/golden/*.nft "$top"/contrib/nft-rules/*.nft)
fi

for f in "${files[@]}"; do
	name=${f#"$top"/}
	want=$(grep -c 'queue num' "$f")
	if ! in_ns nft -c -f "$f" >"$tmp/err" 2>&1; then
		echo "not ok $name: nft -c: $(head -3 "$tmp/err" | tr -s '\n\t' '  ')"
		fail=$((fail + 1)); continue
	fi
	if ! in_ns nft -f "$f" >"$tmp/err" 2>&1; then
		echo "not ok $name: nft -f: $(head -3 "$tmp/err" | tr -s '\n\t' '  ')"
		fail=$((fail + 1)); in_ns nft flush ruleset 2>/dev/null; continue
	fi
	got=$(in_ns nft list table inet divertd 2>/dev/null | grep -c 'queue ')
	in_ns nft flush ruleset
	if [ "$got" -ne "$want" ]; then
		echo "not ok $name: loaded, but lists $got queue statements, the file has $want"
		fail=$((fail + 1)); continue
	fi
	echo "ok $name ($want queue)"
	pass=$((pass + 1))
done
echo "$pass passed, $fail failed, 0 skipped"
[ "$fail" -eq 0 ]
