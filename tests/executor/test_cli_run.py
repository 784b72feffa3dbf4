"""``mlq run FILE``: the job file run in the foreground, as a user would type it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

MLQ = str(Path(sys.executable).with_name("mlq"))


def job_file(tmp_path: Path, command: list[str], **extra: object) -> Path:
    spec = {"name": "clijob", "team": "nlp", "command": command, "resources": {"memory": "64Mi"}}
    spec.update(extra)
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


def mlq_run(tmp_path: Path, *args: str, **kw) -> subprocess.Popen:
    env = kw.pop("env", None) or dict(os.environ, MLQ_STATE_DIR=str(tmp_path / "state"))
    return subprocess.Popen(
        [MLQ, "run", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def test_run_json_prints_only_the_outcome_and_streams_the_jobs_output_to_stderr(tmp_path):
    f = job_file(tmp_path, ["/bin/sh", "-c", "echo out-line; echo err-line >&2; echo $MLQ_TEAM"])
    p = mlq_run(tmp_path, str(f), "--json")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    result = json.loads(out)
    assert set(result) == {
        "state",
        "exit_code",
        "signal",
        "duration_s",
        "max_memory_bytes",
        "oom_kills",
    }
    assert (result["state"], result["exit_code"], result["signal"]) == ("COMPLETED", 0, None)
    assert "out-line" in err and "err-line" in err and "nlp" in err


def test_run_reports_out_of_memory_and_exits_with_the_jobs_code(tmp_path):
    hog = "x = []\nwhile True: x.append(bytearray(8 << 20))"
    f = job_file(tmp_path, [os.path.realpath(sys.executable), "-c", hog])  # outside /tmp
    p = mlq_run(tmp_path, str(f), "--json")
    out, err = p.communicate(timeout=60)
    result = json.loads(out)
    assert (result["state"], result["signal"], p.returncode) == ("OUT_OF_MEMORY", "SIGKILL", 137)
    assert result["oom_kills"] >= 1 and result["max_memory_bytes"] <= 64 * 2**20


def _wait_for(p: subprocess.Popen, stream_path: Path, text: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for log in stream_path.glob("runs/*/stdout"):
            if text in log.read_text():
                return
        assert p.poll() is None
        time.sleep(0.05)
    pytest.fail(f"{text} never printed")


def test_ctrl_c_stops_gracefully_and_a_second_ctrl_c_kills(tmp_path):
    f = job_file(
        tmp_path,
        ["/bin/sh", "-c", 'trap "echo bye" TERM; echo ready; while :; do sleep 0.05; done'],
        preemption={"grace_period": "120s"},
    )
    p = mlq_run(tmp_path, str(f), "--json")
    _wait_for(p, tmp_path / "state", "ready")
    p.send_signal(signal.SIGINT)  # graceful: the trap runs, the loop goes on
    _wait_for(p, tmp_path / "state", "bye")
    p.send_signal(signal.SIGINT)  # now kill, well before the 120 s grace ends
    out, err = p.communicate(timeout=30)
    result = json.loads(out)
    assert (result["state"], result["signal"]) == ("STOPPED", "SIGKILL")
    assert "Ctrl-C again to kill" in err


def test_run_gives_a_gpu_job_only_its_gpus_nodes_from_the_fake_nvml(tmp_path):
    repo = Path(__file__).resolve().parents[2]
    inventory = repo / "configs" / "gpus" / "h100-8-mig.yaml"
    out = subprocess.run(
        [sys.executable, "-m", "mlq.executor.fakenvml", str(inventory), str(tmp_path / "gpu")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    env = dict(
        line.removeprefix("export ").split("=", 1)
        for line in out.splitlines()
        if line.startswith("export ")
    )
    script = "ls /dev | grep nvidia | sort | tr '\\n' ' '; echo; echo $CUDA_VISIBLE_DEVICES"
    f = job_file(tmp_path, ["/bin/sh", "-c", script], resources={"gpus": 2, "memory": "64Mi"})
    p = mlq_run(
        tmp_path, str(f), env=dict(os.environ, MLQ_STATE_DIR=str(tmp_path / "state"), **env)
    )
    stdout, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    nodes, visible = stdout.splitlines()
    gpu_nodes = [n for n in nodes.split() if n[len("nvidia") :].isdigit()]
    assert len(gpu_nodes) == 2 and "nvidiactl" in nodes.split()
    assert len(visible.split(",")) == 2


@pytest.mark.parametrize(
    ("command", "code", "says"),
    [
        (["/bin/sh", "-c", "exit 3"], 3, "exit 3"),  # the job's own: 3 is not "refused"
        (["/nonexistent"], 127, "No such file"),
        (["/etc/passwd"], 126, "Permission denied"),
    ],
    ids=["the job's code", "not found: 127", "not executable: 126"],
)
def test_run_exits_with_the_jobs_code_and_its_own_errors_apart_as_docker_run(
    tmp_path, command, code, says
):
    p = mlq_run(tmp_path, str(job_file(tmp_path, command)))
    _, err = p.communicate(timeout=60)
    assert p.returncode == code and says in err, err


def test_run_says_its_own_errors_with_125(tmp_path):
    for args in (["--bogus"], [str(tmp_path / "missing.yaml")]):
        p = mlq_run(tmp_path, *args)
        _, err = p.communicate(timeout=60)
        assert p.returncode == 125 and err.startswith("mlq: error:"), err
