"""One shipped scenario per scheduling rule, run through ``mlq plan --json``.

Each case names the rule it shows; the expected decisions are what a user reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlq.cli.main import app
from typer.testing import CliRunner

SCENARIOS = Path(__file__).resolve().parents[2] / "configs" / "scenarios"


def plan(name: str) -> dict:
    result = CliRunner().invoke(app, ["plan", str(SCENARIOS / name), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def pend(*pairs: tuple[str, str]) -> list[dict]:
    return [{"job": j, "reason": r} for j, r in pairs]


CASES = [
    pytest.param(
        "issue-example.yaml",
        [],
        [{"job": "r1", "for": "p1"}],
        pend(("p1", "PreemptionPending r1"), ("p2", "Resources")),
        id="inference preempts training and waits for it; a 1g slice has no room between two 3g slices",
    ),
    pytest.param(
        "preempt-frees-soonest.yaml",
        [],
        [{"job": "quick-stop", "for": "serve"}],
        pend(("serve", "PreemptionPending quick-stop")),
        id="on a full cluster the victim is on the node whose room frees soonest",
    ),
    pytest.param(
        "class-order.yaml",
        [{"job": "i1", "node": "n1", "gpus": [0]}, {"job": "t1", "node": "n1", "gpus": [1]}],
        [],
        pend(("b1", "Resources")),
        id="higher classes start first even when a lower class was submitted earlier",
    ),
    pytest.param(
        "fair-share.yaml",
        [{"job": "cv-late", "node": "n1", "gpus": [4]}],
        [],
        pend(("nlp-early", "Resources")),
        id="within a class the team furthest below its guarantee goes before an older job",
    ),
    pytest.param(
        "pack-whole-gpus.yaml",
        [
            {"job": "small", "node": "n1", "gpus": [1, 2]},
            {"job": "whole-node", "node": "n2", "gpus": list(range(8))},
        ],
        [],
        pend(("one-more", "Resources")),
        id="whole GPUs pack onto the fullest node and never onto a GPU in MIG mode",
    ),
    pytest.param(
        "no-node-holds-it.yaml",
        [],
        [],
        pend(("four", "Resources")),
        id="a quota that fits with free GPUs split over two nodes is Resources, not a start",
    ),
    pytest.param(
        "mig-existing-slices.yaml",
        [
            {"job": "small", "node": "n1", "mig": [{"gpu": 0, "profile": "1g.10gb", "start": 5}]},
            {"job": "half", "node": "n1", "mig": [{"gpu": 1, "profile": "3g.40gb", "start": 0}]},
        ],
        [],
        [],
        id="a free carved slice is used as it is and a new slice is carved only where none overlaps",
    ),
    pytest.param(
        "mig-no-valid-slot.yaml",
        [{"job": "fits", "node": "n1", "mig": [{"gpu": 0, "profile": "3g.40gb", "start": 4}]}],
        [],
        pend(("big-slice", "Resources")),
        id="a MIG profile whose only valid start is covered waits although compute is free",
    ),
    pytest.param(
        "quota-limit.yaml",
        [{"job": "cv-4g", "node": "n1", "mig": [{"gpu": 3, "profile": "4g.40gb", "start": 0}]}],
        [],
        pend(
            ("nlp-third", "QuotaLimit nlp gpu 2/2"), ("cv-1g", "QuotaLimit cv gpu-equivalent 1/1")
        ),
        id="no job starts over its team's limit, counting MIG slices as GPU-equivalents",
    ),
    pytest.param(
        "preempt-borrowers-first.yaml",
        [],
        [{"job": "cv-train", "for": "serve"}],
        pend(("serve", "PreemptionPending cv-train")),
        id="a borrower's job is preempted before a job inside its team's guarantee",
    ),
    pytest.param(
        "preempt-lowest-class-least-work.yaml",
        [],
        [{"job": "batch-ckpt", "for": "serve"}],
        pend(("serve", "PreemptionPending batch-ckpt")),
        id="the lowest class goes first and then the job with the most recent checkpoint",
    ),
    pytest.param(
        "no-preemption-across-class.yaml",
        [],
        [],
        pend(("train2", "Resources")),
        id="training may not preempt inference or training of another team",
    ),
    pytest.param(
        "reclaim-guarantee.yaml",
        [],
        [{"job": "cv-b", "for": "nlp-batch"}],
        pend(("nlp-batch", "PreemptionPending cv-b")),
        id="a team under its guarantee reclaims it from a borrower even with a lower class",
    ),
    pytest.param(
        "no-reclaim-within-guarantee.yaml",
        [],
        [],
        pend(("nlp-train", "Resources")),
        id="nothing is reclaimed from a team that holds no more than its guarantee",
    ),
    pytest.param(
        "minimal-victims.yaml",
        [],
        [{"job": "two-gpus", "for": "serve"}],
        pend(("serve", "PreemptionPending two-gpus")),
        id="a victim that is not needed once a bigger one is chosen is dropped from the set",
    ),
    pytest.param(
        "min-run-time.yaml",
        [],
        [{"job": "older", "for": "serve"}],
        pend(("serve", "PreemptionPending older")),
        id="a job younger than its class's minimum run time is not a victim",
    ),
    pytest.param(
        "stopping-victims.yaml",
        [],
        [{"job": "batch-b", "for": "serve-b"}],
        pend(("serve-a", "PreemptionPending victim-a"), ("serve-b", "PreemptionPending batch-b")),
        id="a victim already stopping is counted for its job and not chosen twice",
    ),
    pytest.param(
        "preempt-within-own-limit.yaml",
        [],
        [{"job": "nlp-batch", "for": "nlp-serve"}],
        pend(
            ("nlp-serve", "PreemptionPending nlp-batch"), ("nlp-urgent", "QuotaLimit nlp gpu 2/2")
        ),
        id="a job at its team's limit preempts only its own team's jobs and never goes over",
    ),
    pytest.param(
        "borrower-takes-only-borrowed.yaml",
        [],
        [{"job": "cv-batch", "for": "search-a"}],
        pend(("search-a", "PreemptionPending cv-batch"), ("search-b", "Resources")),
        id="a preemptible job that would borrow never takes a job inside its team's guarantee",
    ),
    pytest.param(
        "preempt-own-at-guarantee-limit.yaml",
        [],
        [{"job": "cv-batch", "for": "cv-more"}],
        pend(("cv-more", "PreemptionPending cv-batch")),
        id="a team whose guarantee is its limit preempts its own lower-class MIG slice",
    ),
    pytest.param(
        "own-victims-then-reclaim.yaml",
        [],
        [{"job": "cv-b", "for": "nlp-big"}, {"job": "nlp-batch", "for": "nlp-big"}],
        pend(("nlp-big", "PreemptionPending cv-b,nlp-batch")),
        id="a job back within its guarantee once its own victims go reclaims from a borrower",
    ),
    pytest.param(
        "borrowed-rechecked-per-victim.yaml",
        [],
        [
            {"job": "cv-batch-new", "for": "search-train"},
            {"job": "search-batch", "for": "search-train"},
        ],
        pend(("search-train", "PreemptionPending cv-batch-new,search-batch")),
        id="a team back within its guarantee after one victim lends no more jobs",
    ),
    pytest.param(
        "guaranteed-before-borrowing.yaml",
        [{"job": "nlp-batch", "node": "n1", "gpus": [0]}],
        [],
        pend(("cv-train", "Resources")),
        id="a job inside its team's guarantee is placed before a higher class that would borrow",
    ),
    pytest.param(
        "models-and-cpu-jobs.yaml",
        [
            {
                "job": "media",
                "node": "a40",
                "mig": [{"gpu": 0, "profile": "1g.5gb+me", "start": 1}],
            },
            {"job": "any-gpu", "node": "a40", "gpus": [1]},
            {"job": "a100-80", "node": "mixed", "gpus": [1]},
            {"job": "cpu-only", "node": "cpu1", "gpus": []},
            {
                "job": "two-small",
                "node": "a40",
                "mig": [
                    {"gpu": 0, "profile": "1g.5gb", "start": 0},
                    {"gpu": 0, "profile": "1g.5gb", "start": 2},
                ],
            },
        ],
        [],
        pend(("h100", "QuotaLimit nlp gpu:H100-80GB 0/0"), ("too-big", "Resources")),
        id="a per-model limit steers a job to another model and driver names mean catalogue models",
    ),
    pytest.param(
        "backfill.yaml",
        [{"job": "short", "node": "n1", "gpus": [2]}],
        [],
        pend(("head", "Resources")),
        id="a short job backfills because it ends before the head job can start",
    ),
    pytest.param(
        "multi-node-backfill.yaml",
        [{"job": "short", "node": "n1", "gpus": [0]}],
        [],
        pend(("wide", "Resources: 1 of 2 nodes free for its parts"), ("long", "Priority")),
        id="a 2-node head job holds its nodes: a short job backfills, a long one waits",
    ),
    pytest.param(
        "multi-node-preempt.yaml",
        [],
        [{"job": "train", "for": "serve"}],
        pend(("serve", "PreemptionPending train")),
        id="a 2-node inference job preempts a 2-node training job as a whole, once",
    ),
    pytest.param(
        "backfill-would-delay.yaml",
        [],
        [],
        pend(("head", "Resources"), ("long", "Priority"), ("unlimited", "Priority")),
        id="backfill that would delay the head job or has no time limit is refused",
    ),
    pytest.param(
        "short-first.yaml",
        [{"job": "old", "node": "n1", "gpus": [1]}, {"job": "short", "node": "n1", "gpus": [2]}],
        [],
        pend(("long", "Resources")),
        id="short-first: a shorter time limit goes first, and a long wait beats both",
    ),
    pytest.param(
        "quota-reservation.yaml",
        [{"job": "short", "node": "n1", "gpus": [6]}],
        [],
        pend(("head", "QuotaLimit nlp gpu 7/8"), ("long", "Priority")),
        id="a team's head job holds its quota: only jobs ending before it may take it",
    ),
    pytest.param(
        "held-and-dependency.yaml",
        [],
        [],
        pend(("held", "Held"), ("after", "Dependency")),
        id="held jobs and jobs waiting on dependencies say so even when there is room",
    ),
]


@pytest.mark.parametrize(("scenario", "start", "preempt", "pending"), CASES)
def test_rule(scenario: str, start: list, preempt: list, pending: list) -> None:
    assert plan(scenario) == {"start": start, "preempt": preempt, "pending": pending}


def test_every_shipped_scenario_has_a_case() -> None:
    shipped = sorted(p.name for p in SCENARIOS.glob("*.yaml"))
    covered = sorted(c.values[0] for c in CASES)
    assert shipped == covered


@pytest.mark.parametrize("scenario", sorted(p.name for p in SCENARIOS.glob("*.yaml")))
def test_plan_json_runs(scenario: str) -> None:
    """Every shipped scenario: each pending job either starts or has one reason."""
    import yaml

    out = plan(scenario)
    pending_ids = [j["id"] for j in yaml.safe_load((SCENARIOS / scenario).read_text())["pending"]]
    decided = [s["job"] for s in out["start"]] + [p["job"] for p in out["pending"]]
    assert sorted(decided) == sorted(pending_ids)


def test_plan_prints_a_readable_summary() -> None:
    result = CliRunner().invoke(app, ["plan", str(SCENARIOS / "issue-example.yaml")])
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        "preempt  r1 for p1",
        "pending  p1: PreemptionPending r1",
        "pending  p2: Resources",
    ]
