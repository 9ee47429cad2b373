#!/usr/bin/env bash
# run-all.sh: every test, the way CI runs it (as root, on Debian 12).
#
#   1. installs the build and test dependencies (tests/deps.sh);
#   2. builds with -Werror and runs the unit tests (ctest: cmocka);
#   3. checks the golden rulesets against the kernel's own parsers;
#   4. runs the network-namespace suites on real packets, and the
#      libFuzzer targets for a bounded time (tests/fuzz/run.sh --smoke);
#   5. builds again with AddressSanitizer + UndefinedBehaviorSanitizer and
#      runs the unit tests and the namespace suites under them;
#   6. runs the namespace suites again on Debian 12's stock kernel, in
#      throwaway VMs (tests/vm/suites.sh; DIVERTD_VM=0 leaves them out).
# Prints each part's time, then a table of them, and ends with one line
# "N passed, N failed, N skipped" over all of it; exits nonzero on any
# failure.
set -u
cd "$(dirname "$0")/.."
TOP=$PWD
PASS=0 FAIL=0 SKIP=0
TIMES=()	# "SECONDS  NAME" of each part

# timed NAME T0: the part NAME, begun at T0, took this long
timed() {
	local t=$((SECONDS - $2))
	echo "=== time: $1: $t s"
	TIMES+=("$(printf '%6d s  %s' "$t" "$1")")
}

bash tests/deps.sh || { echo "0 passed, 1 failed"; exit 1; }

step() { # step NAME COMMAND...: counts a whole step as one result
	local name=$1 t0=$SECONDS; shift
	echo "=== $name"
	"$@"
	case $? in
	0) PASS=$((PASS + 1)); echo "=== ok: $name" ;;
	77) SKIP=$((SKIP + 1)); echo "=== skipped: $name" ;;
	*) FAIL=$((FAIL + 1)); echo "=== FAILED: $name" ;;
	esac
	timed "$name" "$t0"
}

# suite NAME SCRIPT ENV...: a namespace suite; adds up its own counts
suite() {
	local name=$1 script=$2 t0=$SECONDS; shift 2
	local log; log=$(mktemp)
	echo "=== $name"
	env "$@" bash "$script" 2>&1 | tee "$log"
	local line; line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$log" | tail -1)
	if [ -z "$line" ]; then
		FAIL=$((FAIL + 1)); echo "=== FAILED: $name (no summary)"
	else
		read -r p _ f _ s _ <<<"$(echo "$line" | tr -d ',')"
		PASS=$((PASS + p)); FAIL=$((FAIL + f)); SKIP=$((SKIP + ${s:-0}))
	fi
	rm -f "$log"
	timed "$name" "$t0"
}

build() { # build DIR EXTRA_CMAKE_ARGS...
	local dir=$1; shift
	cmake -S "$TOP" -B "$dir" -DDIVERTD_WERROR=ON "$@" >/dev/null &&
	cmake --build "$dir" -j"$(nproc)"
}

units() { (cd "$1" && ctest --output-on-failure); }

step "build" build "$TOP/build"
step "unit tests" units "$TOP/build"

install_layout() { # the contract: P/sbin, P/lib, P/include
	local p; p=$(mktemp -d)
	cmake --install "$TOP/build" --prefix "$p" >/dev/null &&
	test -x "$p/sbin/divertd" && test -e "$p/lib/libdivert_shim.so" &&
	test -f "$p/include/divert.h" &&
	echo '#include <divert.h>
int main(void) { return PF_DIVERT == 44 && IPPROTO_DIVERT == 258 ? 0 : 1; }' |
		cc -x c - -I"$p/include" -o "$p/t" && "$p/t" || { rm -rf "$p"; return 1; }
	rm -f "$p/t"
	# the README's table of installed files is the install, no more, no less
	local documented installed
	documented=$(grep -o '^| .*`P/[^`]*`' README.md | grep -o '`P/[^`]*`' |
		tr -d '`' | grep -E '^P/[A-Za-z0-9_./{},-]+$' |
		while read -r pat; do eval "printf '%s\\n' $pat"; done | sort)
	installed=$(cd "$p" && find . -type f -o -type l | sed 's|^\.|P|' | sort)
	rm -rf "$p"
	if [ "$documented" != "$installed" ]; then
		echo "README's table and the install differ (< README, > installed):"
		diff <(echo "$documented") <(echo "$installed")
		return 1
	fi
}
step "cmake --install layout" install_layout
step "golden rulesets load in the kernel" bash tests/golden/check-syntax.sh
for s in tests/netns/*.sh; do
	[ "$(basename "$s")" = lib.sh ] && continue
	suite "$(basename "$s" .sh)" "$s" BUILD="$TOP/build"
done

# libFuzzer targets (clang, ASan+UBSan): each replays its regression
# inputs and fuzzes for a bounded time (tests/fuzz/README.md)
suite "fuzz (smoke)" tests/fuzz/run.sh

ASAN_LIB=$(gcc -print-file-name=libasan.so)
step "build (ASan+UBSan)" build "$TOP/build-asan" -DDIVERTD_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
step "unit tests (ASan+UBSan)" units "$TOP/build-asan"
for s in tests/netns/*.sh; do
	[ "$(basename "$s")" = lib.sh ] && continue
	suite "$(basename "$s" .sh) (ASan+UBSan)" "$s" BUILD="$TOP/build-asan" \
		PRELOAD="$ASAN_LIB $TOP/build-asan/libdivert_shim.so" \
		ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:exitcode=66 \
		UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
done

# Debian 12's stock kernel (6.1: nft queue, so the nftables backend users
# get) in throwaway VMs, one per part: the golden nft files with their
# queue statements, every namespace suite with the backend divertd picks
# there, the regression suite with -b iptables (tests/vm/suites.sh, which
# prints each part's time; docs/TESTING-VM.md).  A VM that cannot boot is
# a skip with its reason, never a pass.  DIVERTD_VM=0 leaves them out
# (said, and counted as one skip).
if [ "${DIVERTD_VM:-1}" = 0 ]; then
	echo "skip - VM suites on Debian 12's stock kernel: DIVERTD_VM=0"
	SKIP=$((SKIP + 1))
else
	suite "VM suites (Debian 12's stock kernel)" tests/vm/suites.sh BUILD="$TOP/build"
fi

echo "=== time: the parts"
printf '%s\n' "${TIMES[@]}"
echo "=== time: ${SECONDS} s in all"
echo "$PASS passed, $FAIL failed, $SKIP skipped"
[ "$FAIL" -eq 0 ]
