#!/usr/bin/env bash
# run.sh: run a command as root inside a throwaway VM booted with Debian
# 12's stock kernel, and return its output and exit status.
#
#   tests/vm/run.sh [OPTIONS] -- COMMAND [ARGS...]
#
#   --timeout S       the command's time limit in seconds (default 600);
#                     the VM is killed then
#   --boot-timeout S  how long the VM may take to boot (default 120)
#   --mem M           guest memory in MiB (default 512)
#   --cpus N          virtual CPUs (default 1)
#   --accel A         tcg, kvm or auto (default: $DIVERTD_VM_ACCEL, else
#                     auto: kvm where a probe boot with it succeeds, once
#                     per host kernel and qemu, else tcg)
#   --keep DIR        copy the command's output, status, the guest's dmesg
#                     and the serial console log into DIR
#   -q                no progress lines on stderr
#
# The guest sees the host's root filesystem read-only over 9p (virtio)
# under a tmpfs overlay, so every path (the tree, build directories, every
# installed program and library) is the same inside, and writes anywhere
# stay in the VM; /run and /tmp are fresh tmpfs (but /tmp stays the
# host's, seen through the overlay, when the current directory is under
# it).  The command runs as root in the current directory with
# PATH, HOME=/root and TERM=dumb (no other variable of the caller: use
# `env NAME=VALUE COMMAND` to pass one), stdin from /dev/null; its stdout
# and stderr reach this script's stdout as they are written (a writable 9p
# share of a temporary directory carries them, and the exit status).
#
# The kernel: Debian's linux-image-<version>-amd64, the one the
# linux-image-amd64 package names (or $DIVERTD_VM_KERNEL_PKG), fetched with
# `apt-get download` and unpacked with `dpkg-deb -x` into
# $DIVERTD_VM_CACHE (default /var/cache/divertd-vm), never installed: the
# uncompressed vmlinux is taken out of the vmlinuz (it boots through PVH,
# skipping seconds of emulated decompression), busybox's depmod makes the
# modules.dep the package lacks, and an initramfs of busybox-static and
# the virtio, 9p and overlay modules mounts the root (tests/vm/
# initramfs-init, then tests/vm/guest-init.sh in the new root).  All of it
# is made once and reused.  qemu-system-x86 runs with no network card.
#
# Exit status: the command's own, or
#   77   the VM could not be made or did not boot (qemu, busybox-static or
#        the kernel package missing, or no "booted" within --boot-timeout):
#        a skip, with the reason on stderr, never a test result
#   124  the command did not finish within --timeout (the VM was killed)
#   125  the VM ended after booting without the command's exit status (a
#        guest kernel crash: see the console lines printed)
#   2    usage
# qemu is killed by its PID and the temporary directory removed on every
# exit path.
set -u

HERE=$(cd "$(dirname "$0")" && pwd)
TIMEOUT=600
BOOT_TIMEOUT=120
MEM=512
CPUS=1
ACCEL=${DIVERTD_VM_ACCEL:-auto}
KEEP=
QUIET=0
CACHE=${DIVERTD_VM_CACHE:-/var/cache/divertd-vm}

usage() {
	sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'
	exit 2
}

while [ $# -gt 0 ]; do
	case $1 in
	--timeout) TIMEOUT=${2:?}; shift 2 ;;
	--boot-timeout) BOOT_TIMEOUT=${2:?}; shift 2 ;;
	--mem) MEM=${2:?}; shift 2 ;;
	--cpus) CPUS=${2:?}; shift 2 ;;
	--accel) ACCEL=${2:?}; shift 2 ;;
	--keep) KEEP=${2:?}; shift 2 ;;
	-q) QUIET=1; shift ;;
	-h|--help) usage ;;
	--) shift; break ;;
	*) echo "run.sh: unknown option $1" >&2; usage ;;
	esac
done
[ $# -gt 0 ] || usage
for v in "$TIMEOUT" "$BOOT_TIMEOUT" "$MEM" "$CPUS"; do
	case $v in ''|*[!0-9]*) echo "run.sh: not a number: $v" >&2; exit 2 ;; esac
done
case $ACCEL in tcg|kvm|auto) ;; *) echo "run.sh: --accel tcg, kvm or auto" >&2; exit 2 ;; esac

say() { [ "$QUIET" = 1 ] || echo "divertd-vm: $*" >&2; }
skip() { echo "divertd-vm: SKIP: $*" >&2; exit 77; }
now_ms() { date +%s%3N; }
secs() { # secs START_MS: seconds since then, one decimal
	local d=$(( $(now_ms) - $1 ))
	printf '%d.%d' $((d / 1000)) $((d % 1000 / 100))
}

[ "$(id -u)" = 0 ] || skip "needs root (the guest runs the command as root over the host's files)"
QEMU=$(command -v qemu-system-x86_64) ||
	skip "qemu-system-x86_64 not found (apt-get install qemu-system-x86; tests/deps.sh installs it)"
BUSYBOX=$(command -v busybox) ||
	skip "busybox not found (apt-get install busybox-static)"
# the initramfs has no libraries: busybox must be the static build
if ldd "$BUSYBOX" >/dev/null 2>&1; then
	skip "$BUSYBOX is not statically linked (apt-get install busybox-static)"
fi
for t in dpkg-deb xz apt-get flock; do
	command -v "$t" >/dev/null || skip "$t not found"
done

# ---------------------------------------------------------------- the image
# prepare: sets KDIR (the unpacked kernel: vmlinux, root/lib/modules/KVER,
# bin/modprobe) and INITRD; made under a lock, once.
prepare() {
	mkdir -p "$CACHE" || skip "cannot create $CACHE"
	exec 9>"$CACHE/.lock"
	flock -w 900 9 || skip "$CACHE/.lock is held by another run for 15 minutes"

	local pkg=${DIVERTD_VM_KERNEL_PKG:-}
	if [ -z "$pkg" ]; then
		pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
			awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
	fi
	if [ -z "$pkg" ]; then
		apt-get update -qq >/dev/null 2>&1
		pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
			awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
	fi
	if [ -z "$pkg" ]; then
		# offline: the newest kernel already unpacked, if any
		local ready
		ready=$(ls -d "$CACHE"/*/ready 2>/dev/null | sort -V | tail -1)
		[ -n "$ready" ] || skip "cannot find Debian's kernel package (apt-cache depends linux-image-amd64)"
		pkg=linux-image-$(basename "$(dirname "$ready")")
	fi
	local kver=${pkg#linux-image-}
	KVER=$kver
	KDIR=$CACHE/$kver
	if [ ! -e "$KDIR/ready" ]; then
		say "preparing $pkg in $KDIR (once)"
		local t0; t0=$(now_ms)
		local work=$CACHE/.work.$$
		rm -rf "$work" "$KDIR"
		mkdir -p "$work/dl" || skip "cannot write $CACHE"
		if ! (cd "$work/dl" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >download.log 2>&1) &&
		   ! { apt-get update -qq >/dev/null 2>&1 &&
		       (cd "$work/dl" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >download.log 2>&1); }; then
			sed 's/^/divertd-vm: /' "$work/dl/download.log" >&2
			rm -rf "$work"
			skip "apt-get download $pkg failed"
		fi
		local deb; deb=$(ls "$work"/dl/*.deb 2>/dev/null | head -1)
		if [ -z "$deb" ] || ! dpkg-deb -x "$deb" "$work/root"; then
			rm -rf "$work"; skip "cannot unpack $pkg"
		fi
		rm -rf "$work/dl" "$work/root/usr"
		local vmlinuz=$work/root/boot/vmlinuz-$kver
		[ -f "$vmlinuz" ] && [ -d "$work/root/lib/modules/$kver/kernel" ] ||
			{ rm -rf "$work"; skip "$pkg holds no vmlinuz-$kver or modules"; }
		# the vmlinux inside the bzImage: the first xz stream that
		# decompresses to an ELF file (qemu boots it through PVH)
		local off
		for off in $(LC_ALL=C grep -obUa $'\xfd''7zXZ' "$vmlinuz" | cut -d: -f1 | head -5); do
			tail -c +$((off + 1)) "$vmlinuz" | xz -dc --single-stream >"$work/vmlinux" 2>/dev/null
			[ "$(head -c 4 "$work/vmlinux" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] && break
			rm -f "$work/vmlinux"
		done
		if [ ! -s "$work/vmlinux" ]; then
			say "no xz-compressed ELF in $(basename "$vmlinuz"): booting the bzImage"
			cp "$vmlinuz" "$work/vmlinux"
		fi
		rm -f "$vmlinuz"
		"$BUSYBOX" depmod -b "$work/root" "$kver" ||
			{ rm -rf "$work"; skip "busybox depmod failed"; }
		mkdir -p "$work/bin" && ln -s "$BUSYBOX" "$work/bin/modprobe"
		echo "$pkg" >"$work/ready"
		mv "$work" "$KDIR" || skip "cannot move $work to $KDIR"
		say "prepared $pkg in $(secs "$t0") s"
	fi

	# the initramfs, named by what goes into it
	local sum
	sum=$(cat "$HERE/initramfs-init" "$BUSYBOX" | md5sum | cut -c1-12)
	INITRD=$KDIR/initramfs-$sum.cpio
	if [ ! -e "$INITRD" ]; then
		local ird=$KDIR/.initramfs.$$ mdir=lib/modules/$kver
		rm -rf "$ird"; mkdir -p "$ird/bin" "$ird/$mdir"
		cp "$BUSYBOX" "$ird/bin/busybox"
		cp "$HERE/initramfs-init" "$ird/init"
		chmod 755 "$ird/init" "$ird/bin/busybox"
		# the modules /init loads, and every one they depend on
		local dep=$KDIR/root/$mdir/modules.dep want="virtio_pci 9pnet_virtio 9p overlay"
		local files="" m f line
		for m in $want; do
			f=$(grep -E "^([^:]*/)?$m\.ko(\.[a-z]+)?:" "$dep" | head -1 | cut -d: -f1)
			[ -n "$f" ] || { rm -rf "$ird"; skip "module $m not in $pkg"; }
			files="$files $f"
		done
		for _ in 1 2 3 4 5 6 7 8; do # the closure; modules.dep is already transitive
			for f in $files; do
				line=$(grep -E "^$f:" "$dep")
				files="$files ${line#*:}"
			done
			files=$(printf '%s\n' $files | sort -u | tr '\n' ' ')
		done
		: >"$ird/$mdir/modules.dep"
		for f in $files; do
			mkdir -p "$ird/$mdir/$(dirname "$f")"
			cp "$KDIR/root/$mdir/$f" "$ird/$mdir/$f"
			grep -E "^$f:" "$dep" >>"$ird/$mdir/modules.dep"
		done
		(cd "$ird" && find . | LC_ALL=C sort | "$BUSYBOX" cpio -o -H newc >"$INITRD.tmp" 2>/dev/null) &&
			mv "$INITRD.tmp" "$INITRD" || { rm -rf "$ird" "$INITRD.tmp"; skip "cannot make the initramfs"; }
		rm -rf "$ird"
		find "$KDIR" -maxdepth 1 -name 'initramfs-*.cpio' ! -name "${INITRD##*/}" -delete
	fi
	exec 9>&-
}

# ---------------------------------------------------------------- one boot
QPID='' TPID='' RUNDIR=''
cleanup() {
	local p
	for p in $QPID $TPID; do
		kill -TERM "$p" 2>/dev/null
	done
	if [ -n "$QPID" ]; then
		for _ in $(seq 50); do kill -0 "$QPID" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$QPID" 2>/dev/null
		wait "$QPID" 2>/dev/null
	fi
	[ -n "$TPID" ] && { kill -KILL "$TPID" 2>/dev/null; wait "$TPID" 2>/dev/null; }
	QPID='' TPID=''
	[ -n "$RUNDIR" ] && rm -rf "$RUNDIR"
	RUNDIR=
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

console_tail() { # the last lines of the serial console, for a failed boot
	[ -s "$RUNDIR/console.log" ] || { echo "divertd-vm: (the console is empty)" >&2; return; }
	tail -n "${1:-25}" "$RUNDIR/console.log" | tr -d '\r' | sed 's/^/divertd-vm: console: /' >&2
}

keep() {
	[ -n "$KEEP" ] || return 0
	mkdir -p "$KEEP" && cp -f "$RUNDIR"/out/output "$RUNDIR"/out/status "$RUNDIR"/out/dmesg \
		"$RUNDIR"/console.log "$RUNDIR"/qemu.log "$KEEP"/ 2>/dev/null
	return 0
}

# boot ACCEL BOOT_TIMEOUT TIMEOUT STREAM COMMAND...: runs the command in a
# VM; sets RC (the status this script exits with) and BOOTED (0/1).
boot() {
	local accel=$1 boot_timeout=$2 timeout=$3 stream=$4; shift 4
	RC=77 BOOTED=0
	RUNDIR=$(mktemp -d /tmp/divertd-vm.XXXXXX) || skip "mktemp failed"
	local out=$RUNDIR/out
	mkdir "$out"
	cp "$HERE/guest-init.sh" "$out/init2"
	{
		printf 'DVM_MODULES=%s\n' "$KDIR/root/lib/modules/$KVER"
		printf 'DVM_MODPROBE=%s\n' "$KDIR/bin/modprobe"
		# a tmpfs on /tmp, unless the command runs from under /tmp
		case $PWD/ in /tmp/*) echo DVM_TMP=host ;; *) echo DVM_TMP=tmpfs ;; esac
	} >"$out/config"
	{
		printf 'cd %q || { echo "divertd-vm: cannot cd to %q in the guest" >&2; exit 126; }\n' "$PWD" "$PWD"
		printf 'exec'
		printf ' %q' "$@"
		printf '\n'
	} >"$out/cmd"

	# shellcheck disable=SC2054 # commas inside qemu's option values
	local -a q=("$QEMU" -nodefaults -no-user-config -display none -no-reboot
		-M pc -m "$MEM" -smp "$CPUS"
		-kernel "$KDIR/vmlinux" -initrd "$INITRD"
		-append "console=ttyS0 panic=-1 quiet loglevel=4 mitigations=off i8042.noaux i8042.nokbd i8042.nopnp"
		-serial "file:$RUNDIR/console.log"
		-nic none
		-fsdev "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap"
		-device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot
		-fsdev "local,id=out,path=$out,security_model=none,multidevs=remap"
		-device virtio-9p-pci,fsdev=out,mount_tag=out)
	case $accel in
	kvm) q+=(-accel kvm -cpu host) ;;
	*) q+=(-accel 'tcg,thread=multi') ;;
	esac

	local t0; t0=$(now_ms)
	"${q[@]}" </dev/null >"$RUNDIR/qemu.log" 2>&1 &
	QPID=$!
	local deadline=$(( $(date +%s) + boot_timeout ))
	while [ ! -e "$out/booted" ]; do
		if ! kill -0 "$QPID" 2>/dev/null; then
			wait "$QPID" 2>/dev/null
			QPID=
			break
		fi
		[ "$(date +%s)" -lt "$deadline" ] || break
		sleep 0.1
	done
	if [ ! -e "$out/booted" ]; then
		if [ "$stream" != 1 ]; then
			:
		elif [ -n "$QPID" ]; then
			echo "divertd-vm: the VM ($accel) did not boot within $boot_timeout s" >&2
			console_tail
		else
			echo "divertd-vm: qemu ($accel) ended before the VM booted:" >&2
			sed 's/^/divertd-vm: qemu: /' "$RUNDIR/qemu.log" >&2
			console_tail
		fi
		keep
		cleanup
		return
	fi
	BOOTED=1
	BOOT_SECS=$(secs "$t0")
	say "booted $(cat "$out/booted") ($accel) in $BOOT_SECS s; running: $*"

	if [ "$stream" = 1 ]; then
		tail -n +1 -s 0.2 -f --pid="$QPID" "$out/output" &
		TPID=$!
	fi
	t0=$(now_ms)
	deadline=$(( $(date +%s) + timeout ))
	while [ ! -e "$out/status" ] && kill -0 "$QPID" 2>/dev/null &&
		[ "$(date +%s)" -lt "$deadline" ]; do
		sleep 0.2
	done
	if [ -e "$out/status" ]; then
		# the guest resets itself right after writing it
		for _ in $(seq 100); do kill -0 "$QPID" 2>/dev/null || break; sleep 0.1; done
	fi
	kill -TERM "$QPID" 2>/dev/null
	for _ in $(seq 50); do kill -0 "$QPID" 2>/dev/null || break; sleep 0.1; done
	kill -KILL "$QPID" 2>/dev/null
	wait "$QPID" 2>/dev/null
	QPID=
	if [ -n "$TPID" ]; then
		for _ in $(seq 30); do kill -0 "$TPID" 2>/dev/null || break; sleep 0.1; done
		kill -TERM "$TPID" 2>/dev/null
		wait "$TPID" 2>/dev/null
		TPID=
	fi
	RUN_SECS=$(secs "$t0")
	if [ -e "$out/status" ]; then
		RC=$(cat "$out/status")
		case $RC in ''|*[!0-9]*) RC=125 ;; esac
		say "the command exited $RC after $RUN_SECS s"
	elif [ "$(date +%s)" -ge "$deadline" ]; then
		RC=124
		echo "divertd-vm: TIMEOUT: the command did not finish within $timeout s; the VM was killed" >&2
	else
		RC=125
		echo "divertd-vm: the VM ended after $RUN_SECS s without the command's exit status:" >&2
		console_tail 40
	fi
	keep
	cleanup
}

prepare

# the accelerator: KVM only where it has been seen to boot this kernel
if [ "$ACCEL" = auto ]; then
	ACCEL=tcg
	if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
		key=$(printf '%s\n' "$(uname -r)" "$("$QEMU" --version | head -1)" | md5sum | cut -c1-12)
		probe=$KDIR/accel-$key
		if [ ! -s "$probe" ]; then
			say "probing KVM (once for this host kernel and qemu)"
			boot kvm 30 30 0 true 2>/dev/null
			if [ "$BOOTED" = 1 ] && [ "$RC" = 0 ]; then echo kvm >"$probe"; else echo tcg >"$probe"; fi
		fi
		ACCEL=$(cat "$probe")
	fi
fi

boot "$ACCEL" "$BOOT_TIMEOUT" "$TIMEOUT" 1 "$@"
if [ "$BOOTED" != 1 ]; then
	skip "the VM did not boot ($ACCEL); no test ran"
fi
exit "$RC"
