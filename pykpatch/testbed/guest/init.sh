#!/bin/sh
# pykpatch fast-boot init: the guest's PID 1 when booted without systemd.
# It mounts what a shell and the kernel's livepatch interfaces need, loads
# the virtio console driver and hands over to the agent.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /run /tmp
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -o remount,rw /
hostname pykpatch-guest
modprobe virtio_console
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
exec /usr/bin/python3 /usr/local/sbin/pykpatch-agent
