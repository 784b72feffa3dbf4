"""Job commands: submit, queue (ls), show, cancel, history."""

import time
from pathlib import Path
from typing import Annotated

import typer
from mlq.cli.client import Client
from mlq.cli.output import age, console, job_label, local_time, parse_iso, print_json, table

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (stable keys) and nothing else")]
SocketOpt = Annotated[
    str | None,
    typer.Option(
        "--socket", envvar="MLQ_SOCKET", help="The daemon's socket [default: /run/mlq/mlq.sock]"
    ),
]


def submit(
    file: Annotated[Path, typer.Argument(help="The job file (YAML)")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the resolved job and its limits; store nothing")
    ] = False,
    array: Annotated[
        str | None, typer.Option("--array", help="Submit a job array: 0-99, 0-99:2 or 1,3,5")
    ] = None,
    after: Annotated[
        list[int] | None, typer.Option("--after", help="Start only after job ID ends successfully")
    ] = None,
    dependency: Annotated[
        str | None,
        typer.Option(
            "--dependency",
            "-d",
            help="As sbatch: afterok:ID, afterany:ID, afternotok:ID, after:ID (started); "
            "IDs joined by :, types by ,",
        ),
    ] = None,
    interactive: Annotated[
        bool,
        typer.Option(
            "--interactive",
            "-i",
            help="Wait for it to start and run its command here, stdin and all (srun --pty)",
        ),
    ] = False,
    tty: Annotated[
        bool, typer.Option("--tty", "-t", help="With -i: give its command a terminal")
    ] = False,
    json_out: JsonOpt = False,
    sock: SocketOpt = None,
) -> None:
    """Queue a job file; prints the job ID. With -i (-it for a terminal) the job is
    interactive: once it starts, its command runs attached to this terminal, and mlq
    submit exits as it does (docs/daemon.md "Interactive jobs")."""
    from mlq.executor.yamlfile import load_yaml
    from mlq.scheduler.errors import InvalidInput

    data = load_yaml(file)
    if tty and not interactive:
        raise InvalidInput("-t gives an interactive job a terminal: use it with -i (-it)")
    if interactive:
        if json_out or dry_run:
            raise InvalidInput("-i runs the job here: not with --json or --dry-run")
        if isinstance(data, dict):
            data = {**data, "interactive": True}
    client = Client(sock)
    try:
        resp = client.post(
            "/v1/jobs",
            {
                "spec": data,
                "source": str(file),
                "array": array,
                "after": after or [],
                "dependency": dependency,
                "dry_run": dry_run,
                "workdir": _submit_dir(),
            },
        )
    except InvalidInput as exc:
        raise InvalidInput(exc.problems, str(file)) from None
    if json_out:
        print_json(resp)
        return
    if dry_run:
        import yaml

        out = console()
        out.print(f"# {file}: valid; nothing stored (--dry-run)")
        out.print(yaml.safe_dump(resp["resolved"], sort_keys=False).rstrip())
        out.print("# limits, in cgroup v2 terms")
        out.print(yaml.safe_dump(resp["limits"], sort_keys=False).rstrip())
        return
    jobs = resp["jobs"]
    if resp.get("array_id") is not None:
        typer.echo(
            f"Submitted array {resp['array_id']}: {len(jobs)} jobs, "
            f"IDs {jobs[0]['id']}-{jobs[-1]['id']}"
        )
    else:
        typer.echo(f"Submitted job {jobs[0]['id']}", err=interactive)
    if interactive:
        raise typer.Exit(_attach(client, jobs[0]["id"], tty, sock))


def attach(
    job_id: Annotated[int, typer.Argument(help="An interactive job's ID", min=1)],
    tty: Annotated[bool, typer.Option("--tty", "-t", help="Give its command a terminal")] = False,
    sock: SocketOpt = None,
) -> None:
    """Run an interactive job's command with this terminal, once it runs (what mlq
    submit -i does; from the job's node, where mlq submit -i ran on another)."""
    raise typer.Exit(_attach(Client(sock), job_id, tty, sock, cancel=False))


def _attach(client: Client, job_id: int, tty: bool, sock: str | None, cancel: bool = True) -> int:
    """Wait for interactive job ``job_id`` to start (Ctrl-C cancels it, as srun, when
    ``cancel``), then run its command in it with this terminal; the command's exit
    code."""
    from mlq.cli.execute import run_in_job
    from mlq.executor.request import JOB_TOOL
    from mlq.scheduler.errors import Conflict, InvalidInput

    said = ""
    try:
        while True:
            job = client.get(f"/v1/jobs/{job_id}")
            if not job["spec"].get("interactive"):
                raise InvalidInput(f"job {job_id} is not interactive: mlq exec runs commands in it")
            if job["state"] == "RUNNING":
                break
            if job["state"] not in ("PENDING", "STARTING"):
                typer.echo(f"Job {job_id} ended {job['state']}: {job['reason']}", err=True)
                return 1
            if job["state"] == "PENDING" and job["reason"] != said:
                said = job["reason"]
                typer.echo(f"Job {job_id} is waiting: {said}", err=True)
            time.sleep(0.2)
    except KeyboardInterrupt:
        if not cancel:
            return 130
        client.post("/v1/jobs/cancel", {"ids": [job_id], "now": True})
        typer.echo(f"Cancelled job {job_id}", err=True)
        return 130
    command = [JOB_TOOL, "__interactive-run", "--", *job["spec"]["command"]]
    try:
        return run_in_job(job_id, command, True, tty, sock)
    except Conflict as exc:
        if "not running on node" not in str(exc):
            raise
        # a cluster: the job landed on another node, where its terminal attaches
        flag = " -t" if tty else ""
        raise Conflict(
            f"job {job_id} runs on node {job['node']}: attach from there with "
            f"mlq attach{flag} {job_id} (it waits for you until its time limit)"
        ) from None


def _submit_dir() -> str | None:
    """Where this submission comes from (a job on image: host runs there, as sbatch
    runs a job in its submit directory); None when this process has no directory."""
    import os

    try:
        return os.getcwd()
    except OSError:  # removed under it
        return None


def _whoami(client: Client) -> str:
    return client.get("/v1/whoami")["user"]


def queue(
    team: Annotated[str | None, typer.Option("--team", "-t", help="Only this team's jobs")] = None,
    state: Annotated[
        list[str] | None, typer.Option("--state", "-s", help="Only jobs in this state (repeatable)")
    ] = None,
    mine: Annotated[bool, typer.Option("--mine", help="Only my jobs")] = False,
    start: Annotated[
        bool,
        typer.Option(
            "--start", help="Pending jobs with their estimated start, like squeue --start"
        ),
    ] = False,
    json_out: JsonOpt = False,
    sock: SocketOpt = None,
) -> None:
    """List queued and running jobs, like squeue."""
    client = Client(sock)
    user = _whoami(client) if mine else None
    resp = client.get("/v1/jobs", team=team, state=["PENDING"] if start else state, user=user)
    estimates: dict[int, str | None] = {}
    if start:  # an estimate, not a promise: scheduler/estimate.py
        est = client.get("/v1/estimates")
        estimates = {e["id"]: e["start"] for e in est["estimates"]}
        for j in resp["jobs"]:
            j["estimated_start"] = estimates.get(j["gang_id"] or j["id"])
    if json_out:
        print_json(resp)
        return
    now = time.time()
    rows = [
        [
            job_label(j),
            j["name"],
            j["team"],
            j["user"],
            j["priority_class"],
            j["state"],
            age(j["submitted_at"], now),
            *([_when(j["estimated_start"], now)] if start else []),
            j["reason"],
        ]
        for j in resp["jobs"]
    ]
    columns = ["ID", "NAME", "TEAM", "USER", "CLASS", "STATE", "AGE"]
    columns += ["START (EST.)"] if start else []
    console().print(table([*columns, "REASON"], rows, optional=("CLASS", "TEAM", "USER")))


def _when(at: str | None, now: float) -> str:
    """An estimated start as a person reads it: ``now``, a local time, or ``N/A``."""
    t = parse_iso(at)
    if t is None:
        return "N/A"
    return "now" if t <= now + 1 else local_time(at)


def show(
    job_id: Annotated[int, typer.Argument(help="The job's ID")],
    json_out: JsonOpt = False,
    sock: SocketOpt = None,
) -> None:
    """The whole job and its event timeline."""
    j = Client(sock).get(f"/v1/jobs/{job_id}")
    if json_out:
        print_json(j)
        return
    from mlq.executor.units import format_cpus, format_duration, format_size

    r = j["spec"]["resources"]
    out = console()
    out.print(f"[bold]Job {j['id']}[/bold]  {j['name']}  ({j['team']}/{j['user']})")
    out.print(f"  state      {j['state']}" + (f"  ({j['reason']})" if j["reason"] else ""))
    out.print(f"  class      {j['priority_class']} (priority {j['priority']}), kind {j['kind']}")
    gpus = f"{r['gpus']} GPU" if r["gpus"] else ""
    if r.get("mig"):
        gpus = f"{r['mig']['count']} x MIG {r['mig']['profile']}"
    cpus = r["cpus"]
    milli = int(cpus[:-1]) if isinstance(cpus, str) and cpus.endswith("m") else int(cpus)
    out.print(
        f"  resources  {format_cpus(milli)} CPU, {format_size(r['memory'])} memory"
        + (f", {gpus}" if gpus else "")
    )
    if j["spec"].get("time_limit"):
        out.print(f"  time limit {format_duration(j['spec']['time_limit'])}")
    out.print(f"  command    {' '.join(j['spec']['command'])}")
    for label, key in (
        ("submitted", "submitted_at"),
        ("started", "started_at"),
        ("ended", "ended_at"),
    ):
        if j.get(key):
            out.print(f"  {label:<10} {local_time(j[key])}")
    if j.get("node"):
        out.print(f"  node       {j['node']}")
    if j.get("depends_on"):
        deps = [str(d) if isinstance(d, str) else f"afterok:{d}" for d in j["depends_on"]]
        out.print(f"  depends on {', '.join(deps)}")
    if j.get("exit_code") is not None or j.get("signal"):
        out.print(
            f"  exit       code {j['exit_code']}"
            + (f", signal {j['signal']}" if j["signal"] else "")
        )
    if j.get("restart_count"):
        out.print(f"  restarts   {j['restart_count']}")
    out.print()
    rows = [[local_time(e["at"]), e["state"], e["reason"]] for e in j["events"]]
    out.print(table(["TIME", "STATE", "REASON"], rows, title=None))


def cancel(
    job_ids: Annotated[list[int], typer.Argument(help="Job IDs to cancel")],
    now: Annotated[bool, typer.Option("--now", help="Kill at once; no grace period")] = False,
    json_out: JsonOpt = False,
    sock: SocketOpt = None,
) -> None:
    """Cancel jobs: pending ones at once, running ones gracefully (--now kills)."""
    resp = Client(sock).post("/v1/jobs/cancel", {"ids": job_ids, "now": now})
    per_job(resp, json_out)


def per_job(resp: dict, json_out: bool) -> None:
    """A line per job of a request on several (cancel, hold, release), and the exit
    code: 3 if any was refused, 1 if any does not exist or is in the wrong state (a
    running job held); the others were done anyway."""
    results = resp["results"]
    if json_out:
        print_json(resp)
    else:
        for r in results:
            line = f"job {r['id']}: {r['state'] or 'not found'} ({r['message']})"
            typer.echo(line, err=not r["ok"])
    if any(r["refused"] for r in results):
        raise typer.Exit(3)
    if any(not r["ok"] for r in results):
        raise typer.Exit(1)


def hold(
    job_ids: Annotated[list[int], typer.Argument(help="Pending job IDs to hold")],
    json_out: JsonOpt = False,
    sock: SocketOpt = None,
) -> None:
    """Keep pending jobs from starting until released (scontrol hold). A hold by an
    admin of someone else's job is released only by an admin."""
    per_job(Client(sock).post("/v1/jobs/hold", {"ids": job_ids}), json_out)


def requeue(
    job_ids: Annotated[list[int], typer.Argument(help="Running job IDs to requeue")],
    json_out: JsonOpt = False,
    sock: SocketOpt = None,
) -> None:
    """Stop running jobs gracefully (their stop signal and grace period) and put them
    back in the queue, with their checkpoint and MLQ_RESTART_COUNT raised (scontrol
    requeue)."""
    per_job(Client(sock).post("/v1/jobs/requeue", {"ids": job_ids}), json_out)


def update(
    job_id: Annotated[int, typer.Argument(help="A pending job's ID")],
    time_limit: Annotated[
        str | None, typer.Option("--time-limit", "-t", help="2h, 90m (raising it: admins)")
    ] = None,
    priority_class: Annotated[str | None, typer.Option("--priority-class")] = None,
    cpus: Annotated[str | None, typer.Option("--cpus", help="4, 500m")] = None,
    memory: Annotated[str | None, typer.Option("--memory", help="16Gi")] = None,
    gpus: Annotated[int | None, typer.Option("--gpus")] = None,
    json_out: JsonOpt = False,
    sock: SocketOpt = None,
) -> None:
    """Change a pending job, validated as at submit (scontrol update). Its owner may
    lower its time limit; only an admin of its team or of mlq may raise it."""
    body = {
        "time_limit": time_limit, "priority_class": priority_class, "cpus": cpus,
        "memory": memory, "gpus": gpus,
    }  # fmt: skip
    per_job(Client(sock).post(f"/v1/jobs/{job_id}/update", body), json_out)


def release(
    job_ids: Annotated[list[int], typer.Argument(help="Held job IDs to release")],
    json_out: JsonOpt = False,
    sock: SocketOpt = None,
) -> None:
    """Let held jobs start again (scontrol release)."""
    per_job(Client(sock).post("/v1/jobs/release", {"ids": job_ids}), json_out)


def history(
    since: Annotated[
        str | None,
        typer.Option("--since", help="Jobs that ended in the last 2h, 1d, ... or since a date"),
    ] = None,
    team: Annotated[str | None, typer.Option("--team", "-t")] = None,
    mine: Annotated[bool, typer.Option("--mine", help="Only my jobs")] = False,
    limit: Annotated[
        int, typer.Option("--limit", "-n", help="At most this many, the newest (up to 10000)")
    ] = 1000,
    offset: Annotated[
        int, typer.Option("--offset", help="Skip this many of the newest (the next page)")
    ] = 0,
    json_out: JsonOpt = False,
    sock: SocketOpt = None,
) -> None:
    """Finished jobs, newest last, like sacct."""
    client = Client(sock)
    user = _whoami(client) if mine else None
    resp = client.get(
        "/v1/history", since=_since(since), team=team, user=user, limit=limit, offset=offset
    )
    if json_out:
        print_json(resp)
        return
    rows = [
        [
            job_label(j),
            j["name"],
            j["team"],
            j["user"],
            j["state"],
            "" if j["exit_code"] is None else j["exit_code"],
            local_time(j["started_at"]),
            local_time(j["ended_at"]),
            j["reason"],
        ]
        for j in resp["jobs"]
    ]
    console().print(
        table(
            ["ID", "NAME", "TEAM", "USER", "STATE", "EXIT", "STARTED", "ENDED", "REASON"],
            rows,
            optional=("STARTED", "TEAM", "USER"),
        )
    )


def report(
    since: Annotated[str, typer.Option("--since", help="From 30d, 1w, ... ago, or a date")] = "30d",
    until: Annotated[str | None, typer.Option("--until", help="To a date (default: now)")] = None,
    by: Annotated[str, typer.Option("--by", help="team, user or class")] = "team",
    runs: Annotated[
        Path | None,
        typer.Option("--runs", help="Sum these run records (mlq simulate --runs) instead"),
    ] = None,
    json_out: JsonOpt = False,
    sock: SocketOpt = None,
) -> None:
    """GPU-hours, GPU-equivalent hours (MIG at its share), CPU-hours, jobs,
    preemptions and work lost to them, per team, user or class, like sreport."""
    from mlq.scheduler.errors import InvalidInput

    if by not in ("team", "user", "class"):
        raise InvalidInput(f'--by: "{by}" is not one of team, user, class')
    if runs is not None:  # a simulated month: its records, summed here
        from dataclasses import asdict

        from mlq.scheduler.accounting import read_runs, summarize

        try:
            records = read_runs(str(runs))
        except OSError as exc:
            raise InvalidInput(f"--runs: cannot read {runs}: {exc.strerror}") from None
        except ValueError as exc:
            raise InvalidInput(f"--runs: {exc}") from None
        start = min((r.started_at for r in records), default=0.0)
        end = max((r.ended_at or r.started_at for r in records), default=0.0) + 1
        rows = [asdict(u) for u in summarize(records, start, end, by)]
        resp = {"since": start, "until": end, "by": by, "rows": rows}
    else:
        start_at = _since(since)
        end_at = _since(until, "--until") if until else None
        resp = Client(sock).get("/v1/report", since=start_at, until=end_at, by=by)
    if json_out:
        print_json(resp)
        return
    head = "TEAM" if by == "team" else by.upper()

    def h(v: float) -> str:
        return f"{v:,.1f}"

    table_rows = [
        [
            u["key"], h(u["gpu_hours"]), h(u["gpu_equivalent_hours"]), h(u["cpu_hours"]),
            u["jobs"], u["runs"], u["preemptions"], h(u["lost_gpu_equivalent_hours"]),
            f"{u['mean_gpu_equivalents']:.2f}"
            + (f" / {u['guarantee_gpu_equivalents']:g}" if u.get("guarantee_gpu_equivalents") else ""),
        ]
        for u in resp["rows"]
    ]  # fmt: skip
    title = f"{local_time_of(resp['since'])} to {local_time_of(resp['until'])}"
    console().print(
        table(
            [head, "GPU-H", "GPU-EQ-H", "CPU-H", "JOBS", "RUNS", "PREEMPTED", "LOST GPU-EQ-H",
             "MEAN GPU-EQ" + (" / GUARANTEE" if by == "team" else "")],
            table_rows,
            title=title,
        )
    )  # fmt: skip


def local_time_of(t: float) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M")


def _since(text: str | None, flag: str = "--since") -> float | None:
    if text is None:
        return None
    from datetime import datetime

    from mlq.executor.units import parse_duration
    from mlq.scheduler.errors import InvalidInput

    try:
        return time.time() - parse_duration(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise InvalidInput(
            f'{flag}: "{text}" is not a duration or a date; use 2h, 1d or 2026-11-29T08:00'
        ) from None


def register(app: typer.Typer) -> None:
    app.command("submit")(submit)
    app.command("queue")(queue)
    app.command("ls", help="Alias of queue.", hidden=True)(queue)
    app.command("show")(show)
    app.command("cancel")(cancel)
    app.command("hold")(hold)
    app.command("release")(release)
    app.command("requeue")(requeue)
    app.command("update")(update)
    app.command("history")(history)
    app.command("report")(report)
    app.command("logs")(logs)
    app.command("attach")(attach)
    app.command("checkpoint-done")(checkpoint_done)


def logs(
    job_id: Annotated[int, typer.Argument(help="The job's ID")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Follow a running job to its end")
    ] = False,
    stderr: Annotated[
        bool, typer.Option("--stderr", help="Print stderr instead of stdout")
    ] = False,
    run: Annotated[
        int | None, typer.Option("--run", help="Only this run of a requeued job (0 is the first)")
    ] = None,
    sock: SocketOpt = None,
) -> None:
    """Print a job's output; every run of a requeued job, each labelled.

    Output older than the job's log limit keeps is gone: a line on stderr says how
    much, where it was.
    """
    import sys

    from mlq.executor.units import format_size

    def size(n: int) -> str:
        text = format_size(n)
        return f"{text} bytes" if text.isdigit() else text

    client = Client(sock)
    stream = "stderr" if stderr else "stdout"
    first = client.get(f"/v1/jobs/{job_id}/logs", stream=stream, run=run, offset=0, limit=0)
    if follow and run is None and not first["runs"] and first["state"] == "PENDING":
        # as kubectl logs -f of a pod being scheduled: wait for it to start, say why
        print(
            f"mlq: job {job_id} is pending; waiting for it to start (Ctrl-C to stop)",
            file=sys.stderr,
            flush=True,
        )
        while not first["runs"] and first["state"] == "PENDING":
            time.sleep(0.5)
            first = client.get(f"/v1/jobs/{job_id}/logs", stream=stream, offset=0, limit=0)
    runs = [run] if run is not None else (first["runs"] or [first["run"]])
    out = sys.stdout
    for n in runs:
        if run is None and (len(runs) > 1 or n > 0):
            out.write(f"==> job {job_id} run {n} <==\n")
        offset = 0
        while True:
            chunk = client.get(f"/v1/jobs/{job_id}/logs", stream=stream, run=n, offset=offset)
            if chunk.get("dropped"):
                limit = chunk.get("log_limit")
                keeps = f"the newest {size(limit)}" if limit else "the newest output"
                out.flush()  # the note goes where the gap is
                print(
                    f"mlq: {size(chunk['dropped'])} of earlier output were dropped "
                    f"(the job's log limit keeps {keeps} per stream)",
                    file=sys.stderr,
                    flush=True,
                )
            out.write(chunk["data"])
            out.flush()
            moved = chunk["next_offset"] != offset
            offset = chunk["next_offset"]
            if moved:
                continue  # drain what is there before deciding to wait
            if not (follow and chunk["running"]):
                break
            if n == runs[-1] and chunk["state"] == "PENDING":
                break
            time.sleep(0.2)
        if follow and n == runs[-1]:
            # the job may have been requeued meanwhile: follow its next run too
            latest = client.get(f"/v1/jobs/{job_id}/logs", stream=stream, offset=0, limit=0)
            if latest["run"] > n and latest["running"]:
                runs.append(latest["run"])


def checkpoint_done() -> None:
    """From inside a job: record that a checkpoint was just written.

    The scheduler then prefers to preempt jobs that lose the least work. This
    touches the file named by MLQ_CHECKPOINT_MARK, on the job's checkpoint volume.
    """
    # Every job also has this command as /.mlq/bin/mlq, whatever its image
    # (executor/jobtool/mlq-job.c): the same steps, messages and exit codes.
    import os
    import stat

    from mlq.scheduler.errors import InvalidInput, MlqError

    mark = os.environ.get("MLQ_CHECKPOINT_MARK")
    if not mark:
        raise InvalidInput(
            "MLQ_CHECKPOINT_MARK is not set: run this inside an mlq job that has a checkpoint volume"
        )
    # never through a symlink, never waiting on a FIFO put there
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    step = "open"
    try:
        fd = os.open(mark, flags, 0o666)
        try:
            step = "stat"
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise MlqError(f"mark the checkpoint: `{mark}` is not a regular file")
            step = "set the time of"
            os.utime(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise MlqError(f"mark the checkpoint: {step} `{mark}`: {exc.strerror}") from None
