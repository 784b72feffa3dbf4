"""The trace simulator, trace reading and the Philly importer, on traces small enough
to work out by hand."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from mlq.cli.main import app
from mlq.scheduler.errors import InvalidInput
from mlq.scheduler.simreport import summarize
from mlq.scheduler.simulate import parse_sim_cluster, simulate
from mlq.scheduler.traces import TraceJob, read_trace, write_trace
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
TWO_GPUS = {"nodes": [{"name": "n", "cpus": 16, "memory": "64Gi", "gpus": 2}], "guarantees": "none"}


def job(i: int, t: float, d: float, gpus: int, kind: str = "training", **kw) -> TraceJob:
    return TraceJob(i, t, d, gpus, kw.pop("team", "a"), kind, **kw)


def by_id(result) -> dict:
    return {s.job.id: s for s in result.jobs}


def test_fifo_blocks_behind_the_head_and_default_backfills() -> None:
    # r holds one GPU until 100; the 2-GPU head waits; the short job fits beside r
    # and ends (50) before the head can start (100), so the default policy backfills it.
    jobs = [
        job(0, 0, 100, 1, time_limit=100),
        job(1, 1, 50, 2, time_limit=3600),
        job(2, 2, 40, 1, time_limit=60),
    ]
    cluster = parse_sim_cluster(TWO_GPUS)
    mlq, fifo = by_id(simulate(jobs, cluster, "default")), by_id(simulate(jobs, cluster, "fifo"))
    assert (mlq[2].first_start, mlq[2].finish) == (2, 42)
    assert (fifo[2].first_start, fifo[2].finish) == (150, 190)
    assert mlq[1].first_start == fifo[1].first_start == 100


def test_a_preempted_job_loses_the_work_since_its_checkpoint() -> None:
    # batch holds both GPUs from 0; training arrives at 1000 and preempts it. The batch
    # job checkpoints every 300 s, so of its 1000 s it keeps 900 and loses 100 on 2 GPUs.
    jobs = [job(0, 0, 3000, 2, "batch", checkpoint_interval=300), job(1, 1000, 500, 2)]
    result = simulate(jobs, parse_sim_cluster(TWO_GPUS), "default")
    s = by_id(result)
    assert s[1].first_start == 1000 and s[1].finish == 1500
    assert s[0].preempted == 1
    assert s[0].lost_gpu_s == pytest.approx(200)
    assert s[0].finish == 1500 + (3000 - 900)
    summary = summarize(result)
    assert summary["preemptions"] == 1
    assert summary["gpu_hours_lost"] == pytest.approx(200 / 3600)


def test_mig_jobs_get_slices_and_the_slices_go_away_after() -> None:
    cluster = parse_sim_cluster(
        {
            "nodes": [
                {
                    "name": "m",
                    "cpus": 16,
                    "memory": "64Gi",
                    "gpus": 1,
                    "model": "A100-80GB",
                    "mig": True,
                }
            ],
            "guarantees": "none",
        }
    )
    # two 3g slices fit beside each other; a third waits for one of them
    jobs = [job(i, 0, 100, 1, mig_profile="3g.40gb", time_limit=200) for i in range(3)]
    s = by_id(simulate(jobs, cluster, "default"))
    assert sorted(x.finish for x in s.values()) == [100, 100, 200]


def test_sim_cluster_errors_name_the_field() -> None:
    with pytest.raises(
        InvalidInput, match=r"nodes\[0\]\.carved\[0\]: 4g.40gb@0 overlaps 3g.40gb@0"
    ):
        parse_sim_cluster(
            {
                "nodes": [
                    {
                        "name": "m",
                        "cpus": 1,
                        "memory": "1Gi",
                        "gpus": 1,
                        "model": "H100-80GB",
                        "carved": [["3g.40gb@0", "4g.40gb@0"]],
                    }
                ]
            }
        )


def test_trace_csv_round_trip_and_errors(tmp_path: Path) -> None:
    jobs = [job(0, 0, 60, 1), job(1, 5, 30, 1, "inference", team="b", mig_profile="1g.10gb")]
    path = tmp_path / "t.csv"
    write_trace(path, jobs)
    assert read_trace(path) == jobs
    bad = tmp_path / "bad.csv"
    bad.write_text("submit_time,duration,gpus,team,kind\n0,60,1,a,serving\n")
    with pytest.raises(InvalidInput, match='line 2: kind: "serving" is not allowed'):
        read_trace(bad)
    bad.write_text("submit_time,duration,gpus\n0,60,1\n")
    with pytest.raises(InvalidInput, match="missing columns team, kind"):
        read_trace(bad)


PHILLY_WIDE = (
    "timestamp,duration,num_gpus,gpu_time,cluster\n"
    "2017-10-01 00:10:00,3600.0,32,115200.0,vc2\n"
    "2017-10-01 00:20:00,3600.0,12,43200.0,vc2\n"
    "2017-10-01 00:00:00,100.0,1,100.0,vc1\n"
    "2017-09-30 23:00:00,100.0,1,100.0,vc1\n"
)


def test_philly_import_makes_wide_jobs_multi_node(tmp_path: Path) -> None:
    path = tmp_path / "philly.csv"
    path.write_text(PHILLY_WIDE)
    jobs = read_trace(path, since="2017-10-01")
    assert [(j.submit_time, j.team, j.nodes, j.gpus, j.duration) for j in jobs] == [
        (0.0, "vc1", 1, 1, 100.0),
        (600.0, "vc2", 4, 8, 3600.0),  # 32 GPUs: 4 whole nodes
        (1200.0, "vc2", 2, 6, 3600.0),  # 12 GPUs: the fewest nodes, even parts
    ]
    assert [j.time_limit for j in jobs] == [7200, 7200, 7200]  # run time in hours, doubled
    assert {j.kind for j in jobs} == {"training"}
    # an mlq trace keeps the parts
    write_trace(tmp_path / "t.csv", jobs)
    assert read_trace(tmp_path / "t.csv") == jobs


def test_philly_import_folds_wide_jobs_onto_one_node_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "philly.csv"
    path.write_text(PHILLY_WIDE)
    jobs = read_trace(path, since="2017-10-01", fold=True)
    assert [(j.nodes, j.gpus, j.duration, j.folded_from) for j in jobs] == [
        (1, 1, 100.0, None),
        (1, 8, 14400.0, 32),
        (1, 8, 5400.0, 12),
    ]
    assert [j.time_limit for j in jobs] == [7200, 28800, 14400]


def test_cli_prints_both_policies_with_ratios(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    write_trace(
        trace,
        [
            job(0, 0, 100, 1, time_limit=100),
            job(1, 1, 50, 2, time_limit=3600),
            job(2, 2, 40, 1, time_limit=60),
        ],
    )
    cluster = tmp_path / "c.yaml"
    cluster.write_text(json.dumps(TWO_GPUS))
    runner = CliRunner()
    out = runner.invoke(
        app, ["simulate", "--trace", str(trace), "--cluster", str(cluster), "--json"]
    )
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["default"]["jobs_finished"] == data["fifo"]["jobs_finished"] == 3
    assert data["default"]["queue_s"]["mean"] < data["fifo"]["queue_s"]["mean"]
    text = runner.invoke(app, ["simulate", "--trace", str(trace), "--cluster", str(cluster)]).stdout
    assert text.splitlines()[1].split() == ["default", "fifo", "ratio"]
    assert "queueing delay mean" in text


def test_synthetic_generator_is_seeded_and_has_inference_and_mig() -> None:
    spec = importlib.util.spec_from_file_location(
        "mlq_bench_generate", ROOT / "bench/traces/generate.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    generate = module.generate

    a, b = generate(1, seed=7), generate(1, seed=7)
    assert a == b and a != generate(1, seed=8)
    assert any(j.kind == "inference" and not j.mig_profile for j in a)
    assert any(j.mig_profile for j in a)
    assert all(j.time_limit is None for j in a if j.kind == "inference")
