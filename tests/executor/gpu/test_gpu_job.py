"""End to end on fake device nodes: a real job (namespaces, cgroup, overlay root) given
GPUs or a MIG slice by discovery + wiring sees exactly those devices.

The same path the daemon takes: discover -> wiring -> build_launch_request -> start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlq.executor import gpus, start, wait
from mlq.scheduler.launch import build_launch_request
from mlq.scheduler.spec import parse_spec

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="jobs need root")

MLQ = str(Path(sys.executable).with_name("mlq"))
# Every NVIDIA char device in the job's /dev with its major:minor, then the variables.
# (`test -c`, not `find -type c`: a node bind-mounted onto a file reads as a file to find.)
LOOK = (
    "for d in $(find /dev -name 'nvidia*' | sort); do"
    " [ -c $d ] && echo $d $(stat -c '%t:%T' $d); done;"
    ' echo "CUDA=$CUDA_VISIBLE_DEVICES"; echo "NVIDIA=$NVIDIA_VISIBLE_DEVICES"'
)


def host_nodes(files, paths: list[str]) -> list[str]:
    """'path major:minor' (hex, as stat prints) of the host's fake node for each job path."""
    out = []
    for p in paths:
        st = os.stat(files.dev_root / p.removeprefix("/dev/"))
        out.append(f"{p} {os.major(st.st_rdev):x}:{os.minor(st.st_rdev):x}")
    return out


def no_leftovers(marker: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split()[4] for line in f if marker in line]
    cgroups = [
        str(p) for root in Path("/sys/fs/cgroup").glob("*/mlq") for p in root.glob("*gpujob*")
    ]
    return mounts + cgroups


def test_a_job_given_one_1g_slice_sees_exactly_that_slice(fake_node, tmp_path):
    files = fake_node("h100-8-mig")
    node = gpus.discover()
    w = gpus.wiring(node, mig=[(7, 3)])
    spec = parse_spec(
        {
            "name": "gpujob-mig",
            "team": "cv",
            "command": ["/bin/sh", "-c", LOOK],
            "resources": {"mig": {"profile": "1g.10gb"}, "cpus": 1, "memory": "256Mi"},
        }
    )
    req = build_launch_request(
        spec,
        job_id=1,
        state_dir=str(tmp_path / "state"),
        devices=[(d.host_path, d.path) for d in w.devices],
        visible_devices=w.visible,
    )
    handle = start(req)
    status = wait(handle, timeout=60)
    out = Path(handle.stdout).read_text().splitlines()

    assert status is not None and status.state.value == "COMPLETED", Path(handle.stderr).read_text()
    mig = "MIG-3b1e7f0a-5d2c-5c11-9a0e-070000000011"
    assert out[-2:] == [f"CUDA={mig}", f"NVIDIA={mig}"]
    assert out[:-2] == host_nodes(
        files,
        [
            "/dev/nvidia-caps/nvidia-cap1047",  # gpu7/gi11/access
            "/dev/nvidia-caps/nvidia-cap1048",  # gpu7/gi11/ci0/access
            "/dev/nvidia-uvm",
            "/dev/nvidia-uvm-tools",
            "/dev/nvidia7",
            "/dev/nvidiactl",
        ],
    )
    assert no_leftovers(str(tmp_path)) == []


def test_mlq_run_gives_a_one_gpu_job_a_discovered_whole_gpu(fake_node, tmp_path):
    files = fake_node("h100-8-mig")  # sets MLQ_FAKE_NVML and the fake device root
    job = tmp_path / "job.yaml"
    job.write_text(
        json.dumps(
            {
                "name": "gpujob-whole",
                "team": "cv",
                "command": ["/bin/sh", "-c", LOOK],
                "resources": {"gpus": 1, "cpus": 1, "memory": "256Mi"},
            }
        )
    )
    env = dict(os.environ, MLQ_STATE_DIR=str(tmp_path / "state"))
    p = subprocess.run(
        [MLQ, "run", "--json", str(job)], env=env, capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["state"] == "COMPLETED"
    seen = [
        line for line in p.stderr.splitlines() if line.startswith(("/dev/", "CUDA=", "NVIDIA="))
    ]
    gpu0 = "GPU-6d3f6c2a-0c1e-4b7e-9f4e-000000000000"
    assert seen == host_nodes(
        files, ["/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia0", "/dev/nvidiactl"]
    ) + [f"CUDA={gpu0}", f"NVIDIA={gpu0}"]
    assert no_leftovers(str(tmp_path)) == []
