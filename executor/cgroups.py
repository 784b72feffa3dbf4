"""cgroups: one driver interface, a v2 and a v1 driver, chosen by detection.

Like youki's libcgroups: ``detect()`` looks at what is mounted (never guesses)
and returns the driver; each driver creates a job's cgroup under the ``mlq``
parent with the limits of a request, lists the files the supervisor must join,
kill through and read at the end, and turns those files into one ``Stats``.
What a run's figures are on each version lives in one table, ``STAT_FILES``; how a
request's limits are written is each driver's ``_values`` (v1 needs values v2 has
not: memsw as memory plus swap, swappiness, blkio's scale). docs/executor.md
prints both.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from typing import Protocol

from mlq.executor import devices as devfilter
from mlq.executor.devices import Rule
from mlq.executor.errors import ExecutorError
from mlq.executor.request import Resources

PARENT = "mlq"


def parent_name() -> str:
    """The parent cgroup of mlq's runs: ``mlq``, or ``MLQ_CGROUP_PARENT`` (each node
    agent's own, so several agents on one test machine keep their runs apart). Read
    when used: the agent sets it after its modules are imported."""
    name = os.environ.get("MLQ_CGROUP_PARENT", PARENT)
    return name if name.replace("-", "").replace("_", "").isalnum() else PARENT  # a name


V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "blkio", "devices")
V2_CONTROLLERS = ("memory", "cpu", "pids", "io")


def _io_weight_v1(weight: int) -> str:
    # v2's io.weight is 1..10000 (default 100); v1's blkio.weight is 10..1000 (default
    # 500). The linear map crun and runc use, inverted.
    return str(10 + (weight - 1) * 990 // 9999)


# What the supervisor copies into status.json at the end and stats() reads live:
# (name in Stats, v2 file, v2 key, v1 controller, v1 file, v1 key, v1 unit divisor).
STAT_FILES: tuple[tuple[str, str, str, str, str, str, int], ...] = (
    ("memory_current", "memory.current", "", "memory", "memory.usage_in_bytes", "", 1),
    ("memory_peak", "memory.peak", "", "memory", "memory.max_usage_in_bytes", "", 1),
    ("memory_anon", "memory.stat", "anon", "memory", "memory.stat", "total_rss", 1),
    ("memory_file", "memory.stat", "file", "memory", "memory.stat", "total_cache", 1),
    ("memory_high_events", "memory.events", "high", "", "", "", 1),  # v1: supervisor's count
    ("memory_max_events", "memory.events", "max", "memory", "memory.failcnt", "", 1),
    ("oom_kills", "memory.events", "oom_kill", "memory", "memory.oom_control", "oom_kill", 1),
    ("cpu_usage_usec", "cpu.stat", "usage_usec", "cpuacct", "cpuacct.usage", "", 1000),
    ("cpu_periods", "cpu.stat", "nr_periods", "cpu", "cpu.stat", "nr_periods", 1),
    ("cpu_throttled_periods", "cpu.stat", "nr_throttled", "cpu", "cpu.stat", "nr_throttled", 1),
    ("cpu_throttled_usec", "cpu.stat", "throttled_usec", "cpu", "cpu.stat", "throttled_time", 1000),
    ("pids_current", "pids.current", "", "pids", "pids.current", "", 1),
    ("pids_max_events", "pids.events", "max", "pids", "pids.events", "max", 1),
)


@dataclass
class Stats:
    """A job's resource figures, the same on both versions (0 where a version lacks one)."""

    memory_current: int = 0
    memory_peak: int = 0
    memory_anon: int = 0  # memory.stat: anonymous memory (v1 total_rss)
    memory_file: int = 0  # memory.stat: page cache (v1 total_cache)
    memory_high_events: int = 0
    memory_max_events: int = 0
    oom_kills: int = 0
    cpu_usage_usec: int = 0
    cpu_periods: int = 0
    cpu_throttled_periods: int = 0
    cpu_throttled_usec: int = 0
    pids_current: int = 0
    pids_max_events: int = 0


@dataclass
class JobCgroup:
    """The cgroup of one job: one directory (v2) or one per controller (v1)."""

    version: int
    name: str
    paths: dict[str, str]  # controller (or "unified") -> directory
    written: list[tuple[str, str]] = field(default_factory=list)  # (file, value), for the record

    @property
    def main(self) -> str:
        return self.paths["unified"] if self.version == 2 else self.paths["memory"]


class CgroupDriver(Protocol):
    """What the executor needs from a cgroup version."""

    version: int

    def create(self, name: str, resources: Resources, devices: list[Rule]) -> JobCgroup: ...
    def remove(self, cg: JobCgroup) -> None: ...
    def plan(self, cg: JobCgroup, run_dir: str) -> list[tuple[str, ...]]: ...
    def job_mounts(self, cg: JobCgroup) -> list[tuple[str, str, str, str, str]]: ...


def _write(path: str, value: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as exc:
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        raise ExecutorError(
            f"write {os.path.basename(path)} in {os.path.dirname(path)}: {name}"
        ) from None


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


_made: set[str] = set()  # parents known to exist, so a launch does not mkdir them again


def _mkdir(path: str) -> None:
    if path in _made and os.path.isdir(path):
        return
    try:
        os.mkdir(path)
        _made.add(path)
    except FileExistsError:
        _made.add(path)
    except OSError as exc:
        raise ExecutorError(f"create cgroup {path}: {exc.strerror}") from None


def _mkdir_job(path: str) -> None:
    """A job's own cgroup. One left empty by a launch that was cut short (the daemon
    killed mid-launch, the same run started again) is taken over; one that still
    holds processes belongs to a live run and is refused."""
    try:
        os.mkdir(path)
        return
    except FileExistsError:
        procs = _read(os.path.join(path, "cgroup.procs"))
        if procs is None or procs.strip():
            raise ExecutorError(
                f"create cgroup {path}: it exists and holds processes of another run"
            ) from None
        try:
            os.rmdir(path)
            os.mkdir(path)
        except OSError as exc:
            raise ExecutorError(f"create cgroup {path}: {exc.strerror}") from None
    except OSError as exc:
        raise ExecutorError(f"create cgroup {path}: {exc.strerror}") from None


def kill_and_remove(path: str) -> str | None:
    """Kill what is left in one cgroup (``cgroup.kill`` where there is one, SIGKILL to
    each process anyway) and remove it, waiting out EBUSY while the last processes
    exit. The one Python teardown of a job's cgroup (the supervisor has its own, in C);
    returns an error, or None once it is gone."""
    import signal
    import time

    procs = os.path.join(path, "cgroup.procs")
    for _ in range(200):
        pids = (_read(procs) or "").split()
        if not pids:
            break
        try:
            _write(os.path.join(path, "cgroup.kill"), "1")
        except ExecutorError:
            pass  # v1: no cgroup.kill
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        time.sleep(0.01)
    for _ in range(200):
        try:
            os.rmdir(path)
            return None
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno != errno.EBUSY:  # EBUSY: the last ones are still exiting
                return f"remove cgroup {path}: {exc.strerror}"
            time.sleep(0.01)
    return f"remove cgroup {path}: still busy"


def remove_named(name: str, root: str = "/sys/fs/cgroup") -> list[str]:
    """Remove every cgroup called ``name`` under mlq's parents (all hierarchies),
    killing what is left in them first; returns the paths removed."""
    removed = []
    for parent in parents(root):
        path = os.path.join(parent, name)
        if os.path.isdir(path) and kill_and_remove(path) is None:
            removed.append(path)
    return removed


def keyed(text: str | None, key: str) -> int:
    """The number for ``key`` in a flat-keyed file, or the file's one number."""
    if text is None:
        return 0
    if not key:
        try:
            return int(text.split()[0])
        except (ValueError, IndexError):
            return 0
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        if k == key:
            return int(v)
    return 0


def _rmdir_all(paths: list[str]) -> None:
    for path in paths:
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ExecutorError(f"remove cgroup {path}: {exc.strerror}") from None


class V2Driver:
    """cgroup v2: one directory, ``cgroup.kill``, ``memory.events``."""

    version = 2

    def __init__(self, root: str) -> None:
        self.root = root
        self.parent = os.path.join(root, parent_name())

    def _ensure_parent(self) -> None:
        if os.path.isdir(self.parent) and "memory" in (
            _read(os.path.join(self.parent, "cgroup.subtree_control")) or ""
        ):
            return
        want = " ".join(f"+{c}" for c in V2_CONTROLLERS if c in self._available())
        _write(os.path.join(self.root, "cgroup.subtree_control"), want)
        _mkdir(self.parent)
        _write(os.path.join(self.parent, "cgroup.subtree_control"), want)

    def _available(self) -> set[str]:
        return set((_read(os.path.join(self.root, "cgroup.controllers")) or "").split())

    def create(self, name: str, resources: Resources, devices: list[Rule]) -> JobCgroup:
        self._ensure_parent()
        path = os.path.join(self.parent, name)
        cg = JobCgroup(2, name, {"unified": path})
        _mkdir_job(path)
        try:
            for file, value in self._values(resources):
                if file == "io.weight" and not os.path.exists(os.path.join(path, file)):
                    continue  # needs an io scheduler with weights; "where present"
                _write(os.path.join(path, file), value)
                cg.written.append((file, value))
            # only the job's devices: a BPF program the cgroup keeps until it is removed
            devfilter.attach_v2(path, devices)
            cg.written.append(("devices (bpf)", " ".join(r.v1() for r in devices)))
        except BaseException:
            self.remove(cg)
            raise
        return cg

    def _values(self, r: Resources) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if r.memory_max:
            out.append(("memory.max", str(r.memory_max)))
            out.append(("memory.high", str(r.effective_memory_high())))
            if r.memory_swap_max is not None:
                out.append(("memory.swap.max", str(r.memory_swap_max)))
        if r.cpu_quota_us:
            out.append(("cpu.max", f"{r.cpu_quota_us} {r.cpu_period_us}"))
        if r.pids_max:
            out.append(("pids.max", str(r.pids_max)))
        if r.io_weight:
            out.append(("io.weight", f"default {r.io_weight}"))
        return out

    def remove(self, cg: JobCgroup) -> None:
        _rmdir_all(list(cg.paths.values()))

    def plan(self, cg: JobCgroup, run_dir: str) -> list[tuple[str, ...]]:
        p = cg.paths["unified"]
        lines: list[tuple[str, ...]] = [
            ("cgroup", p),
            ("cgroup_procs", f"{p}/cgroup.procs"),
            ("oom", f"{p}/memory.events", "oom_kill"),
            ("peak", f"{p}/memory.peak"),
        ]
        if os.path.exists(f"{p}/cgroup.kill"):
            lines.append(("cgroup_kill", f"{p}/cgroup.kill"))
        for file in sorted({row[1] for row in STAT_FILES}):
            lines.append(("stat", file, f"{p}/{file}"))
        return lines

    def job_mounts(self, cg: JobCgroup) -> list[tuple[str, str, str, str, str]]:
        # Mounted from inside the job's cgroup namespace: its root is the job's cgroup.
        return [("cgroup2", "/sys/fs/cgroup", "cgroup2", "ro,nosuid,nodev,noexec", "")]


class V1Driver:
    """cgroup v1: one directory per controller; OOM kills from ``memory.oom_control``."""

    version = 1

    def __init__(self, root: str, controllers: dict[str, str]) -> None:
        self.root = root
        self.mounts = controllers  # controller -> mount point

    def create(self, name: str, resources: Resources, devices: list[Rule]) -> JobCgroup:
        # blkio only matters where it can weigh (a scheduler with blkio.weight); every
        # extra hierarchy joined costs the launch a cgroup migration.
        wanted = {
            c: m
            for c, m in self.mounts.items()
            if c != "blkio" or (resources.io_weight and os.path.exists(f"{m}/blkio.weight"))
        }
        paths = {c: os.path.join(m, parent_name(), name) for c, m in wanted.items()}
        cg = JobCgroup(1, name, {})
        try:
            for c, path in paths.items():
                if path not in cg.paths.values():  # "cpu,cpuacct" share one hierarchy
                    _mkdir(os.path.dirname(path))
                    _mkdir_job(path)
                cg.paths[c] = path
            for controller, file, value in self._values(resources):
                if controller not in cg.paths:
                    continue  # blkio without a weighting scheduler is not joined
                target = os.path.join(cg.paths[controller], file)
                if not os.path.exists(target):
                    continue  # memsw needs swap accounting, blkio.weight a weighted scheduler
                _write(target, value)
                cg.written.append((f"{controller}/{file}", value))
            # only the job's devices: deny all, then allow each rule
            for file, value in [
                ("devices.deny", "a"),
                *(("devices.allow", r.v1()) for r in devices),
            ]:
                _write(os.path.join(cg.paths["devices"], file), value)
                cg.written.append((f"devices/{file}", value))
        except BaseException:
            self.remove(cg)
            raise
        return cg

    def _values(self, r: Resources) -> list[tuple[str, str, str]]:
        out: list[tuple[str, str, str]] = []
        if r.memory_max:
            out.append(("memory", "memory.limit_in_bytes", str(r.memory_max)))
            # v1 has no throttling mark: the soft limit is the reclaim target under
            # host pressure; the supervisor counts crossings of it as "high" events.
            out.append(("memory", "memory.soft_limit_in_bytes", str(r.effective_memory_high())))
            if r.memory_swap_max is not None:
                # memsw counts memory + swap: the v2 swap.max plus the memory limit
                out.append(
                    ("memory", "memory.memsw.limit_in_bytes", str(r.memory_max + r.memory_swap_max))
                )
            out.append(("memory", "memory.swappiness", "0" if not r.memory_swap_max else "60"))
        if r.cpu_quota_us:
            out.append(("cpu", "cpu.cfs_period_us", str(r.cpu_period_us)))
            out.append(("cpu", "cpu.cfs_quota_us", str(r.cpu_quota_us)))
        if r.pids_max:
            out.append(("pids", "pids.max", str(r.pids_max)))
        if r.io_weight:
            out.append(("blkio", "blkio.weight", _io_weight_v1(r.io_weight)))
        return out

    def remove(self, cg: JobCgroup) -> None:
        _rmdir_all(list(dict.fromkeys(cg.paths.values())))

    def plan(self, cg: JobCgroup, run_dir: str) -> list[tuple[str, ...]]:
        mem = cg.paths["memory"]
        lines: list[tuple[str, ...]] = [("cgroup", p) for p in dict.fromkeys(cg.paths.values())]
        lines += [
            ("self_join", "1"),  # init writes "0" to each tasks file: no grace period
            ("cgroup_procs", f"{mem}/cgroup.procs"),
            ("oom", f"{mem}/memory.oom_control", "oom_kill"),
            ("peak", f"{mem}/memory.max_usage_in_bytes"),
        ]
        high = dict(cg.written).get("memory/memory.soft_limit_in_bytes")
        if high:
            lines.append(
                (
                    "v1_high",
                    f"{mem}/memory.usage_in_bytes",
                    f"{mem}/cgroup.event_control",
                    high,
                    os.path.join(run_dir, "high_events"),
                )
            )
        for file, c in dict.fromkeys((row[4], row[3]) for row in STAT_FILES if row[3] in cg.paths):
            lines.append(("stat", file, f"{cg.paths[c]}/{file}"))
        return lines

    def job_mounts(self, cg: JobCgroup) -> list[tuple[str, str, str, str, str]]:
        out = [("tmpfs", "/sys/fs/cgroup", "tmpfs", "nosuid,nodev,noexec", "mode=755,size=64k")]
        hierarchies: dict[str, list[str]] = {}
        for c in cg.paths:
            hierarchies.setdefault(self.mounts[c], []).append(c)
        for point, controllers in hierarchies.items():
            name = os.path.basename(point)
            opts = ",".join(controllers)
            out.append(
                ("cgroup", f"/sys/fs/cgroup/{name}", "cgroup", "ro,nosuid,nodev,noexec", opts)
            )
        out.append(("", "/sys/fs/cgroup", "remount", "ro,nosuid,nodev,noexec", "mode=755,size=64k"))
        return out


def _mounts() -> list[tuple[str, str, str]]:
    out = []
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 4:
                out.append((parts[1].replace("\\040", " "), parts[2], parts[3]))
    return out


def detect(root: str = "/sys/fs/cgroup") -> CgroupDriver:
    """The driver for what this host mounts: cgroup2 with its controllers, else v1."""
    mounts = _mounts()
    for point, fstype, _ in mounts:
        if fstype == "cgroup2" and point.startswith(root):
            have = set((_read(os.path.join(point, "cgroup.controllers")) or "").split())
            if {"memory", "cpu", "pids"} <= have:
                return V2Driver(point)
    v1: dict[str, str] = {}
    for point, fstype, opts in mounts:
        if fstype == "cgroup" and point.startswith(root):
            for c in V1_CONTROLLERS:
                if c in opts.split(","):
                    v1.setdefault(c, point)
    if {"memory", "cpu", "pids", "devices"} <= set(v1):
        return V1Driver(root, v1)
    raise ExecutorError(
        f"no usable cgroups under {root}: need cgroup2 with memory, cpu and pids enabled, "
        "or the v1 memory, cpu, pids and devices hierarchies"
    )


def parents(root: str = "/sys/fs/cgroup") -> list[str]:
    """mlq's parent cgroups that exist now."""
    return [
        os.path.join(mount, parent_name())
        for mount, fstype, _ in _mounts()
        if fstype in ("cgroup", "cgroup2")
        and mount.startswith(root)
        and os.path.isdir(os.path.join(mount, parent_name()))
    ]


def release_parents(root: str = "/sys/fs/cgroup") -> list[str]:
    """Remove mlq's parent cgroups where no job cgroup is left under them.

    The parent is made on a node's first launch; whoever stops launching (the
    daemon at shutdown, ``mlq run`` at its end, a test session) releases it, so an
    idle node keeps nothing of mlq. A parent that still holds a job is left alone
    (rmdir refuses a non-empty cgroup), and a later launch makes it again.
    Returns the parents removed.
    """
    removed = []
    for parent in parents(root):
        try:
            os.rmdir(parent)
        except OSError:
            continue  # absent, or still in use
        _made.discard(parent)
        removed.append(parent)
    return removed
