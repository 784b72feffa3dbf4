"""Accounting (scheduler/accounting.py): runs summed per team, user or class over a
window, as sreport sums them; and the runs of a simulated week adding up to the
trace's GPU-time."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
from mlq.cli.main import app
from mlq.scheduler.accounting import Run, read_runs, summarize
from mlq.scheduler.simulate import load_sim_cluster, simulate
from mlq.scheduler.traces import load_trace
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
H = 3600.0


def run(job: int, team: str, user: str, start: float, end: float | None, **kw) -> Run:
    return Run(
        job, kw.pop("run", 0), team, user, kw.pop("cls", "training"), "n1", start, end,
        kw.pop("state", "COMPLETED"), **kw,
    )  # fmt: skip


def test_runs_are_clipped_to_the_window_and_summed_per_group():
    runs = [
        run(1, "nlp", "bob", 0, 2 * H, gpus=4, gpu_equivalents=4, cpus=8000),
        run(2, "nlp", "alice", 1 * H, None, gpus=1, gpu_equivalents=1, state="RUNNING"),
        run(3, "cv", "carol", -5 * H, -1 * H, gpus=8, gpu_equivalents=8),  # before it
        run(4, "cv", "carol", 0, 0.5 * H, gpus=0, gpu_equivalents=3 / 7, state="PREEMPTED",
            lost_s=0.25 * H),
    ]  # fmt: skip
    teams = {u.key: u for u in summarize(runs, since=0, until=3 * H)}
    assert teams["nlp"].gpu_hours == pytest.approx(4 * 2 + 1 * 2)  # the running one to 3 H
    assert teams["nlp"].cpu_hours == pytest.approx(16)
    assert (teams["nlp"].jobs, teams["nlp"].runs) == (2, 2)
    assert teams["cv"].gpu_hours == 0
    assert teams["cv"].gpu_equivalent_hours == pytest.approx(3 / 7 * 0.5)
    assert (teams["cv"].preemptions, teams["cv"].lost_gpu_equivalent_hours) == (
        1, pytest.approx(3 / 7 * 0.25)
    )  # fmt: skip
    assert teams["nlp"].mean_gpu_equivalents == pytest.approx(10 / 3)
    users = {u.key: u.gpu_hours for u in summarize(runs, since=0, until=3 * H, by="user")}
    assert users == {"bob": pytest.approx(8), "alice": pytest.approx(2), "carol": 0}
    with pytest.raises(ValueError, match='--by: "node" is not one of team, user, class'):
        summarize(runs, 0, H, by="node")


@pytest.mark.parametrize("policy", ["fifo", "default"])
def test_a_simulated_days_report_adds_up_to_the_traces_gpu_time(tmp_path: Path, policy: str):
    trace = ROOT / "bench" / "traces" / "synthetic.csv"
    cluster = ROOT / "configs" / "sim" / "synthetic.yaml"
    sim = load_sim_cluster(cluster)
    jobs = load_trace(trace, days=1, max_gpus=sim.max_node_gpus)
    want: dict[str, float] = defaultdict(float)
    for j in jobs:
        eq = j.total_gpus * (int(j.mig_profile.split("g.")[0]) / 7 if j.mig_profile else 1)
        want[j.team] += eq * max(1.0, j.duration) / H
    out = tmp_path / "runs.jsonl"
    r = CliRunner().invoke(
        app,
        ["simulate", "--trace", str(trace), "--cluster", str(cluster), "--days", "1",
         "--policy", policy, "--runs", str(out)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    records = read_runs(str(out))
    assert len({x.job_id for x in records}) == len(jobs)
    got = summarize(records, 0, max(x.ended_at or 0 for x in records) + 1)
    useful = {u.key: u.gpu_equivalent_hours - u.lost_gpu_equivalent_hours for u in got}
    assert useful == pytest.approx(dict(want), rel=1e-3)  # every job's GPU-time, once
    if policy == "fifo":  # nothing preempted: the hours are the trace's exactly
        assert {u.key: u.gpu_equivalent_hours for u in got} == pytest.approx(dict(want))
    assert sum(u.preemptions for u in got) == sum(1 for x in records if x.state == "PREEMPTED")
    # the same figures as the report prints them
    shown = CliRunner().invoke(app, ["report", "--runs", str(out), "--json"])
    assert shown.exit_code == 0, shown.output
    assert simulate(jobs, sim, policy).runs == records
