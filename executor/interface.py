"""The executor's public face: the one seam between the control loop and a node.

``Executor`` is what the daemon's loop drives: start a run from a launch request,
stop or kill it, learn how it ended, re-attach to it after a restart, and ask the
node what it has (its GPUs, a run's live figures, a job's checkpoint mark, a run's
output). ``LocalExecutor`` runs everything on this machine with the runtime helper;
a remote executor (an agent on another node) serves the same calls. Runs are
named by their run id (``<job>.<restart>``), never by a path: where a run's files
live is the executor's business (``rundir.py``).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mlq.executor import execin, network, rundir, runner
from mlq.executor import gpus as gpu_inventory
from mlq.executor.asuser import HostUser
from mlq.executor.cgroups import Stats
from mlq.executor.gpus import NodeGpus, NodeSource
from mlq.executor.imageprep import ImagePrep, Verdict
from mlq.executor.request import LaunchRequest
from mlq.executor.status import Status


@dataclass(frozen=True)
class Started:
    """A run that is running: where its limits are (for the record) and its address.
    ``confirmed`` false: the order went to a node that reports later that it runs."""

    run_id: str
    cgroup: str
    address: str | None = None
    confirmed: bool = True


@dataclass(frozen=True)
class Found:
    """What ``adopt`` found of a run after a restart: it runs (``stop_asked``: a stop
    was already sent to it), it ended (``status``), or it never started
    (``started`` false: nothing of it runs; ``discard`` it and start it again)."""

    running: bool
    started: bool
    status: Status | None = None
    stop_asked: bool = False
    confirmed: bool = True  # false: a remote node has the order and has not said it runs


@dataclass(frozen=True)
class News:
    """What may have changed on a node since the loop last looked: a run that ended
    (``ended``), a checkpoint mark that moved (``marks``). A node that cannot tell
    says both, and the loop asks about each run; one that knows (an agent's node,
    from its reports) lets the loop skip a quiet node's runs."""

    ended: bool = True
    marks: bool = True


class Volumes(Protocol):
    """A node's checkpoint volumes (rundir.LocalVolumes; an agent's: remote.RemoteVolumes)."""

    def list(self, sizes: bool = False) -> list[rundir.VolumeInfo]: ...

    def remove(self, key: str) -> int: ...


class Executor(Protocol):
    @property
    def volumes(self) -> Volumes:
        """Its node's checkpoint volumes, for the daemon's sweep."""
        ...

    def start(self, request: LaunchRequest) -> Started:
        """Launch a run; returns once its command runs, or raises (nothing is left)."""
        ...

    def stop(self, run_id: str, now: bool = False) -> None:
        """The run's stop signal now and SIGKILL at its grace end; ``now``: SIGKILL now."""
        ...

    def poll(self, run_id: str) -> Status | None:
        """How the run ended, or None while it runs. Never blocks."""
        ...

    def adopt(self, run_id: str) -> Found:
        """Re-attach to a run after the caller restarted."""
        ...

    def discard(self, run_id: str) -> list[str]:
        """Remove what a run that never started left; returns what was removed."""
        ...

    def has_run(self, run_id: str) -> bool:
        """Whether the node has (or had: its output is kept) this run."""
        ...

    def has_runs(self, run_ids: list[str]) -> set[str]:
        """Which of these runs the node has or had, in one question."""
        ...

    def news(self) -> News:
        """Whether a run may have ended or a checkpoint mark moved (``News``)."""
        ...

    def locate(self, run_id: str) -> str:
        """Where the run lives, for people (``mlq show``): a path, or node:path."""
        ...

    def stats(self, run_id: str) -> Stats | None:
        """A running run's live figures (the final ones once it ended), or None."""
        ...

    def read_log(
        self, run_id: str, stream: str, offset: int, limit: int
    ) -> tuple[int, bytes, int | None]:
        """(bytes gone before ``offset``'s data, up to ``limit`` bytes, the run's log limit)."""
        ...

    def checkpoint_mark(self, key: str | int) -> float | None:
        """When a job last reported a checkpoint on its volume, or None."""
        ...

    def inventory(self, refresh: bool = False) -> NodeGpus:
        """The node's GPUs and MIG slices (discovered again with ``refresh``)."""
        ...

    def image(self, image: str, user: HostUser) -> Verdict:
        """Whether ``image`` is ready to launch as ``user``; starts preparing it if not."""
        ...

    def carve(self, gpu: int, profile: str, start: int) -> NodeGpus:
        """Create a MIG slice (raises ``MigChangeFailed``); the node's GPUs after."""
        ...

    def destroy(self, gpu: int, start: int, uuid: str | None = None) -> NodeGpus:
        """Destroy a MIG slice mlq carved (raises ``MigChangeFailed``); the GPUs after."""
        ...

    def wait_fds(self) -> list[int]:
        """Descriptors that become readable when one of the runs may have ended."""
        ...


class LocalExecutor:
    """This machine: runs under ``state_dir``, GPUs from ``node`` (a node config)."""

    def __init__(self, state_dir: str | Path, node: NodeSource | None = None) -> None:
        self.state_dir = str(state_dir)
        self.node = node
        self._handles: dict[str, runner.Handle] = {}  # run id -> handle of a live run
        self._pidfds: dict[str, int] = {}  # run id -> pidfd of an adopted supervisor
        self._gpus: NodeGpus | None = None
        self.images = ImagePrep(self.state_dir)
        self.volumes = rundir.LocalVolumes(self.state_dir)  # its checkpoint volumes
        # NAT addresses of runs that ended while no executor watched them go now
        network.reconcile(self.state_dir)

    def _dir(self, run_id: str) -> str:
        return str(rundir.run_dir(self.state_dir, run_id))

    def _ref(self, run_id: str) -> runner.Handle | str:
        return self._handles.get(run_id) or self._dir(run_id)

    def start(self, request: LaunchRequest) -> Started:
        h = runner.start(request)
        self._handles[request.run_id] = h
        return Started(request.run_id, ",".join(sorted(set(h.cgroup_paths.values()))), h.address)

    def stop(self, run_id: str, now: bool = False) -> None:
        if now:
            runner.kill_now(self._ref(run_id))
        else:
            runner.stop(self._ref(run_id))

    def poll(self, run_id: str) -> Status | None:
        status = runner.poll(self._ref(run_id))
        if status is not None:
            self._forget(run_id)
        return status

    def _forget(self, run_id: str) -> None:
        self._handles.pop(run_id, None)
        fd = self._pidfds.pop(run_id, None)
        if fd is not None:
            os.close(fd)

    def adopt(self, run_id: str) -> Found:
        d = self._dir(run_id)
        if not os.path.isdir(d):
            return Found(running=False, started=False)
        started = os.path.exists(os.path.join(d, "supervisor.json"))
        found = runner.adopt(d)
        if isinstance(found, runner.Handle):
            self._handles[run_id] = found
            stop_asked = os.path.exists(os.path.join(d, "control"))
            return Found(running=True, started=True, stop_asked=stop_asked)
        return Found(running=False, started=started, status=found)

    def discard(self, run_id: str) -> list[str]:
        self._forget(run_id)
        return runner.discard(self._dir(run_id))

    def has_run(self, run_id: str) -> bool:
        return os.path.isdir(self._dir(run_id))

    def has_runs(self, run_ids: list[str]) -> set[str]:
        return {r for r in run_ids if self.has_run(r)}

    def news(self) -> News:
        return News()  # supervisors say nothing until asked: poll each run

    def locate(self, run_id: str) -> str:
        return self._dir(run_id)

    def stats(self, run_id: str) -> Stats | None:
        try:
            return runner.stats(self._ref(run_id))
        except Exception:
            return None

    def read_log(
        self, run_id: str, stream: str, offset: int, limit: int
    ) -> tuple[int, bytes, int | None]:
        d = Path(self._dir(run_id))
        skipped, data = rundir.read_stream(d, stream, offset, limit)
        return skipped, data, rundir.log_limit(d)

    def checkpoint_mark(self, key: str | int) -> float | None:
        return rundir.checkpoint_mark(self.state_dir, key)

    def inventory(self, refresh: bool = False) -> NodeGpus:
        if self._gpus is None or refresh:
            self._gpus = gpu_inventory.discover(self.node)
        return self._gpus

    def image(self, image: str, user: HostUser) -> Verdict:
        return self.images.check(image, user)

    def carve(self, gpu: int, profile: str, start: int) -> NodeGpus:
        self._gpus = gpu_inventory.carve(self.inventory(), gpu, profile, start)
        return self._gpus

    def destroy(self, gpu: int, start: int, uuid: str | None = None) -> NodeGpus:
        self._gpus = gpu_inventory.destroy(self.inventory(), gpu, start, uuid=uuid)
        return self._gpus

    def exec_in(
        self,
        run_id: str,
        args: list[str],
        stdio: tuple[int, int, int],
        tty: bool = False,
        env: dict[str, str] | None = None,
        report: int | None = None,
    ) -> subprocess.Popen[bytes]:
        """``args`` inside the running ``run_id``, as its command (mlq exec; execin.py)."""
        return execin.start(self.state_dir, run_id, args, stdio, tty=tty, env=env, report=report)

    def close(self) -> None:
        """Stop preparing images; release mlq's parent cgroups if no run is left under
        them (with no run left, give the supervisors of runs that just ended a moment
        to remove their own cgroups first)."""
        import time

        from mlq.executor.cgroups import parents, release_parents

        self.images.close()
        deadline = time.monotonic() + (0.0 if self._handles else 2.0)
        while True:
            release_parents()
            if not parents() or time.monotonic() >= deadline:
                return
            time.sleep(0.05)

    def set_inventory(self, node_gpus: NodeGpus) -> None:
        """The node as the driver reports it after a change mlq made (a MIG carve)."""
        self._gpus = node_gpus

    def wait_fds(self) -> list[int]:
        fds = [self.images.fd]
        for run_id, h in self._handles.items():
            if h.notify_fd is not None:
                fds.append(h.notify_fd)
                continue
            fd = self._pidfds.get(run_id)
            if fd is None:
                try:
                    fd = self._pidfds[run_id] = os.pidfd_open(h.supervisor_pid)
                except ProcessLookupError:
                    continue  # already gone: the next poll collects it
            fds.append(fd)
        return fds
