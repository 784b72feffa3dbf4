"""The executor's API: start, stop, kill_now, wait, poll, adopt, stats.

``start`` prepares what is cheap to prepare from Python (the request checked,
the image's layers, the cgroup with its limits, the veth), writes the plan and
posix_spawns the compiled helper, which becomes the job's supervisor and reports
"ok" once the command has exec'd inside its namespaces and cgroup. From then on
the supervisor owns the job; this module only talks to it, through the run
directory, so any process can (a daemon that restarted included):

- ``stop``: write ``control`` ("stop SIG GRACE_MS"), then SIGUSR1 the supervisor;
- ``kill_now``: SIGUSR2 (SIGKILL to the whole cgroup now);
- ``wait``/``poll``: a pidfd on the supervisor, then ``status.json``;
- ``adopt``: is the supervisor (pid + start time in ``supervisor.json``) alive?
  if it died without a status, finish its work: kill, clean up, record FAILED.

Set-up is one flat sequence; each undo is registered as it is made and handed
over to the supervisor (``pop_all``) only when the launch fully succeeded.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import select
import shutil
import signal
import stat
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from typing import Any

from mlq.executor import cgroups, devices, helper, images, network, plan
from mlq.executor.asuser import reachable_as
from mlq.executor.cgroups import JobCgroup, Stats
from mlq.executor.errors import BadRequest, ExecutorError, LaunchError
from mlq.executor.request import LaunchRequest
from mlq.executor.status import Outcome, Status, read_status, stats_from_raw, write_status

RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass
class Handle:
    """A running (or finished) run, as seen from any process."""

    run_id: str
    run_dir: str
    supervisor_pid: int
    supervisor_starttime: int
    init_pid: int
    cgroup_version: int
    cgroup_paths: dict[str, str]
    address: str | None = None
    # The launcher's end of the supervisor's report pipe: "done" arrives on it the
    # moment status.json is final. Only in the process that called start().
    notify_fd: int | None = field(default=None, repr=False, compare=False)

    @property
    def stdout(self) -> str:
        return os.path.join(self.run_dir, "stdout")

    @property
    def stderr(self) -> str:
        return os.path.join(self.run_dir, "stderr")


RunRef = Handle | str


def cgroup_name(req: LaunchRequest) -> str:
    """The run's cgroup name: its id plus a tag of its state dir, so two daemons (or
    test suites) on one node that both number their runs "7-0" never collide."""
    tag = hashlib.sha256(os.path.realpath(req.state_dir).encode()).hexdigest()[:8]
    return f"{req.run_id}.{tag}"


# ---------------------------------------------------------------- start


def validate(req: LaunchRequest) -> None:
    """Everything that can be refused before anything is made, in one error."""
    problems = []
    if not RUN_ID_RE.match(req.run_id):
        problems.append(f'run_id: "{req.run_id}" must be letters, digits, "-", "_", "."')
    if not req.process.args:
        problems.append("process.args: empty; name a command")
    if not req.process.cwd.startswith("/"):
        problems.append(f'process.cwd: "{req.process.cwd}" is not absolute')
    for i, d in enumerate(req.devices):
        try:
            st = os.stat(d.path)
        except OSError as exc:
            problems.append(f"devices[{i}]: {d.path} does not exist on this host ({exc.strerror})")
            continue
        if not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            problems.append(f"devices[{i}]: {d.path} is not a device node")
    user = req.host_user()
    for i, m in enumerate(req.mounts):
        # as the job's user: a path they cannot reach is as good as absent to them
        err = reachable_as(user, m.source)
        if err is not None:
            why = (
                "does not exist"
                if err.errno == errno.ENOENT
                else f"{err.strerror} as uid {user.uid}"
            )
            problems.append(f"mounts[{i}].source: {m.source} {why}")
        if not m.destination.startswith("/"):
            problems.append(f"mounts[{i}].destination: {m.destination} is not absolute")
    if req.checkpoint and not req.checkpoint.destination.startswith("/"):
        problems.append(f"checkpoint.destination: {req.checkpoint.destination} is not absolute")
    try:
        req.stop_signal_number()
    except AttributeError:
        problems.append(f"stop_signal: {req.stop_signal} is not a signal name")
    if req.network.mode == "bridge":
        if problem := network.bridge_problem(req.network.bridge):
            problems.append(f'network.bridge: "{req.network.bridge}" {problem}')
        if problem := network.subnet_problem(req.network.subnet):
            problems.append(f'network.subnet: "{req.network.subnet}" {problem}')
    if req.namespaces.user and not req.namespaces.uid_mappings:
        problems.append("namespaces.uid_mappings: a user namespace needs at least one mapping")
    for i, e in enumerate(req.env_list()):
        if "\0" in e:
            problems.append(f"process.env[{i}]: contains a NUL byte")
    if problems:
        raise BadRequest(problems)


def start(req: LaunchRequest) -> Handle:
    """Launch a run; returns once its command runs in its namespaces and cgroup."""
    validate(req)
    driver = cgroups.detect()
    paths = plan.RunPaths.of(req.run_dir)
    try:
        os.makedirs(os.path.dirname(paths.run_dir), exist_ok=True)
        os.mkdir(paths.run_dir)
    except FileExistsError:
        raise ExecutorError(f"start run {req.run_id}: {paths.run_dir} already exists") from None
    with open(os.path.join(paths.run_dir, "request.json"), "w") as f:
        f.write(req.to_json())
    record: dict[str, Any] = {"run_id": req.run_id, "cgroup_version": driver.version}
    step = "image"
    try:
        with ExitStack() as undo:
            # 1. the image's layers, read as the job's user: unpacked once into the cache
            layers = images.resolve(req.root.image, req.state_dir, req.host_user())
            record["image"] = {"kind": layers.kind, "layers": [asdict(x) for x in layers.layers]}
            # 2. the per-run overlay dirs (the supervisor removes them at the end)
            step = "overlay dirs"
            for d in (paths.upper, paths.work, paths.rootfs):
                os.mkdir(d)
            undo.callback(_rmtrees, [paths.upper, paths.work, paths.rootfs])
            # 3. the checkpoint volume outlives runs: made if missing, never removed;
            # the job's user owns it (as mapped on the host), and only they enter it
            if req.checkpoint and not os.path.isdir(req.checkpoint.source):
                os.makedirs(os.path.dirname(req.checkpoint.source), mode=0o700, exist_ok=True)
                os.mkdir(req.checkpoint.source, 0o700)
                os.chown(req.checkpoint.source, *req.host_ids())
            # 4. the cgroup with its limits, before any process exists to escape them
            step = "cgroup"
            cg = driver.create(
                cgroup_name(req), req.resources, devices.rules_for([d.path for d in req.devices])
            )
            undo.callback(_remove_cgroup, driver, cg)
            record["cgroup"] = {"paths": cg.paths, "written": cg.written}
            # 5. the network: a veth on the bridge, in a namespace the job joins
            net = None
            if req.network.mode == "bridge":
                step = "network"
                net = network.setup(req.network, paths.run_dir, req.state_dir)
                undo.callback(network.teardown, net)
                record["network"] = asdict(net)
            # 6. the plan, and the helper that executes it and stays as supervisor
            step = "plan"
            lines = plan.build(req, paths, driver, cg, layers, net)
            plan_path = os.path.join(paths.run_dir, "plan")
            with open(plan_path, "w") as f:
                f.write(plan.render(lines))
            record["mounts"] = [
                dict(zip(("source", "target", "type", "flags", "data"), m, strict=True))
                for m in plan.mounts(req, driver, cg)
                if m != plan.CGROUPNS_MARK
            ]
            # the launch record, before the helper runs: recovery after a lost
            # supervisor finds in it what to remove
            with open(os.path.join(paths.run_dir, "launch.json"), "w") as f:
                f.write(json.dumps(record))
            step = "supervisor"
            sup_pid, init_pid, notify_fd = _spawn(helper.path(), plan_path)
            undo.pop_all()  # the supervisor owns the cleanup from here on
    except BadRequest:
        shutil.rmtree(paths.run_dir, ignore_errors=True)  # refused: nothing is kept
        raise
    except LaunchError as exc:
        _record_failure(paths.run_dir, exc)
        raise
    except (ExecutorError, OSError) as exc:
        err = LaunchError(step, str(exc) if isinstance(exc, ExecutorError) else _oserror(exc))
        _record_failure(paths.run_dir, err)
        raise err from None
    sup = _read_json(os.path.join(paths.run_dir, "supervisor.json")) or {}
    return Handle(
        req.run_id,
        paths.run_dir,
        sup_pid,
        int(sup.get("starttime", 0)),
        init_pid,
        driver.version,
        cg.paths,
        net.address if net else None,
        notify_fd,
    )


def _oserror(exc: OSError) -> str:
    return f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")


def _rmtrees(dirs: list[str]) -> None:
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


def _remove_cgroup(driver: cgroups.CgroupDriver, cg: JobCgroup) -> None:
    with contextlib.suppress(ExecutorError):
        driver.remove(cg)


def _record_failure(run_dir: str, err: LaunchError) -> None:
    now = time.time()
    write_status(
        run_dir,
        {
            "state": Outcome.FAILED.value,
            "reason": "launch",
            "exit_code": -1,
            "signal": None,
            "started_at": now,
            "finished_at": now,
            "duration_s": 0.0,
            "max_memory_bytes": 0,
            "oom_kills": 0,
            "cgroup": {},
            "error": str(err),
        },
    )


# Supervisors this process spawned: reaped whenever the API is used, so a daemon
# that never waits on one does not collect zombies.
_children: set[int] = set()


def _reap_children() -> None:
    for pid in list(_children):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            _children.discard(pid)


def _spawn(binary: str, plan_path: str) -> tuple[int, int, int]:
    """posix_spawn the helper (no fork of this big process); read its one-line report.

    Returns the supervisor's pid, init's host pid and the pipe on which "done" follows.
    """
    _reap_children()
    r, w = os.pipe()
    if w == 3:  # dup2(3, 3) would keep close-on-exec set
        w2 = os.dup(w)
        os.close(w)
        w = w2
    try:
        pid = os.posix_spawn(
            binary,
            [binary, plan_path],
            {},
            file_actions=[(os.POSIX_SPAWN_DUP2, w, 3)],
            setsid=True,
        )
    finally:
        os.close(w)
    _children.add(pid)
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(r, 4096)
        if not chunk:
            break
        data += chunk
    # Only the first line is the report: a job that ends at once may have its "done"
    # in the same read (the notify pipe then reads EOF when the supervisor exits).
    line = data.decode(errors="replace").strip().split("\n", 1)[0]
    if line.startswith("ok "):
        _, sup, init = line.split()
        return int(sup), int(init), r
    os.close(r)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    _children.discard(pid)
    if line.startswith("error "):
        step, _, msg = line[6:].partition(": ")
        raise LaunchError(step, msg)
    raise LaunchError("supervisor", f"the helper ended without a report ({line or 'no output'})")


# ---------------------------------------------------------------- talking to a run


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None


def _run_dir(ref: RunRef) -> str:
    return ref.run_dir if isinstance(ref, Handle) else str(ref)


def _starttime(pid: int) -> tuple[int, str] | None:
    """(start time, state) of a process, or None if there is none."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    rest = text[text.rindex(")") + 2 :].split()
    return int(rest[19]), rest[0]


def _supervisor(run_dir: str) -> tuple[int, int] | None:
    """(pid, start time) of the run's supervisor if it is alive, else None."""
    sup = _read_json(os.path.join(run_dir, "supervisor.json"))
    if not sup:
        return None
    pid, start = int(sup["pid"]), int(sup["starttime"])
    got = _starttime(pid)
    # the same pid with another start time is another process; a zombie is dead
    if got is None or got[0] != start or got[1] in ("Z", "X"):
        _reap(pid)
        return None
    return pid, start


def _reap(pid: int) -> None:
    """Collect the supervisor if it is this process's child (mlq run, tests)."""
    with contextlib.suppress(ChildProcessError, OSError):
        if os.waitpid(pid, os.WNOHANG)[0]:
            _children.discard(pid)


def _version(run_dir: str) -> int:
    launch = _read_json(os.path.join(run_dir, "launch.json")) or {}
    return int(launch.get("cgroup_version") or cgroups.detect().version)


def stop(ref: RunRef, sig: str | int | None = None, grace_s: float | None = None) -> None:
    """Ask the supervisor to stop the run: the stop signal now, SIGKILL at grace end.

    Without arguments the request's stop signal and grace period apply.
    """
    run_dir = _run_dir(ref)
    req = _request(run_dir)
    signum = (
        req.stop_signal_number()
        if sig is None
        else int(sig)
        if isinstance(sig, int)
        else int(getattr(signal, sig))
    )
    grace = req.grace_period_s if grace_s is None else grace_s
    control = os.path.join(run_dir, "control")
    tmp = control + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"stop {signum} {int(grace * 1000)}\n")
    os.replace(tmp, control)
    _signal_supervisor(run_dir, signal.SIGUSR1)


def kill_now(ref: RunRef) -> None:
    """SIGKILL the whole run now (recorded as STOPPED)."""
    _signal_supervisor(_run_dir(ref), signal.SIGUSR2)


def _signal_supervisor(run_dir: str, sig: int) -> None:
    sup = _supervisor(run_dir)
    if sup is None:
        if read_status(run_dir, 1) is None:
            _recover(run_dir, "the supervisor was gone when asked to stop")
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(sup[0], sig)


def _request(run_dir: str) -> LaunchRequest:
    with open(os.path.join(run_dir, "request.json")) as f:
        return LaunchRequest.from_json(f.read())


def wait(ref: RunRef, timeout: float | None = None) -> Status | None:
    """The run's status once it has ended (None if ``timeout`` passes first)."""
    run_dir = _run_dir(ref)
    _reap_children()
    if isinstance(ref, Handle) and ref.notify_fd is not None:
        # the launcher's fast path: "done" (or EOF, if the supervisor died) on the pipe
        p = select.poll()
        p.register(ref.notify_fd, select.POLLIN)
        if not p.poll(None if timeout is None else int(timeout * 1000)):
            return None
        os.close(ref.notify_fd)
        ref.notify_fd = None
    sup = _supervisor(run_dir)
    if sup is not None and not os.path.exists(os.path.join(run_dir, "status.json")):
        pid = sup[0]
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            fd = None
        if fd is not None:
            try:
                p = select.poll()
                p.register(fd, select.POLLIN)
                if not p.poll(None if timeout is None else int(timeout * 1000)):
                    return None
            finally:
                os.close(fd)
        _reap(pid)
    version = _version(run_dir)
    status = read_status(run_dir, version)
    if status is None:
        if not os.path.exists(os.path.join(run_dir, "supervisor.json")) and _launch_young(run_dir):
            return None  # start() has not finished yet in another process
        status = _recover(run_dir, "the supervisor ended without writing a status")
    net = (_read_json(os.path.join(run_dir, "launch.json")) or {}).get("network")
    if net:
        network.release(network.JobNetwork(**net))
    return status


def _launch_young(run_dir: str, seconds: float = 60) -> bool:
    try:
        return time.time() - os.stat(os.path.join(run_dir, "request.json")).st_mtime < seconds
    except FileNotFoundError:
        return False


def poll(ref: RunRef) -> Status | None:
    """The status if the run has ended, else None; never blocks."""
    return wait(ref, timeout=0)


def adopt(run_dir: str) -> Handle | Status:
    """Re-attach to a run after a restart: its Handle if it runs, else its final Status.

    A supervisor that died without writing a status (killed, node crash) is
    finished here: the run's processes are killed, its cgroup, overlay dirs and
    address released, and FAILED is recorded with the reason.
    """
    sup = _supervisor(run_dir)
    status = read_status(run_dir, _version(run_dir))
    if status is not None:
        if sup is None:
            _cleanup(run_dir)  # idempotent: a supervisor that died mid-cleanup
        return status  # (a live supervisor is only finishing its cleanup)
    if (
        sup is None
        and not os.path.exists(os.path.join(run_dir, "supervisor.json"))
        and _launch_young(run_dir, 30)
    ):
        # a launch cut short by the launcher's death may still be coming up: give the
        # helper its moment (milliseconds, normally) to write supervisor.json or fail
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and not os.path.exists(
            os.path.join(run_dir, "supervisor.json")
        ):
            if read_status(run_dir, 1) is not None:
                break
            time.sleep(0.05)
        sup = _supervisor(run_dir)
    if sup is not None:
        launch = _read_json(os.path.join(run_dir, "launch.json")) or {}
        info = _read_json(os.path.join(run_dir, "supervisor.json")) or {}
        cg = launch.get("cgroup", {})
        net = launch.get("network") or {}
        return Handle(
            os.path.basename(run_dir),
            run_dir,
            sup[0],
            sup[1],
            int(info.get("init_pid", 0)),
            int(launch.get("cgroup_version", 0)),
            cg.get("paths", {}),
            net.get("address"),
        )
    status = read_status(run_dir, _version(run_dir))
    if status is not None:
        _cleanup(run_dir)
        return status
    return _recover(run_dir, "the supervisor was lost")


def stats(ref: RunRef) -> Stats:
    """Live resource figures of a running run (the final ones once it has ended)."""
    run_dir = _run_dir(ref)
    launch = _read_json(os.path.join(run_dir, "launch.json")) or {}
    version = int(launch.get("cgroup_version", 0))
    paths = (launch.get("cgroup") or {}).get("paths") or {}
    st = read_status(run_dir, version or 1)
    if st is not None or _supervisor(run_dir) is None or not paths:
        return st.stats if st else Stats()  # ended: the final figures
    raw: dict[str, str] = {}
    for _, v2file, _, c, v1file, _, _ in cgroups.STAT_FILES:
        d = paths.get("unified" if version == 2 else c)
        f = v2file if version == 2 else v1file
        if d and f:
            with contextlib.suppress(OSError), open(os.path.join(d, f)) as fh:
                raw[f] = fh.read()
    high = None
    with contextlib.suppress(OSError, ValueError), open(os.path.join(run_dir, "high_events")) as fh:
        high = int(fh.read())
    return stats_from_raw(version, raw, high)


# ---------------------------------------------------------------- recovery


def _cleanup(run_dir: str) -> list[str]:
    """Remove whatever of the run is left (cgroup, overlay dirs, netns, lease)."""
    errors = []
    launch = _read_json(os.path.join(run_dir, "launch.json")) or {}
    paths = ((launch.get("cgroup") or {}).get("paths") or {}).values()
    for p in dict.fromkeys(paths):
        err = cgroups.kill_and_remove(p)
        if err:
            errors.append(err)
    net = launch.get("network")
    if net:
        with contextlib.suppress(Exception):
            network.teardown(network.JobNetwork(**net))
    _rmtrees([os.path.join(run_dir, d) for d in ("upper", "work", "rootfs")])
    return errors


def _recover(run_dir: str, why: str) -> Status:
    errors = _cleanup(run_dir)
    info = _read_json(os.path.join(run_dir, "supervisor.json")) or {}
    # a launcher that is a child subreaper inherited the orphaned init: collect it
    if info.get("init_pid"):
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(int(info["init_pid"]), 0)
    now = time.time()
    started = float(info.get("started_at", now))
    error = "; ".join([why, *errors])
    data = {
        "state": Outcome.FAILED.value,
        "reason": "lost",
        "exit_code": -1,
        "signal": None,
        "started_at": started,
        "finished_at": now,
        "duration_s": now - started,
        "max_memory_bytes": 0,
        "oom_kills": 0,
        "cgroup": {},
        "error": error,
    }
    try:
        write_status(run_dir, data)
    except OSError as exc:
        # no room for it either (the disk the job filled): the outcome is the same,
        # and the next call finds no status and comes here again
        error += f"; write {os.path.join(run_dir, 'status.json')}: {exc.strerror}"
    return Status(
        Outcome.FAILED,
        -1,
        None,
        now - started,
        0,
        0,
        reason="lost",
        started_at=started,
        finished_at=now,
        error=error,
    )


def discard(run_dir: str) -> list[str]:
    """Remove what a launch that never started left (it was cut short before its
    supervisor existed): its cgroups in every hierarchy, its overlay dirs, its
    network, and the run dir itself. Returns what was found and removed."""
    found: list[str] = []
    try:
        req = _request(run_dir)
    except (OSError, ValueError):
        req = None
    if req is not None:
        found += cgroups.remove_named(cgroup_name(req))
    found += _cleanup(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    return found
