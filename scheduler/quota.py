"""Team quotas: resource keys, what a job counts against them, limits, guarantees and
fair share.

Keys (the same as cluster.py's quota maps): ``gpu`` whole GPUs of any model,
``gpu:<model>`` whole GPUs of one model, ``mig:<profile>`` MIG slices of one profile,
``gpu-equivalent`` whole GPUs plus each MIG slice's share of its GPU's compute,
``cpu`` millicores, ``memory`` bytes. A key a team has no entry for is unlimited
(limit) or not guaranteed (guarantee).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from mlq.executor.mig import COMPUTE_SLICES
from mlq.executor.units import format_cpus, format_size
from mlq.scheduler.snapshot import Reason, ReasonCode

Demand = tuple[tuple[str, float], ...]
GPU_KEYS_PREFIX = ("gpu", "mig:")  # keys that measure accelerators, not CPU or memory

# The order in which a QuotaLimit reason names the first limit a job would break.
_KEY_ORDER = {"gpu": 0, "gpu-equivalent": 3, "cpu": 4, "memory": 5}


def _key_rank(key: str) -> int:
    if key in _KEY_ORDER:
        return _KEY_ORDER[key]
    return 1 if key.startswith("gpu:") else 2


def mig_share(profile: str) -> float:
    """A slice's gpu-equivalent from its name: ``3g.40gb`` is 3/7 of a GPU."""
    return int(profile.split("g.", 1)[0]) / COMPUTE_SLICES


def whole_gpu_demand(gpus: int, model: str, cpus: int, memory: int) -> Demand:
    if not gpus:
        return (("cpu", cpus), ("memory", memory))
    return (
        ("gpu", gpus),
        (f"gpu:{model}", gpus),
        ("gpu-equivalent", gpus),
        ("cpu", cpus),
        ("memory", memory),
    )


def mig_demand(profiles: list[str] | tuple[str, ...], cpus: int, memory: int) -> Demand:
    counts: dict[str, float] = {}
    eq = 0.0
    for p in profiles:
        counts[f"mig:{p}"] = counts.get(f"mig:{p}", 0) + 1
        eq += mig_share(p)
    return (*counts.items(), ("gpu-equivalent", eq), ("cpu", cpus), ("memory", memory))


def scale(demand: Demand, times: int) -> Demand:
    """``times`` parts of this demand (a multi-node job's parts together)."""
    return tuple((key, amount * times) for key, amount in demand)


def add(usage: dict[str, float], demand: Demand, sign: float = 1.0) -> None:
    for key, amount in demand:
        usage[key] = usage.get(key, 0.0) + sign * amount


def over_limit(
    usage: Mapping[str, float], demand: Demand, limit: Mapping[str, float]
) -> tuple[str, float, float] | None:
    """The first limit (key, used, limit) that ``demand`` on top of ``usage`` breaks."""
    # the common answer is "none": check that with one loop before ranking the keys
    for key, amount in demand:
        if amount and key in limit and usage.get(key, 0.0) + amount > limit[key] + 1e-9:
            break
    else:
        return None
    broken = [
        (_key_rank(key), key)
        for key, amount in demand
        if amount and key in limit and usage.get(key, 0.0) + amount > limit[key] + 1e-9
    ]
    if not broken:
        return None
    key = min(broken)[1]
    return key, usage.get(key, 0.0), limit[key]


def format_amount(key: str, value: float) -> str:
    if key == "cpu":
        return format_cpus(int(value))
    if key == "memory":
        return format_size(int(value))
    if key == "gpu-equivalent":
        return f"{round(value, 2):g}"
    return str(int(round(value)))


def quota_reason(team: str, key: str, used: float, limit: float) -> Reason:
    """``QuotaLimit nlp gpu 8/8``."""
    return Reason(
        ReasonCode.QUOTA_LIMIT, team, key, format_amount(key, used), format_amount(key, limit)
    )


def covering_keys(demand: Demand, guarantee: Mapping[str, float]) -> list[str] | None:
    """The guarantee keys that cover a job, or None when its guarantee does not cover it.

    A job that uses accelerators is covered only by an accelerator key (a cpu
    guarantee does not make a GPU job "owned"); a CPU-only job by cpu or memory.
    """
    uses_gpu = any(k.startswith(GPU_KEYS_PREFIX) and a for k, a in demand)
    keys = [
        k
        for k, a in demand
        if a and k in guarantee and (not uses_gpu or k.startswith(GPU_KEYS_PREFIX))
    ]
    return keys or None


def within_guarantee(
    usage: Mapping[str, float], demand: Demand, guarantee: Mapping[str, float]
) -> bool:
    """Whether the team stays within its guarantee with this job: it may reclaim."""
    keys = covering_keys(demand, guarantee)
    if keys is None:
        return False
    amounts = dict(demand)
    return all(usage.get(k, 0.0) + amounts[k] <= guarantee[k] + 1e-9 for k in keys)


def dominant_share(usage: Mapping[str, float], guarantee: Mapping[str, float]) -> float:
    """The largest usage/guarantee over the team's guaranteed keys (DRF against the
    guarantee); a team without a guarantee ranks after every team with one."""
    best = None  # max() of the shares, without a list: this runs after every start
    for k, g in guarantee.items():
        if g > 0:
            share = usage.get(k, 0.0) / g
            if best is None or share > best:
                best = share
    return math.inf if best is None else best
