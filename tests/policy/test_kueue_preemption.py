"""Kueue's preemption tests as ``mlq plan`` scenarios: a conformance suite.

Each scenario in ``tests/policy/kueue/`` transcribes one case of Kueue's
``pkg/scheduler/preemption/preemption_test.go`` (``tests/policy/kueue/README.md``: the
mapping, the commit, and every case of that file, transcribed or not). A case's
expectation is the set of workloads Kueue preempts (``wantPreempted``, the workloads
that end up Evicted): mlq must list exactly those under ``preempt`` for the incoming job
``in`` (which then waits with ``PreemptionPending``), or preempt nothing.

The scenario format has no ``expect:`` block (unknown keys are errors), so the
expectations are here. Scenarios run in-process through ``mlq plan --json``, the path
tests/policy/test_plan_scenarios.py uses. Cases where mlq decides differently today
are ``xfail(strict=True)`` with the reason: fixing the policy turns them into XPASS,
which fails until the mark is removed.
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


# Why mlq decides differently today (see the README's analysis for each case).
AT_LIMIT = (
    "known: a team at its limit whose guarantee equals its limit cannot preempt its own "
    "lower-class job. policy._Pass.consider sends a job that would break its limit to "
    "preempt(own_team=True), which sets borrowing = would_borrow(j) on the team's current "
    "usage, the victims still counted ({used} + {ask} > guarantee {g}), and eligible() then "
    "takes only borrowed(h) jobs; the team never holds more than its guarantee (= its "
    "limit), so none of its jobs is borrowed. mlq: {mlq}"
)
OWN_NOT_BORROWED = (
    "policy._Pass.consider sets reclaim = not would_borrow(j) on the team's current usage, "
    "before its own victims are counted as leaving ({team}: {used} + {ask} > guarantee {g}); "
    "preempt()'s eligible() then lets a preemptible job that would borrow take only "
    "borrowed(h) victims, so {own} (inside {team}'s guarantee) is never a candidate{also}. "
    "Kueue removes candidates first and then asks whether the job fits (with or without "
    "borrowing): with {own} gone {team} is within its nominal quota. mlq: {mlq}"
)
BORROW_WITHIN_COHORT = (
    "mlq lets a preemptible job that would borrow take lower-class borrowed jobs of other "
    "teams (preempt()'s eligible(): class in rule.preempts and borrowed(h)), as Kueue's "
    "borrowWithinCohort LowerPriority with no threshold would; {team} has no "
    "borrowWithinCohort, so Kueue takes another ClusterQueue's workloads only if {team} "
    "ends up within its nominal quota, which it cannot ({why}). {more}mlq: {mlq}"
)


def case(name: str, *preempted: str, xfail: str | None = None):
    marks = [pytest.mark.xfail(strict=True, reason=xfail)] if xfail else []
    return pytest.param(name, sorted(preempted), id=name, marks=marks)


CASES = [
    # --- TestPreemption ---------------------------------------------------------------
    case(
        "preempt lowest priority",
        "low",
        xfail=AT_LIMIT.format(used=6, ask=2, g=6, mlq="QuotaLimit standalone cpu 6/6"),
    ),
    case(
        "preempt multiple",
        "low",
        "mid",
        xfail=AT_LIMIT.format(used=6, ask=3, g=6, mlq="QuotaLimit standalone cpu 6/6"),
    ),
    case("no preemption for low priority"),
    case("not enough low priority workloads"),
    case(
        "some free quota, preempt low priority",
        "low",
        xfail=AT_LIMIT.format(used=5, ask=2, g=6, mlq="QuotaLimit standalone cpu 5/6"),
    ),
    case(
        "minimal set excludes low priority",
        "mid",
        xfail=AT_LIMIT.format(used=6, ask=2, g=6, mlq="QuotaLimit standalone cpu 6/6"),
    ),
    case(
        "only preempt workloads using the chosen flavor",
        "mid",
        xfail=AT_LIMIT.format(
            used="2 H100s", ask=2, g=3, mlq="QuotaLimit standalone gpu:H100-80GB 2/3"
        ),
    ),
    case("reclaim quota from borrower", "c2-mid"),
    case(
        "reclaim quota if workload requests 0 resources for a resource at nominal quota", "c2-mid"
    ),
    case("no workloads borrowing"),
    case(
        "not enough workloads borrowing",
        xfail=BORROW_WITHIN_COHORT.format(
            team="c1",
            why="4 + 4 > 6 with c1-high kept",
            more="",
            mlq="preempts c2-low-1 (c2 borrows, so both c2 jobs count as borrowed)",
        ),
    ),
    case(
        "preempting locally and borrowing other resources in cohort, without cohort candidates",
        "c1-low",
        xfail=BORROW_WITHIN_COHORT.format(
            team="c1",
            why="it asks 5Gi of memory, over its nominal 3Gi",
            more=(
                "And c1's own c1-low is no candidate for mlq: c1 is inside its guarantee "
                "(cpu 4 of 6), and a job that would borrow takes only borrowed victims. "
            ),
            mlq="preempts c2-low-1 instead of c1-low",
        ),
    ),
    case("preempting locally and borrowing same resource in cohort", "c1-low"),
    case(
        "preempting locally and borrowing same resource in cohort; no borrowing limit in the cohort",
        "d1-low",
    ),
    case(
        "preempting locally and borrowing other resources in cohort, with cohort candidates",
        "c1-med",
        xfail=BORROW_WITHIN_COHORT.format(
            team="c1",
            why="it asks 5Gi of memory, over its nominal 3Gi",
            more=(
                "And c1's own c1-med is no candidate for mlq: c1 is inside its guarantee "
                "(cpu 4 of 6), and a job that would borrow takes only borrowed victims. "
            ),
            mlq="preempts c2-low-1 instead of c1-med",
        ),
    ),
    case(
        "preempting locally and not borrowing same resource in 1-queue cohort",
        "l1-med",
        xfail=OWN_NOT_BORROWED.format(
            team="l1", used=6, ask=4, g=6, own="l1-med", also="", mlq="Resources"
        ),
    ),
    case("reclaim borrowed quota from same priority for withinCohort=ReclaimFromAny", "c1-1"),
    case(
        "preempt from all ClusterQueues in cohort",
        "c1-low",
        "c2-low",
        xfail=OWN_NOT_BORROWED.format(
            team="c1",
            used=5,
            ask=4,
            g=6,
            own="c1-low",
            also=", and c2-low (borrowed) alone frees 3 of the 4 CPUs",
            mlq="Resources",
        ),
    ),
    case("can't preempt workloads in ClusterQueue for withinClusterQueue=Never"),
    case(
        "preempt newer workloads with the same priority",
        "wl2",
        xfail=AT_LIMIT.format(used=6, ask=2, g=6, mlq="QuotaLimit preventstarvation cpu 6/6"),
    ),
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
        xfail=(
            "preempt() judges borrowed(h) on each team's standing before the search "
            "(self.over, refreshed only by charge()): both a_best_effort jobs count as "
            "borrowed, though a_best_effort (guarantee 1) is back at its guarantee once "
            "a_best_effort_lower is gone, and victims_on_node takes them in class order; "
            "Kueue re-checks each candidate's ClusterQueue after every removal "
            "(candidateIsValid) and takes b_standard's own b_standard_mid instead. "
            "mlq: preempts a_best_effort_lower and a_best_effort_low"
        ),
    ),
    case("reclaim quota from lender", "lend2-mid"),
    case(
        "preempt from all ClusterQueues in cohort-lend",
        "lend1-low",
        "lend2-low",
        xfail=OWN_NOT_BORROWED.format(
            team="lend1",
            used=5,
            ask=4,
            g=6,
            own="lend1-low",
            also=", and lend2-low (borrowed) alone frees 3 of the 4 CPUs",
            mlq="Resources",
        ),
    ),
    case(
        "preemptions from cq when target queue is exhausted for the single requested resource",
        "a1",
        "a2",
    ),
    case(
        "preemptions from cq when target queue is exhausted for two requested resources",
        "a1",
        "a2",
    ),
    case(
        "preemptions from cq when target queue is exhausted for one requested resource, but not the other",
        "a1",
        "a2",
    ),
    case(
        "allow preemption from other cluster queues if target cq is not exhausted for the requested resource",
        "a1",
        "b5",
        xfail=OWN_NOT_BORROWED.format(
            team="a",
            used=1,
            ask=2,
            g=2,
            own="a1",
            also=", and b5 (borrowed, the only lower class of b) alone frees 1 of the 2 CPUs",
            mlq="Resources",
        ),
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


@pytest.mark.parametrize(("name", "want"), CASES)
def test_mlq_preempts_what_kueue_preempts(name: str, want: list[str]) -> None:
    out = plan(scenario_file(name))
    assert [p["for"] for p in out["preempt"]] == [INCOMING] * len(out["preempt"])
    assert sorted(p["job"] for p in out["preempt"]) == want
    reason = {p["job"]: p["reason"] for p in out["pending"]}.get(INCOMING, "")
    if want:
        # the victims' ids, sorted (all ids here are strings)
        assert reason == "PreemptionPending " + ",".join(want)
    else:
        assert not reason.startswith("PreemptionPending")


@pytest.mark.parametrize("scenario", sorted(p.name for p in KUEUE.glob("*.yaml")))
def test_scenario_is_decided(scenario: str) -> None:
    """Every scenario loads and decides its one pending job, so that an xfail above
    cannot hide a scenario mlq refuses."""
    out = plan(KUEUE / scenario)
    decided = [s["job"] for s in out["start"]] + [p["job"] for p in out["pending"]]
    assert decided == [INCOMING]


def test_every_scenario_has_a_case() -> None:
    shipped = sorted(p.name for p in KUEUE.glob("*.yaml"))
    covered = sorted(scenario_file(c.values[0]).name for c in CASES)
    assert shipped == covered
