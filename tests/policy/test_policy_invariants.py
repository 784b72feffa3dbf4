"""Properties every decision must keep, checked on generated clusters (the decision
benchmark's builder): nothing is handed out twice, limits hold, every job is answered."""

from __future__ import annotations

import copy
import importlib.util
from dataclasses import replace
from pathlib import Path

import pytest
from mlq.executor import mig
from mlq.scheduler.policy import decide
from mlq.scheduler.quota import mig_share

_spec = importlib.util.spec_from_file_location(
    "mlq_bench_decision", Path(__file__).resolve().parents[2] / "bench" / "decision.py"
)
_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_bench)
build = _bench.build


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_decisions_keep_the_rules(seed: int) -> None:
    snap = build(20, 600, seed=seed)
    d = decide(snap)
    pending = {p.id: p for p in snap.pending}
    running = {r.id: r for r in snap.running}
    # every pending job starts or has exactly one reason
    assert sorted(map(str, [s.job for s in d.starts] + list(d.reasons))) == sorted(
        map(str, pending)
    )
    # no whole GPU or MIG slot is given twice, or given while a running job holds it
    taken = {(r.node, g) for r in snap.running for g in r.gpus}
    slots: dict[tuple[str, int], list[tuple[str, int]]] = {}
    for r in snap.running:
        for s in r.mig:
            slots.setdefault((r.node, s.gpu), []).append((s.profile, s.start))
    nodes = {n.name: n for n in snap.nodes}
    for s in d.starts:
        job = pending[s.job]
        gpus = {g.index: g for g in nodes[s.node].gpus}
        for g in s.gpus:
            assert (s.node, g) not in taken and gpus[g].mig is None
            taken.add((s.node, g))
        assert len(s.gpus) == (0 if job.mig else job.gpus)
        for m in s.mig:
            placed = slots.setdefault((s.node, m.gpu), [])
            carved = {st: p for p, st in gpus[m.gpu].mig or ()}
            assert (m.profile, m.start) not in placed
            if carved.get(m.start) != m.profile:  # a new slice fits beside every other one
                others = [(p, st) for st, p in carved.items()]
                others += [x for x in placed if x[1] not in carved]
                assert mig.fits(gpus[m.gpu].model, m.profile, m.start, others)[0]
            placed.append((m.profile, m.start))
    # victims are preemptible, distinct, and each one's preemptor is still pending
    victims = [p.victim for p in d.preemptions]
    assert len(victims) == len(set(victims))
    for p in d.preemptions:
        assert running[p.victim].priority_class != "inference"
        assert d.reasons[p.for_job].startswith("PreemptionPending ")
    # no team goes over a limit with the jobs that start
    use: dict[str, float] = {}
    for r in snap.running:
        if r.id not in victims:
            use[r.team] = (
                use.get(r.team, 0) + len(r.gpus) + sum(mig_share(m.profile) for m in r.mig)
            )
    for s in d.starts:
        j = pending[s.job]
        use[j.team] = use.get(j.team, 0) + (
            j.mig.count * mig_share(j.mig.profile) if j.mig else j.gpus
        )
    for t in snap.teams:
        assert use.get(t.name, 0) <= t.limit["gpu-equivalent"] + 1e-9


def test_same_snapshot_same_decisions_and_int_ids_work() -> None:
    snap = build(10, 300, seed=4)
    as_int = replace(
        snap,
        running=tuple(replace(r, id=int(str(r.id)[1:])) for r in snap.running),
        pending=tuple(replace(p, id=10**6 + int(str(p.id)[1:])) for p in snap.pending),
    )
    first, second = decide(as_int), decide(as_int)
    assert first == second
    assert all(isinstance(s.job, int) for s in first.starts)
    named = decide(snap)
    assert len(named.starts) == len(first.starts) and len(named.preemptions) == len(
        first.preemptions
    )


def test_the_snapshot_comes_back_unchanged() -> None:
    """The policy works on its own copy: teams' quota maps and all else stay as given."""
    snap = build(20, 400, seed=5)
    before = copy.deepcopy(snap)
    decide(snap)
    assert snap == before
