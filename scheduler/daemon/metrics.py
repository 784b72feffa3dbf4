"""The Prometheus endpoint (``mlq server --metrics-address HOST:PORT``; docs/metrics.md).

Built with ``prometheus_client``, with the names and labels a Kueue user knows. Two
kinds of figure:

- **what is, read at each scrape** (a collector over the store and the loop's nodes):
  pending jobs by team, class and reason; running jobs; each team's use against its
  guarantee and limit; each node's GPUs and MIG slices, held or free; nodes by state.
- **what happened, counted as it happens** (``after_pass``, called by the loop after
  every pass with its decisions): jobs admitted and how long they waited, jobs
  preempted and why, how long passes take. These count from the daemon's start, as
  Prometheus counters do (a restart is a counter reset, which ``rate()`` handles).

The reason of a pending job is its reason's first word (``Resources``, ``QuotaLimit``,
``Held``, ...): the numbers in the rest would make a series per value.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from mlq.scheduler import states
from mlq.scheduler.daemon.nodes import node_views
from mlq.scheduler.snapshot import Decisions
from mlq.scheduler.store import Store
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("mlq.metrics")

# admission waits: from a second to a week
WAIT_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86400, 3 * 86400, 7 * 86400)
PASS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


def reason_code(reason: str) -> str:
    """``Resources: gpu 8 > 4 free`` -> ``Resources``; ``""`` (not yet seen) -> ``New``."""
    word = reason.split(" ", 1)[0].rstrip(":") if reason else ""
    return word or "New"


class _Now(Collector):
    """The figures of this moment, read when Prometheus scrapes."""

    def __init__(self, store: Store, loop: Any) -> None:
        self.store = store
        self.loop = loop

    def collect(self) -> Iterator[Metric]:
        try:
            yield from self._collect()
        except Exception:  # a scrape never takes the daemon down; it says so in the log
            log.exception("metrics: reading the cluster's state failed")

    def _collect(self) -> Iterator[Metric]:
        pending = GaugeMetricFamily(
            "mlq_pending_jobs",
            "Jobs waiting, by team, priority class and reason (its first word)",
            labels=["team", "priority_class", "reason"],
        )
        running = GaugeMetricFamily(
            "mlq_running_jobs",
            "Jobs starting, running or stopping, by team and priority class",
            labels=["team", "priority_class"],
        )
        counts: dict[tuple[str, ...], int] = {}
        run_counts: dict[tuple[str, ...], int] = {}
        for j in self.store.jobs(states_in=states.ACTIVE, with_spec=False):
            if j.gang_rank:  # a multi-node job counts once
                continue
            if j.state == states.PENDING:
                key = (j.team, j.priority_class, reason_code(j.reason))
                counts[key] = counts.get(key, 0) + 1
            else:
                k2 = (j.team, j.priority_class)
                run_counts[k2] = run_counts.get(k2, 0) + 1
        for key, n in sorted(counts.items()):
            pending.add_metric(list(key), n)
        for k2, n in sorted(run_counts.items()):
            running.add_metric(list(k2), n)
        yield pending
        yield running

        nodes = node_views(self.store, self.loop)
        usage = GaugeMetricFamily(
            "mlq_team_resource_usage",
            "What a team's running jobs hold, by quota resource (gpu, gpu-equivalent, "
            "gpu:<model>, mig:<profile>, cpu in millicores, memory in bytes)",
            labels=["team", "resource"],
        )
        guarantee = GaugeMetricFamily(
            "mlq_team_guarantee",
            "A team's guarantee, by quota resource",
            labels=["team", "resource"],
        )
        limit = GaugeMetricFamily(
            "mlq_team_limit", "A team's limit, by quota resource", labels=["team", "resource"]
        )
        for t in nodes[0].teams if nodes else []:
            for res, v in sorted(t.used.items()):
                usage.add_metric([t.team, res], v)
            for res, v in sorted(t.guarantee.items()):
                guarantee.add_metric([t.team, res], v)
            for res, v in sorted(t.limit.items()):
                limit.add_metric([t.team, res], v)
        yield usage
        yield guarantee
        yield limit

        node_state = GaugeMetricFamily(
            "mlq_node_up",
            "1 for a node offered new jobs; 0 for one down, draining or drained",
            labels=["node", "state"],
        )
        gpus = GaugeMetricFamily(
            "mlq_node_gpus",
            "A node's whole GPUs (not in MIG mode), held by a job or free",
            labels=["node", "model", "state"],
        )
        slices = GaugeMetricFamily(
            "mlq_node_mig_slices",
            "A node's carved MIG slices, held by a job or free",
            labels=["node", "profile", "state"],
        )
        for n in nodes:
            node_state.add_metric([n.name, n.state], 1 if n.state == "up" else 0)
            whole: dict[tuple[str, str], int] = {}
            mig: dict[tuple[str, str], int] = {}
            for g in n.gpus:
                if g.get("mig"):
                    for m in g["mig"]:
                        k = (str(m.get("profile", "")), "held" if m.get("job") else "free")
                        mig[k] = mig.get(k, 0) + 1
                else:
                    k = (str(g.get("model", "")), "held" if g.get("job") else "free")
                    whole[k] = whole.get(k, 0) + 1
            for (model, st), c in sorted(whole.items()):
                gpus.add_metric([n.name, model, st], c)
            for (profile, st), c in sorted(mig.items()):
                slices.add_metric([n.name, profile, st], c)
        yield node_state
        yield gpus
        yield slices


class Metrics:
    """The daemon's registry: the collector of the moment and the counters the loop
    feeds after each pass."""

    def __init__(self, store: Store, loop: Any) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.admitted = Counter(
            "mlq_admitted_jobs",
            "Jobs the scheduler started (a multi-node job once), by team and class",
            ["team", "priority_class"],
            registry=r,
        )
        self.wait = Histogram(
            "mlq_admission_wait_time_seconds",
            "From submission (or requeue) to start, of each job started",
            ["team", "priority_class"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.preempted = Counter(
            "mlq_preempted_jobs",
            "Jobs chosen as preemption victims, by team, class and reason: priority (for a "
            "job of a higher class) or reclaim (for a team taking back its guarantee)",
            ["team", "priority_class", "reason"],
            registry=r,
        )
        self.passes = Histogram(
            "mlq_scheduling_pass_duration_seconds",
            "How long each scheduling pass took, snapshot to applied decisions",
            buckets=PASS_BUCKETS,
            registry=r,
        )
        r.register(_Now(store, loop))
        self._clock = loop.clock
        self._store = store

    def _queued_at(self, job: Any) -> float:
        """When the job last joined the queue: its submission, or for a requeued job
        its last return to PENDING (an event: the row keeps no such time)."""
        if not job.restart_count:
            return float(job.submitted_at)
        back = [
            e.at
            for e in self._store.events(job.id)
            if e.state == states.PENDING and e.reason.startswith("Requeued")
        ]
        return back[-1] if back else float(job.submitted_at)

    def after_pass(self, decisions: Decisions, jobs: dict[int, Any], seconds: float) -> None:
        """Count what the pass decided (the loop calls this; never raises)."""
        try:
            self.passes.observe(seconds)
            now = self._clock.time()
            for s in decisions.starts:
                j = jobs.get(int(s.job))
                if j is None or s.rank:
                    continue
                self.admitted.labels(j.team, j.priority_class).inc()
                since = self._queued_at(j)
                self.wait.labels(j.team, j.priority_class).observe(max(0.0, now - since))
            seen: set[int] = set()
            for p in decisions.preemptions:
                v, by = jobs.get(int(p.victim)), jobs.get(int(p.for_job))
                if v is None or int(p.victim) in seen:
                    continue
                seen.add(int(p.victim))
                why = "priority" if by is not None and by.priority > v.priority else "reclaim"
                self.preempted.labels(v.team, v.priority_class, why).inc()
        except Exception:
            log.exception("metrics: counting a pass failed")


def serve(metrics: Metrics, address: str) -> Any:
    """Start the HTTP endpoint at ``HOST:PORT`` (``/metrics``) on a thread of its own;
    returns the server, for ``shutdown()``."""
    from prometheus_client import start_http_server

    host, port = parse_address(address)
    server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    return server


def parse_address(address: str) -> tuple[str, int]:
    """``127.0.0.1:9464`` -> (host, port); ``:9464`` listens on every address."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f'--metrics-address: "{address}" is not HOST:PORT, e.g. 127.0.0.1:9464')
    return host.strip("[]") or "0.0.0.0", int(port)
