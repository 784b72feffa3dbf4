"""The plan: a launch request turned into the flat steps the helper executes.

A version line (``mlq-plan 1``), then one line per step, tab-separated,
``\\``-escaped; the order of the ``mount`` lines is the order of the mounts (the
steps and their fields: docs/executor.md; executor/runtime/plan.c refuses anything
else). Everything the C side needs is spelled out here (paths, flags, numbers), so
the helper never parses JSON or makes a policy decision. The same list, as dicts,
is the launch record (``launch.json``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from mlq.executor import helper
from mlq.executor.cgroups import JobCgroup, V1Driver, V2Driver
from mlq.executor.images import ImageLayers
from mlq.executor.network import JobNetwork
from mlq.executor.request import JOB_TOOL, LaunchRequest
from mlq.executor.security import MASKED_PATHS, READONLY_PATHS, capability_mask

# The minimal /dev every job gets (bound from the host's nodes).
STANDARD_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


@dataclass
class RunPaths:
    run_dir: str
    stdout: str
    stderr: str
    logcut: str  # bytes of each stream dropped so far: {"stdout": N, "stderr": M}
    status: str
    control: str
    rootfs: str
    upper: str
    work: str

    @classmethod
    def of(cls, run_dir: str) -> RunPaths:
        j = os.path.join
        return cls(
            run_dir,
            j(run_dir, "stdout"),
            j(run_dir, "stderr"),
            j(run_dir, "logcut.json"),
            j(run_dir, "status.json"),
            j(run_dir, "control"),
            j(run_dir, "rootfs"),
            j(run_dir, "upper"),
            j(run_dir, "work"),
        )


def _esc(s: object) -> str:
    return str(s).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def mounts(
    req: LaunchRequest, driver: V1Driver | V2Driver, cg: JobCgroup
) -> list[tuple[str, str, str, str, str]]:
    """(source, target, fstype, flags, data) in mount order; targets are inside the root."""
    m: list[tuple[str, str, str, str, str]] = [
        ("proc", "/proc", "proc", "nosuid,nodev,noexec", ""),
        ("tmpfs", "/dev", "tmpfs", "nosuid", "mode=755,size=65536k"),
    ]
    m += [(f"/dev/{d}", f"/dev/{d}", "", "bind", "") for d in STANDARD_DEVICES]
    m += [
        ("devpts", "/dev/pts", "devpts", "nosuid,noexec", "newinstance,ptmxmode=0666,mode=0620"),
        ("shm", "/dev/shm", "tmpfs", "nosuid,nodev,noexec", f"mode=1777,size={req.shm_size}"),
        ("mqueue", "/dev/mqueue", "mqueue", "nosuid,nodev,noexec", ""),
    ]
    # Only this job's devices: the host's other GPUs never appear in its /dev.
    m += [(d.path, d.target(), "", "bind", "") for d in req.devices]
    m.append(("sysfs", "/sys", "sysfs", "ro,nosuid,nodev,noexec", ""))
    m.append(("tmpfs", "/tmp", "tmpfs", "nosuid,nodev", "mode=1777"))  # JOB_PRIVATE_DIRS
    # mlq's own static `mlq checkpoint-done`, in every image: read-only, nosuid, nodev
    # (it runs with the job's privileges, as any of its programs). Before the
    # volumes, so its target is made in the job's own root (the overlay's upper
    # layer, never the host's /, on image: host too) and never in a user's volume.
    m.append((helper.job_tool_path(), JOB_TOOL, "", "bind,ro,nosuid,nodev,file", ""))
    for v in req.mounts:
        # opened as the job's user by the helper; no setuid file or device node in a
        # volume (or in any mount below it) works
        flags = "rbind,asuser,nosuid,nodev" + (",ro" if v.readonly else "")
        m.append((v.source, v.destination, "", flags, ""))
    if req.checkpoint:
        # a bind of the host directory: writes never go through the overlay's upper layer
        m.append((req.checkpoint.source, req.checkpoint.destination, "", "rbind,nosuid,nodev", ""))
    # last: the cgroup filesystem, mounted from inside the job's cgroup namespace (the
    # helper builds everything above while the job is being moved into its cgroup)
    m.append(CGROUPNS_MARK)
    m += driver.job_mounts(cg)
    return m


CGROUPNS_MARK = ("", "", "", "", "")


def build(
    req: LaunchRequest,
    paths: RunPaths,
    driver: V1Driver | V2Driver,
    cg: JobCgroup,
    layers: ImageLayers,
    net: JobNetwork | None,
) -> list[tuple[str, ...]]:
    p = req.process
    lines: list[tuple[str, ...]] = [
        ("rundir", paths.run_dir),
        ("status", paths.status),
        ("control", paths.control),
        ("stdout", paths.stdout),
        ("stderr", paths.stderr),
        ("logcut", paths.logcut),
        # bytes kept of each stream (the newest), in two files of half each; 0: all
        ("log_limit", str(req.log_limit or 0)),
        ("rootfs", paths.rootfs),
        ("overlay", layers.lowerdir, paths.upper, paths.work),
        ("readonly_root", "1" if req.root.readonly else "0"),
        ("hostname", req.hostname),
        ("cwd", p.cwd),
        ("user", str(p.user.uid), str(p.user.gid)),
        # supplementary groups as host gids: set before any user namespace is made
        *(("group", str(g)) for g in p.user.additional_gids),
        ("caps", str(capability_mask(p.capabilities))),
        ("no_new_privs", "1" if p.no_new_privs else "0"),
        ("seccomp", "1" if p.seccomp else "0"),
        ("stop_signal", str(req.stop_signal_number())),
        ("grace_ms", str(int(req.grace_period_s * 1000))),
        ("time_limit_ms", str(int((req.time_limit_s or 0) * 1000))),
    ]
    if req.alive is not None:
        lines.append(("alive", req.alive.path, str(max(1, int(req.alive.stale_s * 1000)))))
    lines += _host_path_rules(req, layers)
    if os.environ.get("MLQ_TRACE"):
        lines.append(("trace", os.environ["MLQ_TRACE"]))
    if req.namespaces.user:
        uid = "\\n".join(
            f"{m.container_id} {m.host_id} {m.size}" for m in req.namespaces.uid_mappings
        )
        gid = "\\n".join(
            f"{m.container_id} {m.host_id} {m.size}" for m in req.namespaces.gid_mappings
        )
        lines.append(("userns", uid, gid))
    if net:
        lines.append(("netns", net.netns_path))
        lines.append(("unlink", net.netns_path))
        lines.append(("unlink", net.lease))
    elif req.network.mode != "host":
        lines.append(("newnet", "1"))
    lines += driver.plan(cg, paths.run_dir)
    for entry in mounts(req, driver, cg):
        if entry == CGROUPNS_MARK:
            lines.append(("cgroupns_mounts",))
        else:
            lines.append(("mount", *entry))
    lines += [
        ("symlink", "/proc/self/fd", "/dev/fd"),
        ("symlink", "/proc/self/fd/0", "/dev/stdin"),
        ("symlink", "/proc/self/fd/1", "/dev/stdout"),
        ("symlink", "/proc/self/fd/2", "/dev/stderr"),
        ("symlink", "pts/ptmx", "/dev/ptmx"),
    ]
    lines += [("mask", x) for x in MASKED_PATHS]
    if layers.kind == "host":
        # the host's / is the image: hide mlq's own state (other runs' logs, requests,
        # checkpoints) behind an empty read-only tmpfs
        lines.append(("mask", os.path.realpath(req.state_dir)))
    lines += [("ropath", x) for x in READONLY_PATHS]
    lines += [("rmtree", x) for x in (paths.upper, paths.work, paths.rootfs)]
    lines += [("arg", a) for a in p.args]
    lines += [("env", e) for e in req.env_list()]
    return lines


# Host paths no user-named path may lead to, whoever asks (plus the state dir).
DENIED_PATHS = ("/proc", "/sys", "/dev")


def _host_path_rules(req: LaunchRequest, layers: ImageLayers) -> list[tuple[str, ...]]:
    """Whom the helper opens user-named paths as, and where they may lead."""
    lines: list[tuple[str, ...]] = []
    user = req.host_user()
    if not user.is_root:
        groups = ",".join(str(g) for g in user.groups)
        lines.append(("opener", str(user.uid), str(user.gid), groups))
    if any(layer.as_user for layer in layers.layers):
        lines.append(("lower_asuser", "1"))
    denied = [*DENIED_PATHS, os.path.realpath(req.state_dir), *req.host_paths.denied]
    lines += [("pathrule", "deny", d) for d in dict.fromkeys(denied)]
    lines += [("pathrule", "allow", a) for a in dict.fromkeys(req.host_paths.allowed)]
    return lines


# The plan format's version: the first line, "mlq-plan 1". The helper reads exactly
# this version and refuses any other (executor/runtime/plan.c, PLAN_VERSION there).
PLAN_VERSION = 1


def render(lines: list[tuple[str, ...]]) -> str:
    out = [f"mlq-plan {PLAN_VERSION}"]
    for line in lines:
        key, *fields = line
        # userns maps carry a literal "\n" escape meant for the C side
        out.append("\t".join([key, *(f if key == "userns" else _esc(f) for f in fields)]))
    return "\n".join(out) + "\n"
