"""mlq.executor: run one job isolated on this node, and report how it ended.

The API a daemon (or ``mlq run``) calls; see docs/executor.md:

    handle = start(request)        # returns once the command runs in its cgroup
    stop(handle_or_run_dir, sig=None, grace_s=None)
    kill_now(handle_or_run_dir)
    status = wait(handle_or_run_dir, timeout=None)   # None if still running
    status = poll(handle_or_run_dir)
    handle_or_status = adopt(run_dir)                # after a daemon restart
    figures = stats(handle_or_run_dir)
"""

from mlq.executor.cgroups import Stats
from mlq.executor.errors import BadRequest, ExecutorError, LaunchError
from mlq.executor.request import (
    Checkpoint,
    Device,
    HostPaths,
    IdMap,
    LaunchRequest,
    Mount,
    Namespaces,
    Network,
    Process,
    Resources,
    Root,
    User,
)
from mlq.executor.runner import Handle, adopt, kill_now, poll, start, stats, stop, wait
from mlq.executor.status import Outcome, Status

__all__ = [
    "BadRequest",
    "Checkpoint",
    "Device",
    "ExecutorError",
    "Handle",
    "HostPaths",
    "IdMap",
    "LaunchError",
    "LaunchRequest",
    "Mount",
    "Namespaces",
    "Network",
    "Outcome",
    "Process",
    "Resources",
    "Root",
    "Stats",
    "Status",
    "User",
    "adopt",
    "kill_now",
    "poll",
    "start",
    "stats",
    "stop",
    "wait",
]
