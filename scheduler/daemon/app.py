"""The daemon's HTTP API (FastAPI), served on a Unix socket.

Routes are thin: identify the caller from the socket's credentials, check the
rule in ``auth``, call the store, answer with a typed model. Every ``MlqError``
becomes an HTTP status with a JSON body the CLI turns back into the same error.
Handlers are ``async`` and call the (fast, local) store directly: one event
loop thread owns all writes, which keeps SQLite single-writer and cheap.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, Response
from mlq.executor.units import format_cpus, format_duration, format_size
from mlq.scheduler import accounting, grants, states, wire
from mlq.scheduler.cluster import PerUser, PriorityClass, parse_quota_value
from mlq.scheduler.daemon import checkpoint_api, holds, update
from mlq.scheduler.daemon import schemas as S
from mlq.scheduler.daemon.auth import (
    Caller,
    is_team_admin,
    may_see_private,
    require_admin,
    require_member_manager,
    require_owner,
    require_team_admin,
)
from mlq.scheduler.daemon.batcher import SubmitBatcher
from mlq.scheduler.daemon.limits import BodyLimit, install_handlers
from mlq.scheduler.daemon.logs import read_log
from mlq.scheduler.daemon.nodes import node_views
from mlq.scheduler.daemon.peer import Peer
from mlq.scheduler.daemon.submit import as_jobs, cgroup_limits, check_caps, job_rows, prepare
from mlq.scheduler.errors import Conflict, InvalidInput, MlqError, NotFound, Refused, status_of
from mlq.scheduler.estimate import estimate_starts
from mlq.scheduler.store import Store
from mlq.scheduler.webhooks import Rules, check_url, shown
from pydantic import BaseModel

JobIdParam = Annotated[int, PathParam(ge=1, le=2**63 - 1, description="A job ID")]


def typed(model: BaseModel) -> Response:
    """Serialise a response model once. The route still declares ``response_model``
    for the OpenAPI schema; returning a ``Response`` skips FastAPI's second
    validation pass, which matters on the submit and queue hot paths."""
    return Response(model.model_dump_json(), media_type="application/json")


class Daemon:
    """What the routes need: the store, the admin group, and a hook that asks for a
    scheduling pass (a no-op until the scheduling loop is attached)."""

    def __init__(self, store: Store, admin_group: str = "mlq-admin") -> None:
        self.store = store
        self.admin_group = admin_group
        self.on_change: Callable[[str], None] = lambda why: None
        # Cancelling and requeueing a running job need the executor; the loop installs
        # these.
        self.stop_running: Callable[[int, bool, str], str] | None = None
        self.requeue_running: Callable[[int, str], list[int]] | None = None
        self.loop: Any = None  # the scheduling loop, when the daemon runs one
        self.forbidden: tuple[str, ...] = grants.FORBIDDEN_PATHS  # never mounted into a job
        # the cluster's nodes as the policy sees them (for what no node could hold)
        self.nodes: Callable[[], list[Any]] = lambda: []
        self.fleet: Any = None  # the agents' nodes, when this is a control plane
        self.admin_nodes: frozenset[str] = frozenset()  # nodes whose root and admins count
        self.webhook_rules = Rules()  # where webhooks may go (the config's notifications)
        self.dashboard: Any = None  # the web dashboard, when it is served (dashboard.py)
        # this machine's checkpoint volumes (checkpoints.Checkpoints), when it runs jobs
        self.checkpoints: Any = None


async def caller(request: Request) -> Caller:
    """The caller, from the socket's peer credentials (set by ``PeerCredProtocol``), or
    the user a node's agent vouches for (``agentproxy.py``). ``async``: a plain
    function would be run in a worker thread, a hop per request. A request the web
    dashboard makes in-process carries its session's caller (``mlq.caller``); no
    server puts that key in a scope from anything a client sends."""
    daemon = request.app.state.daemon
    given: Caller | None = request.scope.get("mlq.caller")
    if given is not None:  # a dashboard session's viewer, set in-process (dashboard.py)
        return given
    peer: Peer | None = request.scope.get("mlq.peer")
    if peer is not None:
        return Caller.of(peer, daemon.admin_group)
    return vouched(request, daemon)


def vouched(request: Request, daemon: Daemon) -> Caller:
    """A user as a node vouches for them. Only an enrolled node's connection may vouch;
    root on a node is not root of the cluster, and admin rights come only from the
    nodes the cluster config trusts with them (``docs/security.md``)."""
    node = request.scope.get("mlq.node")
    if node is None or node.role != "node":
        raise Refused(
            "the caller could not be identified: connect over mlq's Unix socket, "
            "on a node, through its agent"
        )
    h = request.headers
    try:
        uid, gid, pid = int(h["x-mlq-uid"]), int(h["x-mlq-gid"]), int(h.get("x-mlq-pid", "0"))
    except (KeyError, ValueError):
        raise Refused(
            f"node {node.name} did not say who is asking (X-Mlq-Uid, X-Mlq-Gid)"
        ) from None
    trusted = node.name in daemon.admin_nodes
    from mlq.scheduler.daemon.peer import identify

    peer = identify(pid, uid, gid)
    caller = Caller.of(peer, daemon.admin_group)
    if caller.is_admin and not trusted:
        caller = Caller(peer=peer, is_admin=False, squashed_on=node.name if uid == 0 else None)
    return caller


Who = Annotated[Caller, Depends(caller)]


def build_app(daemon: Daemon) -> FastAPI:
    app = FastAPI(
        title="mlq",
        summary="A batch scheduler for ML jobs on shared GPU machines",
        version="1",
    )
    app.state.daemon = daemon
    store = daemon.store
    app.add_middleware(BodyLimit)
    install_handlers(app)
    batcher = SubmitBatcher(store)

    @app.exception_handler(MlqError)
    async def _mlq_error(_: Request, exc: MlqError) -> JSONResponse:
        status = status_of(exc)
        problems = exc.problems if isinstance(exc, InvalidInput) else []
        body = S.ErrorOut(error=type(exc).__name__, message=str(exc), problems=problems)
        return JSONResponse(body.model_dump(), status_code=status)

    # -- jobs ---------------------------------------------------------------------

    @app.post("/v1/jobs", response_model=S.SubmitResponse, tags=["jobs"])
    async def submit(body: S.SubmitRequest, who: Who) -> Response:
        # validation stays on the event loop (a thread hop costs more than it saves:
        # bench/api_throughput.py); the write goes to the batcher's worker thread
        resolved, indices = prepare(
            store,
            who,
            body.spec,
            body.source,
            body.array,
            body.after,
            daemon.forbidden,
            daemon.nodes(),
            body.workdir,
            body.dependency,
        )
        if resolved.notify is not None:  # a name is checked again, resolved, when sent
            problem = daemon.webhook_rules.url_problem(resolved.notify.webhook)
            if problem is not None:
                raise InvalidInput(f"notify.webhook: {problem}")
        if body.dry_run:
            return S.SubmitResponse(
                jobs=[],
                dry_run=True,
                resolved=resolved.model_dump(mode="json") | {"array": indices},
                limits=cgroup_limits(resolved),
            )
        rows = job_rows(store, who, resolved, indices)
        if who.peer.uid == 0:
            committed = batcher.enqueue(rows, as_array=indices is not None)
        else:
            # one user's submissions pass the cap check one at a time: each counts
            # the ones queued before it (the batcher holds them until committed)
            user = who.user
            async with batcher.one_at_a_time(user):
                load, queued = await batcher.user_load(user)
                check_caps(store, user, len(rows), len(rows) * rows[0]["spec_bytes"], queued, load)
                committed = batcher.enqueue(rows, as_array=indices is not None)
        await committed  # acknowledged only once committed
        jobs = as_jobs(rows)
        daemon.on_change("submit")
        return typed(
            S.SubmitResponse(jobs=[S.JobOut.of(j) for j in jobs], array_id=jobs[0].array_id)
        )

    # Listings are plain functions: FastAPI runs them on its thread pool, so a long
    # one never holds the event loop that every submit goes through.
    @app.get("/v1/jobs", response_model=S.JobList, tags=["jobs"])
    def queue(
        team: Annotated[str | None, Query(max_length=256)] = None,
        state: Annotated[list[str] | None, Query(max_length=20)] = None,
        user: Annotated[str | None, Query(max_length=256)] = None,
        limit: Annotated[int, Query(ge=1, le=100_000)] = 100_000,
    ) -> Response:
        wanted = [s.upper() for s in state] if state else list(states.ACTIVE)
        bad = [s for s in wanted if s not in states.ALL]
        if bad:
            raise InvalidInput(
                f'state: "{bad[0]}" is not a state; use one of {", ".join(states.ALL)}'
            )
        rows = store.listing(wanted, team=team, user=user, limit=limit)
        return Response(S.listing_json(rows), media_type="application/json")

    @app.get("/v1/history", response_model=S.JobList, tags=["jobs"])
    def history(
        since: float | None = None,
        before: float | None = None,
        team: Annotated[str | None, Query(max_length=256)] = None,
        user: Annotated[str | None, Query(max_length=256)] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
        offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    ) -> Response:
        """The newest ``limit`` ended jobs after the ``offset`` newest (oldest first in
        the answer): offset=limit gives the page before."""
        jobs = store.history(
            since=since, before=before, team=team, user=user, limit=limit, offset=offset
        )
        jobs.reverse()
        return Response(S.job_list_json(jobs), media_type="application/json")

    # the last estimates and the snapshot they played: one play per pass, whoever asks
    # and however often (a loop of requests costs the daemon nothing more)
    played: list[Any] = [None, None]
    playing = threading.Lock()

    @app.get("/v1/estimates", response_model=S.EstimateList, tags=["jobs"])
    def estimates() -> S.EstimateList:
        """When each pending job is estimated to start: the last pass's snapshot played
        forward (scheduler/estimate.py), running jobs ending after the share of their
        limit that the last week's completed runs used."""
        loop = need_loop()
        snap = loop.last_snapshot
        if snap is None:
            return S.EstimateList(at=S.iso(time.time()) or "", used=1.0, estimates=[])
        with playing:
            if played[0] is not snap:
                week = snap.now - 7 * 86400
                runs = [r for r in store.runs(week, snap.now) if r.ended_at]
                used = accounting.limit_used(runs)
                got = estimate_starts(snap, used=used)
                out = [S.EstimateOut(id=int(j), start=S.iso(t)) for j, t in got.items()]
                played[:] = [
                    snap,
                    S.EstimateList(at=S.iso(snap.now) or "", used=used, estimates=out),
                ]
            return played[1]

    @app.get("/v1/report", response_model=S.ReportOut, tags=["jobs"])
    def report(
        since: float,
        until: float | None = None,
        by: Annotated[str, Query(pattern="^(team|user|class)$")] = "team",
    ) -> S.ReportOut:
        """Usage per team, user or class over [since, until) (mlq report; sreport)."""
        end = until if until is not None else time.time()
        if end <= since:
            raise InvalidInput(f"--until ({end:.0f}) must be after --since ({since:.0f})")
        rows = accounting.summarize(store.runs(since, end), since, end, by)
        guarantees = {t.name: t.guarantee for t in store.teams()}
        out = []
        for u in rows:
            g = guarantees.get(u.key, {}) if by == "team" else {}
            eq = g.get("gpu-equivalent", g.get("gpu"))
            out.append(S.UsageOut(**dataclasses.asdict(u), guarantee_gpu_equivalents=eq))
        return S.ReportOut(since=since, until=end, by=by, rows=out)

    @app.get("/v1/jobs/{job_id}", response_model=S.JobDetail, tags=["jobs"])
    async def show(job_id: JobIdParam, who: Who) -> S.JobDetail:
        job = store.job(job_id)
        # env values and command arguments are the owner's, the team admins' and mlq
        # admins' to see (Slurm's PrivateData=jobs for the parts that hold secrets)
        private = not may_see_private(who, job, store)
        return S.JobDetail.detail(job, store.events(job_id), redact=private)

    @app.post("/v1/jobs/cancel", response_model=S.CancelResponse, tags=["jobs"])
    async def cancel(body: S.CancelRequest, who: Who) -> S.CancelResponse:
        """Cancel each job that exists and that the caller may cancel; each other one
        is reported, not an error for all. The pending ones are cancelled together in
        one transaction first, so none of them starts while the others are handled."""
        ids = list(dict.fromkeys(body.ids))
        jobs = {j.id: j for j in store.jobs(ids=ids, with_spec=False)}
        why = f"Cancelled by {who.user}"
        results: dict[int, S.CancelResult] = {}
        allowed = []
        for job_id in ids:
            j = jobs.get(job_id)
            if j is None:
                results[job_id] = S.CancelResult(
                    id=job_id,
                    state="",
                    ok=False,
                    message="no such job; see mlq queue or mlq history",
                )
            elif not may_see_private(who, j, store):
                results[job_id] = S.CancelResult(
                    id=job_id,
                    state=j.state,
                    ok=False,
                    refused=True,
                    message=f"{who.user} may not cancel job {job_id}: it belongs to {j.user} "
                    f'and you are not an admin of team "{j.team}"',
                )
            else:
                allowed.append(job_id)
        for job_id in store.cancel_pending(allowed, why):
            results[job_id] = S.CancelResult(
                id=job_id, state=states.CANCELLED, ok=True, message=why
            )
        for job_id in allowed:
            if job_id in results:
                continue
            state = store.job(job_id).state  # it may have moved since it was read
            if state in states.FINAL:
                results[job_id] = S.CancelResult(
                    id=job_id, state=state, ok=True, message="already ended"
                )
            elif daemon.stop_running is not None:
                new_state = daemon.stop_running(job_id, body.now, why)
                results[job_id] = S.CancelResult(id=job_id, state=new_state, ok=True, message=why)
            else:
                results[job_id] = S.CancelResult(
                    id=job_id, state=state, ok=False, message="this daemon cannot stop running jobs"
                )
        daemon.on_change("cancel")
        return S.CancelResponse(results=[results[i] for i in ids])

    @app.post("/v1/jobs/hold", response_model=S.ActionResponse, tags=["jobs"])
    def hold(body: S.JobIds, who: Who) -> S.ActionResponse:
        """Keep pending jobs from starting (mlq hold; scheduler/daemon/holds.py)."""
        results = holds.change(store, who, body.ids, hold=True)
        daemon.on_change("hold")
        return S.ActionResponse(results=results)

    @app.post("/v1/jobs/release", response_model=S.ActionResponse, tags=["jobs"])
    def release(body: S.JobIds, who: Who) -> S.ActionResponse:
        """Let held jobs start again (mlq release)."""
        results = holds.change(store, who, body.ids, hold=False)
        daemon.on_change("release")
        return S.ActionResponse(results=results)

    @app.post("/v1/jobs/{job_id}/update", response_model=S.ActionResponse, tags=["jobs"])
    def update_job(job_id: JobIdParam, body: S.UpdateRequest, who: Who) -> S.ActionResponse:
        """Change a pending job, validated as at submit (mlq update; scontrol update)."""
        loop = need_loop()

        def change() -> tuple[list[int], str]:
            changes = body.model_dump()
            return update.update(store, who, job_id, changes, daemon.forbidden, daemon.nodes())

        _, why = loop.update_pending(change)
        result = S.ActionResult(id=job_id, state=states.PENDING, ok=True, message=why)
        return S.ActionResponse(results=[result])

    @app.post("/v1/jobs/requeue", response_model=S.ActionResponse, tags=["jobs"])
    def requeue(body: S.JobIds, who: Who) -> S.ActionResponse:
        """Stop running jobs gracefully and put them back in the queue with their
        checkpoint and MLQ_RESTART_COUNT raised (scontrol requeue): who may cancel a
        job may requeue it."""
        out = []
        for job_id in dict.fromkeys(body.ids):
            try:
                j = store.job(job_id)
            except NotFound:
                out.append(S.ActionResult(id=job_id, state="", ok=False, message="no such job"))
                continue
            if not may_see_private(who, j, store):
                why = (
                    f"{who.user} may not requeue job {job_id}: it belongs to {j.user} "
                    f'and you are not an admin of team "{j.team}"'
                )
                out.append(
                    S.ActionResult(id=job_id, state=j.state, ok=False, refused=True, message=why)
                )
                continue
            if j.state == states.PENDING:
                out.append(
                    S.ActionResult(id=job_id, state=j.state, ok=True, message="already pending")
                )
                continue
            if daemon.requeue_running is None:
                message = "this daemon cannot stop running jobs"
                out.append(S.ActionResult(id=job_id, state=j.state, ok=False, message=message))
                continue
            why = f"Requeued by {who.user}"
            try:
                daemon.requeue_running(job_id, why)
            except Conflict as exc:
                state = store.job(job_id).state
                out.append(S.ActionResult(id=job_id, state=state, ok=False, message=str(exc)))
                continue
            out.append(S.ActionResult(id=job_id, state=states.STOPPING, ok=True, message=why))
        return S.ActionResponse(results=out)

    # -- teams, quotas, classes ---------------------------------------------------------

    def team_out(t: Any, who: Caller | None = None) -> S.TeamOut:
        # a webhook's path often holds its secret: whole for the team's admins and
        # mlq admins, its scheme and host for everyone else
        hook = t.webhook if who is not None and is_team_admin(who, t.name, store) else ""
        return S.TeamOut(
            name=t.name, members=t.members, admins=t.admins, guarantee=t.guarantee,
            limit=t.limit, per_user=t.per_user,
            webhook=hook or (shown(t.webhook) if t.webhook else ""),
        )  # fmt: skip

    @app.get("/v1/teams", response_model=S.TeamList, tags=["teams"])
    async def teams(who: Who) -> S.TeamList:
        return S.TeamList(teams=[team_out(t, who) for t in store.teams()])

    @app.get("/v1/teams/{name}", response_model=S.TeamOut, tags=["teams"])
    async def team(name: str, who: Who) -> S.TeamOut:
        return team_out(store.team(name), who)

    @app.put("/v1/teams/{name}/webhook", response_model=S.TeamOut, tags=["teams"])
    async def set_webhook(name: str, body: S.WebhookSet, who: Who) -> S.TeamOut:
        """The team's webhook, told when its jobs end or are preempted ("" clears it):
        its team admins and mlq admins set it (mlq team set-webhook)."""
        require_team_admin(who, name, store, daemon.admin_group, "set the webhook of")
        store.team(name)  # a team that does not exist is NotFound before the URL is judged
        if body.url:
            try:
                check_url(body.url)
            except ValueError as exc:
                raise InvalidInput(f'webhook: "{shown(body.url)}" {exc}') from None
            problem = daemon.webhook_rules.url_problem(body.url)
            if problem is not None:
                raise InvalidInput(f"webhook: {problem}")
        return team_out(store.set_webhook(name, body.url), who)

    @app.post("/v1/teams", response_model=S.TeamOut, tags=["teams"])
    async def create_team(body: S.TeamCreate, who: Who) -> S.TeamOut:
        require_admin(who, f'create team "{body.name}"', daemon.admin_group)
        store.create_team(body.name)
        for m in body.members:
            store.add_member(body.name, m, "member")
        for a in body.admins:
            store.add_member(body.name, a, "admin")
        return team_out(store.team(body.name))

    @app.delete("/v1/teams/{name}", response_model=S.TeamList, tags=["teams"])
    async def delete_team(name: str, who: Who) -> S.TeamList:
        require_admin(who, f'delete team "{name}"', daemon.admin_group)
        store.delete_team(name)
        daemon.on_change("team")
        return S.TeamList(teams=[team_out(t) for t in store.teams()])

    @app.post("/v1/teams/{name}/members", response_model=S.TeamOut, tags=["teams"])
    async def add_member(name: str, body: S.MemberChange, who: Who) -> S.TeamOut:
        require_member_manager(who, name, body.name, body.role, store, daemon.admin_group)
        store.add_member(name, body.name, body.role)
        return team_out(store.team(name))

    @app.post("/v1/teams/{name}/members/remove", response_model=S.TeamOut, tags=["teams"])
    async def remove_member(name: str, body: S.MemberRemoval, who: Who) -> S.TeamOut:
        require_member_manager(who, name, body.name, body.role, store, daemon.admin_group)
        store.remove_member(name, body.name, body.role)
        return team_out(store.team(name))

    @app.put("/v1/teams/{name}/per-user", response_model=S.TeamOut, tags=["teams"])
    def set_per_user(name: str, body: PerUser, who: Who) -> S.TeamOut:
        """The team's limits on each of its users (running jobs, GPUs held): its team
        admins and mlq admins set them (mlq team user-limit)."""
        require_team_admin(who, name, store, daemon.admin_group, "set the per-user limits of")
        t = store.set_per_user(name, body.as_map())
        daemon.on_change("per-user")
        return team_out(t)

    @app.put("/v1/quotas/{team}", response_model=S.TeamOut, tags=["teams"])
    async def set_quota(team: str, body: S.QuotaSet, who: Who) -> S.TeamOut:
        require_admin(who, f'set the quota of team "{team}"', daemon.admin_group)
        problems: list[str] = []
        parsed: dict[str, dict[str, float]] = {"guarantee": {}, "limit": {}}
        for kind in ("guarantee", "limit"):
            for key, value in getattr(body, kind).items():
                try:
                    parsed[kind][key] = parse_quota_value(key, value)
                except ValueError as exc:
                    problems.append(f"--{kind} {key}={value}: {exc}")
        if problems:
            raise InvalidInput(problems)
        view = store.set_quota(team, parsed["guarantee"], parsed["limit"], body.clear)
        daemon.on_change("quota")
        return team_out(view)

    def class_out(c: PriorityClass) -> S.ClassOut:
        d = c.defaults
        return S.ClassOut(
            name=c.name,
            value=c.value,
            preempts=c.preempts,
            preemptible=c.preemptible,
            min_run_time=c.min_run_time,
            order=c.order,
            default_cpus=format_cpus(d.cpus),
            default_memory=format_size(d.memory),
            default_time_limit=format_duration(d.time_limit) if d.time_limit else None,
            log_limit=format_size(c.log_limit),
            nat=c.nat,
        )

    @app.get("/v1/classes", response_model=S.ClassList, tags=["classes"])
    async def classes() -> S.ClassList:
        return S.ClassList(classes=[class_out(c) for c in store.classes()])

    @app.put("/v1/classes/{name}", response_model=S.ClassOut, tags=["classes"])
    async def set_class(name: str, body: S.ClassSet, who: Who) -> S.ClassOut:
        require_admin(who, f'set priority class "{name}"', daemon.admin_group)
        current = next((c for c in store.classes() if c.name == name), None)
        if current is None and body.value is None:
            raise InvalidInput(f'class "{name}" is new: --value is required')
        # JSON mode writes CPUs as "4000m", which parses back to the same value
        base = current.model_dump(mode="json") if current else {"name": name}
        defaults = dict(base.get("defaults", {}))
        for key in ("cpus", "memory", "time_limit"):
            if (v := getattr(body, f"default_{key}")) is not None:
                defaults[key] = v
        keys = ("value", "preempts", "preemptible", "min_run_time", "order", "log_limit", "nat")
        updates = {k: getattr(body, k) for k in keys if getattr(body, k) is not None}
        from mlq.scheduler.spec import validation_problems
        from pydantic import ValidationError

        try:
            pc = PriorityClass.model_validate(base | updates | {"defaults": defaults})
        except ValidationError as exc:
            raise InvalidInput(validation_problems(exc, PriorityClass)) from None
        store.set_class(pc)
        daemon.on_change("class")
        return class_out(pc)

    # -- per-user caps -------------------------------------------------------------------

    def caps_out() -> S.UserCapsOut:
        c = store.user_caps()
        return S.UserCapsOut(max_active_jobs=c.max_active_jobs, max_spec_bytes=c.max_spec_bytes)

    @app.get("/v1/user-caps", response_model=S.UserCapsOut, tags=["teams"])
    async def user_caps() -> S.UserCapsOut:
        return caps_out()

    @app.put("/v1/user-caps", response_model=S.UserCapsOut, tags=["teams"])
    async def set_user_caps(body: S.UserCapsSet, who: Who) -> S.UserCapsOut:
        require_admin(who, "change the per-user caps", daemon.admin_group)
        from mlq.scheduler.cluster import UserCaps
        from mlq.scheduler.spec import validation_problems
        from pydantic import ValidationError

        current = store.user_caps().model_dump()
        changes = {k: v for k, v in body.model_dump().items() if v is not None}
        try:
            caps = UserCaps.model_validate(current | changes)
        except ValidationError as exc:
            raise InvalidInput(validation_problems(exc, UserCaps)) from None
        store.set_user_caps(caps)
        return caps_out()

    # -- grants --------------------------------------------------------------------------

    def grant_out(g: grants.Grant) -> S.GrantOut:
        return S.GrantOut(
            subject=g.subject,
            capabilities=list(g.capabilities),
            volume_paths=list(g.volume_paths),
            devices=list(g.devices),
            networks=list(g.networks),
        )

    @app.get("/v1/grants", response_model=S.GrantList, tags=["grants"])
    async def grant_list() -> S.GrantList:
        return S.GrantList(grants=[grant_out(g) for g in store.grants()])

    @app.put("/v1/grants", response_model=S.GrantOut, tags=["grants"])
    async def grant_set(body: S.GrantSet, who: Who) -> S.GrantOut:
        require_admin(who, f'grant to "{body.subject}"', daemon.admin_group)
        current = next((g for g in store.grants() if g.subject == body.subject), None)
        base = {"to": body.subject}
        if current is not None:
            base |= {
                "capabilities": list(current.capabilities),
                "volume_paths": list(current.volume_paths),
                "devices": list(current.devices),
                "networks": list(current.networks),
            }
        changes = {
            k: getattr(body, k)
            for k in ("capabilities", "volume_paths", "devices", "networks")
            if getattr(body, k) is not None
        }
        from mlq.scheduler.cluster import GrantConfig
        from mlq.scheduler.spec import validation_problems
        from pydantic import ValidationError

        try:
            grant = GrantConfig.model_validate(base | changes).grant()
        except ValidationError as exc:
            raise InvalidInput(validation_problems(exc, GrantConfig)) from None
        store.set_grant(grant)
        return grant_out(grant)

    @app.post("/v1/grants/delete", response_model=S.GrantList, tags=["grants"])
    async def grant_delete(body: S.GrantDelete, who: Who) -> S.GrantList:
        require_admin(who, f'take back the grant to "{body.subject}"', daemon.admin_group)
        store.delete_grant(body.subject)
        return S.GrantList(grants=[grant_out(g) for g in store.grants()])

    # -- the running system -------------------------------------------------------------

    def need_loop() -> Any:
        if daemon.loop is None:
            raise Conflict("this daemon runs no scheduling loop")
        return daemon.loop

    @app.get("/v1/nodes", response_model=S.NodeList, tags=["nodes"])
    async def nodes(who: Who, refresh: bool = False) -> S.NodeList:
        loop = need_loop()
        if refresh:
            require_admin(who, "rediscover this node's GPUs", daemon.admin_group)
            loop.refresh_gpus()
        return S.NodeList(nodes=node_views(store, loop))

    @app.post("/v1/nodes/{name}/drain", response_model=S.NodeList, tags=["nodes"])
    def drain(name: str, body: S.DrainRequest, who: Who) -> S.NodeList:
        """Offer the node nothing new; its running jobs finish (scontrol update
        state=drain). mlq admins only."""
        require_admin(who, f'drain node "{name}"', daemon.admin_group)
        loop = need_loop()
        loop.drain(name, body.reason or f"drained by {who.user}", who.user)
        return S.NodeList(nodes=node_views(store, loop))

    @app.post("/v1/nodes/{name}/resume", response_model=S.NodeList, tags=["nodes"])
    def resume(name: str, who: Who) -> S.NodeList:
        """Offer a drained node new jobs again. mlq admins only."""
        require_admin(who, f'resume node "{name}"', daemon.admin_group)
        loop = need_loop()
        loop.resume(name)
        return S.NodeList(nodes=node_views(store, loop))

    checkpoint_api.add_routes(app, daemon, caller)  # /v1/checkpoints: mlq admins'

    @app.get("/v1/status", response_model=S.StatusOut, tags=["meta"])
    async def status() -> S.StatusOut:
        loop = need_loop()
        counts = store.count_by_state()
        return S.StatusOut(
            passes=loop.stats.passes,
            asks=loop.stats.asks,
            last_pass_ms=loop.stats.last_pass_ms,
            uptime_s=time.time() - loop.stats.started,
            running=sum(
                counts.get(x, 0) for x in (states.STARTING, states.RUNNING, states.STOPPING)
            ),
            pending=counts.get(states.PENDING, 0),
        )

    @app.get("/v1/top", response_model=S.TopOut, tags=["nodes"])
    async def top() -> S.TopOut:
        loop = need_loop()
        running = []
        for j in store.jobs(states_in=(states.STARTING, states.RUNNING, states.STOPPING)):
            spec = loop.specs.of(j)
            figures = loop.live_stats(j)
            running.append(
                S.RunningOut(
                    id=j.id or 0,
                    name=j.name,
                    team=j.team,
                    user=j.user,
                    state=j.state,
                    memory_current=figures.memory_current if figures else None,
                    memory_peak=figures.memory_peak if figures else None,
                    memory_max=spec.resources.memory or 0,
                    cpus=format_cpus(spec.resources.cpus or 0),
                    cpu_usage_s=figures.cpu_usage_usec / 1e6 if figures else None,
                    cpu_throttled_s=figures.cpu_throttled_usec / 1e6 if figures else None,
                )
            )
        pending = [
            S.JobOut.of(j)
            for j in store.jobs(states_in=(states.PENDING,), limit=200, with_spec=False)
        ]
        return S.TopOut(
            nodes=node_views(store, loop),
            running=running,
            pending=pending,
            passes=loop.stats.passes,
            last_pass_ms=loop.stats.last_pass_ms,
        )

    @app.get("/v1/jobs/{job_id}/logs", response_model=S.LogChunk, tags=["jobs"])
    async def logs(
        job_id: JobIdParam,
        who: Who,
        stream: str = "stdout",
        run: int | None = None,
        offset: int = 0,
        limit: int = 1 << 20,
    ) -> S.LogChunk:
        if stream not in ("stdout", "stderr"):
            raise InvalidInput(f'stream: "{stream}" is not allowed; use stdout or stderr')
        job = store.job(job_id)
        require_owner(who, job, store, action="read the logs of")
        executor = daemon.loop.executor_of(job) if daemon.loop is not None else None
        if executor is None:
            where = f"node {job.node}" if job.node else "no node"
            raise Conflict(f"job {job_id}'s output is on {where}, which this server cannot reach")
        if daemon.fleet is None:
            return read_log(job, executor, stream, run, offset, limit)
        # a remote node's output comes through its agent's next sync: wait off the loop
        return await asyncio.to_thread(read_log, job, executor, stream, run, offset, limit)

    # -- agents (a node's certificate, on the control plane's TCP port) -----------------

    @app.post("/v1/agent/sync", response_model=wire.SyncReply, tags=["cluster"])
    async def agent_sync(body: wire.SyncRequest, request: Request) -> Response:
        node = request.scope.get("mlq.node")
        if node is None or node.role != "node":
            raise Refused("only an enrolled node's agent may sync (a node certificate)")
        if daemon.fleet is None:
            raise Conflict("this server runs no cluster (start it with --listen)")
        reply = await daemon.fleet.sync(node.name, body, request.scope.get("mlq.address", ""))
        return typed(reply)

    @app.post("/v1/dashboard/login", response_model=S.DashboardLogin, tags=["meta"])
    async def dashboard_login(who: Who) -> S.DashboardLogin:
        """A login URL for the web dashboard, good once for two minutes, that signs the
        browser in as the caller (``mlq dashboard``; docs/dashboard.md)."""
        if daemon.dashboard is None:
            raise Conflict(
                "this server serves no web dashboard: an mlq admin starts it with "
                "mlq server --dashboard-address HOST:PORT (docs/dashboard.md)"
            )
        return daemon.dashboard.login(who)  # type: ignore[no-any-return]

    @app.get("/v1/whoami", response_model=S.WhoAmI, tags=["meta"])
    async def whoami(who: Who) -> S.WhoAmI:
        member, admin = store.teams_of(who.user, who.peer.groups)
        return S.WhoAmI(
            user=who.user,
            uid=who.peer.uid,
            gid=who.peer.gid,
            groups=list(who.peer.groups),
            admin=who.is_admin,
            teams=sorted(member),
            admin_of=sorted(admin),
        )

    return app
