"""Where a multi-node job's parts go: fewest switches between them, then packing.

A multi-node job (``resources.nodes: N``) asks for N parts, each with the per-node
resources of its file, each on its own node. Its node count is fixed by the file, so
"fewest nodes" holds by construction; what remains is which N nodes. Like Slurm's
topology/tree plugin and Kueue's topology-aware scheduling with a preferred level, the
parts go under the lowest switch that has N nodes that fit: each node's ``topology``
label is its path of switches, outermost first (``spine1/rack3``), and the search walks
from the deepest level up to the whole cluster. Among the domains of one level that can
hold the job, the one with the fewest fitting nodes wins (best fit: larger domains stay
whole for larger jobs); inside it, the fullest nodes (packing, as for one-node jobs).

Pure: node rooms in, node rooms out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

N = TypeVar("N")


def levels(label: str) -> tuple[str, ...]:
    """A topology label's switches, outermost first (empty parts dropped)."""
    return tuple(p for p in label.split("/") if p)


def choose(
    fits: Sequence[N],
    parts: int,
    label: Callable[[N], str],
    fullness: Callable[[N], tuple],
) -> list[N] | None:
    """``parts`` of ``fits`` (nodes where one part fits now), under the lowest common
    switch that has that many; None when there are fewer than ``parts``. ``fullness``
    orders nodes fullest first (smaller first)."""
    if len(fits) < parts:
        return None
    paths = [levels(label(n)) for n in fits]
    depth = max((len(p) for p in paths), default=0)
    for d in range(depth, 0, -1):
        domains: dict[tuple[str, ...], list[int]] = {}
        for k, p in enumerate(paths):
            if len(p) >= d:
                domains.setdefault(p[:d], []).append(k)
        usable = [(len(ks), key, ks) for key, ks in domains.items() if len(ks) >= parts]
        if usable:
            _, _, ks = min(usable)
            return _fullest([fits[k] for k in ks], parts, fullness)
    return _fullest(list(fits), parts, fullness)


def _fullest(nodes: list[N], parts: int, fullness: Callable[[N], tuple]) -> list[N]:
    return sorted(nodes, key=fullness)[:parts]
