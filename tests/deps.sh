#!/usr/bin/env bash
# deps.sh: install what building and testing divertd needs on Debian 12.
# Idempotent; skips apt when everything is present already.
set -eu
PKGS="build-essential cmake pkg-config libnetfilter-queue-dev libmnl-dev
libnfnetlink-dev libnftables-dev libxxhash-dev libsystemd-dev libjansson-dev libcap-ng-dev clang libclang-rt-14-dev nftables iptables iproute2
libcmocka-dev iputils-ping procps python3-scapy libdaq2 libdaq-dev
qemu-system-x86 busybox-static"
missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
	echo "installing:$missing"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# shellcheck disable=SC2086
	apt-get install -y -qq --no-install-recommends $missing
fi
