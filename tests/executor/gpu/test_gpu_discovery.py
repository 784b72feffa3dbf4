"""Discovery through NVML (served by the fake NVML): what a daemon would report."""

from __future__ import annotations

import ctypes.util
import json
import logging

import pynvml
import pytest
from mlq.executor import gpus, nvml
from mlq.executor.fakenvml import FakeNvml, load_inventory
from mlq.executor.gpus import GpuShape
from mlq.scheduler.cluster import ClusterConfig, GpuDecl, MigSlice, NodeConfig

H100_GPU_UUID = "GPU-6d3f6c2a-0c1e-4b7e-9f4e-00000000000{}"
MIG7 = "MIG-3b1e7f0a-5d2c-5c11-9a0e-0700000000{:02d}"


def test_an_h100_node_with_two_mig_gpus_is_discovered_as_it_is(fake_node):
    fake_node("h100-8-mig")
    node = gpus.discover(NodeConfig(name="n1"))

    assert node.source == "nvml" and node.reason == "" and node.problems == ()
    assert node.driver_version == "550.90.07"
    assert [g.index for g in node.gpus] == list(range(8))
    assert {g.model for g in node.gpus} == {"H100-80GB"}
    assert {g.name for g in node.gpus} == {"NVIDIA H100 80GB HBM3"}
    assert [g.uuid for g in node.gpus] == [H100_GPU_UUID.format(i) for i in range(8)]
    assert [g.mig_enabled for g in node.gpus] == [False] * 6 + [True, True]
    assert all(g.memory_mb == 81559 and g.minor == g.index for g in node.gpus)
    assert node.gpus[0].pci_bus_id == "00000000:18:00.0"

    # GPU 6: two 3g.40gb GPU instances; the driver gave GI 2 the slot at 0, GI 1 the one at 4.
    g6 = node.gpus[6]
    assert [(m.profile, m.profile_id, m.start, m.size, m.gi_id, m.ci_id) for m in g6.mig] == [
        ("3g.40gb", 9, 0, 4, 2, 0),
        ("3g.40gb", 9, 4, 4, 1, 0),
    ]
    assert [m.uuid for m in g6.mig] == [
        "MIG-0f6a1c3e-6a3b-5a8e-8d64-060000000002",
        "MIG-0f6a1c3e-6a3b-5a8e-8d64-060000000001",
    ]
    # Capability minors as the driver numbers them in mig-minors (gpu6/gi2/access 831 ...).
    assert [(m.gi_cap_minor, m.ci_cap_minor) for m in g6.mig] == [(831, 832), (822, 823)]
    assert all(m.gi_slices == m.ci_slices == 3 and m.memory_mb == 40000 for m in g6.mig)

    # GPU 7: seven 1g.10gb, one per compute slice, GI IDs 7-9 and 11-14.
    g7 = node.gpus[7]
    assert [(m.profile, m.profile_id, m.start, m.size) for m in g7.mig] == [
        ("1g.10gb", 19, s, 1) for s in range(7)
    ]
    assert [m.gi_id for m in g7.mig] == [7, 8, 9, 11, 12, 13, 14]
    assert [m.uuid for m in g7.mig] == [MIG7.format(i) for i in (7, 8, 9, 11, 12, 13, 14)]
    assert [m.gi_cap_minor for m in g7.mig] == [1011, 1020, 1029, 1047, 1056, 1065, 1074]
    assert [m.ci_cap_minor for m in g7.mig] == [1012, 1021, 1030, 1048, 1057, 1066, 1075]


def test_the_scheduler_gets_the_discovered_gpus_in_its_declared_shape(fake_node):
    fake_node("h100-8-mig")
    decls = gpus.discover().shapes()

    assert decls == [GpuShape(i, "H100-80GB", None) for i in range(6)] + [
        GpuShape(6, "H100-80GB", (("3g.40gb", 0), ("3g.40gb", 4))),
        GpuShape(7, "H100-80GB", tuple(("1g.10gb", s) for s in range(7))),
    ]


def test_the_inventory_is_listed_as_json(fake_node):
    fake_node("h100-8-mig")
    data = json.loads(json.dumps(gpus.discover().to_json()))

    assert data["source"] == "nvml" and len(data["gpus"]) == 8
    g7 = data["gpus"][7]
    assert g7["model"] == "H100-80GB" and g7["mig_enabled"] is True
    assert g7["mig"][3] == {
        "gpu_index": 7,
        "uuid": MIG7.format(11),
        "gi_id": 11,
        "ci_id": 0,
        "profile": "1g.10gb",
        "profile_id": 19,
        "memory_mb": 10000,
        "gi_slices": 1,
        "ci_slices": 1,
        "start": 3,
        "size": 1,
        "gi_cap_minor": 1047,
        "ci_cap_minor": 1048,
        "whole_instance": True,
    }


def test_a_node_without_nvml_reports_no_gpus_and_says_why_in_one_line(
    monkeypatch, caplog, inventory
):
    monkeypatch.setenv(nvml.ENV_FAKE, str(inventory("no-driver")))
    with caplog.at_level(logging.INFO, logger="mlq.gpus"):
        node = gpus.discover(ClusterConfig())

    assert node.gpus == () and node.shapes() == []
    assert "libnvidia-ml.so.1 not found" in node.reason
    lines = [r for r in caplog.records if r.name == "mlq.gpus"]
    assert [r.levelname for r in lines] == ["WARNING"]
    assert lines[0].getMessage() == (
        "no GPUs (nvml): NVML unavailable: libnvidia-ml.so.1 not found (no NVIDIA driver installed)"
    )
    assert lines[0].exc_info is None


@pytest.mark.skipif(
    ctypes.util.find_library("nvidia-ml") is not None, reason="this machine has an NVIDIA driver"
)
def test_the_real_pynvml_on_this_machine_without_a_driver_reports_no_gpus():
    node = nvml.query(pynvml)
    assert node.gpus == ()
    assert node.reason.startswith("NVML unavailable: libnvidia-ml.so.1 not found")


def test_a_loaded_library_without_its_kernel_driver_is_reported_as_such(inventory):
    inv = load_inventory(inventory("h100-8-mig"))
    inv.driver = "not-loaded"
    node = nvml.query(FakeNvml(inv))
    assert (
        node.gpus == ()
        and node.reason == "NVML unavailable: the NVIDIA kernel driver is not loaded"
    )


def test_declared_gpus_are_used_only_when_declared_and_nvml_is_not_asked(inventory):
    lib = FakeNvml(load_inventory(inventory("h100-8-mig")))
    config = NodeConfig(
        name="sim",
        gpus="declared",
        declared_gpus=[
            GpuDecl(index=0, model="A100-80GB"),
            GpuDecl(index=1, model="A100-80GB", mig=[MigSlice(profile="3g.40gb", start=4)]),
        ],
    )
    node = gpus.discover(config, lib=lib)

    assert lib.calls == []
    assert node.source == "declared"
    assert node.shapes() == [
        GpuShape(
            d.index, d.model, None if d.mig is None else tuple((m.profile, m.start) for m in d.mig)
        )
        for d in config.declared_gpus
    ]
    assert gpus.discover(config, lib=lib).gpus == node.gpus  # stable made-up UUIDs
    # Discovery, by contrast, sees only what NVML has: the H100s, none of the A100s.
    found = gpus.discover(NodeConfig(name="sim"), lib=lib)
    assert {g.model for g in found.gpus} == {"H100-80GB"} and len(found.gpus) == 8


def test_an_uncatalogued_model_is_reported_with_its_raw_name_not_guessed(fake_node):
    fake_node("uncatalogued")
    node = gpus.discover()

    nvl, l4 = node.gpus
    assert (nvl.name, nvl.model, l4.name, l4.model) == ("NVIDIA H100 NVL", None, "NVIDIA L4", None)
    assert not l4.mig_supported and not l4.mig_enabled
    assert [(m.profile, m.profile_id, m.start) for m in nvl.mig] == [("1g.12gb", 19, 0)]
    assert node.shapes() == [
        GpuShape(0, "NVIDIA H100 NVL", mig=()),
        GpuShape(1, "NVIDIA L4", mig=None),
    ]
    assert node.problems == (
        'GPU 0: model "NVIDIA H100 NVL" is not in the MIG catalogue (A100-40GB, A100-80GB, '
        'H100-80GB, H200-141GB); offered whole as "NVIDIA H100 NVL", its MIG slices are not offered',
        'GPU 1: model "NVIDIA L4" is not in the MIG catalogue (A100-40GB, A100-80GB, H100-80GB, '
        'H200-141GB); offered whole as "NVIDIA L4"',
    )


def test_sparse_mig_slots_minors_apart_from_indices_and_split_instances(fake_node):
    fake_node("a100-mixed")
    node = gpus.discover()

    g0, g1 = node.gpus
    assert (g0.minor, g1.minor) == (1, 0)
    # Slot 1 is empty (NotFound) and skipped; slots 2-4 are still read.
    assert [(m.profile, m.start, m.gi_id, m.ci_id) for m in g1.mig] == [
        ("2g.10gb", 0, 3, 0),
        ("1g.5gb", 2, 9, 0),
        ("1c.3g.20gb", 4, 2, 0),
        ("2c.3g.20gb", 4, 2, 1),
    ]
    # mig-minors is keyed by the GPU's minor (gpu0/...), not its NVML index 1.
    assert g1.mig[0].gi_cap_minor == 3 + 3 * 9
    assert node.shapes()[1] == GpuShape(
        index=1,
        model="A100-40GB",
        mig=(("2g.10gb", 0), ("1g.5gb", 2)),
    )
    assert [p for p in node.problems if "not offered" in p] == [
        f"GPU 1: MIG device {g1.mig[2].uuid} is compute instance 0 of GI 2 (1c.3g.20gb, 1 of 3 "
        "slices); mlq schedules whole GPU instances only, so it is not offered",
        f"GPU 1: MIG device {g1.mig[3].uuid} is compute instance 1 of GI 2 (2c.3g.20gb, 2 of 3 "
        "slices); mlq schedules whole GPU instances only, so it is not offered",
    ]


def test_without_root_mig_placements_are_unreadable_and_the_slices_are_not_offered(
    fake_node, inventory
):
    fake_node("h100-8-mig")
    inv = load_inventory(inventory("h100-8-mig"))
    inv.privileged = False
    node = gpus.discover(lib=FakeNvml(inv))

    assert len(node.gpus) == 8 and node.gpus[7].mig == ()
    assert node.shapes()[7] == GpuShape(7, "H100-80GB", mig=())
    assert len(node.problems) == 9
    assert node.problems[0] == (
        "GPU 6: MIG device MIG-0f6a1c3e-6a3b-5a8e-8d64-060000000001 (GI 1) left out: reading "
        "its placement failed (Insufficient Permissions; mlq must run as root)"
    )


def test_a_pending_mig_change_is_reported_and_the_current_mode_used(fake_node, inventory):
    fake_node("h100-8-mig")
    inv = load_inventory(inventory("h100-8-mig"))
    inv.gpus[0].mig_pending = "enabled"
    node = gpus.discover(lib=FakeNvml(inv))

    assert not node.gpus[0].mig_enabled and node.gpus[0].mig_pending
    assert node.problems == (
        "GPU 0: MIG mode becomes enabled at the next GPU reset; mlq uses the current mode (disabled)",
    )


def test_without_mig_minors_the_slices_get_no_device_nodes_and_are_not_offered(
    fake_node, monkeypatch, tmp_path
):
    fake_node("h100-8-mig")
    monkeypatch.setenv(nvml.ENV_CAPS_FILE, str(tmp_path / "absent"))
    node = gpus.discover()

    assert node.gpus[7].mig[0].gi_cap_minor is None
    assert node.shapes()[6].mig == () and node.shapes()[7].mig == ()
    assert node.problems == (
        f"cannot read {tmp_path / 'absent'}: No such file or directory; MIG slices get no device "
        "nodes and are not offered",
    )


def test_a_gpu_whose_mig_mode_cannot_be_read_is_offered_whole_and_reported(inventory):
    class OldDriver(FakeNvml):
        def nvmlDeviceGetMigMode(self, h):
            raise pynvml.NVMLError_FunctionNotFound()

    node = nvml.query(OldDriver(load_inventory(inventory("uncatalogued"))))
    assert [(g.mig_supported, g.mig_enabled, g.mig) for g in node.gpus] == [(False, False, ())] * 2
    assert node.problems[0] == (
        "GPU 0: reading its MIG mode failed (Function Not Found); treated as no MIG"
    )
