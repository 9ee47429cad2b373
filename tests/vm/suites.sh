#!/usr/bin/env bash
# suites.sh: every namespace suite on Debian 12's stock kernel, each in a
# VM of its own (tests/vm/run.sh), and the golden nft files loaded there
# with their queue statements (tests/vm/golden-nft.sh).
#
#   tests/vm/suites.sh [--build DIR] [--timeout S] [--cpus N] [--logs DIR] [PART...]
#
# PART: a suite's name (regression, plumbing, ...: tests/netns/NAME.sh,
# with the backend divertd picks there, auto), "regression-iptables" (the
# regression suite with divertd forced to -b iptables,
# tests/vm/with-backend.sh) or "golden-nft".  Default: golden-nft, every
# tests/netns/*.sh but lib.sh, then regression-iptables.
#   --build DIR    the build directory (default $BUILD, else ./build)
#   --timeout S    each VM's limit (default 600 s)
#   --cpus N       each VM's vCPUs (default 2: TCG runs one host thread
#                  per vCPU, and the suites run programs side by side)
#   --logs DIR     keep each part's output, dmesg and console there
# For each part: its output as it runs, then one line
#   "=== vm NAME: P passed, F failed, S skipped, T s (exit RC)"
# A VM that does not boot counts as one skipped test with its reason (and
# so does every part after it, not tried), a VM killed at the time limit
# or a part ending without its summary line as one failed; the last line
# adds it all up:
#   "N passed, N failed, N skipped"
# and the exit status is 1 if anything failed.
set -u
cd "$(dirname "$0")/../.." || exit 2
TOP=$PWD
BUILDDIR=${BUILD:-$TOP/build}
TIMEOUT=600
CPUS=2
LOGS=
while [ $# -gt 0 ]; do
	case $1 in
	--build) BUILDDIR=${2:?}; shift 2 ;;
	--timeout) TIMEOUT=${2:?}; shift 2 ;;
	--cpus) CPUS=${2:?}; shift 2 ;;
	--logs) LOGS=${2:?}; shift 2 ;;
	-h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	-*) echo "suites.sh: unknown option $1" >&2; exit 2 ;;
	*) break ;;
	esac
done
BUILDDIR=$(cd "$BUILDDIR" 2>/dev/null && pwd) || { echo "suites.sh: no build directory ${BUILD:-$TOP/build}" >&2; exit 2; }
if [ $# -gt 0 ]; then
	parts=("$@")
else
	parts=(golden-nft)
	for s in tests/netns/*.sh; do
		[ "$(basename "$s")" = lib.sh ] || parts+=("$(basename "$s" .sh)")
	done
	parts+=(regression-iptables)
fi

PASS=0 FAIL=0 SKIP=0
REPORT=()
log=$(mktemp) || exit 1
trap 'rm -f "$log"' EXIT
trap 'exit 130' INT TERM HUP
start=$SECONDS

VM_DOWN=
for part in "${parts[@]}"; do
	if [ -n "$VM_DOWN" ]; then
		# no VM booted: the rest would wait for the same boot in vain
		echo "skip - vm $part: not run: $VM_DOWN"
		SKIP=$((SKIP + 1))
		REPORT+=("=== vm $part: 0 passed, 0 failed, 1 skipped, 0 s (not run: no VM)")
		continue
	fi
	case $part in
	golden-nft) cmd=(bash tests/vm/golden-nft.sh) ;;
	regression-iptables)
		cmd=(bash tests/vm/with-backend.sh iptables "$BUILDDIR" bash tests/netns/regression.sh) ;;
	*)
		[ -f "tests/netns/$part.sh" ] || { echo "suites.sh: no tests/netns/$part.sh" >&2; exit 2; }
		cmd=(env BUILD="$BUILDDIR" bash "tests/netns/$part.sh") ;;
	esac
	keep=()
	[ -n "$LOGS" ] && keep=(--keep "$LOGS/$part")
	echo "=== vm $part"
	t0=$SECONDS
	bash tests/vm/run.sh --timeout "$TIMEOUT" --cpus "$CPUS" "${keep[@]}" -- "${cmd[@]}" 2>&1 | tee "$log"
	rc=${PIPESTATUS[0]}
	t=$((SECONDS - t0))
	line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$log" | tail -1)
	if [ -n "$line" ]; then
		read -r p _ f _ s _ <<<"$(echo "$line" | tr -d ',')"
		s=${s:-0}
		# a suite that printed its counts and then died is still a failure
		if [ "$rc" -ne 0 ] && [ "$rc" -ne 77 ] && [ "$f" -eq 0 ]; then f=1; fi
	elif [ "$rc" -eq 77 ]; then
		p=0 f=0 s=1
		VM_DOWN=$(grep -m1 'divertd-vm: SKIP' "$log" | sed 's/^divertd-vm: SKIP: //')
		echo "skip - vm $part: ${VM_DOWN:=the VM did not boot}"
	else
		p=0 f=1 s=0
		echo "not ok - vm $part: no summary line (exit $rc$([ "$rc" = 124 ] && echo ", killed after $TIMEOUT s"))"
	fi
	PASS=$((PASS + p)) FAIL=$((FAIL + f)) SKIP=$((SKIP + s))
	r="=== vm $part: $p passed, $f failed, $s skipped, $t s (exit $rc)"
	echo "$r"
	REPORT+=("$r")
	if [ "$f" -gt 0 ]; then
		grep -E '^not ok' "$log" | sed "s/^/=== vm $part: /"
	fi
done

echo "=== vm: the parts"
printf '%s\n' "${REPORT[@]}"
echo "=== vm: $((SECONDS - start)) s in all"
echo "$PASS passed, $FAIL failed, $SKIP skipped"
[ "$FAIL" -eq 0 ]
