"""``mlq run FILE``: run a job file now on this node, in the foreground, bypassing the queue.

The same executor path the daemon uses (start, then wait), with the job's output
streamed from its log files, Ctrl-C as a graceful stop (the job's stop signal,
then SIGKILL at the end of its grace period) and a second Ctrl-C as a kill.
Root only: it creates cgroups and namespaces. The exit code is the job's.
"""

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from mlq.scheduler.paths import DEFAULT_STATE_DIR


def _pick_gpus(spec, config) -> tuple[list[tuple[str, str]], str | None]:
    """Whole GPUs for a job run outside the queue: the first free-looking ones by index."""
    from mlq.scheduler.errors import Refused

    r = spec.resources
    if r.mig is not None:
        raise Refused("mlq run: MIG slices are assigned by the daemon; use mlq submit")
    if not r.gpus:
        return [], None
    from mlq.executor import gpus

    node = gpus.discover(config)
    whole = [g.index for g in node.gpus if not g.mig_enabled]
    if len(whole) < r.gpus:
        raise Refused(f"mlq run: the job asks for {r.gpus} GPUs; this node has {len(whole)}")
    w = gpus.wiring(node, gpus=whole[: r.gpus])
    return [(d.host_path, d.path) for d in w.devices], w.visible


CHUNK = 2**20  # read and written at a time, so a burst is never held in memory whole


def _pump(
    streams: list[tuple[Path, str, int, object]], log_limit: int | None
) -> list[tuple[Path, str, int, object]]:
    """Copy what the job wrote since last time to our stdout/stderr.

    Each position counts all the job wrote to the stream: under a log limit its
    supervisor rotates the files, and ``read_stream`` maps positions across them.
    Output rotated away before it was copied (a job that writes faster than this
    terminal reads) is said on stderr.
    """
    from mlq.executor.rundir import read_stream
    from mlq.executor.units import format_size

    out = []
    for run_dir, stream, pos, sink in streams:
        while True:
            skipped, data = read_stream(run_dir, stream, pos, CHUNK)
            if skipped:
                gone = format_size(skipped)
                gone += " bytes" if gone.isdigit() else ""
                keeps = f"the newest {format_size(log_limit)}" if log_limit else "the newest output"
                print(
                    f"mlq: {gone} of earlier {stream} were dropped "
                    f"(the job's log limit keeps {keeps} per stream)",
                    file=sys.stderr,
                )
            if data:
                sink.buffer.write(data)  # type: ignore[attr-defined]
                sink.flush()  # type: ignore[attr-defined]
            pos += skipped + len(data)
            if len(data) < CHUNK:
                break
        out.append((run_dir, stream, pos, sink))
    return out


def run(
    file: Annotated[Path, typer.Argument(help="The job file (YAML)")],
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the outcome as JSON (job output goes to stderr)")
    ] = False,
    state_dir: Annotated[
        str,
        typer.Option("--state-dir", envvar="MLQ_STATE_DIR", help="Logs, layers, checkpoints"),
    ] = DEFAULT_STATE_DIR,
    config: Annotated[
        Path | None,
        typer.Option("--config", envvar="MLQ_CONFIG", help="Cluster config for class defaults"),
    ] = None,
) -> None:
    """Run a job file now on this node, isolated, in the foreground (root only)."""
    import json
    import signal
    import time
    import uuid

    from mlq.executor import kill_now, start, stop, wait
    from mlq.executor.asuser import home_of, user_name
    from mlq.scheduler.cluster import (
        DEFAULT_CLASSES,
        DEFAULT_LOG_LIMIT,
        ClusterConfig,
        load_cluster,
    )
    from mlq.scheduler.errors import Refused
    from mlq.scheduler.launch import build_launch_request
    from mlq.scheduler.spec import load_spec, resolve

    if os.geteuid() != 0:
        raise Refused("mlq run creates cgroups and namespaces and needs root; use mlq submit")
    cluster = load_cluster(config) if config else ClusterConfig()
    spec = resolve(load_spec(file), list(cluster.priority_classes or DEFAULT_CLASSES))
    spec = spec.in_dir(os.getcwd())
    uid, gid = int(os.environ.get("SUDO_UID", 0)), int(os.environ.get("SUDO_GID", 0))
    devices, visible = _pick_gpus(spec, cluster)
    # the class's log limit and NAT, as under the daemon: a chatty job cannot fill the
    # state dir, and a bridge job goes out only where its class lets it
    klass = cluster.class_named(spec.priority_class or spec.kind)
    log_limit = klass.log_limit if klass else DEFAULT_LOG_LIMIT
    run_id = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    req = build_launch_request(
        spec,
        job_id=f"run-{run_id}",
        run_id=run_id,
        uid=uid,
        gid=gid,
        state_dir=state_dir,
        devices=devices,
        visible_devices=visible,
        checkpoint_key=spec.name,  # the same job name finds its checkpoint again
        log_limit=log_limit,
        bridge=cluster.node.bridge.name,
        bridge_subnet=cluster.node.bridge.subnet,
        nat=klass.nat if klass else True,
        user_name=user_name(uid),
        home=home_of(uid),
    )
    interrupts = [0]

    def on_sigint(signum, frame):  # noqa: ARG001
        interrupts[0] += 1

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        handle = start(req)
        out_sink = sys.stderr if json_out else sys.stdout
        run_dir = Path(handle.run_dir)
        files = [(run_dir, "stdout", 0, out_sink), (run_dir, "stderr", 0, sys.stderr)]
        acted = 0
        while (status := wait(handle, timeout=0.1)) is None:
            files = _pump(files, log_limit)
            if interrupts[0] > acted:
                acted = interrupts[0]
                if acted == 1:
                    print(
                        f"mlq: stopping {spec.name} ({spec.preemption.stop_signal}, "
                        f"{spec.preemption.grace_period}s grace); Ctrl-C again to kill",
                        file=sys.stderr,
                    )
                    stop(handle)
                else:
                    kill_now(handle)
        _pump(files, log_limit)
    finally:
        signal.signal(signal.SIGINT, previous)
        from mlq.executor.cgroups import release_parents

        release_parents()  # an idle node keeps no cgroup of mlq
    if json_out:
        print(json.dumps(status.summary()))
    else:
        how = f"signal {status.signal}" if status.signal else f"exit {status.exit_code}"
        print(
            f"mlq: {spec.name} {status.state.value} ({how}) in {status.duration_s:.1f}s, "
            f"max memory {status.max_memory_bytes / 2**20:.1f} MiB"
            + (f", {status.oom_kills} OOM kill(s)" if status.oom_kills else "")
            + f"; logs in {handle.run_dir}",
            file=sys.stderr,
        )
    code = status.exit_code if 0 <= status.exit_code <= 255 else 1
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add ``mlq run`` to the root app."""
    app.command("run")(run)
