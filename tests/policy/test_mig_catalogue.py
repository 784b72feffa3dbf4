"""The MIG catalogue: names, placements and overlap rules from NVIDIA's MIG user guide."""

from __future__ import annotations

import pytest
from mlq.executor import mig


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        pytest.param("NVIDIA H100 80GB HBM3", "H100-80GB", id="an SXM H100 is the 80 GB H100"),
        pytest.param("NVIDIA H100 PCIe", "H100-80GB", id="a PCIe H100 is the 80 GB H100"),
        pytest.param("NVIDIA H100 NVL", None, id="the 94 GB H100 NVL is not catalogued"),
        pytest.param("NVIDIA A100-SXM4-40GB", "A100-40GB", id="a 40 GB SXM A100"),
        pytest.param("NVIDIA A100-PCIE-40GB", "A100-40GB", id="a 40 GB PCIe A100"),
        pytest.param("NVIDIA A100-SXM4-80GB", "A100-80GB", id="an 80 GB SXM A100"),
        pytest.param("NVIDIA A100 80GB PCIe", "A100-80GB", id="an 80 GB PCIe A100"),
        pytest.param("NVIDIA H200", "H200-141GB", id="an H200"),
        pytest.param("H100-80GB", "H100-80GB", id="a catalogue name maps to itself"),
        pytest.param("Tesla V100-SXM2-32GB", None, id="a GPU without MIG has no model"),
    ],
)
def test_canonical_model(raw: str, want: str | None) -> None:
    assert mig.canonical_model(raw) == want


def test_each_model_has_the_seven_profiles_with_guide_ids() -> None:
    ids = {m: sorted(p.profile_id for p in ps.values()) for m, ps in mig.CATALOGUE.items()}
    assert ids == {m: [0, 5, 9, 14, 15, 19, 20] for m in mig.CATALOGUE}
    h200 = mig.profiles_for("H200-141GB")
    assert set(h200) == {
        "1g.18gb",
        "1g.18gb+me",
        "1g.35gb",
        "2g.35gb",
        "3g.71gb",
        "4g.71gb",
        "7g.141gb",
    }


@pytest.mark.parametrize(
    ("name", "start", "placed", "ok"),
    [
        pytest.param("3g.40gb", 4, [("3g.40gb", 0)], True, id="two 3g slices fill both halves"),
        pytest.param("3g.40gb", 2, [], False, id="a 3g slice may not start at slot 2"),
        pytest.param("4g.40gb", 0, [("3g.40gb", 4)], True, id="4g and 3g share a GPU"),
        pytest.param("1g.10gb", 3, [("3g.40gb", 0)], False, id="a 1g inside a 3g overlaps"),
        pytest.param(
            "1g.10gb",
            6,
            [("4g.40gb", 0), ("2g.20gb", 4)],
            True,
            id="the last compute slice is free",
        ),
        pytest.param("7g.80gb", 0, [("1g.10gb", 6)], False, id="a full GPU needs an empty GPU"),
        pytest.param("1g.10gb+me", 1, [("1g.10gb+me", 0)], False, id="only one +me slice per GPU"),
        pytest.param(
            "1g.20gb", 6, [("2g.20gb", 4)], True, id="a 2-slot 1g at 6 takes slots 6 and 7"
        ),
        pytest.param("1g.5gb", 0, [], False, id="a profile of another model is refused"),
    ],
)
def test_fits(name: str, start: int, placed: list[tuple[str, int]], ok: bool) -> None:
    assert mig.fits("H100-80GB", name, start, placed)[0] is ok


def test_free_starts_and_gpu_equivalent() -> None:
    assert mig.free_starts("A100-40GB", "3g.20gb", [("3g.20gb", 0)]) == [4]
    assert mig.free_starts("A100-40GB", "1g.5gb", [("4g.20gb", 0)]) == [4, 5, 6]
    assert mig.gpu_equivalent("H100-80GB", "1g.10gb") == pytest.approx(1 / 7)
    assert mig.gpu_equivalent("H100-80GB", "7g.80gb") == 1.0
    assert mig.layout_problems("H100-80GB", [("3g.40gb", 0), ("4g.40gb", 0)]) == [
        "4g.40gb@0 overlaps 3g.40gb@0"
    ]
