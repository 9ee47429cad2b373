#!/usr/bin/env bash
# run.sh: builds the libFuzzer targets of tests/fuzz/ with clang, replays
# every regression input, then fuzzes each target for a bounded time.
#
#   bash tests/fuzz/run.sh [--smoke] [TARGET...]           # 15 s a target
#   bash tests/fuzz/run.sh --long [SECONDS] [TARGET...]    # 600 s a target
#   bash tests/fuzz/run.sh --long [SECONDS] --keep-going [TARGET...]
#   bash tests/fuzz/run.sh --seeds                         # rewrite corpus/
#
# Smoke runs fuzz a copy of the checked-in corpus (corpus/ is never
# written); long runs keep theirs in build-fuzz/corpus/TARGET, so the next
# long run goes on from it.  A crash leaves its input in
# build-fuzz/artifacts/TARGET/ and the command to minimize it is printed.
# --keep-going fuzzes even when a regression input still fails, goes on
# after each crash (libFuzzer's -fork=1 -ignore_crashes=1) and sorts what
# it found by place: a survey while known bugs are still open.
# Ends with "N passed, N failed, N skipped", one result per target (built,
# its regressions pass, fuzzed without a crash); exits 1 on a failure.
#
# Environment: CC (default clang), FUZZ_BUILD (default TOP/build-fuzz),
# FUZZ_TIMEOUT (seconds one input may take, default 10).
set -u
cd "$(dirname "$0")" || exit 2
FUZZ=$PWD
TOP=$(cd ../.. && pwd)
OUT=${FUZZ_BUILD:-$TOP/build-fuzz}
CC=${CC:-clang}
TIMEOUT=${FUZZ_TIMEOUT:-10}
MODE=smoke
SECS=15
KEEP_GOING=0
PASS=0 FAIL=0 SKIP=0

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; }

case "${1:-}" in
--smoke) shift ;;
--long)
	MODE=long
	SECS=600
	shift
	if [[ "${1:-}" =~ ^[0-9]+$ ]]; then SECS=$1; shift; fi
	if [ "${1:-}" = --keep-going ]; then KEEP_GOING=1; shift; fi
	;;
--seeds) MODE=seeds; shift ;;
-h|--help) usage; exit 0 ;;
-*) usage >&2; exit 2 ;;
esac

# target -> the src/ files it links (those it #includes are not listed)
# and the pkg-config packages it needs
declare -A SRCS=(
	[fuzz_config]="config.c rules.c"
	[fuzz_wire_write]="cksum.c"
	[fuzz_nfq]="cksum.c"
	[fuzz_rtnl]=""
	[fuzz_client]="control.c counters.c config.c rules.c cksum.c"
	[fuzz_view]="config.c rules.c"
)
declare -A PKGS=(
	[fuzz_config]=""
	[fuzz_wire_write]=""
	[fuzz_view]=""
	[fuzz_nfq]="libnetfilter_queue libmnl"
	[fuzz_rtnl]="libmnl"
	[fuzz_client]="libmnl libxxhash jansson"
)
ALL="fuzz_config fuzz_wire_write fuzz_nfq fuzz_rtnl fuzz_client fuzz_view"
TARGETS=${*:-$ALL}
for t in $TARGETS; do
	[ -n "${SRCS[$t]+x}" ] || { echo "run.sh: no target $t (of: $ALL)" >&2; exit 2; }
done

export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
CFLAGS="-g -O1 -fno-omit-frame-pointer -std=gnu11 -D_GNU_SOURCE -Wall -Wextra
	-I$TOP/src -I$TOP/include -I$FUZZ"
SAN="-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined"

ok()   { PASS=$((PASS + 1)); echo "ok - $*"; }
bad()  { FAIL=$((FAIL + 1)); echo "not ok - $*"; }
skip() { SKIP=$((SKIP + 1)); echo "skip - $*"; }
summary() { echo "$PASS passed, $FAIL failed, $SKIP skipped"; [ "$FAIL" -eq 0 ]; }

if ! command -v "$CC" >/dev/null 2>&1; then
	for t in $TARGETS; do skip "$t: $CC not found"; done
	summary
	exit 0
fi
mkdir -p "$OUT"

if [ "$MODE" = seeds ]; then
	# the seeds of mkseeds.c, and the config files of the tree
	# shellcheck disable=SC2046
	"$CC" -g -O1 -std=gnu11 -D_GNU_SOURCE -Wall -Wextra -I"$TOP/src" \
		-I"$TOP/include" -I"$FUZZ" "$FUZZ/mkseeds.c" -o "$OUT/mkseeds" \
		$(pkg-config --libs libnetfilter_queue libmnl) || exit 1
	rm -rf "$FUZZ"/corpus/fuzz_{config,wire_write,nfq,rtnl,client,view}
	"$OUT/mkseeds" "$FUZZ/corpus" || exit 1
	for f in "$TOP"/tests/golden/*.conf "$TOP"/contrib/nft-rules/*.conf; do
		cp "$f" "$FUZZ/corpus/fuzz_config/$(basename "$(dirname "$f")")-$(basename "$f")"
	done
	du -sh --apparent-size "$FUZZ/corpus"
	exit 0
fi

build() { # build TARGET: OUT/TARGET, or 1 with clang's messages
	local t=$1 srcs=() libs=""
	for s in ${SRCS[$t]}; do srcs+=("$TOP/src/$s"); done
	if [ -n "${PKGS[$t]}" ]; then
		# shellcheck disable=SC2086
		libs=$(pkg-config --libs ${PKGS[$t]}) || return 1
	fi
	# shellcheck disable=SC2086
	"$CC" $CFLAGS $SAN "$FUZZ/$t.c" "${srcs[@]}" $libs -o "$OUT/$t" \
		>"$OUT/$t.build.log" 2>&1 || { sed 's/^/#   /' "$OUT/$t.build.log"; return 1; }
}

# The first frame of a report that is not the sanitizers', libFuzzer's or
# the harness's fakes: where the bug is.
place() {
	grep -E '^ +#[0-9]+ .* in |check failed|runtime error' "$1" |
		grep -vE 'sanitizer|fuzzer::|__interceptor|libc\.so|printf_common|asan_|ubsan|FZ_CHECK|abort|raise|pthread_kill' |
		head -1 | sed -E 's/^ +#[0-9]+ 0x[0-9a-f]+ in //; s/ \(BuildId.*//; s/^.*(check failed: )/\1/'
}

# replay TARGET: every file of regressions/TARGET/ must run clean
replay() {
	local t=$1 f bad=0
	REPLAYED=0
	for f in "$FUZZ/regressions/$t"/*; do
		[ -f "$f" ] || continue
		REPLAYED=$((REPLAYED + 1))
		if ! "$OUT/$t" -timeout="$TIMEOUT" "$f" >"$OUT/$t.replay.log" 2>&1; then
			echo "#   regression $(basename "$f") fails again: $(place "$OUT/$t.replay.log")"
			bad=$((bad + 1))
		fi
	done
	return "$bad"
}

# survey TARGET DIR: the crash inputs in DIR (the first 100), counted by
# place (numbers in a check's message do not count)
survey() {
	local t=$1 dir=$2 f
	find "$dir" -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' \) |
		sort | head -100 | while read -r f; do
		"$OUT/$t" -timeout="$TIMEOUT" "$f" >"$OUT/$t.one.log" 2>&1
		echo "$(basename "$f" | cut -d- -f1): $(place "$OUT/$t.one.log" |
			sed -E '/^check failed/s/[0-9]+/N/g')"
	done | sort | uniq -c | sort -rn | sed 's/^/#   /'
}

for t in $TARGETS; do
	echo "# $t: building"
	if ! build "$t"; then
		bad "$t: does not build"
		continue
	fi
	regress_ok=1
	if ! replay "$t"; then
		regress_ok=0
		if [ "$KEEP_GOING" = 0 ]; then
			bad "$t: a regression input fails again"
			continue
		fi
	fi
	art="$OUT/artifacts/$t"
	rm -rf "$art"
	mkdir -p "$art"
	if [ "$MODE" = long ]; then
		corp="$OUT/corpus/$t"
		mkdir -p "$corp"
		cp -n "$FUZZ/corpus/$t"/* "$corp/" 2>/dev/null
	else
		corp=$(mktemp -d "${TMPDIR:-/tmp}/fuzz-$t.XXXXXX")
		cp "$FUZZ/corpus/$t"/* "$corp/" 2>/dev/null
	fi
	opts=(-max_total_time="$SECS" -timeout="$TIMEOUT" -rss_limit_mb=2560
	      -max_len=70000 -len_control=100 -print_final_stats=1
	      -artifact_prefix="$art/")
	[ -f "$FUZZ/$t.dict" ] && opts+=(-dict="$FUZZ/$t.dict")
	[ "$KEEP_GOING" = 1 ] && opts+=(-fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
	echo "# $t: fuzzing for $SECS s ($REPLAYED regression inputs replayed)"
	log="$OUT/$t.fuzz.log"
	"$OUT/$t" "${opts[@]}" "$corp" >"$log" 2>&1
	rc=$?
	[ "$MODE" = long ] || rm -rf "$corp"
	if [ "$KEEP_GOING" = 1 ]; then
		line=$(grep -E '^#[0-9]+: cov' "$log" | tail -1)
		stats="$(echo "$line" | grep -oE '^#[0-9]+' | tr -d '#') runs,"
		stats+=" $(echo "$line" | grep -oE 'cov: [0-9]+ ft: [0-9]+')"
	else
		stats="$(grep -oE 'number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$') runs,"
		stats+=" $(grep -oE 'average_exec_per_sec: *[0-9]+' "$log" | grep -oE '[0-9]+$') exec/s,"
		stats+=" $(grep -E '^#[0-9]+[[:space:]]' "$log" | grep -oE 'cov: [0-9]+ ft: [0-9]+' | tail -1)"
	fi
	ncrash=$(find "$art" -type f | wc -l)
	if [ "$rc" = 77 ] && grep -q 'needs root' "$log"; then
		skip "$t: needs root"
	elif [ "$KEEP_GOING" = 1 ]; then
		if [ "$ncrash" -gt 0 ] || [ "$regress_ok" = 0 ]; then
			echo "# $t: $ncrash crash inputs in $art, by place (100 at most):"
			survey "$t" "$art"
			bad "$t: $stats, $ncrash crash inputs ($SECS s)"
		else
			ok "$t: $stats ($SECS s, $REPLAYED regressions)"
		fi
	elif [ "$rc" != 0 ]; then
		crash=$(find "$art" -type f | head -1)
		grep -E 'ERROR|check failed|runtime error|SUMMARY' "$log" | head -4 | sed 's/^/#   /'
		bad "$t: crashed after $stats (log $log)"
		if [ -n "$crash" ]; then
			echo "#   input: $crash"
			echo "#   minimize: $OUT/$t -minimize_crash=1 -runs=20000 -artifact_prefix=$art/min- $crash"
			echo "#   then: cp THE_MINIMIZED_FILE $FUZZ/regressions/$t/NAME (and say what it is in regressions/README.md)"
		fi
	else
		ok "$t: $stats ($SECS s, $REPLAYED regressions)"
	fi
done
summary
