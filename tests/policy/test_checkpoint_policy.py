"""How long a checkpoint volume is kept (scheduler/checkpoints.py): the policy, pure."""

from __future__ import annotations

import pytest
from mlq.scheduler import checkpoints as policy
from mlq.scheduler import states
from mlq.scheduler.checkpoints import Fate, Owner, Volume

DAY = 86400.0
NOW = 1_700_000_000.0


def owner(state: str, ended_ago: float | None = None) -> Owner:
    return Owner(1, "alice", "nlp", state, None if ended_ago is None else NOW - ended_ago)


@pytest.mark.parametrize(
    ("job", "retention", "want", "removes_in"),
    [
        pytest.param(owner(states.PENDING), DAY, Fate.ACTIVE, None,
                     id="a pending job's volume is kept (a requeued or preempted job comes back so)"),
        pytest.param(owner(states.RUNNING), 0, Fate.ACTIVE, None,
                     id="a running job's volume is kept whatever the retention"),
        pytest.param(owner(states.STOPPING), DAY, Fate.ACTIVE, None,
                     id="a stopping job may still be requeued: kept"),
        pytest.param(owner(states.COMPLETED, 3600), DAY, Fate.RETAINED, DAY - 3600,
                     id="a finished job's volume is kept for the retention after it ended"),
        pytest.param(owner(states.CANCELLED, 2 * DAY), DAY, Fate.DUE, -DAY,
                     id="past the retention it is due"),
        pytest.param(owner(states.PREEMPTED, DAY), DAY, Fate.DUE, 0,
                     id="a preempted job that is not requeued is final: due at exactly the retention"),
        pytest.param(owner(states.FAILED, 10 * DAY), None, Fate.RETAINED, None,
                     id="without a retention a finished job's volume is kept for ever"),
        pytest.param(None, 0, Fate.UNOWNED, None,
                     id="a volume of no job in the store is never swept"),
    ],
)  # fmt: skip
def test_judge(job, retention, want, removes_in):
    owners = {1: job} if job else {}
    (e,) = policy.judge([Volume("1", NOW - 5 * DAY)], owners, retention, NOW)
    assert e.fate == want
    assert e.removes_at == (None if removes_in is None else NOW + removes_in)


def test_a_name_that_is_not_a_job_id_is_unowned_even_if_a_job_has_that_number():
    owners = {7: owner(states.COMPLETED, 30 * DAY)}
    entries = policy.judge([Volume("007", NOW), Volume("bert", NOW)], owners, DAY, NOW)
    assert [e.fate for e in entries] == [Fate.UNOWNED, Fate.UNOWNED]


def test_a_prune_that_names_a_job_that_can_still_run_removes_nothing():
    owners = {1: owner(states.COMPLETED, DAY), 2: owner(states.RUNNING)}
    entries = policy.judge([Volume("1", NOW), Volume("2", NOW)], owners, 7 * DAY, NOW)
    with pytest.raises(policy.PruneRefused) as info:
        policy.choose(entries, NOW, None, [1, 2, 3])
    assert info.value.problems == [
        "job 2 is RUNNING: its checkpoint volume is kept while the job can still run (cancel it first)",
        "job 3 has no checkpoint volume on any node",
    ]
    assert [e.volume.key for e in policy.choose(entries, NOW, None, [1])] == ["1"]
    assert policy.choose(entries, NOW, None) == []  # nothing is past the retention
    assert [e.volume.key for e in policy.choose(entries, NOW, 3600)] == ["1"]
