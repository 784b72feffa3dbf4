"""Admin commands: teams and their members, quotas, priority classes, grants, whoami."""

from typing import Annotated

import typer
from mlq.cli.client import Client
from mlq.cli.jobs import JsonOpt, SocketOpt
from mlq.cli.output import console, print_json, table

team_app = typer.Typer(help="Teams and their members.", no_args_is_help=True)
quota_app = typer.Typer(
    help="Team quotas: guarantees and limits per resource.", no_args_is_help=True
)
class_app = typer.Typer(help="Priority classes.", no_args_is_help=True)
caps_app = typer.Typer(
    help="Per-user caps: active jobs and bytes of job files one user may have at once.",
    no_args_is_help=True,
)
grant_app = typer.Typer(
    help="Grants: capabilities, volume paths and devices beyond the defaults (docs/security.md).",
    no_args_is_help=True,
)


def _fmt_quota(resource: str, value: float) -> str:
    from mlq.executor.units import format_cpus, format_size

    if resource == "cpu":
        return format_cpus(int(value))
    if resource == "memory":
        return format_size(int(value))
    return f"{value:g}"


def _quota_text(q: dict[str, float]) -> str:
    return ", ".join(f"{k}={_fmt_quota(k, v)}" for k, v in sorted(q.items()))


@team_app.command("list")
def team_list(json_out: JsonOpt = False, sock: SocketOpt = None) -> None:
    """List teams with members, admins and quotas."""
    resp = Client(sock).get("/v1/teams")
    if json_out:
        print_json(resp)
        return
    rows = [
        [
            t["name"],
            ", ".join(t["members"]),
            ", ".join(t["admins"]),
            _quota_text(t["guarantee"]),
            _quota_text(t["limit"]),
            ", ".join(f"{k} {v:g}" for k, v in t.get("per_user", {}).items()),
            t.get("webhook") or "",
        ]
        for t in resp["teams"]
    ]
    heads = ["TEAM", "MEMBERS", "ADMINS", "GUARANTEE", "LIMIT", "PER USER", "WEBHOOK"]
    console().print(table(heads, rows))


@team_app.command("create")
def team_create(
    name: str,
    member: Annotated[list[str] | None, typer.Option("--member", help="User or @group")] = None,
    admin: Annotated[list[str] | None, typer.Option("--admin", help="User or @group")] = None,
    json_out: JsonOpt = False,
    sock: SocketOpt = None,
) -> None:
    """Create a team (admins only)."""
    resp = Client(sock).post(
        "/v1/teams", {"name": name, "members": member or [], "admins": admin or []}
    )
    print_json(resp) if json_out else typer.echo(f"Created team {name}")


@team_app.command("delete")
def team_delete(name: str, json_out: JsonOpt = False, sock: SocketOpt = None) -> None:
    """Delete a team that has no active jobs (admins only)."""
    resp = Client(sock).delete(f"/v1/teams/{name}")
    if json_out:
        print_json(resp)
        return
    typer.echo(f"Deleted team {name}")


@team_app.command("user-limit")
def user_limit(
    team: str,
    jobs: Annotated[
        int | None, typer.Option("--jobs", help="Jobs each user may run at once")
    ] = None,
    gpus: Annotated[
        float | None,
        typer.Option("--gpus", help="GPUs each user may hold at once (MIG slices: their share)"),
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="No per-user limits")] = False,
    json_out: JsonOpt = False,
    sock: SocketOpt = None,
) -> None:
    """Limit what each user of a team may hold at once (team admins and mlq admins;
    Slurm's MaxJobsPerUser, MaxTRESPerUser=gres/gpu). The options given replace the
    team's per-user limits; --clear removes them."""
    from mlq.scheduler.errors import InvalidInput

    if clear == (jobs is not None or gpus is not None):
        raise InvalidInput("give --jobs and/or --gpus, or --clear")
    body = {} if clear else {"jobs": jobs, "gpus": gpus}
    t = Client(sock).put(f"/v1/teams/{team}/per-user", body)
    if json_out:
        print_json(t)
        return
    limits = ", ".join(f"{k} {v:g}" for k, v in t["per_user"].items()) or "none"
    typer.echo(f"Team {team}: per-user limits {limits}")


@team_app.command("set-webhook")
def set_webhook(
    team: str,
    url: Annotated[str | None, typer.Argument(help="An http:// or https:// URL")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="No team webhook")] = False,
    json_out: JsonOpt = False,
    sock: SocketOpt = None,
) -> None:
    """Tell a URL when the team's jobs end or are preempted (team admins and mlq
    admins; docs/notifications.md). A Slack or Mattermost incoming webhook shows the
    payload's text; --clear removes it."""
    from mlq.scheduler.errors import InvalidInput

    if clear == (url is not None):
        raise InvalidInput("give a URL, or --clear")
    t = Client(sock).put(f"/v1/teams/{team}/webhook", {"url": url or ""})
    if json_out:
        print_json(t)
        return
    typer.echo(f"Team {team}: webhook {t['webhook'] or 'none'}")


@team_app.command("add-member")
def add_member(
    team: str,
    name: Annotated[str, typer.Argument(help="A Unix user, or @group")],
    admin: Annotated[bool, typer.Option("--admin", help="As a team admin")] = False,
    json_out: JsonOpt = False,
    sock: SocketOpt = None,
) -> None:
    """Add a user or @group to a team (mlq admins; a team's admins add members)."""
    role = "admin" if admin else "member"
    t = Client(sock).post(f"/v1/teams/{team}/members", {"name": name, "role": role})
    if json_out:
        print_json(t)
        return
    typer.echo(f"Added {name} to {team} as {role}")


@team_app.command("remove-member")
def remove_member(
    team: str,
    name: str,
    admin: Annotated[bool, typer.Option("--admin", help="Remove the admin role only")] = False,
    json_out: JsonOpt = False,
    sock: SocketOpt = None,
) -> None:
    """Remove a user or @group from a team, or with --admin only its admin role (mlq
    admins; a team's admins remove members)."""
    t = Client(sock).post(
        f"/v1/teams/{team}/members/remove", {"name": name, "role": "admin" if admin else None}
    )
    if json_out:
        print_json(t)
        return
    if admin:
        stays = " (still a member)" if name in t["members"] else ""
        typer.echo(f"Removed the admin role of {name} in {team}{stays}")
    else:
        typer.echo(f"Removed {name} from {team}")


@quota_app.command("show")
def quota_show(
    team: Annotated[str | None, typer.Argument(help="One team; all if omitted")] = None,
    json_out: JsonOpt = False,
    sock: SocketOpt = None,
) -> None:
    """Show guarantees and limits."""
    client = Client(sock)
    teams = [client.get(f"/v1/teams/{team}")] if team else client.get("/v1/teams")["teams"]
    if json_out:
        print_json({"teams": [{k: t[k] for k in ("name", "guarantee", "limit")} for t in teams]})
        return
    rows = []
    for t in teams:
        for res in sorted(set(t["guarantee"]) | set(t["limit"])):
            g, lim = t["guarantee"].get(res), t["limit"].get(res)
            rows.append(
                [
                    t["name"],
                    res,
                    "" if g is None else _fmt_quota(res, g),
                    "" if lim is None else _fmt_quota(res, lim),
                ]
            )
    console().print(table(["TEAM", "RESOURCE", "GUARANTEE", "LIMIT"], rows))


def _pairs(values: list[str] | None, flag: str) -> dict[str, str]:
    from mlq.scheduler.errors import InvalidInput

    out: dict[str, str] = {}
    for v in values or []:
        for part in v.split(","):
            key, sep, amount = part.partition("=")
            if not sep or not key or not amount:
                raise InvalidInput(
                    f'{flag}: "{part}" is not RESOURCE=AMOUNT, e.g. gpu=4 or memory=256Gi'
                )
            out[key.strip()] = amount.strip()
    return out


@quota_app.command("set")
def quota_set(
    team: str,
    guarantee: Annotated[
        list[str] | None, typer.Option("--guarantee", "-g", help="RESOURCE=AMOUNT, e.g. gpu=4")
    ] = None,
    limit: Annotated[
        list[str] | None, typer.Option("--limit", "-l", help="RESOURCE=AMOUNT, e.g. gpu=8")
    ] = None,
    clear: Annotated[
        list[str] | None, typer.Option("--clear", help="Remove a resource's quota")
    ] = None,
    json_out: JsonOpt = False,
    sock: SocketOpt = None,
) -> None:
    """Set a team's guarantee and limit per resource (admins only)."""
    body = {
        "guarantee": _pairs(guarantee, "--guarantee"),
        "limit": _pairs(limit, "--limit"),
        "clear": clear or [],
    }
    resp = Client(sock).put(f"/v1/quotas/{team}", body)
    if json_out:
        print_json(resp)
        return
    typer.echo(
        f"{team}: guarantee {_quota_text(resp['guarantee']) or '-'}; limit {_quota_text(resp['limit']) or '-'}"
    )


@class_app.command("list")
def class_list(json_out: JsonOpt = False, sock: SocketOpt = None) -> None:
    """List priority classes."""
    resp = Client(sock).get("/v1/classes")
    if json_out:
        print_json(resp)
        return
    rows = [
        [
            c["name"],
            c["value"],
            ", ".join(c["preempts"]) or "-",
            "yes" if c["preemptible"] else "no",
            c["min_run_time"],
            c["order"],
            c["default_cpus"],
            c["default_memory"],
            c["default_time_limit"] or "none",
            c["log_limit"],
            "on" if c.get("nat", True) else "off",
        ]
        for c in resp["classes"]
    ]
    console().print(
        table(
            [
                "CLASS",
                "VALUE",
                "PREEMPTS",
                "PREEMPTIBLE",
                "MIN RUN (s)",
                "ORDER",
                "CPUS",
                "MEMORY",
                "TIME LIMIT",
                "LOG LIMIT",
                "NAT",
            ],
            rows,
        )
    )


@class_app.command("set")
def class_set(
    name: str,
    value: Annotated[int | None, typer.Option("--value")] = None,
    preempts: Annotated[
        str | None, typer.Option("--preempts", help="Comma-separated classes, or none")
    ] = None,
    preemptible: Annotated[bool | None, typer.Option("--preemptible/--not-preemptible")] = None,
    min_run_time: Annotated[str | None, typer.Option("--min-run-time", help="e.g. 10m")] = None,
    order: Annotated[
        str | None,
        typer.Option(
            "--order",
            metavar="fifo|short-first",
            help="The queue order inside each team (docs/scheduling.md, Order)",
        ),
    ] = None,
    cpus: Annotated[str | None, typer.Option("--default-cpus")] = None,
    memory: Annotated[str | None, typer.Option("--default-memory")] = None,
    time_limit: Annotated[str | None, typer.Option("--default-time-limit")] = None,
    log_limit: Annotated[
        str | None,
        typer.Option("--log-limit", help="Newest output kept per stream of a run, e.g. 100Mi"),
    ] = None,
    nat: Annotated[
        bool | None,
        typer.Option(
            "--nat/--no-nat",
            help="Whether the class's bridge jobs reach beyond the node, masqueraded as it",
        ),
    ] = None,
    json_out: JsonOpt = False,
    sock: SocketOpt = None,
) -> None:
    """Create or change a priority class (admins only)."""
    body = {
        "value": value,
        "preempts": None
        if preempts is None
        else [p for p in preempts.split(",") if p and p != "none"],
        "preemptible": preemptible,
        "min_run_time": min_run_time,
        "order": order,
        "default_cpus": cpus,
        "default_memory": memory,
        "default_time_limit": time_limit,
        "log_limit": log_limit,
        "nat": nat,
    }
    resp = Client(sock).put(f"/v1/classes/{name}", body)
    print_json(resp) if json_out else typer.echo(f"Set class {name} (value {resp['value']})")


def _list(values: list[str] | None) -> list[str] | None:
    """Repeated or comma-separated values; "none" clears the list."""
    if values is None:
        return None
    out = [p.strip() for v in values for p in v.split(",") if p.strip()]
    return [] if out == ["none"] else out


SubjectArg = Annotated[str, typer.Argument(help='"*" (everyone), team:<name> or class:<name>')]


@grant_app.command("list")
def grant_list(json_out: JsonOpt = False, sock: SocketOpt = None) -> None:
    """List what is granted to everyone, to teams and to classes."""
    resp = Client(sock).get("/v1/grants")
    if json_out:
        print_json(resp)
        return
    rows = [
        [
            g["subject"],
            ", ".join(g["capabilities"]) or "-",
            ", ".join(g["volume_paths"]) or "-",
            ", ".join(g["devices"]) or "-",
            ", ".join(g.get("networks") or []) or "-",
        ]
        for g in resp["grants"]
    ]
    console().print(table(["TO", "CAPABILITIES", "VOLUME PATHS", "DEVICES", "NETWORKS"], rows))


@grant_app.command("set")
def grant_set(
    subject: SubjectArg,
    capabilities: Annotated[
        list[str] | None,
        typer.Option("--capabilities", help="e.g. CAP_NET_RAW; replaces the list; none clears"),
    ] = None,
    volume_paths: Annotated[
        list[str] | None,
        typer.Option("--volume-paths", help="Host dirs volumes may come from; replaces the list"),
    ] = None,
    devices: Annotated[
        list[str] | None,
        typer.Option("--devices", help="Host device nodes, e.g. /dev/fuse; replaces the list"),
    ] = None,
    networks: Annotated[
        list[str] | None,
        typer.Option(
            "--networks", help="Network modes beyond none and bridge: host; replaces the list"
        ),
    ] = None,
    json_out: JsonOpt = False,
    sock: SocketOpt = None,
) -> None:
    """Grant capabilities, volume paths, devices or network modes to everyone, a team or a
    class (mlq admins)."""
    body = {
        "subject": subject,
        "capabilities": _list(capabilities),
        "volume_paths": _list(volume_paths),
        "devices": _list(devices),
        "networks": _list(networks),
    }
    resp = Client(sock).put("/v1/grants", body)
    if json_out:
        print_json(resp)
        return
    parts = [f"{k.replace('_', ' ')}: {', '.join(resp[k]) or '-'}" for k in body if k != "subject"]
    typer.echo(f"Granted to {subject}: " + "; ".join(parts))


@grant_app.command("delete")
def grant_delete(subject: SubjectArg, json_out: JsonOpt = False, sock: SocketOpt = None) -> None:
    """Take back everything granted to a subject (mlq admins)."""
    resp = Client(sock).post("/v1/grants/delete", {"subject": subject})
    if json_out:
        print_json(resp)
        return
    typer.echo(f"Took back the grant to {subject}")


@caps_app.command("show")
def caps_show(json_out: JsonOpt = False, sock: SocketOpt = None) -> None:
    """Show the per-user caps."""
    from mlq.executor.units import format_size

    resp = Client(sock).get("/v1/user-caps")
    if json_out:
        print_json(resp)
        return
    typer.echo(
        f"max active jobs per user: {resp['max_active_jobs']}; "
        f"max job-file bytes per user: {format_size(resp['max_spec_bytes'])}"
    )


@caps_app.command("set")
def caps_set(
    max_active_jobs: Annotated[int | None, typer.Option("--max-active-jobs")] = None,
    max_spec_bytes: Annotated[
        str | None, typer.Option("--max-spec-bytes", help="e.g. 256Mi")
    ] = None,
    json_out: JsonOpt = False,
    sock: SocketOpt = None,
) -> None:
    """Change the per-user caps (mlq admins)."""
    body = {"max_active_jobs": max_active_jobs, "max_spec_bytes": max_spec_bytes}
    resp = Client(sock).put("/v1/user-caps", body)
    print_json(resp) if json_out else caps_show(sock=sock)


def whoami(json_out: JsonOpt = False, sock: SocketOpt = None) -> None:
    """Who the daemon thinks you are, and your teams."""
    resp = Client(sock).get("/v1/whoami")
    if json_out:
        print_json(resp)
        return
    role = " (mlq admin)" if resp["admin"] else ""
    typer.echo(
        f"{resp['user']} uid={resp['uid']}{role}; teams: {', '.join(resp['teams']) or 'none'}"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(team_app, name="team")
    app.add_typer(quota_app, name="quota")
    app.add_typer(class_app, name="class")
    app.add_typer(grant_app, name="grant")
    app.add_typer(caps_app, name="user-caps")
    app.command("whoami")(whoami)
