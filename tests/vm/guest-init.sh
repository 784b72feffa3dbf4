#!/bin/sh
# PID 1 of the cgroup v2 kernel that tests/vm boots over this machine's own
# filesystem (user-mode-linux over hostfs, or qemu over virtio-9p): it mounts what a
# distro would, enables the v2 controllers, loads overlay, veth and bridge, runs the
# executor's tests and writes their results to $MLQ_VM_OUT on the host, then powers
# off. Kernel command-line "k=v" words arrive here as environment variables.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
# the host's /dev seen through 9p is not the guest's devices: qemu's guest makes its own
[ "$MLQ_VM_WAY" = qemu ] && mount -t devtmpfs dev /dev
mount -t tmpfs run /run
# the host's result dir may be under /tmp, which a tmpfs is about to cover
mkdir -p /run/mlq-out
mount --bind "${MLQ_VM_OUT:?}" /run/mlq-out
out=/run/mlq-out
# the checkout too may be under /tmp (CI clones anywhere): keep it visible at its path
repo=$(cd "${MLQ_VM_REPO:?}" && pwd -P)
mkdir -p /run/mlq-repo
mount --bind "$repo" /run/mlq-repo
# tmpfs, not the host's /tmp: Unix sockets and FIFOs on a 9p mount fail with ENXIO
mount -t tmpfs tmp /tmp
mkdir -p "$repo"
mount --bind /run/mlq-repo "$repo"
# the user database is the guest's own (an overlay of the host's /etc), so users that
# tests make in here never touch the host's, where other tests may be running
mkdir -p /run/mlq-etc/up /run/mlq-etc/work
mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo "+memory +cpu +pids +io" > /sys/fs/cgroup/cgroup.subtree_control
# modprobe -d wants <dir>/lib/modules/<release>: UML's modules live elsewhere
mods=${MLQ_VM_MODULES:?}
if [ ! -d "$mods/lib/modules/$(uname -r)" ]; then
  mkdir -p /tmp/mods/lib/modules
  ln -s "$mods/$(uname -r)" /tmp/mods/lib/modules/"$(uname -r)"
  mods=/tmp/mods
fi
for m in overlay veth bridge; do modprobe -d "$mods" "$m"; done
# nftables for NAT of bridge jobs, where the kernel has it (else those tests skip)
for m in nf_tables nft_chain_nat nft_masq nft_ct; do modprobe -q -d "$mods" "$m" || true; done
mount -t overlay etc -o lowerdir=/etc,upperdir=/run/mlq-etc/up,workdir=/run/mlq-etc/work /etc
ip link set lo up
{
  echo "way $MLQ_VM_WAY"
  echo "kernel $(uname -r)"
  echo "cgroup.controllers $(cat /sys/fs/cgroup/cgroup.controllers)"
  echo "cgroup.subtree_control $(cat /sys/fs/cgroup/cgroup.subtree_control)"
} > "$out/boot.txt" 2>&1
cd "$repo"
start=$(cut -d' ' -f1 /proc/uptime)
# NAT's tests are left out: they need nf_tables, which user-mode-linux's kernel lacks,
# and NAT does not depend on the cgroup version (they run on the host, in scripts/test)
HOME=/tmp PYTHONDONTWRITEBYTECODE=1 .venv/bin/python -m pytest -q -p no:cacheprovider \
  --basetemp=/tmp/pytest --junitxml="$out/junit.xml" ${MLQ_VM_ARGS:-tests/executor} \
  --ignore=tests/executor/test_nat.py \
  -o junit_family=xunit2 > "$out/pytest.txt" 2>&1
echo $? > "$out/exit_code"
echo "$start $(cut -d' ' -f1 /proc/uptime)" > "$out/uptime"
sync
# qemu runs with -no-reboot, so a reboot ends it whatever the firmware's ACPI;
# user-mode-linux would reboot itself, so it powers off
if [ "$MLQ_VM_WAY" = qemu ]; then reboot -f; else poweroff -f; fi
