"""The MIG profile catalogue: which slices each GPU model can be cut into, and where.

From NVIDIA's MIG user guide ("Supported MIG Profiles" and the placement tables that
``nvidia-smi mig -lgipp`` prints). A GPU in MIG mode has 8 memory slots and 7 compute
slices; a profile takes ``memory_slices`` consecutive memory slots and
``compute_slices`` consecutive compute slices starting at one of its valid ``starts``.
Compute slice *i* sits beside memory slot *i* (slot 7 is memory only), so two slices
overlap when either their memory slots or their compute slices intersect.

Pure data and small helpers: no NVML here. GPU discovery maps driver names to the
catalogue's model names with :func:`canonical_model`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

MEMORY_SLOTS = 8
COMPUTE_SLICES = 7


@dataclass(frozen=True, slots=True)
class MigProfile:
    """One GPU instance profile of one GPU model."""

    name: str  # "3g.40gb"
    profile_id: int  # NVML's GPU instance profile id (nvidia-smi mig -lgip)
    memory_gb: int  # nominal, as in the name
    compute_slices: int
    memory_slices: int
    starts: tuple[int, ...]  # valid placement start slots
    max_instances: int = 7  # "+me" profiles: one per GPU (there is one media engine set)
    # the NVML_GPU_INSTANCE_PROFILE_* index nvmlDeviceGetGpuInstanceProfileInfo takes
    # (the driver answers with profile_id); -1 where NVML has none
    nvml_profile: int = -1

    @property
    def gpu_share(self) -> float:
        """The share of the GPU's compute this slice holds (its gpu-equivalent)."""
        return self.compute_slices / COMPUTE_SLICES

    def memory_slots(self, start: int) -> range:
        return range(start, start + self.memory_slices)

    def compute_range(self, start: int) -> range:
        return range(start, start + self.compute_slices)


def _profiles(gb: tuple[int, int, int, int, int, int]) -> dict[str, MigProfile]:
    """The seven profiles every catalogued model has, named by its memory sizes.

    ``gb`` is (1g, 1g-double, 2g, 3g, 4g, 7g) memory in GB; the placements are the same
    on A100, H100 and H200 (the user guide's tables for each model agree).
    """
    one, one_x2, two, three, four, seven = gb
    every = (0, 1, 2, 3, 4, 5, 6)
    # NVML's profile indices: 1_SLICE 0, 2_SLICE 1, 3_SLICE 2, 4_SLICE 3, 7_SLICE 4,
    # 1_SLICE_REV1 (+me) 7, 1_SLICE_REV2 (double memory) 9
    table = [
        MigProfile(f"1g.{one}gb", 19, one, 1, 1, every, nvml_profile=0),
        MigProfile(f"1g.{one}gb+me", 20, one, 1, 1, every, max_instances=1, nvml_profile=7),
        MigProfile(f"1g.{one_x2}gb", 15, one_x2, 1, 2, (0, 2, 4, 6), nvml_profile=9),
        MigProfile(f"2g.{two}gb", 14, two, 2, 2, (0, 2, 4), nvml_profile=1),
        MigProfile(f"3g.{three}gb", 9, three, 3, 4, (0, 4), nvml_profile=2),
        MigProfile(f"4g.{four}gb", 5, four, 4, 4, (0,), nvml_profile=3),
        MigProfile(f"7g.{seven}gb", 0, seven, 7, 8, (0,), nvml_profile=4),
    ]
    return {p.name: p for p in table}


CATALOGUE: dict[str, dict[str, MigProfile]] = {
    "A100-40GB": _profiles((5, 10, 10, 20, 20, 40)),
    "A100-80GB": _profiles((10, 20, 20, 40, 40, 80)),
    "H100-80GB": _profiles((10, 20, 20, 40, 40, 80)),
    "H200-141GB": _profiles((18, 35, 35, 71, 71, 141)),
}

# Driver names (nvmlDeviceGetName) to catalogue names. Checked in order; the memory size
# in the name decides between the 40 and 80 GB A100. H100 PCIe and SXM are both 80 GB;
# H100 NVL (94 GB) and other sizes have different profiles and are not catalogued.
_NAME_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"A100.*80\s*GB", re.I), "A100-80GB"),
    (re.compile(r"A100.*40\s*GB|A100-(PCIE|SXM4)$|^(NVIDIA )?A100$", re.I), "A100-40GB"),
    (re.compile(r"H100.*(80\s*GB|HBM3$|PCIe$|SXM5?$)|^(NVIDIA )?H100$", re.I), "H100-80GB"),
    (re.compile(r"H200|GH200.*141", re.I), "H200-141GB"),
)


def canonical_model(raw_name: str) -> str | None:
    """The catalogue's name for a driver's GPU name, or None if it is not catalogued.

    ``"NVIDIA H100 80GB HBM3"`` -> ``"H100-80GB"``; a catalogue name maps to itself.
    """
    name = raw_name.strip()
    if name in CATALOGUE:
        return name
    if re.search(r"H100.*(NVL|94\s*GB|96\s*GB)", name, re.I):
        return None
    for pattern, model in _NAME_RULES:
        if pattern.search(name):
            return model
    return None


def profiles_for(model: str) -> dict[str, MigProfile]:
    """The profiles of a model (by catalogue or driver name); empty if not catalogued."""
    canon = canonical_model(model)
    return CATALOGUE.get(canon, {}) if canon else {}


def profile(model: str, name: str) -> MigProfile | None:
    """One profile of one model, or None if the model does not have it."""
    return profiles_for(model).get(name)


def valid_starts(model: str, name: str) -> tuple[int, ...]:
    """The start slots where ``name`` may be placed on ``model`` (empty if none)."""
    p = profile(model, name)
    return p.starts if p else ()


def overlaps(a: MigProfile, a_start: int, b: MigProfile, b_start: int) -> bool:
    """Whether two placed slices share a memory slot or a compute slice."""
    a_mem, b_mem = a.memory_slots(a_start), b.memory_slots(b_start)
    a_cmp, b_cmp = a.compute_range(a_start), b.compute_range(b_start)
    return (a_mem.start < b_mem.stop and b_mem.start < a_mem.stop) or (
        a_cmp.start < b_cmp.stop and b_cmp.start < a_cmp.stop
    )


def fits(model: str, name: str, start: int, placed: Iterable[tuple[str, int]]) -> tuple[bool, str]:
    """Whether ``name`` at ``start`` can be added beside ``placed`` (profile, start) slices.

    Returns (ok, why-not) so callers can report the rule that refused it.
    """
    p = profile(model, name)
    if p is None:
        return False, f"{model} has no MIG profile {name}"
    if start not in p.starts:
        return False, f"{name} may start only at {list(p.starts)} on {model}, not {start}"
    same = 0
    for other_name, other_start in placed:
        other = profile(model, other_name)
        if other is None:
            return False, f"{model} has no MIG profile {other_name}"
        if overlaps(p, start, other, other_start):
            return False, f"{name}@{start} overlaps {other_name}@{other_start}"
        same += other_name == name
    if same >= p.max_instances:
        return False, f"{model} allows at most {p.max_instances} {name} per GPU"
    return True, ""


def layout_problems(model: str, slices: Iterable[tuple[str, int]]) -> list[str]:
    """Every rule a declared set of (profile, start) slices on one GPU breaks."""
    problems: list[str] = []
    placed: list[tuple[str, int]] = []
    for name, start in slices:
        ok, why = fits(model, name, start, placed)
        if ok:
            placed.append((name, start))
        else:
            problems.append(why)
    return problems


def free_starts(model: str, name: str, placed: Iterable[tuple[str, int]]) -> list[int]:
    """The valid starts where ``name`` could be carved now, lowest first."""
    placed = list(placed)
    return [s for s in valid_starts(model, name) if fits(model, name, s, placed)[0]]


def gpu_equivalent(model: str, name: str) -> float:
    """A slice's share of its GPU's compute (a 1g slice of a 7-slice GPU is 1/7)."""
    p = profile(model, name)
    return p.gpu_share if p else 0.0


def model_of_profile(name: str) -> list[str]:
    """The models that have a profile of this name (``3g.40gb`` -> A100-80GB, H100-80GB)."""
    return [m for m, profiles in CATALOGUE.items() if name in profiles]
