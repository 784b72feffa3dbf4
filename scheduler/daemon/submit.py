"""Turning a submitted job file into stored jobs: validate, resolve, authorise, expand arrays.

Everything is checked before anything is written; an array is stored in one
transaction, so a refused or invalid submission leaves no row behind.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from types import SimpleNamespace
from typing import Any

from mlq.executor.asuser import HostUser, reachable_as
from mlq.executor.request import CPU_PERIOD_US
from mlq.executor.units import format_size
from mlq.scheduler import grants, states
from mlq.scheduler.daemon.auth import Caller, require_submit
from mlq.scheduler.errors import InvalidInput, Refused
from mlq.scheduler.models import Job
from mlq.scheduler.reasons import never_fits
from mlq.scheduler.snapshot import MigRequest, Node, PendingJob
from mlq.scheduler.spec import (
    JobSpec,
    dependency_pairs,
    parse_array,
    parse_dependencies,
    parse_spec,
    resolve,
    split_throttle,
)
from mlq.scheduler.store import Store


def cgroup_limits(spec: JobSpec) -> dict[str, Any]:
    """The resolved limits in cgroup v2 terms, as ``--dry-run`` shows them."""
    r = spec.resources
    assert r.cpus is not None and r.memory is not None and r.memory_high is not None
    period = CPU_PERIOD_US
    return {
        "memory.max": r.memory,
        "memory.high": r.memory_high,
        "memory.swap.max": r.swap,
        "cpu.max": f"{r.cpus * period // 1000} {period}",
        "pids.max": r.pids,
        "io.weight": r.io_weight,
        "/dev/shm": format_size(r.shm),
    }


def prepare(
    store: Store,
    caller: Caller,
    raw: Any,
    source: str | None,
    array: str | None,
    after: list[int],
    forbidden: tuple[str, ...] = grants.FORBIDDEN_PATHS,
    nodes: list[Node] | None = None,
    submit_dir: str | None = None,
    dependency: str | None = None,
) -> tuple[JobSpec, list[int] | None]:
    """Validate and resolve a submission; raises before anything is stored.

    ``forbidden``: host paths no job may mount (the daemon adds its own dirs);
    ``nodes``: the cluster's nodes, to refuse what none of them could ever hold;
    ``submit_dir``: where it was submitted from (``JobSpec.in_dir``); ``dependency``:
    sbatch's ``--dependency`` text, added to the file's ``depends_on``."""
    spec = parse_spec(raw, source)
    if array is not None:
        try:
            text = array
            if "%" in array:
                text, limit = split_throttle(array)
                spec = spec.model_copy(update={"array_limit": limit})
            indices: list[int] | None = parse_array(text)
        except ValueError as exc:
            why = str(exc).removeprefix(f'array: "{array}" ')
            raise InvalidInput(f'--array: "{array}" {why}') from None
    else:
        indices = spec.array
    if after or dependency:
        try:
            more = parse_dependencies(dependency, where="--dependency") if dependency else []
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        merged = parse_dependencies([*spec.depends_on, *after, *more])
        spec = spec.model_copy(update={"depends_on": merged})
    known = {t.name for t in store.teams()}
    if spec.team not in known:
        raise InvalidInput(
            f'team: "{spec.team}" is not a team of this cluster; known: {", ".join(sorted(known)) or "none"}',
            source,
        )
    require_submit(caller, spec.team, store)
    resolved = resolve(spec, store.classes()).in_dir(submit_dir)
    if resolved.array_limit and indices is None:
        raise InvalidInput(
            f"array_limit: {resolved.array_limit} throttles an array; this job is not one "
            "(array: 0-99%4, or --array 0-99%4)",
            source,
        )
    if resolved.resources.nodes > 1 and indices is not None:
        raise InvalidInput("--array: an array of multi-node jobs is not supported", source)
    if nodes:
        r = resolved.resources
        shape = PendingJob(
            id=0,
            team=spec.team,
            priority_class=resolved.priority_class or spec.kind,
            gpus=r.gpus,
            gpu_model=r.gpu_model,
            mig=MigRequest(r.mig.profile, r.mig.count) if r.mig else None,
            cpus=r.cpus or 0,
            memory=r.memory or 0,
            nodes=r.nodes,
        )
        if (why := never_fits(shape, nodes)) is not None:
            raise InvalidInput(why, source)
    klass = resolved.priority_class or resolved.kind
    beyond = grants.check(
        resolved, spec.team, klass, store.grants(), forbidden, is_root=caller.peer.uid == 0
    )
    if beyond:
        raise Refused("; ".join(beyond))
    # paths as the submitter reaches them: what they cannot reach is as good as absent
    user = HostUser(caller.peer.uid, caller.peer.gid, caller.peer.gids)
    missing_paths = [
        f"volumes[{i}].source: {v.source} {_unreachable(err, user)}"
        for i, v in enumerate(spec.volumes)
        if (err := reachable_as(user, v.source)) is not None
    ]
    if spec.image != "host" and (err := reachable_as(user, spec.image)) is not None:
        missing_paths.append(
            f"image: {spec.image} {_unreachable(err, user)}; use host, a rootfs dir, "
            "a rootfs tarball or an OCI image layout dir"
        )
    for i, d in enumerate(spec.devices):
        if not _is_device(d):
            missing_paths.append(f"devices[{i}]: {d} is not a device node on this node")
    if missing_paths:
        raise InvalidInput(missing_paths, source)
    if spec.depends_on:
        on = sorted({i for _, i in dependency_pairs(spec.depends_on)})
        found = store.existing(on)
        missing = [str(i) for i in on if i not in found]
        if missing:
            raise InvalidInput(f"depends_on: job {', '.join(missing)} does not exist", source)
    return resolved, indices


def check_caps(
    store: Store,
    user: str,
    jobs: int,
    spec_bytes: int,
    queued: tuple[int, int] = (0, 0),
    load: tuple[int, int] | None = None,
) -> None:
    """Refuse a submission that would take ``user`` past the per-user caps.
    ``queued``: what the user's submissions not committed yet add; ``load``: the
    user's committed (active jobs, spec bytes), read here when not given."""
    caps = store.user_caps()
    active, size = load if load is not None else store.user_load(user)
    active, size = active + queued[0], size + queued[1]
    if active + jobs > caps.max_active_jobs:
        raise Refused(
            f"{user} has {active} active jobs and this adds {jobs}; the cap is "
            f"{caps.max_active_jobs} per user (an mlq admin changes it: "
            "mlq user-caps set --max-active-jobs N)"
        )
    if size + spec_bytes > caps.max_spec_bytes:
        raise Refused(
            f"{user}'s active jobs hold {format_size(size)} of job files and this adds "
            f"{format_size(spec_bytes)}; the cap is {format_size(caps.max_spec_bytes)} per user "
            "(an mlq admin changes it: mlq user-caps set --max-spec-bytes SIZE)"
        )


def _unreachable(err: OSError, user: HostUser) -> str:
    if err.errno == errno.ENOENT:
        return "does not exist on this node"
    return f"is not reachable by uid {user.uid} ({err.strerror})"


def _is_device(path: str) -> bool:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode)


def job_rows(
    store: Store, caller: Caller, resolved: JobSpec, indices: list[int] | None
) -> list[dict[str, Any]]:
    """The rows to insert for a submission: the job, or one job per array index."""
    classes = {c.name: c for c in store.classes()}
    now = time.time()
    body = resolved.model_dump_json(exclude={"array"})
    common = dict(
        name=resolved.name,
        team=resolved.team,
        user=caller.user,
        uid=caller.peer.uid,
        gid=caller.peer.gid,
        kind=resolved.kind,
        priority_class=resolved.priority_class or resolved.kind,
        priority=classes[resolved.priority_class or resolved.kind].value,
        state=states.PENDING,
        reason="Dependency" if resolved.depends_on else "",
        spec=body,
        spec_bytes=len(body.encode()),
        submitted_at=now,
        depends_on=json.dumps(resolved.depends_on),
        held=False,
        restart_count=0,
        array_index=None,
    )
    parts = resolved.resources.nodes
    if parts > 1:  # one row a part, rank 0 first: its id is the job's (store.add_job_groups)
        return [common | {"gang_rank": k} for k in range(parts)]
    return [common] if indices is None else [common | {"array_index": i} for i in indices]


def as_jobs(rows: list[dict[str, Any]]) -> list[SimpleNamespace]:
    """Stored rows as objects with every column of the ``Job`` table (unset: None)."""
    columns = [c.name for c in Job.__table__.columns]
    return [SimpleNamespace(**{c: r.get(c) for c in columns}) for r in rows]
