"""The job file: parsing, defaults and the errors a user sees."""

from __future__ import annotations

import sqlite3

import pytest
from mlq.scheduler.cluster import DEFAULT_CLASSES
from mlq.scheduler.errors import InvalidInput
from mlq.scheduler.spec import JobSpec, parse_array, parse_spec, resolve

BASE = {"name": "j", "team": "nlp", "command": ["python", "train.py"]}


def problems(data: dict) -> list[str]:
    with pytest.raises(InvalidInput) as exc:
        parse_spec(data)
    return exc.value.problems


def test_defaults_come_from_the_class_and_are_never_unlimited():
    spec = resolve(parse_spec(BASE | {"kind": "training"}), list(DEFAULT_CLASSES))
    r = spec.resources
    assert (r.cpus, r.memory) == (4000, 16 * 2**30)
    assert r.memory_high == 16 * 2**30 * 87 // 100
    assert r.swap == 0
    assert spec.time_limit == 7 * 86400
    assert spec.priority_class == "training"
    assert spec.preemption.requeue is True


def test_inference_is_not_requeued_by_default_and_batch_is():
    classes = list(DEFAULT_CLASSES)
    assert resolve(parse_spec(BASE | {"kind": "inference"}), classes).preemption.requeue is False
    assert resolve(parse_spec(BASE | {"kind": "batch"}), classes).preemption.requeue is True


def test_an_explicit_priority_class_must_exist():
    spec = parse_spec(BASE | {"priority_class": "urgent"})
    with pytest.raises(InvalidInput, match='priority_class: "urgent" is not a priority class'):
        resolve(spec, list(DEFAULT_CLASSES))


def test_all_problems_of_a_file_come_at_once_with_field_paths():
    found = problems(
        {
            "name": "j",
            "command": ["x"],
            "resources": {"memory": "32GB", "pids": 0, "io_weight": 20000},
            "volumes": [{"source": "data", "target": "/data"}],
            "network": "internet",
        }
    )
    text = "\n".join(found)
    assert "team: required but missing" in text
    assert 'resources.memory: "32GB" is not a size' in text
    assert "resources.pids: 0 input should be greater than or equal to 1" in text
    assert "resources.io_weight: 20000 input should be less than or equal to 10000" in text
    assert 'volumes[0].source: "data" is not an absolute path' in text
    assert (
        "network: \"internet\" is not allowed; input should be 'none', 'bridge' or 'host'" in text
    )


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(
            {"command": "python train.py"},
            'command: "python train.py" is a string; use a list',
            id="a command string is refused, since it would need a shell to split it",
        ),
        pytest.param(
            {"env": {"MLQ_JOB_ID": "1"}},
            "env.MLQ_JOB_ID: MLQ_ variables are set by mlq",
            id="MLQ_ variables are reserved",
        ),
        pytest.param(
            {"name": "has space"},
            'name: "has space" is not allowed',
            id="the name becomes the hostname, so it must be one",
        ),
        pytest.param(
            {"resources": {"mig": {"profile": "big"}}},
            'profile "big" is not a MIG profile name',
            id="a MIG profile that is no profile name",
        ),
        pytest.param(
            {"resources": {"memory": "1Gi", "memory_high": "2Gi"}},
            "memory_high must not be above memory",
            id="memory.high above memory.max",
        ),
        pytest.param(
            {"time_limit": "soon"},
            'time_limit: "soon" is not a duration',
            id="a duration without units users know",
        ),
        pytest.param(
            {"preemption": {"stop_signal": "SIGKILL"}},
            'preemption.stop_signal: "SIGKILL" is not allowed',
            id="SIGKILL cannot be the graceful stop signal",
        ),
    ],
)
def test_clear_errors(data, expected):
    assert any(expected in p for p in problems(BASE | data)), problems(BASE | data)


def test_array_ranges_like_slurm():
    assert parse_array("0-3") == [0, 1, 2, 3]
    assert parse_array("0-10:5") == [0, 5, 10]
    assert parse_array("1,3,5-6") == [1, 3, 5, 6]
    with pytest.raises(ValueError, match="0-99"):
        parse_array("a-b")


def test_a_stored_spec_parses_back_to_the_same_limits():
    spec = resolve(parse_spec(BASE | {"resources": {"cpus": "500m"}}), list(DEFAULT_CLASSES))
    again = JobSpec.model_validate_json(spec.model_dump_json())
    assert again.resources.cpus == 500
    assert again == spec


def test_a_version_1_database_is_upgraded_in_place(tmp_path):
    """Step 2 adds columns to a database made by the first schema; step 3 adds the
    grants table and, to a database already seeded, the default grant to everyone."""
    from mlq.scheduler.grants import DEFAULT_VOLUME_PATHS
    from mlq.scheduler.migrations import SCHEMA_VERSION
    from mlq.scheduler.store import Store, sqlite_url

    db = tmp_path / "mlq.db"
    Store(sqlite_url(tmp_path)).close()
    with sqlite3.connect(db) as conn:  # make it look like a seeded schema 1
        cols = ("stop_cause", "stop_for", "max_memory", "epoch", "launch", "stop_now")
        conn.execute("DROP INDEX ix_jobs_gang")
        for col in (*cols, "gang_id", "gang_rank"):
            conn.execute(f"ALTER TABLE jobs DROP COLUMN {col}")
        conn.execute("DROP TABLE grants")
        conn.execute("DROP TABLE nodes")
        conn.execute("DROP INDEX ix_jobs_node_state")
        conn.execute("INSERT INTO meta (key, value) VALUES ('seeded', '1')")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    store = Store(sqlite_url(tmp_path))
    grants = store.grants()
    store.close()
    with sqlite3.connect(db) as conn:
        cols = {r[1] for r in conn.execute("PRAGMA table_info(jobs)")}
        version = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert {"stop_cause", "stop_for", "max_memory", "epoch", "launch", "stop_now"} <= cols
    assert {"gang_id", "gang_rank"} <= cols  # step 7: multi-node jobs
    assert {"nodes", "ix_jobs_node_state"} <= tables  # step 6: many machines
    assert version == str(SCHEMA_VERSION) == "9"
    assert [(g.subject, g.volume_paths) for g in grants] == [("*", DEFAULT_VOLUME_PATHS)]


def test_dependencies_are_stored_as_ids_for_afterok_and_type_id_for_the_rest():
    from mlq.scheduler.spec import parse_dependencies

    got = parse_dependencies([3, "afterany:5:4", "2", "afternotok:7,after:8", "afterok:3"])
    assert got == [2, 3, "afterany:4", "afterany:5", "afternotok:7", "after:8"]
    for bad in ("afterfoo:3", "afterok:", "afterok:1?afterany:2", "singleton", "afterok:0"):
        with pytest.raises(ValueError, match="is not a dependency; use a job ID"):
            parse_dependencies([bad])
