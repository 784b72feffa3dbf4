"""scheduler/launch.py: a resolved job file becomes the executor's request."""

from __future__ import annotations

import json
from pathlib import Path

from exec_helpers import finish
from mlq.executor import LaunchRequest, Outcome, start
from mlq.executor.rundir import checkpoint_dir
from mlq.scheduler.cluster import DEFAULT_CLASSES
from mlq.scheduler.launch import build_launch_request
from mlq.scheduler.spec import parse_spec, resolve

JOB = {
    "name": "bert-finetune",
    "team": "nlp",
    "kind": "training",
    "command": ["/bin/sh", "-c", "env | grep -E '^(MLQ|CUDA|NVIDIA|NCCL)' | sort; hostname"],
    "env": {"NCCL_DEBUG": "WARN"},
    "resources": {"cpus": "1500m", "memory": "256Mi", "pids": 64, "shm": "16Mi"},
    "checkpoint": {"target": "/ckpt"},
    "preemption": {"grace_period": "90s", "stop_signal": "SIGUSR2"},
    "time_limit": "1h",
    "security": {"user_namespace": True},
}


def test_a_job_file_becomes_a_request_in_kernel_units(tmp_path):
    spec = resolve(parse_spec(JOB), list(DEFAULT_CLASSES))
    req = build_launch_request(
        spec,
        job_id=42,
        restart_count=2,
        uid=1000,
        gid=1000,
        state_dir=str(tmp_path),
        devices=["/dev/nvidia0"],
        visible_devices="0",
    )
    assert req.run_id == "42-2" and req.hostname == "bert-finetune"
    r = req.resources
    assert (r.cpu_quota_us, r.cpu_period_us) == (150_000, 100_000)
    assert (r.memory_max, r.memory_high, r.memory_swap_max) == (
        256 << 20,
        (256 << 20) * 87 // 100,
        0,
    )
    assert (r.pids_max, req.shm_size) == (64, 16 << 20)
    assert (req.stop_signal, req.grace_period_s, req.time_limit_s) == ("SIGUSR2", 90.0, 3600.0)
    assert req.checkpoint.source == checkpoint_dir(str(tmp_path), 42)
    assert [d.path for d in req.devices] == ["/dev/nvidia0"]
    env = req.process.env
    assert (
        env["MLQ_JOB_ID"] == "42" and env["MLQ_RESTART_COUNT"] == "2" and env["MLQ_TEAM"] == "nlp"
    )
    assert env["CUDA_VISIBLE_DEVICES"] == env["NVIDIA_VISIBLE_DEVICES"] == "0"
    # the user's root inside maps to their own uid outside
    assert req.namespaces.user and (
        req.process.user.uid,
        req.namespaces.uid_mappings[0].host_id,
    ) == (0, 1000)
    assert LaunchRequest.from_json(req.to_json()) == req


def test_the_request_runs_and_the_job_sees_its_environment(tmp_path):
    job = dict(JOB, security={})
    spec = resolve(parse_spec(job), list(DEFAULT_CLASSES))
    state = tmp_path / "state"
    req = build_launch_request(spec, job_id=7, state_dir=str(state))
    h = start(req)
    st = finish(h)
    assert st.state == Outcome.COMPLETED
    lines = Path(h.stdout).read_text().split()
    assert lines == [
        "MLQ_CHECKPOINT_DIR=/ckpt",
        "MLQ_JOB_ID=7",
        "MLQ_RESTART_COUNT=0",
        "MLQ_TEAM=nlp",
        "NCCL_DEBUG=WARN",
        "bert-finetune",
    ]
    assert json.loads((state / "runs" / "7-0" / "request.json").read_text())["run_id"] == "7-0"


def test_a_bridge_job_gets_the_nodes_bridge_and_its_classs_nat(tmp_path):
    spec = resolve(parse_spec(dict(JOB, network="bridge")), list(DEFAULT_CLASSES))
    default = build_launch_request(spec, job_id=1, state_dir=str(tmp_path))
    assert (default.network.bridge, default.network.subnet, default.network.nat) == (
        "mlq0",
        "10.88.0.0/16",
        True,
    )
    req = build_launch_request(
        spec,
        job_id=1,
        state_dir=str(tmp_path),
        bridge="mlqlab0",
        bridge_subnet="10.99.0.0/24",
        nat=False,
    )
    assert (req.network.mode, req.network.bridge, req.network.subnet, req.network.nat) == (
        "bridge",
        "mlqlab0",
        "10.99.0.0/24",
        False,
    )
    assert LaunchRequest.from_json(req.to_json()) == req
    # a request from before nat existed reads as NAT on, as schema 9 defaults classes
    old = json.loads(default.to_json())
    del old["network"]["nat"]
    assert LaunchRequest.from_dict(old).network.nat is True
