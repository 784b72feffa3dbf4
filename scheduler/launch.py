"""From a resolved job file to the executor's launch request.

The executor knows nothing of teams, classes or quotas; this is where a job
(already resolved against its class's defaults by ``spec.resolve``) becomes the
OCI-like request for one run: limits in kernel units, the job's environment
with ``MLQ_*`` and the GPU variables, its devices, its checkpoint volume under
the state directory, and the user it runs as. The daemon and ``mlq run`` both
call ``build_launch_request``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlq.executor.request import LaunchRequest
    from mlq.scheduler.spec import JobSpec

# A job that asks for a user namespace as root gets this subordinate range, never uid 0.
SUBORDINATE_BASE, SUBORDINATE_SIZE = 100_000, 65_536


def build_launch_request(
    spec: JobSpec,
    *,
    job_id: int | str,
    restart_count: int = 0,
    run_id: str | None = None,
    uid: int = 0,
    gid: int = 0,
    state_dir: str,
    devices: Sequence[str | tuple[str, str]] = (),
    visible_devices: str | None = None,
    extra_env: dict[str, str] | None = None,
    checkpoint_key: str | int | None = None,
    bridge: str | None = None,
    bridge_subnet: str | None = None,
    nat: bool = True,
    additional_gids: Sequence[int] = (),
    volume_paths: Sequence[str] = (),
    denied_paths: Sequence[str] = (),
    log_limit: int | None = None,
    user_name: str = "",
    home: str = "",
) -> LaunchRequest:
    """The request for one run of ``spec`` (resolved: limits filled from its class).

    ``devices`` are host device node paths, or (host path, path in the job) pairs as
    GPU wiring gives them (``DeviceNode.host_path, .path``); ``visible_devices``
    is what CUDA_VISIBLE_DEVICES/NVIDIA_VISIBLE_DEVICES say (indices or MIG-<uuid>).
    ``user_name`` and ``home`` (the submitter's, from passwd) give the job ``USER``,
    ``LOGNAME`` and ``HOME`` as a login would; the job file's env wins over them.
    On an image other than host, HOME is ``/`` (``/root`` as a user namespace's
    root), as Docker sets it for a user the image does not list.
    ``additional_gids`` are the user's supplementary groups (host gids);
    ``volume_paths`` where its volumes may lead (empty: anywhere its user reaches)
    and ``denied_paths`` where no user-named path may lead, both checked by the
    executor on the path as resolved with the user's credentials. ``bridge`` and
    ``bridge_subnet``: the node's bridge for ``network: bridge`` (its config's
    ``node.bridge``; None: the executor's default); ``nat``: whether such a job reaches
    beyond the node (its class's ``nat``).
    """
    from mlq.executor.request import (
        CPU_PERIOD_US,
        JOB_TOOL,
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
    from mlq.executor.rundir import checkpoint_dir

    r = spec.resources
    env: dict[str, str] = {}
    if user_name:
        env |= {"USER": user_name, "LOGNAME": user_name}
    if spec.image == "host":
        env["HOME"] = home or "/"
    else:
        env["HOME"] = "/root" if spec.security.user_namespace or uid == 0 else "/"
    env.update({k: str(v) for k, v in spec.env.items()})
    env.update(
        {
            "MLQ_JOB_ID": str(job_id),
            "MLQ_TEAM": spec.team,
            "MLQ_RESTART_COUNT": str(restart_count),
        }
    )
    checkpoint = None
    if spec.checkpoint is not None:
        source = checkpoint_dir(state_dir, checkpoint_key if checkpoint_key is not None else job_id)
        checkpoint = Checkpoint(source=source, destination=spec.checkpoint.target)
        env["MLQ_CHECKPOINT_DIR"] = spec.checkpoint.target
    if visible_devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible_devices
        env["NVIDIA_VISIBLE_DEVICES"] = visible_devices
    env.update(extra_env or {})

    namespaces = Namespaces()
    user = submitter = User(uid=uid, gid=gid, additional_gids=list(additional_gids))
    if spec.security.user_namespace:
        # root inside is the submitting user outside (a subordinate range for root)
        host_uid, host_gid, size = (
            (SUBORDINATE_BASE, SUBORDINATE_BASE, SUBORDINATE_SIZE) if uid == 0 else (uid, gid, 1)
        )
        namespaces = Namespaces(
            user=True,
            uid_mappings=[IdMap(0, host_uid, size)],
            gid_mappings=[IdMap(0, host_gid, size)],
        )
        user = User(uid=0, gid=0, additional_gids=list(additional_gids))

    network = Network(mode=spec.network, nat=nat)
    if bridge:
        network.bridge = bridge
    if bridge_subnet:
        network.subnet = bridge_subnet
    return LaunchRequest(
        run_id=run_id or f"{job_id}-{restart_count}",
        state_dir=state_dir,
        process=Process(
            # an interactive job waits for the command mlq submit -i runs in it
            args=[JOB_TOOL, "__interactive-hold"] if spec.interactive else list(spec.command),
            env=env,
            cwd=spec.workdir or "/",
            user=user,
            capabilities=list(spec.security.capabilities),
        ),
        root=Root(image=spec.image, readonly=spec.security.read_only_root),
        hostname=spec.name,
        mounts=[Mount(v.source, v.target, v.readonly) for v in spec.volumes],
        host_paths=HostPaths(allowed=list(volume_paths), denied=list(denied_paths)),
        submitter=submitter,
        checkpoint=checkpoint,
        shm_size=r.shm,
        resources=Resources(
            memory_max=r.memory,
            memory_high=r.memory_high,
            memory_swap_max=r.swap,
            cpu_quota_us=r.cpus * CPU_PERIOD_US // 1000 if r.cpus else None,
            cpu_period_us=CPU_PERIOD_US,
            pids_max=r.pids,
            io_weight=r.io_weight,
        ),
        devices=[
            *(Device(d) if isinstance(d, str) else Device(d[0], d[1]) for d in devices),
            *(Device(d) for d in spec.devices),  # granted by an admin, checked at submit
        ],
        namespaces=namespaces,
        network=network,
        stop_signal=spec.preemption.stop_signal,
        grace_period_s=float(spec.preemption.grace_period),
        time_limit_s=float(spec.time_limit) if spec.time_limit else None,
        log_limit=log_limit,
    )
