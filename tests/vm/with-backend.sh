#!/usr/bin/env bash
# with-backend.sh: run a namespace suite with divertd forced to one backend.
#
#   tests/vm/with-backend.sh BACKEND BUILD COMMAND [ARGS...]
#
# The suites start "$BUILD/divertd" without -b, so divertd probes the
# kernel (-b auto).  This makes a build directory of its own under /tmp:
# a symbolic link to every file of BUILD, except divertd, which is a
# script running BUILD's divertd with "-b BACKEND" before the suite's own
# options; then it runs COMMAND with BUILD set to that directory.
# (A suite that passes -b itself still gets its own: the last -b wins.)
# Used for the regression suite with -b iptables on the stock kernel,
# where auto picks nftables.
set -u
[ $# -ge 3 ] || { echo "usage: with-backend.sh auto|nftables|iptables BUILD COMMAND..." >&2; exit 2; }
backend=$1 build=$(cd "$2" && pwd) || exit 2
shift 2
[ -x "$build/divertd" ] || { echo "with-backend.sh: no $build/divertd" >&2; exit 2; }
dir=$(mktemp -d /tmp/divertd-build-"$backend".XXXXXX) || exit 1
trap 'rm -rf "$dir"' EXIT
chmod 755 "$dir" # unprivileged users the suites switch to must reach the shim
for f in "$build"/* "$build"/.[!.]*; do
	[ -e "$f" ] || continue
	ln -s "$f" "$dir/"
done
rm -f "$dir/divertd"
printf '#!/bin/bash\nexec %q -b %q "$@"\n' "$build/divertd" "$backend" >"$dir/divertd"
chmod 755 "$dir/divertd"
echo "# divertd forced to -b $backend ($dir/divertd)"
BUILD=$dir "$@"
