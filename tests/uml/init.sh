#!/bin/sh
# PID 1 of a user-mode-linux kernel booted by tests/uml/test_cgroup_v2.py: a real
# cgroup v2 machine over the host's own filesystem (hostfs), so the project's venv
# is here. It mounts what a distro would, enables the v2 controllers, loads the
# overlay/veth/bridge modules, runs the executor's tests and writes their results
# to $MLQ_UML_OUT on the host, then powers off. Kernel command-line "k=v" words
# arrive here as environment variables.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs run /run
# the host's result dir may be under /tmp, which a tmpfs is about to cover
mkdir -p /run/mlq-out
mount --bind "${MLQ_UML_OUT:?}" /run/mlq-out
out=/run/mlq-out
# the checkout too may be under /tmp (CI clones anywhere): keep it visible at its path
repo=$(cd "${MLQ_UML_REPO:?}" && pwd -P)
mkdir -p /run/mlq-repo
mount --bind "$repo" /run/mlq-repo
mount -t tmpfs tmp /tmp
mkdir -p "$repo"
mount --bind /run/mlq-repo "$repo"
mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo "+memory +cpu +pids +io" > /sys/fs/cgroup/cgroup.subtree_control
mkdir -p /tmp/mods/lib/modules
ln -s /usr/lib/uml/modules/"$(uname -r)" /tmp/mods/lib/modules/"$(uname -r)"
for m in overlay veth bridge; do modprobe -d /tmp/mods "$m"; done
ip link set lo up
{
  echo "kernel $(uname -r)"
  echo "cgroup.controllers $(cat /sys/fs/cgroup/cgroup.controllers)"
  echo "cgroup.subtree_control $(cat /sys/fs/cgroup/cgroup.subtree_control)"
} > "$out/boot.txt" 2>&1
cd "${MLQ_UML_REPO:?}"
HOME=/tmp PYTHONDONTWRITEBYTECODE=1 .venv/bin/python -m pytest -q -p no:cacheprovider \
  --basetemp=/tmp/pytest --junitxml="$out/junit.xml" ${MLQ_UML_ARGS:-tests/executor} \
  -o junit_family=xunit2 > "$out/pytest.txt" 2>&1
echo $? > "$out/exit_code"
sync
poweroff -f
