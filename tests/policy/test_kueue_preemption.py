"""Kueue's preemption tests as ``mlq plan`` scenarios: a conformance suite.

Each scenario in ``tests/policy/kueue/`` transcribes one case of Kueue's
``pkg/scheduler/preemption/preemption_test.go`` (``tests/policy/kueue/README.md``: the
mapping, the commit, and every case of that file, transcribed or not). A case's
expectation is the set of workloads Kueue preempts (``wantPreempted``, the workloads
that end up Evicted): mlq must list exactly those under ``preempt`` for the incoming job
``in`` (which then waits with ``PreemptionPending``), or preempt nothing.

The scenario format has no ``expect:`` block (unknown keys are errors), so the
expectations are here. Scenarios run in-process through ``mlq plan --json``, the path
tests/policy/test_plan_scenarios.py uses. A case where mlq decides differently on
purpose is in ``DIFFERENT``, with the reason, and the test holds mlq to its own
decision there (docs/scheduling.md, "Kueue conformance"). A case where mlq is simply
wrong would be ``xfail(strict=True)`` with the reason; none is today.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from mlq.cli.main import app
from typer.testing import CliRunner

KUEUE = Path(__file__).resolve().parent / "kueue"
INCOMING = "in"  # Kueue's incoming workload, the one pending job of every scenario


def scenario_file(case: str) -> Path:
    """A case's scenario: its name in kebab-case (apostrophes dropped)."""
    return KUEUE / (re.sub(r"[^a-z0-9]+", "-", case.lower().replace("'", "")).strip("-") + ".yaml")


def plan(path: Path) -> dict:
    result = CliRunner().invoke(app, ["plan", str(path), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# Why mlq decides differently on purpose (README, cause C; docs/scheduling.md).
BORROW_WITHIN_COHORT = (
    "mlq lets a preemptible job that would borrow take lower-class borrowed jobs of other "
    "teams, as if every ClusterQueue had borrowWithinCohort {{policy: LowerPriority}} with "
    "no threshold: a job of a team without a guarantee (configs/scenarios/"
    "borrower-takes-only-borrowed.yaml) could otherwise never preempt another team's "
    "borrower, and the transcribed borrowWithinCohort cases need it. {team} has no "
    "borrowWithinCohort, so Kueue takes another ClusterQueue's workloads only if {team} "
    "ends up within its nominal quota, which it cannot ({why}); with borrowWithinCohort "
    "Kueue too takes c2's lower-priority borrowed job first (other ClusterQueues' "
    "candidates go first)."
)

STILL_BORROWS = (
    "Kueue takes a1 and a2, which leaves a borrowing 1 CPU; a2 is no longer borrowed once "
    "a1 is gone (a holds exactly its nominal 2). In mlq every pending job is offered in "
    "every pass, and a job inside its team's guarantee goes in the first round, before a "
    "job that borrows (docs/scheduling.md, Order 3): a1 or a2, requeued inside a's "
    "guarantee, would take the room back from in, and in would preempt it again, for "
    "ever (tests/policy/test_preemption_settles.py). Kueue is safe because a "
    "ClusterQueue offers only its head, in. So a job that still borrows takes only its "
    "own team's jobs that the team borrows, and mlq finds the set that brings a back "
    "within its guarantee instead: a1, a2 and a3, the answer of Kueue's attempt without "
    "borrowing."
)


def case(name: str, *preempted: str, xfail: str | None = None):
    marks = [pytest.mark.xfail(strict=True, reason=xfail)] if xfail else []
    return pytest.param(name, sorted(preempted), id=name, marks=marks)


def differs(name: str, kueue: list[str], mlq: list[str], why: str):
    """A case where mlq decides otherwise on purpose: what Kueue preempts, what mlq
    preempts instead, and why."""
    return pytest.param(name, sorted(kueue), sorted(mlq), why, id=name)


CASES = [
    # --- TestPreemption ---------------------------------------------------------------
    case("preempt lowest priority", "low"),
    case("preempt multiple", "low", "mid"),
    case("no preemption for low priority"),
    case("not enough low priority workloads"),
    case("some free quota, preempt low priority", "low"),
    case("minimal set excludes low priority", "mid"),
    case("only preempt workloads using the chosen flavor", "mid"),
    case("reclaim quota from borrower", "c2-mid"),
    case(
        "reclaim quota if workload requests 0 resources for a resource at nominal quota", "c2-mid"
    ),
    case("no workloads borrowing"),
    case("preempting locally and borrowing same resource in cohort", "c1-low"),
    case(
        "preempting locally and borrowing same resource in cohort; no borrowing limit in the cohort",
        "d1-low",
    ),
    case("preempting locally and not borrowing same resource in 1-queue cohort", "l1-med"),
    case("reclaim borrowed quota from same priority for withinCohort=ReclaimFromAny", "c1-1"),
    case("preempt from all ClusterQueues in cohort", "c1-low", "c2-low"),
    case("can't preempt workloads in ClusterQueue for withinClusterQueue=Never"),
    case("preempt newer workloads with the same priority", "wl2"),
    case(
        "use BorrowWithinCohort; allow preempting a lower-priority workload from another ClusterQueue while borrowing",
        "a_best_effort_low",
    ),
    case(
        "use BorrowWithinCohort; allow preempting a lower-priority workload with priority above MaxPriorityThreshold, if borrowing is not required after the preemption",
        "b_standard",
    ),
    case(
        "use BorrowWithinCohort; don't allow for preemption of lower-priority workload from the same ClusterQueue"
    ),
    case(
        "use BorrowWithinCohort; preempt from CQ and from other CQs with workloads below threshold",
        "a_best_effort_lower",
        "b_standard_mid",
    ),
    case("reclaim quota from lender", "lend2-mid"),
    case("preempt from all ClusterQueues in cohort-lend", "lend1-low", "lend2-low"),
    case(
        "allow preemption from other cluster queues if target cq is not exhausted for the requested resource",
        "a1",
        "b5",
    ),
    case("long range preemption", "to-be-preempted"),
    # --- TestCandidatesOrdering ---------------------------------------------------------
    case("workloads sorted by priority", "low"),
    case("workload from different CQ first", "other"),
    case("old workloads last", "younger", "current"),
    case(
        "workloads from different CQ are sorted based on priority and timestamp",
        "high_lq_usage_different_cq",
    ),
]

# Deliberately different (README causes C and E): mlq acts as if every team had
# borrowWithinCohort LowerPriority without a threshold (C), and a job that still borrows
# after the preemption takes no own-team job inside the guarantee (E).
DIFFERENT = [
    differs(
        "not enough workloads borrowing",
        kueue=[],
        mlq=["c2-low-1"],
        why=BORROW_WITHIN_COHORT.format(team="c1", why="4 + 4 > 6 with c1-high kept"),
    ),
    differs(
        "preempting locally and borrowing other resources in cohort, without cohort candidates",
        kueue=["c1-low"],
        mlq=["c2-low-1"],
        why=BORROW_WITHIN_COHORT.format(team="c1", why="it asks 5Gi of memory, over its 3Gi"),
    ),
    differs(
        "preempting locally and borrowing other resources in cohort, with cohort candidates",
        kueue=["c1-med"],
        mlq=["c2-low-1"],
        why=BORROW_WITHIN_COHORT.format(team="c1", why="it asks 5Gi of memory, over its 3Gi"),
    ),
    differs(
        "preemptions from cq when target queue is exhausted for the single requested resource",
        kueue=["a1", "a2"],
        mlq=["a1", "a2", "a3"],
        why=STILL_BORROWS,
    ),
    differs(
        "preemptions from cq when target queue is exhausted for two requested resources",
        kueue=["a1", "a2"],
        mlq=["a1", "a2", "a3"],
        why=STILL_BORROWS,
    ),
    differs(
        "preemptions from cq when target queue is exhausted for one requested resource, but not the other",
        kueue=["a1", "a2"],
        mlq=["a1", "a2", "a3"],
        why=STILL_BORROWS,
    ),
]


def preempted_for_incoming(name: str) -> list[str]:
    """The victims mlq preempts for ``in``, checked to be announced as Kueue would."""
    out = plan(scenario_file(name))
    assert [p["for"] for p in out["preempt"]] == [INCOMING] * len(out["preempt"])
    got = sorted(p["job"] for p in out["preempt"])
    reason = {p["job"]: p["reason"] for p in out["pending"]}.get(INCOMING, "")
    if got:
        # the victims' ids, sorted (all ids here are strings)
        assert reason == "PreemptionPending " + ",".join(got)
    else:
        assert not reason.startswith("PreemptionPending")
    return got


@pytest.mark.parametrize(("name", "want"), CASES)
def test_mlq_preempts_what_kueue_preempts(name: str, want: list[str]) -> None:
    assert preempted_for_incoming(name) == want


@pytest.mark.parametrize(("name", "kueue", "mlq", "why"), DIFFERENT)
def test_mlq_differs_from_kueue_on_purpose(
    name: str, kueue: list[str], mlq: list[str], why: str
) -> None:
    assert kueue != mlq, "no longer a difference: move the case to CASES"
    assert preempted_for_incoming(name) == mlq, why


@pytest.mark.parametrize("scenario", sorted(p.name for p in KUEUE.glob("*.yaml")))
def test_scenario_is_decided(scenario: str) -> None:
    """Every scenario loads and decides its one pending job, so that an xfail above
    cannot hide a scenario mlq refuses."""
    out = plan(KUEUE / scenario)
    decided = [s["job"] for s in out["start"]] + [p["job"] for p in out["pending"]]
    assert decided == [INCOMING]


def test_every_scenario_has_a_case() -> None:
    shipped = sorted(p.name for p in KUEUE.glob("*.yaml"))
    covered = sorted(scenario_file(c.values[0]).name for c in CASES + DIFFERENT)
    assert shipped == covered
