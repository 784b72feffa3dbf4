"""Where a job fits: the policy's working copy of the nodes' free room, indexed by shape.

``Room`` is built once per decision from the snapshot and changes only inside the
policy (the snapshot itself is never touched). Finding a node does not rescan the
cluster: nodes sit in buckets by how many whole GPUs of each model they have free,
and by how many slices of each MIG profile they could still give, so "the fullest
node that fits" is the first node of the smallest bucket that fits.

Rules: all of a job's GPUs or slices on one node; whole GPUs only on GPUs not in
MIG mode; a MIG slice is either a free slice already carved with that profile (used
as it is) or a new one carved where no carved slice overlaps it, at one of the
profile's valid starts (mig.py). Existing slices are never reshaped. A node that may
not carve (``Node.can_carve`` false) offers its free carved slices only.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import NamedTuple

from mlq.executor import mig
from mlq.scheduler.snapshot import MigSlot, Node


@functools.lru_cache(maxsize=256)
def canonical(model: str) -> str:
    return mig.canonical_model(model) or model


def _mask(p: mig.MigProfile, start: int) -> int:
    """Memory slots in bits 0-7, compute slices in bits 8-14."""
    mem = ((1 << p.memory_slices) - 1) << start
    cmp = ((1 << p.compute_slices) - 1) << (start + 8)
    return mem | cmp


# model -> profile -> ((start, mask), ...), and profile -> max instances per GPU
_MASKS: dict[str, dict[str, tuple[tuple[int, int], ...]]] = {
    model: {name: tuple((s, _mask(p, s)) for s in p.starts) for name, p in profiles.items()}
    for model, profiles in mig.CATALOGUE.items()
}


class Request(NamedTuple):
    """What a pending job needs placed (a tuple: cheap to hash as a memo key)."""

    gpus: int = 0
    model: str | None = None  # whole GPUs: this model only
    profile: str | None = None  # MIG: this profile ...
    count: int = 0  # ... this many slices
    cpus: int = 0
    memory: int = 0


def _empty_capacity(model: str, masks: dict[str, tuple[tuple[int, int], ...]]) -> dict[str, int]:
    out = {}
    for profile, ms in masks.items():
        occ, n = 0, 0
        for _, m in ms:
            if n < mig.CATALOGUE[model][profile].max_instances and not m & occ:
                occ |= m
                n += 1
        out[profile] = n
    return out


_NONE: frozenset[int] = frozenset()
# (model, carved occupancy, carved +me profiles) -> profile -> new slices still carvable
_CARVABLE: dict[tuple, dict[str, int]] = {}
# model -> profile -> how many slices an uncarved GPU can give
_EMPTY = {model: _empty_capacity(model, masks) for model, masks in _MASKS.items()}
# model -> profile -> 0: what a GPU of a node that may not carve can carve (every profile
# is listed, so the node still sits in each profile's buckets for victim searches)
_NO_CARVING = {model: dict.fromkeys(masks, 0) for model, masks in _MASKS.items()}


class MigGpu:
    """A GPU in MIG mode: its carved slices and which of them are held. ``can_carve``
    false: new slices are never carved on it (its node may not carve)."""

    __slots__ = (
        "index",
        "model",
        "can_carve",
        "carved",
        "used",
        "carved_occ",
        "masks",
        "cache",
        "free_counts",
        "carvable",
    )

    def __init__(
        self, index: int, model: str, carved: Iterable[tuple[str, int]], can_carve: bool = True
    ) -> None:
        self.index = index
        self.model = canonical(model)
        self.can_carve = can_carve
        self.masks = _MASKS.get(self.model, {})
        self.carved: dict[int, str] = {}
        self.used: set[int] = set()
        self.carved_occ = 0
        self.cache: dict[str, int] = {}  # profile -> capacity, cleared on every change
        # profile -> carved slices nobody holds, kept as slices are carved and used (every
        # start re-counts its GPU's capacities, so this is not rebuilt from ``carved``)
        self.free_counts: dict[str, int] = {}
        self.carvable: dict[str, int] | None = None  # _carvable_all(), until a carve
        for profile, start in carved:
            self.carve(profile, start)

    def copy(self, index: int) -> MigGpu:
        """A working copy of this GPU as GPU ``index`` (one GPU per declared layout is
        kept, so a decision copies it instead of carving the declared slices again)."""
        g = MigGpu.__new__(MigGpu)
        g.index, g.model, g.masks, g.can_carve = index, self.model, self.masks, self.can_carve
        g.carved, g.used, g.carved_occ = dict(self.carved), set(self.used), self.carved_occ
        g.free_counts, g.carvable, g.cache = dict(self.free_counts), self.carvable, self.cache
        return g

    def carve(self, profile: str, start: int, mask: int | None = None) -> None:
        old = self.carved.get(start)
        if old is not None and start not in self.used:
            self.free_counts[old] -= 1
        self.carved[start] = profile
        if start not in self.used:
            self.free_counts[profile] = self.free_counts.get(profile, 0) + 1
        if mask is None:
            mask = _mask(mig.CATALOGUE[self.model][profile], start)
        self.carved_occ |= mask
        self.cache = {}
        self.carvable = None

    def use(self, start: int) -> None:
        if start not in self.used:
            self.used.add(start)
            profile = self.carved.get(start)
            if profile is not None:
                self.free_counts[profile] -= 1
        self.cache = {}

    def save(self) -> tuple:
        """The carving state, for a trial carve that restore() undoes."""
        return dict(self.carved), self.carved_occ, dict(self.free_counts)

    def restore(self, saved: tuple) -> None:
        self.carved, self.carved_occ, self.free_counts = saved
        self.cache = {}
        self.carvable = None

    def capacities(self) -> dict[str, int]:
        """Every profile's capacity on this GPU now (cached until the GPU changes). The
        dict is shared (with other GPUs of the same layout, and with Room.reindex):
        read it, never change it."""
        if not self.cache:
            if not self.carved and self.model in _EMPTY and self.can_carve:
                self.cache = _EMPTY[self.model]
            else:
                cache = self._carvable_all()
                free = [(p, k) for p, k in self.free_counts.items() if k]
                if free:
                    cache = dict(cache)
                    for profile, k in free:
                        cache[profile] = cache.get(profile, 0) + k
                self.cache = cache
        return self.cache

    def _carvable_all(self) -> dict[str, int]:
        """New slices each profile could still be carved as, given the carved layout.
        The same layouts recur on many GPUs, so the answer is kept per layout."""
        if self.carvable is not None:
            return self.carvable
        if not self.can_carve:
            self.carvable = _NO_CARVING.get(self.model, {})
            return self.carvable
        me = [p for p in self.carved.values() if p.endswith("+me")] if self.carved_occ else ()
        key = (self.model, self.carved_occ, tuple(sorted(me)))
        got = _CARVABLE.get(key)
        if got is None:
            got = _CARVABLE[key] = {p: self._carvable(p, m) for p, m in self.masks.items()}
        self.carvable = got
        return got

    def capacity(self, profile: str, freed: frozenset[int] | None = None) -> int:
        """How many ``profile`` slices this GPU could give now (free carved + carvable);
        ``freed``: starts whose holders are taken to be gone."""
        if not freed:
            return self.capacities().get(profile, 0)
        return self._compute(profile, freed)

    def _compute(self, profile: str, freed: frozenset[int]) -> int:
        masks = self.masks.get(profile)
        if not masks:
            return 0
        free_carved = sum(
            1 for s, p in self.carved.items() if p == profile and (s not in self.used or s in freed)
        )
        return free_carved + self._carvable(profile, masks)

    def _carvable(self, profile: str, masks: tuple[tuple[int, int], ...]) -> int:
        if not self.can_carve:
            return 0
        limit = mig.CATALOGUE[self.model][profile].max_instances
        limit -= sum(1 for p in self.carved.values() if p == profile)
        occ, n = self.carved_occ, 0
        for _, m in masks:
            if n >= limit:
                break
            if not m & occ:
                occ |= m
                n += 1
        return n

    def free_carved(self, profile: str, freed: frozenset[int] = frozenset()) -> list[int]:
        """Starts of carved ``profile`` slices nobody holds (or whose holder is freed)."""
        return [
            s
            for s, p in sorted(self.carved.items())
            if p == profile and (s not in self.used or s in freed)
        ]

    def carve_new(self, profile: str, want: int) -> list[int]:
        """Carve up to ``want`` new ``profile`` slices at the lowest valid starts that no
        carved slice overlaps (in this working copy); none where it may not carve."""
        masks = self.masks.get(profile, ()) if self.can_carve else ()
        limit = mig.CATALOGUE[self.model][profile].max_instances if masks else 0
        if limit - len(self.carved) < want:  # else the per-profile limit cannot bind first
            limit -= sum(1 for p in self.carved.values() if p == profile)
        got: list[int] = []
        for s, m in masks:
            if len(got) >= want or len(got) >= limit:
                break
            if not m & self.carved_occ:
                self.carve(profile, s, m)
                got.append(s)
        return got


# id(Node) -> (Node, models by index, free whole GPUs by model, MIG GPUs as declared); the
# Node is kept so its id cannot be reused while the entry lives
_LAYOUTS: dict[
    int, tuple[Node, dict[int, str], dict[str, list[int]], tuple[int, ...], tuple[MigGpu, ...]]
] = {}
# (model, declared slices, may carve) -> a MIG GPU with that layout, shared by every GPU
# that has it
_DECLARED: dict[tuple[str, tuple[tuple[str, int], ...], bool], MigGpu] = {}


def _declared(model: str, carved: tuple[tuple[str, int], ...], can_carve: bool) -> MigGpu:
    got = _DECLARED.get((model, carved, can_carve))
    if got is None:
        if len(_DECLARED) > 4096:
            _DECLARED.clear()
        got = _DECLARED[(model, carved, can_carve)] = MigGpu(0, model, carved, can_carve)
    return got


class NodeRoom:
    """One node's free room in the working copy."""

    __slots__ = (
        "i",
        "name",
        "topology",
        "cpus",
        "memory",
        "free_cpu",
        "free_mem",
        "free",
        "models",
        "mig",
        "gpu_caps",
        "mig_cap",
    )

    def __init__(self, i: int, node: Node) -> None:
        self.i = i
        self.name = node.name
        self.topology = node.topology
        self.cpus = node.cpus
        self.memory = node.memory
        self.free_cpu = node.cpus
        self.free_mem = node.memory
        self.mig: dict[int, MigGpu] = {}
        self.gpu_caps: dict[int, dict[str, int]] = {}  # per MIG GPU, as last indexed
        self.mig_cap: dict[str, int] = {}  # their sum: the node's capacity per profile
        # the GPU layout of a Node is immutable: its models and whole GPUs are read once
        # per Node object (the daemon and the simulator pass the same objects again)
        layout = _LAYOUTS.get(id(node))
        if layout is None or layout[0] is not node:
            models = {g.index: canonical(g.model) for g in node.gpus}
            whole: dict[str, list[int]] = {}
            for g in sorted(node.gpus, key=lambda g: g.index):
                if g.mig is None:
                    whole.setdefault(models[g.index], []).append(g.index)
            declared = [g for g in node.gpus if g.mig is not None]
            mig_index = tuple(g.index for g in declared)
            carve = node.can_carve
            mig_as = tuple(_declared(models[g.index], tuple(g.mig), carve) for g in declared)
            if len(_LAYOUTS) > 4096:  # callers that build new Nodes each pass
                _LAYOUTS.clear()
            layout = _LAYOUTS[id(node)] = (node, models, whole, mig_index, mig_as)
        self.models: dict[int, str] = layout[1]  # index -> model of every GPU (read only)
        self.free: dict[str, list[int]] = {m: list(v) for m, v in layout[2].items()}
        if layout[3]:  # most nodes have no MIG GPU: skip building the zip
            for idx, g in zip(layout[3], layout[4], strict=True):
                self.mig[idx] = g.copy(idx)

    def mig_capacities(self) -> dict[str, int]:
        """Every profile's capacity on this node, summed over its MIG GPUs."""
        out: dict[str, int] = {}
        for g in self.mig.values():
            for profile, cap in g.capacities().items():
                out[profile] = out.get(profile, 0) + cap
        return out


class Room:
    """Free room on every node, indexed so that a fit is found without a full scan."""

    def __init__(self, nodes: Iterable[Node]) -> None:
        self.nodes = [NodeRoom(i, n) for i, n in enumerate(nodes)]
        self.by_name = {n.name: n for n in self.nodes}
        self.whole_models = sorted({m for n in self.nodes for m in n.free})
        # a MIG GPU's profiles are its model's (g.masks is _MASKS[model]): look per model
        mig_models = {g.model for n in self.nodes for g in n.mig.values()}
        self.profiles = sorted({p for m in mig_models for p in _MASKS.get(m, {})})
        # model -> [free count -> {node index: None}] (dicts keep insertion order)
        self.whole: dict[str, list[dict[int, None]]] = {m: [] for m in self.whole_models}
        # profile -> [capacity -> {node index: None}]
        self.slices: dict[str, list[dict[int, None]]] = {p: [] for p in self.profiles}
        # model (profile) -> node index -> the bucket the node is in now
        self._whole_at: dict[str, dict[int, int]] = {m: {} for m in self.whole_models}
        self._slices_at: dict[str, dict[int, int]] = {p: {} for p in self.profiles}

    def index_all(self) -> None:
        """Build the buckets; call after the running jobs' holdings were taken."""
        for n in self.nodes:
            self.reindex(n)

    def reindex(self, n: NodeRoom, mig_gpus: Iterable[int] | None = None) -> None:
        """Move ``n`` to the buckets of its free room now. ``mig_gpus``: the MIG GPUs that
        changed (None: any may have; empty: none did), so only their slices are recounted."""
        for model, free in n.free.items():
            self._move(self.whole[model], self._whole_at[model], n.i, len(free))
        if not n.mig:
            return
        changed: set[str] = set()
        mig_cap = n.mig_cap
        for idx in n.mig if mig_gpus is None else mig_gpus:
            new = n.mig[idx].capacities()
            old = n.gpu_caps.get(idx)
            if old is new:  # the same cached dict: this GPU did not change since indexed
                continue
            if old is None:
                old = {}
            for profile, cap in new.items():
                delta = cap - old.get(profile, 0)
                if delta or profile not in mig_cap:
                    mig_cap[profile] = mig_cap.get(profile, 0) + delta
                    changed.add(profile)
            for profile, cap in old.items():
                if profile not in new:
                    mig_cap[profile] = mig_cap.get(profile, 0) - cap
                    changed.add(profile)
            n.gpu_caps[idx] = new  # capacities() dicts are never changed in place
        for profile in changed:
            self._move(self.slices[profile], self._slices_at[profile], n.i, mig_cap[profile])

    @staticmethod
    def _move(buckets: list[dict[int, None]], at: dict[int, int], i: int, count: int) -> None:
        old = at.get(i)
        if old == count:
            return
        if old is not None:
            del buckets[old][i]
        while len(buckets) <= count:
            buckets.append({})
        buckets[count][i] = None
        at[i] = count

    # -- holding room -------------------------------------------------------------

    def hold(
        self, n: NodeRoom, gpus: Iterable[int], slots: Iterable[MigSlot], cpus: int, memory: int
    ) -> None:
        """Mark devices, CPUs and memory as taken (a running job, a start or a claim)."""
        for idx in gpus:
            free = n.free.get(n.models.get(idx, ""))
            if free is not None and idx in free:
                free.remove(idx)
        for s in slots:
            g = n.mig.get(s.gpu)
            if g is not None:
                if g.carved.get(s.start) != s.profile and s.profile in g.masks:
                    g.carve(s.profile, s.start)
                g.use(s.start)
        n.free_cpu -= cpus
        n.free_mem -= memory

    # -- finding room now ---------------------------------------------------------

    def find_whole(
        self,
        gpus: int,
        models: Iterable[str],
        cpus: int,
        memory: int,
        avoid: frozenset[int] = frozenset(),
    ) -> tuple[NodeRoom, str] | None:
        """The fullest node with ``gpus`` free whole GPUs of one of ``models``."""
        models = [m for m in models if m in self.whole]
        top = max((len(self.whole[m]) for m in models), default=0)
        for k in range(gpus, top):
            for m in models:
                buckets = self.whole[m]
                if k < len(buckets):
                    for i in buckets[k]:
                        n = self.nodes[i]
                        if n.free_cpu >= cpus and n.free_mem >= memory and i not in avoid:
                            return n, m
        return None

    def find_slices(
        self, profile: str, count: int, cpus: int, memory: int, avoid: frozenset[int] = frozenset()
    ) -> NodeRoom | None:
        buckets = self.slices.get(profile, [])
        for k in range(count, len(buckets)):
            for i in buckets[k]:
                n = self.nodes[i]
                if n.free_cpu >= cpus and n.free_mem >= memory and i not in avoid:
                    return n
        return None

    def find_cpu(
        self, cpus: int, memory: int, avoid: frozenset[int] = frozenset()
    ) -> NodeRoom | None:
        """A CPU-only job: the node with the fewest free GPUs that has the CPUs and memory
        (keep GPU nodes' CPUs for GPU jobs)."""
        best = None
        for n in self.nodes:
            if n.free_cpu >= cpus and n.free_mem >= memory and n.i not in avoid:
                free = sum(len(v) for v in n.free.values())
                if best is None or free < best[0]:
                    best = (free, n)
                    if free == 0:
                        break
        return best[1] if best else None


def take_slices(
    n: NodeRoom, profile: str, count: int, freed: dict[int, frozenset[int]] | None = None
) -> list[MigSlot]:
    """Choose ``count`` slices on node ``n``: free carved slices first (used as they are),
    then new ones carved on the GPU with the least room left (pack), where the node may
    carve. Empty if short."""
    freed = freed or {}
    none: frozenset[int] = frozenset()
    if count == 1 and not freed:  # the common case, without building lists
        order = []
        for g in n.mig.values():
            cap = (g.cache or g.capacities()).get(profile, 0)
            if cap:
                order.append((cap, g.index, g))
        order.sort()
        for _, _, g in order:
            if g.free_counts.get(profile):  # it has a free carved slice of the profile
                return [
                    MigSlot(
                        g.index,
                        profile,
                        min(s for s, p in g.carved.items() if p == profile and s not in g.used),
                    )
                ]
        for _, _, g in order:
            got = g.carve_new(profile, 1)
            if got:
                return [MigSlot(g.index, profile, got[0])]
        return []
    gpus = sorted(
        n.mig.values(), key=lambda g: (g.capacity(profile, freed.get(g.index, none)), g.index)
    )
    out = [
        MigSlot(g.index, profile, s)
        for g in gpus
        for s in g.free_carved(profile, freed.get(g.index, none))
    ][:count]
    for g in gpus:
        if len(out) >= count:
            break
        out.extend(MigSlot(g.index, profile, s) for s in g.carve_new(profile, count - len(out)))
    return out if len(out) >= count else []


def fit_with_freed(
    n: NodeRoom,
    req: Request,
    models: list[str],
    gpus_freed: list[int],
    slots_freed: list[MigSlot],
    cpu_freed: int,
    mem_freed: int,
) -> tuple[tuple[int, ...], tuple[MigSlot, ...]] | None:
    """Whether ``req`` fits on ``n`` if jobs holding the freed devices were gone; the
    devices it would get. Does not change ``n`` (MIG carving is tried on a copy)."""
    if n.free_cpu + cpu_freed < req.cpus or n.free_mem + mem_freed < req.memory:
        return None
    if req.profile:
        freed: dict[int, set[int]] = {}
        for s in slots_freed:
            freed.setdefault(s.gpu, set()).add(s.start)
        ff = {k: frozenset(v) for k, v in freed.items()}
        have = sum(g.capacity(req.profile, ff.get(g.index, frozenset())) for g in n.mig.values())
        if have < req.count:
            return None
        saved = {i: g.save() for i, g in n.mig.items()}
        try:
            got = take_slices(n, req.profile, req.count, ff)
        finally:
            for i, state in saved.items():
                n.mig[i].restore(state)
        return ((), tuple(got)) if got else None
    if req.gpus:
        for m in models:
            free = set(n.free.get(m, ()))
            free.update(g for g in gpus_freed if n.models.get(g) == m)
            if len(free) >= req.gpus:  # sort only the set that is returned
                return tuple(sorted(free)[: req.gpus]), ()
        return None
    return (), ()
