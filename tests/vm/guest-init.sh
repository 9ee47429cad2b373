#!/bin/sh
# guest-init.sh: the second stage of the divertd test VM, PID 1 in the
# guest.  tests/vm/run.sh copies it into the run's writable 9p share as
# "init2"; the initramfs (tests/vm/initramfs-init) has mounted the host's
# root read-only under a tmpfs overlay as /, a tmpfs on /run and that share
# on /run/divertd-vm, then switched root to run this with the host's
# /bin/sh.  Here:
#   - /proc, /sys, /dev (devpts, /dev/shm), cgroup2, a tmpfs on /tmp (but
#     when the command's directory is under /tmp, /tmp stays the host's
#     seen through the overlay); the rest of the tree is the host's,
#     writable through the overlay (writes stay in the VM);
#   - the stock kernel's modules (unpacked on the host by run.sh) bound on
#     /lib/modules/$(uname -r), and kernel.modprobe set to busybox's
#     modprobe, so netfilter modules load on demand as on any Debian host;
#     nf_conntrack_max as on a host with more than 1 GiB (65536);
#   - "booted" written, then the command (the share's "cmd", a bash script
#     run.sh wrote) with stdout and stderr into the share's "output";
#   - its exit status into "status", the kernel log into "dmesg", and the
#     VM reset (qemu runs with -no-reboot, so it exits).
OUT=/run/divertd-vm
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
HOME=/root
TERM=dumb
export PATH HOME TERM

say() { echo "divertd-vm: $*" >/dev/console; }

halt_vm() {
	sync
	echo 1 >/proc/sys/kernel/sysrq
	echo b >/proc/sysrq-trigger
	sleep 30
}

# DVM_MODULES (host path of the unpacked modules), DVM_MODPROBE, DVM_TMP
. "$OUT/config" || { say "no config"; halt_vm; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts /dev/pts
ln -sf pts/ptmx /dev/ptmx 2>/dev/null
# what udev would add: bash's <(...) needs /dev/fd
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
[ "${DVM_TMP:-tmpfs}" = tmpfs ] && mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
mkdir -p /run/lock /run/netns
chmod 1777 /run/lock

kver=$(uname -r)
mkdir -p "/lib/modules/$kver"
if ! mount --bind "$DVM_MODULES" "/lib/modules/$kver"; then
	say "boot failed: cannot bind $DVM_MODULES on /lib/modules/$kver"
	halt_vm
fi
echo "$DVM_MODPROBE" >/proc/sys/kernel/modprobe
# the conntrack table of a machine with more than 1 GiB: at 512 MiB the
# kernel sizes it to 4096 entries, and every packet held in an NFQUEUE
# keeps an unconfirmed entry, so a queue past 4096 packets is cut short
# by "nf_conntrack: table full" drops (faults.sh fills one to 16384)
"$DVM_MODPROBE" nf_conntrack 2>/dev/null &&
	echo 65536 >/proc/sys/net/netfilter/nf_conntrack_max
hostname divertd-vm
ip link set lo up 2>/dev/null

: >"$OUT/output"
echo "$kver" >"$OUT/booted"
/bin/bash "$OUT/cmd" >"$OUT/output" 2>&1 </dev/null
echo $? >"$OUT/status.new"
dmesg >"$OUT/dmesg" 2>&1
mv "$OUT/status.new" "$OUT/status"
halt_vm
