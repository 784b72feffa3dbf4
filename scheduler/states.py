"""Job states and which of them are final. Kept free of heavy imports: the CLI uses it."""

from __future__ import annotations

PENDING = "PENDING"
STARTING = "STARTING"
RUNNING = "RUNNING"
STOPPING = "STOPPING"
COMPLETED = "COMPLETED"
FAILED = "FAILED"
OUT_OF_MEMORY = "OUT_OF_MEMORY"
TIMEOUT = "TIMEOUT"
CANCELLED = "CANCELLED"
PREEMPTED = "PREEMPTED"
NODE_FAIL = "NODE_FAIL"  # its node stopped answering (Slurm's name); requeued if it may

ACTIVE = (PENDING, STARTING, RUNNING, STOPPING)
FINAL = (COMPLETED, FAILED, OUT_OF_MEMORY, TIMEOUT, CANCELLED, PREEMPTED, NODE_FAIL)
ALL = ACTIVE + FINAL
