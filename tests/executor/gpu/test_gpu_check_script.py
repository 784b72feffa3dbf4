"""scripts/gpu-check's judgement, on nvidia-smi output in the driver's own format.

The script runs for real only where a GPU is at hand; these tests make sure that on
that occasion it parses nvidia-smi correctly and fails a job that sees too much.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import re
from pathlib import Path

import pytest
from mlq.executor import gpus

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "gpu-check"


@pytest.fixture
def check():
    loader = importlib.machinery.SourceFileLoader("gpu_check", str(SCRIPT))
    spec = importlib.util.spec_from_loader("gpu_check", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def smi_list(node: gpus.NodeGpus) -> str:
    """`nvidia-smi -L` as the driver prints it."""
    out = []
    for g in node.gpus:
        out.append(f"GPU {g.index}: {g.name} (UUID: {g.uuid})")
        out += [
            f"  MIG {m.profile:<13} Device {i:>2}: (UUID: {m.uuid})" for i, m in enumerate(g.mig)
        ]
    return "\n".join(out) + "\n"


def smi_lgi(node: gpus.NodeGpus) -> str:
    """`nvidia-smi mig -lgi` as the driver prints it."""
    out = [
        "+-------------------------------------------------------+",
        "| GPU instances:                                        |",
        "| GPU   Name             Profile  Instance   Placement  |",
        "|                          ID       ID       Start:Size |",
        "|=======================================================|",
    ]
    for g in node.gpus:
        for m in g.mig:
            out.append(
                f"|   {g.index}  MIG {m.profile:<14} {m.profile_id:>3}  {m.gi_id:>8}  {m.start:>9}:{m.size:<5} |"
            )
            out.append("+-------------------------------------------------------+")
    return "\n".join(out) + "\n"


def statuses(check) -> dict[str, str]:
    return {name: status for status, name, _ in check.results}


def test_discovery_that_matches_nvidia_smi_passes(check, fake_node):
    fake_node("h100-8-mig")
    node = gpus.discover()
    check.check_discovery(node, smi_list(node), smi_lgi(node))
    got = statuses(check)
    assert got["GPU UUIDs"] == "PASS"
    assert got["GPU 6 MIG devices"] == got["GPU 7 MIG devices"] == "PASS"
    assert got["GPU instances (nvidia-smi mig -lgi)"] == "PASS"
    assert got["host device nodes"] == "PASS"
    assert "FAIL" not in got.values()


def test_discovery_that_differs_from_nvidia_smi_fails(check, fake_node):
    fake_node("h100-8-mig")
    node = gpus.discover()
    # GI 11 reported at slot 4 instead of 3, and one MIG UUID different.
    lgi = re.sub(r"(\s11\s+)3:1", r"\g<1>4:1", smi_lgi(node))
    assert lgi != smi_lgi(node)
    listing = smi_list(node).replace("070000000013", "070000000099")
    check.check_discovery(node, listing, lgi)
    got = statuses(check)
    assert got["GPU 7 MIG devices"] == "FAIL"
    assert got["GPU instances (nvidia-smi mig -lgi)"] == "FAIL"


MIG11 = "MIG-3b1e7f0a-5d2c-5c11-9a0e-070000000011"
MIG12 = "MIG-3b1e7f0a-5d2c-5c11-9a0e-070000000012"
GPU7 = "GPU-6d3f6c2a-0c1e-4b7e-9f4e-000000000007"


def job_view(node, extra_dev=(), extra_smi=""):
    w = gpus.wiring(node, mig=[(7, 3)])
    env = {"CUDA_VISIBLE_DEVICES": MIG11, "NVIDIA_VISIBLE_DEVICES": MIG11}
    dev = sorted([d.path for d in w.devices] + list(extra_dev))
    smi = (
        f"GPU 0: NVIDIA H100 80GB HBM3 (UUID: {GPU7})\n"
        f"  MIG 1g.10gb      Device  0: (UUID: {MIG11})\n" + extra_smi
    )
    return env, dev, smi


def test_a_job_that_sees_exactly_its_slice_passes(check, fake_node):
    fake_node("h100-8-mig")
    node = gpus.discover()
    check.judge("MIG slice", node, *job_view(node), "0")
    assert [r[0] for r in check.results] == ["PASS", "PASS", "PASS"]
    assert check.results[1][2] == (
        "exactly ['/dev/nvidia-caps/nvidia-cap1047', '/dev/nvidia-caps/nvidia-cap1048', "
        "'/dev/nvidia-uvm', '/dev/nvidia-uvm-tools', '/dev/nvidia7', '/dev/nvidiactl']"
    )


def test_a_job_that_sees_another_slice_or_its_nodes_fails(check, fake_node):
    fake_node("h100-8-mig")
    node = gpus.discover()
    env, dev, smi = job_view(
        node,
        extra_dev=["/dev/nvidia-caps/nvidia-cap1056"],
        extra_smi=f"  MIG 1g.10gb      Device  1: (UUID: {MIG12})\n",
    )
    check.judge("MIG slice", node, env, dev, smi, "0")
    assert check.results[1:] == [
        (
            "FAIL",
            "job given one MIG slice: /dev",
            "extra ['/dev/nvidia-caps/nvidia-cap1056'], missing []",
        ),
        (
            "FAIL",
            "job given one MIG slice: nvidia-smi -L inside",
            f"sees other devices ['{MIG12}']",
        ),
    ]


def test_a_job_given_the_wrong_kind_of_device_fails(check, fake_node):
    fake_node("h100-8-mig")
    node = gpus.discover()
    env, dev, smi = job_view(node)
    check.judge("whole GPU", node, env, dev, smi, "0")
    want = ("FAIL", "job given one whole GPU: visible devices", f"{MIG11} is not a whole GPU")
    assert check.results == [want]


def test_a_job_whose_nvidia_smi_lists_nothing_fails(check, fake_node):
    fake_node("h100-8-mig")
    node = gpus.discover()
    env, dev, _ = job_view(node)
    check.judge("MIG slice", node, env, dev, "Failed to initialize NVML: Unknown Error\n", "255")
    assert check.results[2:] == [
        ("FAIL", "job given one MIG slice: nvidia-smi -L inside", f"exit 255; {MIG11} not listed"),
        (
            "WARN",
            "job given one MIG slice: nvidia-smi -L inside",
            "exited 255 (its output is above)",
        ),
    ]


@pytest.mark.skipif(os.geteuid() != 0, reason="jobs need root")
def test_the_check_s_jobs_run_and_are_judged_on_fake_nodes(check, fake_node):
    # No nvidia-smi here, so the nvidia-smi step fails; what it shows is that both
    # launch paths (mlq run for a whole GPU, the daemon's path for a slice) run the
    # job and that its variables and /dev are read back and judged right.
    fake_node("h100-8-mig")
    node = gpus.discover()
    check.run_job("whole GPU", {"gpus": 1}, node)
    check.run_job("MIG slice", {"mig": {"profile": "1g.10gb"}}, node, (7, 3))
    assert [(s, name) for s, name, _ in check.results] == [
        ("PASS", "job given one whole GPU: visible devices"),
        ("PASS", "job given one whole GPU: /dev"),
        ("FAIL", "job given one whole GPU: nvidia-smi -L inside"),
        ("WARN", "job given one whole GPU: nvidia-smi -L inside"),
        ("PASS", "job given one MIG slice: visible devices"),
        ("PASS", "job given one MIG slice: /dev"),
        ("FAIL", "job given one MIG slice: nvidia-smi -L inside"),
        ("WARN", "job given one MIG slice: nvidia-smi -L inside"),
    ]
    assert check.results[4][2] == MIG11
