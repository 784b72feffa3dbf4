"""GPUs end to end through the daemon, on the fake NVML and fake device nodes: the
daemon discovers the node, the policy places a MIG job on a discovered slice, and
the job sees exactly that slice's devices and name."""

from __future__ import annotations

import json
from pathlib import Path

from mlq.executor import fakenvml

INVENTORY = Path(__file__).resolve().parents[2] / "configs" / "gpus" / "h100-8-mig.yaml"
LOOK = (
    "for d in $(find /dev -name 'nvidia*' | sort); do [ -c $d ] && echo $d; done;"
    ' echo "CUDA=$CUDA_VISIBLE_DEVICES"; echo "NVIDIA=$NVIDIA_VISIBLE_DEVICES"'
)


def fake_gpus(home: Path) -> dict[str, str]:
    files = fakenvml.materialize(fakenvml.load_inventory(INVENTORY), home / "fake", INVENTORY)
    return files.env()


def test_the_daemon_discovers_the_node_and_runs_a_mig_job_on_a_discovered_slice(
    make_daemon, daemon_home, unix_users
):
    d = make_daemon(gpus="discover", env=fake_gpus(daemon_home))
    node = d.cli("nodes", "--json").json()["nodes"][0]
    assert node["gpu_source"] == "nvml"
    assert [g["index"] for g in node["gpus"]] == list(range(8))
    slices = {(g["index"], m["start"]): m for g in node["gpus"] if g.get("mig") for m in g["mig"]}
    assert sorted(m["profile"] for m in slices.values()) == ["1g.10gb"] * 7 + ["3g.40gb"] * 2
    # rediscovery is for admins, and finds the same node
    assert d.cli("nodes", "--refresh", user=unix_users["alice"]).code == 3
    again = d.cli("nodes", "--refresh", "--json")
    assert again.code == 0, again.err
    assert again.json()["nodes"][0]["gpus"] == node["gpus"]

    job_id = d.submit(
        f"""
name: mig-probe
team: cv
kind: inference
command: {json.dumps(["/bin/sh", "-c", LOOK])}
resources: {{mig: {{profile: 1g.10gb, count: 1}}, cpus: 1, memory: 128Mi}}
""",
        user=unix_users["alice"],
    )
    job = d.wait_for(job_id, {"COMPLETED", "FAILED"})
    assert job["state"] == "COMPLETED", d.log(job_id, stream="stderr")
    (held,) = job["devices"]["mig"]
    assert held["profile"] == "1g.10gb"
    uuid = slices[(held["gpu"], held["start"])]["uuid"]
    out = d.log(job_id).splitlines()
    assert out[-2:] == [f"CUDA={uuid}", f"NVIDIA={uuid}"]
    nodes = out[:-2]
    caps = [n for n in nodes if n.startswith("/dev/nvidia-caps/")]
    assert len(caps) == 2  # its GPU instance's and its compute instance's access nodes
    assert sorted(set(nodes) - set(caps)) == [
        "/dev/nvidia-uvm",
        "/dev/nvidia-uvm-tools",
        f"/dev/nvidia{held['gpu']}",
        "/dev/nvidiactl",
    ]


def test_a_whole_gpu_job_gets_one_discovered_gpu_and_the_node_shows_who_holds_it(
    make_daemon, daemon_home, unix_users
):
    d = make_daemon(gpus="discover", env=fake_gpus(daemon_home))
    gate = daemon_home / "gate"
    gate.mkdir()
    job_id = d.submit(
        f"""
name: one-gpu
team: nlp
command: {json.dumps(["/bin/sh", "-c", LOOK + "; while [ ! -e /gate/open ]; do sleep 0.05; done"])}
resources: {{gpus: 1, cpus: 1, memory: 128Mi}}
volumes: [{{source: {gate}, target: /gate, readonly: true}}]
""",
        user=unix_users["alice"],
    )
    job = d.wait_for(job_id, "RUNNING")
    (gpu,) = job["devices"]["gpus"]
    node = d.cli("nodes", "--json").json()["nodes"][0]
    holders = {g["index"]: g["job"] for g in node["gpus"] if not g.get("mig")}
    assert holders[gpu] == job_id
    assert [i for i, j in holders.items() if j is not None] == [gpu]
    nlp = next(t for t in node["teams"] if t["team"] == "nlp")
    assert nlp["used"]["gpu"] == 1
    (gate / "open").touch()
    d.wait_for(job_id, "COMPLETED")
    out = d.log(job_id).splitlines()
    assert f"/dev/nvidia{gpu}" in out
    assert len([n for n in out if n.startswith("/dev/nvidia") and n[11:].isdigit()]) == 1
