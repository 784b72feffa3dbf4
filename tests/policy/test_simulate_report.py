"""What ``mlq simulate`` reports: fairness figures worked out by hand, several policies
side by side, the progress bars (only on a terminal) and the plot (``--plot``)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlq.cli.main import app
from mlq.cli.plan import progress_bars
from mlq.scheduler.errors import InvalidInput, MlqError
from mlq.scheduler.simreport import jain_index, summarize
from mlq.scheduler.simulate import Progress, parse_sim_cluster, simulate
from mlq.scheduler.traces import TraceJob, write_trace
from typer.testing import CliRunner

TWO_GPUS = {"nodes": [{"name": "n", "cpus": 16, "memory": "64Gi", "gpus": 2}], "guarantees": "none"}

# Strict FIFO on one node of 2 GPUs (times in seconds):
#   job team submit dur gpus  start finish  queue  JCT  bounded slowdown
#   0   a    0      100 2     0     100     0      100  100/100       = 1
#   1   b    0      100 2     100   200     100    200  200/100       = 2
#   2   b    10     30  1     200   230     190    220  220/max(30,60) = 11/3
#   3   a    20     10  1     200   210     180    190  190/max(10,60) = 19/6
#   4   a    300    10  1     300   310     0      10   max(1, 10/60)  = 1 (floored)
# team a: mean slowdown (1 + 19/6 + 1)/3 = 31/18; JCTs 10, 100, 190: p95 190
# team b: mean slowdown (2 + 11/3)/2 = 51/18; JCTs 200, 220: p95 220
# Jain's index: (31 + 51)^2 / (2 (31^2 + 51^2)) = 6724 / 7124
HAND_MADE = [
    TraceJob(0, 0, 100, 2, "a", "training"),
    TraceJob(1, 0, 100, 2, "b", "training"),
    TraceJob(2, 10, 30, 1, "b", "training"),
    TraceJob(3, 20, 10, 1, "a", "training"),
    TraceJob(4, 300, 10, 1, "a", "training"),
]


def test_fairness_figures_on_a_trace_worked_out_by_hand() -> None:
    s = summarize(simulate(HAND_MADE, parse_sim_cluster(TWO_GPUS), "fifo"))
    assert s["by_team"]["a"]["queue_s"]["mean"] == pytest.approx(60)
    assert s["by_team"]["b"]["queue_s"]["mean"] == pytest.approx(145)
    assert s["by_team"]["a"]["jct_s"]["p95"] == 190
    assert s["by_team"]["a"]["slowdown"]["mean"] == pytest.approx(31 / 18)
    assert s["by_team"]["b"]["slowdown"]["mean"] == pytest.approx(51 / 18)
    assert (s["worst_team"], s["worst_team_p95_jct_s"]) == ("b", 220)
    assert s["max_queue_s"] == 190
    assert s["jain_index"] == pytest.approx(6724 / 7124)
    # the keys that were there before stay
    assert s["queue_s"]["mean"] == pytest.approx((0 + 100 + 190 + 180 + 0) / 5)
    assert s["jobs_finished"] == 5 and "by_class" in s


@pytest.mark.parametrize(
    "values, want",
    [
        pytest.param([2.0, 2.0, 2.0], 1.0, id="equal slowdowns are perfectly fair"),
        pytest.param([5.0, 0.0, 0.0, 0.0], 0.25, id="one team bearing it all gives 1/n"),
        pytest.param([1.0, 3.0], 16 / 20, id="two teams: (1+3)^2 / (2 (1+9))"),
        pytest.param([], 1.0, id="no teams is fair"),
    ],
)
def test_jains_index(values: list[float], want: float) -> None:
    assert jain_index(values) == pytest.approx(want)


def _files(tmp_path: Path) -> tuple[str, str]:
    trace, cluster = tmp_path / "t.csv", tmp_path / "c.yaml"
    write_trace(trace, HAND_MADE)
    cluster.write_text(json.dumps(TWO_GPUS))
    return str(trace), str(cluster)


def test_a_comma_separated_policy_list_gives_one_column_each_with_ratios(tmp_path: Path) -> None:
    trace, cluster = _files(tmp_path)
    runner = CliRunner()
    args = ["simulate", "--trace", trace, "--cluster", cluster]
    out = runner.invoke(app, [*args, "--policy", "fifo,default,short-first", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["policies"] == ["fifo", "default", "short-first"]
    assert all(data[p]["jobs_finished"] == 5 for p in data["policies"])
    assert data["fifo"]["jain_index"] == pytest.approx(6724 / 7124)

    text = runner.invoke(app, [*args, "--policy", "fifo,default,short-first"]).stdout
    lines = text.splitlines()
    assert lines[1].split() == ["fifo", "default", "ratio", "short-first", "ratio"]
    row = {ln[:28].strip(): ln[28:].split() for ln in lines[2:]}
    assert row["jobs finished"] == ["5", "5", "1.00", "5", "1.00"]
    assert row["max queueing delay"][0] == "3.2m"  # 190 s
    assert row["worst team's p95 completion"][0] == "3.7m"  # 220 s
    assert row["worst team"][0] == "b"
    assert row["Jain's index (slowdown)"][0] == f"{6724 / 7124:.3f}"
    for label in ("a: mean queueing", "b: p95 completion", "simulation wall time (s)"):
        assert label in row
    # the default is mlq's policy against strict FIFO
    assert runner.invoke(app, args).stdout.splitlines()[1].split() == ["default", "fifo", "ratio"]


@pytest.mark.parametrize(
    "policy, message",
    [
        pytest.param(
            "default,sjf",
            '--policy: "sjf" is not a policy; use one or more of default, short-first, '
            "fifo-order, fifo, separated by commas",
            id="an unknown name names the allowed ones",
        ),
        pytest.param(
            "fifo,fifo", '--policy: "fifo" is named twice', id="a policy named twice is refused"
        ),
    ],
)
def test_a_bad_policy_list_is_one_clear_error(tmp_path: Path, policy: str, message: str) -> None:
    trace, cluster = _files(tmp_path)
    out = CliRunner().invoke(
        app, ["simulate", "--trace", trace, "--cluster", cluster, "--policy", policy]
    )
    assert isinstance(out.exception, InvalidInput) and str(out.exception) == message
    assert out.exit_code != 0 and out.stdout == ""


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _ticks(update) -> None:
    for t, done in ((0.0, 0), (86400.0, 2), (172800.0, 5)):
        update(Progress("default", t, 172800.0, done, 5, 1.5))


def test_the_progress_bars_print_nothing_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    pipe = io.StringIO()
    with progress_bars(["default", "fifo"], stream=pipe) as update:
        _ticks(update)
    assert pipe.getvalue() == ""
    # the command itself under a runner (stderr is not a terminal): JSON only, no bars
    trace, cluster = _files(tmp_path)
    out = CliRunner().invoke(app, ["simulate", "--trace", trace, "--cluster", cluster, "--json"])
    assert out.exit_code == 0 and out.stderr == ""
    json.loads(out.stdout)


def test_the_progress_bars_show_days_jobs_and_wall_time_on_a_terminal() -> None:
    tty = _Terminal()
    with progress_bars(["default", "fifo"], stream=tty) as update:
        _ticks(update)
    shown = tty.getvalue()
    assert "default" in shown and "fifo" in shown
    assert "2.0/2.0 days" in shown and "5/5 jobs" in shown and "2s" in shown


def test_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib is mlq[plot], which mlq[test] installs")
    trace, cluster = _files(tmp_path)
    png = tmp_path / "sim.png"
    out = CliRunner().invoke(
        app, ["simulate", "--trace", trace, "--cluster", cluster, "--plot", str(png)]
    )
    assert out.exit_code == 0, out.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "fifo" in out.stdout  # the table is printed as well


def test_plot_refuses_before_simulating(tmp_path: Path, monkeypatch) -> None:
    trace, cluster = _files(tmp_path)
    args = ["simulate", "--trace", trace, "--cluster", cluster, "--plot"]
    out = CliRunner().invoke(app, [*args, str(tmp_path / "sim.pdf")])
    assert isinstance(out.exception, InvalidInput)
    assert str(out.exception) == f'--plot: "{tmp_path / "sim.pdf"}" must end in .png or .svg'
    out = CliRunner().invoke(app, [*args, str(tmp_path / "no" / "sim.png")])
    assert str(out.exception) == f'--plot: "{tmp_path / "no"}" is not a directory'

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    monkeypatch.setattr("mlq.scheduler.simreport.simulate", _must_not_run)
    out = CliRunner().invoke(app, [*args, str(tmp_path / "sim.png")])
    assert isinstance(out.exception, MlqError)
    assert str(out.exception) == "--plot needs matplotlib: pip install 'mlq[plot]'"
    assert not (tmp_path / "sim.png").exists()


def _must_not_run(*args, **kwargs):
    raise AssertionError("simulated although --plot could not be drawn")


def test_the_cli_starts_without_matplotlib_or_numpy() -> None:
    code = (
        "import sys\n"
        "from mlq.cli.main import main\n"
        "sys.argv = ['mlq', 'simulate', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('matplotlib', 'numpy') if m in sys.modules), file=sys.stderr)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "--plot" in out.stdout and out.stderr.strip() == "[]"
