#!/bin/sh
# The namespace side of tests/common/machine.rs: boots the host's own systemd as PID 1 of fresh
# pid, mount, uts, ipc, net and cgroup namespaces, on an overlay of the host's root whose upper
# layer is a tmpfs the test mounted at BASE (so nothing reaches the host's files, and the test
# can list what the machine changed). Run by machine.rs under script(1), whose pty becomes the
# machine's console; machine.rs starts, waits for, enters and powers off the machine.
#
#   boot-systemd.sh outer BASE CGROUP   join CGROUP (a child of a cgroup2 hierarchy), unshare
#   boot-systemd.sh inner BASE          (PID 1 of the new namespaces) mount the root, exec systemd
#
# What keeps the host safe: the root is an overlay (lower: the host's root filesystem alone,
# read only; upper: BASE/upper); /proc/sys, sysfs and /proc/sysrq-trigger are read-only, so
# systemd-sysctl, udev and friends skip themselves; /dev is a tmpfs with a few nodes and a new
# devpts; the network namespace has only lo; CAP_SYS_MODULE, CAP_SYS_TIME, CAP_SYS_RAWIO and
# a few more leave the bounding set. The machine boots keyturn-test.target (basic.target and
# nothing the host image enables for multi-user.target), with timers masked: no apt, no
# database, no getty.
set -eu

case "$1" in
outer)
    base=$2
    cgroup=$3
    echo $$ >"$base/unshare.pid"
    echo $$ >"$cgroup/cgroup.procs"
    exec unshare --pid --fork --kill-child --mount --propagation private --uts --ipc --net --cgroup \
        "$0" inner "$base"
    ;;
inner)
    base=$2
    console=$(tty)
    root=$base/merged
    mkdir -p "$base/upper" "$base/work" "$root"
    mount -t overlay keyturn-test-root -o "lowerdir=/,upperdir=$base/upper,workdir=$base/work" "$root"
    mount -t proc proc "$root/proc"
    mount --bind "$root/proc/sys" "$root/proc/sys"
    mount -o remount,bind,ro "$root/proc/sys"
    if [ -e "$root/proc/sysrq-trigger" ]; then
        mount --bind "$root/proc/sysrq-trigger" "$root/proc/sysrq-trigger"
        mount -o remount,bind,ro "$root/proc/sysrq-trigger"
    fi
    mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys"
    mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$root/sys/fs/cgroup"
    mount -t tmpfs -o mode=755,nosuid,size=4m dev "$root/dev"
    mknod -m 666 "$root/dev/null" c 1 3
    mknod -m 666 "$root/dev/zero" c 1 5
    mknod -m 666 "$root/dev/full" c 1 7
    mknod -m 666 "$root/dev/random" c 1 8
    mknod -m 666 "$root/dev/urandom" c 1 9
    mknod -m 666 "$root/dev/tty" c 5 0
    mkdir -m 755 "$root/dev/pts" "$root/dev/mqueue"
    mkdir -m 1777 "$root/dev/shm"
    mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts "$root/dev/pts"
    ln -s pts/ptmx "$root/dev/ptmx"
    ln -s /proc/self/fd "$root/dev/fd"
    ln -s /proc/self/fd/0 "$root/dev/stdin"
    ln -s /proc/self/fd/1 "$root/dev/stdout"
    ln -s /proc/self/fd/2 "$root/dev/stderr"
    touch "$root/dev/console"
    mount --bind "$console" "$root/dev/console"
    mount -t tmpfs -o mode=755,nosuid,nodev,size=20% run "$root/run"
    mount -t tmpfs -o mode=1777,nosuid,nodev tmp "$root/tmp"

    # The machine's own configuration, in the upper layer only.
    echo keyturn-test >"$root/etc/hostname"
    hostname keyturn-test
    : >"$root/etc/fstab"
    units=$root/etc/systemd/system
    cat >"$units/keyturn-test.target" <<'EOF'
[Unit]
Description=keyturn test machine: basic.target and what a test starts
Requires=basic.target
After=basic.target
AllowIsolate=yes
EOF
    for unit in timers.target systemd-timesyncd.service systemd-pstore.service getty.target \
        console-getty.service; do
        ln -sf /dev/null "$units/$unit"
    done

    # Switch root: into the overlay, with every host mount dropped from this namespace.
    cd "$root"
    mkdir -p .oldroot
    pivot_root . .oldroot
    cd /
    umount -l /.oldroot
    rmdir /.oldroot
    exec setpriv \
        --bounding-set -sys_module,-sys_time,-sys_rawio,-sys_pacct,-wake_alarm,-block_suspend,-mac_admin,-mac_override \
        env -i container=keyturn-test SYSTEMD_COLORS=0 TERM=dumb \
        /lib/systemd/systemd --unit=keyturn-test.target --show-status=no --log-level=info
    ;;
*)
    echo "usage: $0 outer BASE CGROUP | inner BASE" >&2
    exit 2
    ;;
esac
