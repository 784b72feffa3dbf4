"""The nodes one control loop schedules onto, each with the parts the loop drives it by.

A ``Slot`` is one node: its ``NodeView`` (what the policy sees), its ``Executor`` (the
local one on this machine, or a ``RemoteNode`` that an agent serves) and its
``Carver`` (its MIG slices), with the node's own state dir and the paths never
mounted into a job there. ``NodeSet`` holds them by name: the single-machine daemon
has one local slot; a control plane adds one per agent as agents register and keeps
a slot whose node is down out of every snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mlq.executor.interface import Executor
from mlq.scheduler.daemon.carving import Carver
from mlq.scheduler.daemon.view import NodeView
from mlq.scheduler.models import JobRow
from mlq.scheduler.snapshot import Node


@dataclass
class Slot:
    view: NodeView
    executor: Executor
    carver: Carver
    state_dir: str  # the node's state dir: run dirs and checkpoint volumes there
    forbidden: tuple[str, ...]  # never mounted into a job on this node
    remote: bool = False  # served by an agent (cluster mode)
    up: bool = True  # false: declared down (no lease), offered nothing
    address: str = ""  # where its agent connects from (a multi-node job's MASTER_ADDR)

    @property
    def name(self) -> str:
        return self.view.name


@dataclass
class NodeSet:
    slots: dict[str, Slot] = field(default_factory=dict)
    local: Slot | None = None  # this machine's own node, when the daemon runs one

    def add(self, slot: Slot) -> None:
        self.slots[slot.name] = slot
        if not slot.remote and self.local is None:
            self.local = slot

    def get(self, name: str | None) -> Slot | None:
        return self.slots.get(name) if name else None

    def of(self, job: JobRow) -> Slot | None:
        """The node a job's run is on (a row from before nodes were named: the local one)."""
        if job.node:
            return self.slots.get(job.node) or (
                self.local if self.local is not None and len(self.slots) == 1 else None
            )
        return self.local

    def offered(self, drained: frozenset[str] | set[str] = frozenset()) -> tuple[Node, ...]:
        """What the policy may place onto: nodes that are up, not cordoned in their
        config and not ``drained`` (mlq node drain)."""
        return tuple(
            s.view.snapshot_node()
            for s in self.slots.values()
            if s.up and s.view.schedulable and s.name not in drained
        )

    def all(self) -> list[Slot]:
        return list(self.slots.values())

    def wait_fds(self) -> list[int]:
        return [fd for s in self.slots.values() for fd in s.executor.wait_fds()]
