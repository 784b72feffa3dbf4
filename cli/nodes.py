"""``mlq nodes`` and ``mlq top``: each node (an agent's with its state and last
heartbeat), its GPUs and slices, who holds them, and each team's use of its quota
across the cluster; ``top`` refreshes in place."""

import time
from typing import Annotated, Any

import typer
from mlq.cli.client import Client
from mlq.cli.jobs import JsonOpt, SocketOpt
from mlq.cli.output import console, print_json, table


def _quota_cell(used: float, limit: float | None, key: str) -> str:
    from mlq.executor.units import format_cpus, format_size

    def fmt(v: float) -> str:
        if key == "cpu":
            return format_cpus(int(v))
        if key == "memory":
            return format_size(int(v))
        return f"{v:g}"

    return fmt(used) + ("" if limit is None else f"/{fmt(limit)}")


def node_renderables(node: dict[str, Any], with_teams: bool = True) -> list[Any]:
    out: list[Any] = []
    head = (
        f"[bold]{node['name']}[/bold]  CPUs {node['cpus_used']}/{node['cpus']}  "
        f"memory {node['memory_used']}/{node['memory']}  GPUs from {node['gpu_source']}"
    )
    state = node.get("state", "up")
    if node.get("last_heartbeat"):  # an agent's node (docs/cluster.md)
        age = max(0.0, time.time() - node["last_heartbeat"])
        head += f"  {state}, heartbeat {age:.0f}s ago"
        if node.get("address"):
            head += f" from {node['address']}"
    elif state != "up":
        head += f"  {state}"
    if node.get("reason"):
        head += f" [red]({node['reason']})[/red]"
    out.append(head + (f"  ({node['gpu_problem']})" if node.get("gpu_problem") else ""))
    rows = []
    for g in node["gpus"]:
        model = g.get("model") or g.get("name")
        if g.get("mig"):
            for m in g["mig"]:
                rows.append(
                    [
                        g["index"],
                        model,
                        f"MIG {m['profile']} @{m['start']}",
                        m.get("uuid", ""),
                        m.get("job") or "-",
                    ]
                )
        else:
            rows.append([g["index"], model, "whole", g.get("uuid", ""), g.get("job") or "-"])
    if rows:
        out.append(table(["GPU", "MODEL", "SLICE", "UUID", "JOB"], rows))
    trows = []
    for t in node["teams"] if with_teams else []:
        keys = sorted(set(t["used"]) | set(t["guarantee"]) | set(t["limit"]))
        for k in keys:
            g = t["guarantee"].get(k)
            trows.append(
                [
                    t["team"],
                    k,
                    _quota_cell(t["used"].get(k, 0.0), None, k),
                    "" if g is None else _quota_cell(g, None, k),
                    "" if k not in t["limit"] else _quota_cell(t["limit"][k], None, k),
                ]
            )
    if trows:
        out.append(table(["TEAM", "RESOURCE", "USED", "GUARANTEE", "LIMIT"], trows))
    return out


def nodes(
    refresh: Annotated[
        bool, typer.Option("--refresh", help="Rediscover GPUs and MIG slices through NVML (admins)")
    ] = False,
    json_out: JsonOpt = False,
    sock: SocketOpt = None,
) -> None:
    """This node's CPUs, memory and GPUs with the jobs holding them, and team quota use."""
    resp = Client(sock).get("/v1/nodes", refresh=str(refresh).lower() if refresh else None)
    if json_out:
        print_json(resp)
        return
    out = console()
    for i, n in enumerate(resp["nodes"]):  # team use is the cluster's: printed once, last
        for r in node_renderables(n, with_teams=i == len(resp["nodes"]) - 1):
            out.print(r)


def _cpu_percent(
    data: dict[str, Any], before: dict[str, Any] | None, seconds: float
) -> dict[int, float]:
    """Each running job's CPU use since the frame before, in percent of one CPU."""
    if before is None or seconds <= 0:
        return {}
    was = {j["id"]: j.get("cpu_usage_s") for j in before["running"]}
    out = {}
    for j in data["running"]:
        now, then = j.get("cpu_usage_s"), was.get(j["id"])
        if now is not None and then is not None:
            out[j["id"]] = max(0.0, (now - then) / seconds * 100)
    return out


def _top_view(data: dict[str, Any], cpu: dict[int, float] | None = None) -> Any:
    from mlq.executor.units import format_size
    from rich.console import Group

    parts: list[Any] = []
    for i, n in enumerate(data["nodes"]):
        parts += node_renderables(n, with_teams=i == len(data["nodes"]) - 1)

    def mem(j: dict[str, Any]) -> str:
        cur = j.get("memory_current")
        pct = (
            f" ({100 * cur / j['memory_max']:.0f}%)" if cur is not None and j["memory_max"] else ""
        )
        return ("?" if cur is None else format_size(cur)) + f"/{format_size(j['memory_max'])}" + pct

    rows = [
        [
            j["id"],
            j["name"],
            j["team"],
            j["user"],
            j["state"],
            mem(j),
            j["cpus"],
            f"{cpu[j['id']]:.0f}%" if cpu and j["id"] in cpu else "",
            "" if j.get("cpu_usage_s") is None else f"{j['cpu_usage_s']:.1f}s",
            "" if j.get("cpu_throttled_s") is None else f"{j['cpu_throttled_s']:.1f}s",
        ]
        for j in data["running"]
    ]
    parts.append(
        table(
            [
                "ID",
                "NAME",
                "TEAM",
                "USER",
                "STATE",
                "MEMORY",
                "CPUS",
                "CPU%",
                "CPU TIME",
                "THROTTLED",
            ],
            rows,
            title="running",
        )
    )
    prow = [
        [j["id"], j["name"], j["team"], j["priority_class"], j["reason"]]
        for j in data["pending"][:20]
    ]
    parts.append(
        table(
            ["ID", "NAME", "TEAM", "CLASS", "REASON"],
            prow,
            title=f"pending ({len(data['pending'])})",
        )
    )
    parts.append(f"scheduling passes: {data['passes']}, last {data['last_pass_ms']:.1f} ms")
    return Group(*parts)


def top(
    interval: Annotated[
        float, typer.Option("--interval", "-n", help="Seconds between refreshes")
    ] = 2.0,
    once: Annotated[bool, typer.Option("--once", help="Print one frame and exit")] = False,
    json_out: JsonOpt = False,
    sock: SocketOpt = None,
) -> None:
    """A live view of the node, running jobs (memory against limits, CPU now and in
    all) and the queue. Not on a terminal (piped, in a log) it prints a frame every
    interval, as top -b does; --once prints one (CPU% over its first second)."""
    from mlq.cli.output import width

    client = Client(sock)
    if json_out:
        print_json(client.get("/v1/top"))
        return

    def sample() -> tuple[dict[str, Any], float]:
        return client.get("/v1/top"), time.monotonic()

    before, t0 = sample()
    if once or width() is None:  # a frame at a time, each a whole table
        time.sleep(min(1.0, interval))
        out = console()
        try:
            while True:
                data, t1 = sample()
                out.print(_top_view(data, _cpu_percent(data, before, t1 - t0)))
                if once:
                    return
                before, t0 = data, t1
                time.sleep(interval)
                out.print()
        except KeyboardInterrupt:
            return
    from rich.live import Live

    with Live(_top_view(before), console=console(), screen=False, auto_refresh=False) as live:
        try:
            while True:
                time.sleep(interval)
                data, t1 = sample()
                live.update(_top_view(data, _cpu_percent(data, before, t1 - t0)), refresh=True)
                before, t0 = data, t1
        except KeyboardInterrupt:
            pass


node_app = typer.Typer(help="One node: drain and resume it (mlq admins).", no_args_is_help=True)


@node_app.command("drain")
def drain(
    name: Annotated[str, typer.Argument(help="The node's name (see mlq nodes)")],
    reason: Annotated[
        str, typer.Option("--reason", "-r", help="Why, for mlq nodes (Slurm's Reason=)")
    ] = "",
    json_out: JsonOpt = False,
    sock: SocketOpt = None,
) -> None:
    """Offer a node nothing new: its running jobs finish, new ones go elsewhere or wait
    (mlq admins; scontrol update nodename=N state=drain)."""
    resp = Client(sock).post(f"/v1/nodes/{name}/drain", {"reason": reason})
    if json_out:
        print_json(resp)
        return
    node = next(n for n in resp["nodes"] if n["name"] == name)
    typer.echo(f"Node {name}: {node['state']} ({node['reason']})")


@node_app.command("resume")
def resume(
    name: Annotated[str, typer.Argument(help="The node's name (see mlq nodes)")],
    json_out: JsonOpt = False,
    sock: SocketOpt = None,
) -> None:
    """Offer a drained node new jobs again (mlq admins)."""
    resp = Client(sock).post(f"/v1/nodes/{name}/resume", {})
    if json_out:
        print_json(resp)
        return
    node = next(n for n in resp["nodes"] if n["name"] == name)
    typer.echo(f"Node {name}: {node['state']}")


def dashboard(json_out: JsonOpt = False, sock: SocketOpt = None) -> None:
    """Print a login URL for the web dashboard: open it within two minutes, once; the
    browser then sees what you see with mlq queue, show, logs and nodes
    (docs/dashboard.md)."""
    resp = Client(sock).post("/v1/dashboard/login", {})
    if json_out:
        print_json(resp)
        return
    typer.echo(resp["url"])
    typer.echo(
        f"Signs a browser in as {resp['user']}: open it within "
        f"{resp['expires_in_s']:.0f} s, once; do not share it.",
        err=True,
    )


def register(app: typer.Typer) -> None:
    app.add_typer(node_app, name="node")
    app.command("nodes")(nodes)
    app.command("top")(top)
    app.command("dashboard")(dashboard)
