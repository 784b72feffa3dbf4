"""The store on each database it runs on: SQLite (the default) and PostgreSQL.

The tests that take ``url`` or ``store`` run on both (the ``database_url`` fixture,
tests/conftest.py): the same models, migrations and queries must give the same
answers, with 64-bit numbers where PostgreSQL's INTEGER is 32-bit, "user" as a
column name, and job IDs that never come back. Those that take ``pg_database`` are
about PostgreSQL alone: several daemons on one database, and its URLs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_helpers import ROOT
from mlq.scheduler import migrations, states
from mlq.scheduler.cluster import ClassDefaults, ClusterConfig, PriorityClass, load_cluster
from mlq.scheduler.errors import Conflict
from mlq.scheduler.store import DatabaseError, Store, sqlite_url
from sqlalchemy import Float, Integer, inspect, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import make_url
from sqlmodel import SQLModel

GiB = 2**30


@pytest.fixture
def url(database_url: str | None, tmp_path: Path) -> str:
    """An empty database's URL: SQLite in a temp dir, or a fresh PostgreSQL database."""
    return database_url or sqlite_url(tmp_path)


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    s = Store(url)
    try:
        yield s
    finally:
        s.close()


def job_row(**over: object) -> dict:
    """A job's columns as the submit path writes them; ``over`` replaces any."""
    spec = str(over.pop("spec", '{"name": "bert", "command": ["python3", "train.py"]}'))
    row = dict(
        name="bert",
        team="nlp",
        user="alice",
        uid=1000,
        gid=1000,
        kind="training",
        priority_class="training",
        priority=500,
        state=states.PENDING,
        reason="",
        spec=spec,
        spec_bytes=len(spec.encode()),
        submitted_at=time.time(),
        depends_on="[]",
        held=False,
        restart_count=0,
        array_index=None,
    )
    return row | over


def add(store: Store, **over: object) -> int:
    return store.add_jobs([job_row(**over)])[0]


def backend(url: str) -> str:
    """The database of ``url``: "sqlite" or "postgresql"."""
    return make_url(url).get_backend_name()


# -- the schema ------------------------------------------------------------------------


def test_an_empty_database_is_brought_to_the_current_schema(url):
    store = Store(url)
    try:
        with store.engine.connect() as conn:
            assert migrations.current_version(conn) == migrations.SCHEMA_VERSION
            have = inspect(conn)
            assert set(have.get_table_names()) >= set(SQLModel.metadata.tables)
            indexes = {i["name"] for i in have.get_indexes("jobs")}
            assert {"ix_jobs_state", "ix_jobs_user_state", "ix_jobs_ended_at"} <= indexes
        # a second start finds it current and changes nothing
        assert migrations.upgrade(store.engine) == migrations.SCHEMA_VERSION
    finally:
        store.close()


# what each backend may report for the models' integer and float columns: 64-bit
# integers and double-precision floats (SQLite's are, whatever the declared name)
WIDE = {
    "sqlite": ({"INTEGER", "BIGINT"}, {"FLOAT", "REAL"}),
    "postgresql": ({"BIGINT"}, {"DOUBLE PRECISION"}),
}


def narrow_columns(store: Store) -> list[str]:
    """The integer and float columns of the models, or of the database, that are not
    64-bit: declared other than through ``models.Int64``, or found narrower."""
    int_names, float_names = WIDE[backend(store.url)]
    narrow = []
    with store.engine.connect() as conn:
        have = inspect(conn)
        for table in SQLModel.metadata.sorted_tables:
            found = {c["name"]: str(c["type"]) for c in have.get_columns(table.name)}
            for c in table.columns:
                name = f"{table.name}.{c.name}"
                if isinstance(c.type, Integer):
                    if c.type.compile(dialect=postgresql.dialect()) != "BIGINT":
                        narrow.append(f"{name} (declared)")
                    if found[c.name] not in int_names:
                        narrow.append(f"{name} ({found[c.name]})")
                if isinstance(c.type, Float) and found[c.name] not in float_names:
                    narrow.append(f"{name} ({found[c.name]})")
    return narrow


def test_every_integer_column_is_64_bit_and_every_float_is_double(store):
    assert narrow_columns(store) == []


# the columns schema 5 added: a database from before it lacks them
ADDED_BY_5 = {("priority_classes", "queue_order")}


def test_a_database_from_before_schema_4_is_upgraded_to_64_bit_columns(url):
    """Schema 3 had 32-bit INTEGER columns on PostgreSQL (models.Int64 came with 4);
    it is brought through 4 and 5 in one start."""
    store = Store(url)
    old = add(store, spec='{"name": "old"}', spec_bytes=0)
    with store.engine.begin() as conn:
        for index in ("ix_jobs_user_state", "ix_jobs_ended_at"):
            conn.execute(text(f"DROP INDEX {index}"))
        added_by_4 = {
            ("jobs", "oom_kills"),
            ("jobs", "spec_bytes"),
            ("priority_classes", "log_limit"),
        }
        for table, column in sorted(added_by_4 | ADDED_BY_5):
            conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
        if backend(url) == "postgresql":
            for table in SQLModel.metadata.sorted_tables:
                for c in table.columns:
                    if isinstance(c.type, Integer) and (table.name, c.name) not in added_by_4:
                        conn.execute(
                            text(f'ALTER TABLE {table.name} ALTER COLUMN "{c.name}" TYPE INTEGER')
                        )
            for seq in ("jobs_id_seq", "job_events_id_seq"):
                conn.execute(text(f"ALTER SEQUENCE {seq} AS INTEGER"))
        conn.execute(text("UPDATE meta SET value = '3' WHERE key = 'schema_version'"))
    store.close()

    store = Store(url)
    try:
        with store.engine.connect() as conn:
            assert migrations.current_version(conn) == migrations.SCHEMA_VERSION
        assert narrow_columns(store) == []
        assert store.job(old).spec_bytes == len('{"name": "old"}')
        big = add(store, uid=4_000_000_000, gid=4_000_000_001, max_memory=3 * GiB)
        assert (store.job(big).uid, store.job(big).max_memory) == (4_000_000_000, 3 * GiB)
        if backend(url) == "postgresql":  # IDs may go past 2^31 too
            with store.engine.begin() as conn:
                conn.execute(text("SELECT setval('jobs_id_seq', 3000000000)"))
            assert add(store) == 3_000_000_001
    finally:
        store.close()


def test_a_database_from_schema_4_keeps_its_classes_and_orders_them_short_first(url):
    """Schema 4 had no queue order per class: each class it had is short-first after
    the upgrade (the default), with the rest of it unchanged, and can be set to fifo."""
    store = Store(url)
    store.seed(ClusterConfig())
    store.set_class(PriorityClass(name="urgent", value=800, preempts=["batch"], log_limit=GiB))
    before = store.classes()
    with store.engine.begin() as conn:
        for table, column in sorted(ADDED_BY_5):
            conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
        conn.execute(text("UPDATE meta SET value = '4' WHERE key = 'schema_version'"))
    store.close()

    store = Store(url)
    try:
        with store.engine.connect() as conn:
            assert migrations.current_version(conn) == migrations.SCHEMA_VERSION
        after = store.classes()
        assert [c.name for c in after] == ["inference", "urgent", "training", "batch"]
        assert after == before
        assert {c.order for c in after} == {"short-first"}
        urgent = next(c for c in after if c.name == "urgent")
        store.set_class(urgent.model_copy(update={"order": "fifo"}))
    finally:
        store.close()
    store = Store(url)
    try:
        assert {c.name: c.order for c in store.classes()}["urgent"] == "fifo"
    finally:
        store.close()


# -- values ----------------------------------------------------------------------------


def test_64_bit_values_round_trip(store):
    store.seed(ClusterConfig())
    store.create_team("nlp")
    store.set_quota("nlp", {"memory": float(2**40)}, {"memory": float(2**41)})
    job = add(store, uid=4_000_000_000, gid=4_000_000_001)
    store.update_fields(job, max_memory=3 * GiB, oom_kills=2)
    big = PriorityClass(
        name="huge",
        value=10,
        defaults=ClassDefaults(cpus=64, memory=16 * GiB, time_limit=90 * 86400),
        log_limit=5 * GiB,
    )
    store.set_class(big)

    fresh = Store(store.url)  # nothing from the caches: read back from the database
    try:
        j = fresh.job(job)
        assert (j.uid, j.gid, j.max_memory, j.oom_kills) == (
            4_000_000_000,
            4_000_000_001,
            3 * GiB,
            2,
        )
        assert fresh.team("nlp").guarantee == {"memory": 2**40}
        assert fresh.team("nlp").limit == {"memory": 2**41}
        huge = next(c for c in fresh.classes() if c.name == "huge")
        assert huge.defaults.memory == 16 * GiB
        assert huge.log_limit == 5 * GiB
        assert huge.defaults.time_limit == 90 * 86400
    finally:
        fresh.close()


def test_times_keep_their_fraction_of_a_second(store):
    at = 1_767_225_600.123456
    job = add(store, submitted_at=at)
    store.transition(job, states.RUNNING, "Started", started_at=at + 0.5)
    assert store.job(job).submitted_at == at
    assert store.job(job).started_at == at + 0.5


# -- first start and the CLI's class changes ---------------------------------------------


def test_the_shipped_cluster_config_seeds_at_first_start(url):
    cluster = load_cluster(ROOT / "configs" / "cluster.yaml")
    store = Store(url)
    try:
        assert not store.is_seeded()
        store.seed(cluster)
        store.seed(cluster)  # at most once: the second finds it seeded
    finally:
        store.close()

    store = Store(url)  # the next start
    try:
        assert store.is_seeded()
        assert [t.name for t in store.teams()] == ["cv", "nlp", "search"]
        nlp = store.team("nlp")
        assert nlp.members == ["@nlp", "root"]
        assert nlp.guarantee == {"gpu": 4, "cpu": 32_000, "memory": 256 * GiB}
        assert nlp.limit["memory"] == 512 * GiB
        assert store.team("search").limit["mig:1g.10gb"] == 14
        assert [(c.name, c.value, c.defaults.memory) for c in store.classes()] == [
            ("inference", 1000, 16 * GiB),
            ("training", 500, 16 * GiB),
            ("batch", 100, 4 * GiB),
        ]
        assert [g.subject for g in store.grants()] == ["*"]
        assert "/scratch" in store.grants()[0].volume_paths
        assert store.user_caps() == cluster.user_caps
    finally:
        store.close()


def test_a_class_default_memory_change_is_stored(store):
    """What `mlq class set training --default-memory 8Gi` does to the store (the CLI
    itself: tests/test_daemon_api.py, on both backends)."""
    store.seed(ClusterConfig())
    training = next(c for c in store.classes() if c.name == "training")
    changed = training.model_copy(
        update={"defaults": training.defaults.model_copy(update={"memory": 8 * GiB})}
    )
    store.set_class(changed)
    fresh = Store(store.url)
    try:
        now = next(c for c in fresh.classes() if c.name == "training")
        assert now.defaults.memory == 8 * GiB
        assert now.defaults.time_limit == 7 * 86400  # untouched
        assert now.preempts == ["batch"]
    finally:
        fresh.close()


def test_a_class_queue_order_round_trips(store):
    """What `mlq class set batch --order fifo` does to the store."""
    store.seed(ClusterConfig())
    batch = next(c for c in store.classes() if c.name == "batch")
    assert batch.order == "short-first"
    store.set_class(batch.model_copy(update={"order": "fifo"}))
    store.set_class(PriorityClass(name="serve", value=900, order="fifo"))
    fresh = Store(store.url)
    try:
        orders = {c.name: c.order for c in fresh.classes()}
        assert orders == {
            "inference": "short-first",
            "serve": "fifo",
            "training": "short-first",
            "batch": "fifo",
        }
        with fresh.engine.connect() as conn:
            stored = conn.execute(
                text("SELECT queue_order FROM priority_classes WHERE name = 'batch'")
            ).scalar()
        assert stored == "fifo"
    finally:
        fresh.close()


# -- job IDs ---------------------------------------------------------------------------


def test_job_ids_increase_and_are_never_reused(store):
    first = [add(store) for _ in range(3)]
    assert first == sorted(first) and len(set(first)) == 3
    with store.engine.begin() as conn:  # the newest row gone: its ID must not return
        conn.execute(text("DELETE FROM jobs WHERE id = :id"), {"id": first[-1]})
    after_delete = add(store)
    assert after_delete > first[-1]
    store.close()
    again = Store(store.url)  # a restart
    try:
        assert add(again) > after_delete
    finally:
        again.close()


def test_an_array_gets_one_id_per_index_in_order_and_the_first_as_array_id(store):
    rows = [job_row(array_index=i, name=f"sweep-{i}") for i in range(6)]
    ids = store.add_jobs(rows, as_array=True)
    assert ids == sorted(ids) and len(set(ids)) == 6
    got = {j.id: (j.array_index, j.name, j.array_id) for j in store.jobs(ids=ids)}
    assert got == {i: (n, f"sweep-{n}", ids[0]) for n, i in enumerate(ids)}
    assert [e.state for e in store.events(ids[3])] == [states.PENDING]


# -- transitions -------------------------------------------------------------------------


def race(stores: list[Store], job: int) -> list[str]:
    """Each store's thread moves ``job`` from PENDING at the same moment."""
    barrier = threading.Barrier(len(stores))
    outcome: list[str] = []

    def move(s: Store) -> None:
        barrier.wait()
        try:
            s.transition(job, states.STARTING, "Placed", expect={states.PENDING}, node="n1")
            outcome.append("won")
        except Conflict:
            outcome.append("lost")
        except Exception as exc:  # anything else is a failure, and says what it was
            outcome.append(repr(exc))

    threads = [threading.Thread(target=move, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return sorted(outcome)


def test_a_transition_with_expect_is_a_compare_and_set(store):
    for _ in range(10):
        job = add(store)
        assert race([store, store], job) == ["lost", "won"]
        assert store.job(job).state == states.STARTING
        assert [e.state for e in store.events(job)] == [states.PENDING, states.STARTING]
    with pytest.raises(Conflict, match=r"is STARTING, not PENDING"):
        store.transition(job, states.RUNNING, expect={states.PENDING})


def test_two_daemons_on_one_postgresql_database_move_a_job_once(pg_database):
    """PostgreSQL can serve several daemons: the row lock, not the process's own
    lock, makes the compare-and-set hold between them."""
    stores = [Store(pg_database), Store(pg_database)]
    try:
        for _ in range(10):
            job = add(stores[0])
            assert race(stores, job) == ["lost", "won"]
            assert [e.state for e in stores[1].events(job)] == [states.PENDING, states.STARTING]
    finally:
        for s in stores:
            s.close()


def test_two_daemons_starting_together_on_a_new_postgresql_database_set_it_up_once(
    pg_database,
):
    """Both migrate and seed at once: one does each, the other waits and finds it done."""
    cluster = load_cluster(ROOT / "configs" / "cluster.yaml")
    barrier = threading.Barrier(4)
    stores: list[Store] = []
    errors: list[BaseException] = []

    def start() -> None:
        barrier.wait()
        try:
            s = Store(pg_database)
            stores.append(s)
            if not s.is_seeded():
                s.seed(cluster)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert errors == []
        assert [t.name for t in stores[0].teams()] == ["cv", "nlp", "search"]
        assert len(stores[0].classes()) == 3
    finally:
        for s in stores:
            s.close()


def test_cancel_pending_cancels_exactly_the_pending_ones(store):
    pending = [add(store) for _ in range(3)]
    running = add(store, state=states.RUNNING, started_at=time.time())
    done = add(store, state=states.COMPLETED, ended_at=time.time())
    wanted = [done, pending[2], running, 999_999, pending[0], pending[1]]
    assert store.cancel_pending(wanted, "Cancelled by alice") == pending
    for j in pending:
        job = store.job(j)
        assert (job.state, job.reason) == (states.CANCELLED, "Cancelled by alice")
        assert job.ended_at is not None
        assert [e.state for e in store.events(j)] == [states.PENDING, states.CANCELLED]
    assert store.job(running).state == states.RUNNING
    assert store.job(done).state == states.COMPLETED
    assert store.cancel_pending(pending, "again") == []
    assert store.cancel_pending([], "none") == []


def test_pending_reasons_are_written_for_pending_jobs_only(store):
    a, b = add(store), add(store, state=states.RUNNING)
    store.set_reasons({a: "Quota: gpu 8/8", b: "not written"})
    assert store.job(a).reason == "Quota: gpu 8/8"
    assert store.job(b).reason == ""
    assert store.count_by_state() == {states.PENDING: 1, states.RUNNING: 1}


# -- reads -------------------------------------------------------------------------------


def test_history_pages_newest_first(store):
    ended = {}
    for i in range(7):
        team, user = ("nlp", "alice") if i % 2 else ("cv", "bob")
        ended[add(store, state=states.COMPLETED, ended_at=1000.0 + i, team=team, user=user)] = i
    add(store)  # active: never in the history
    add(store, state=states.RUNNING, ended_at=2000.0)  # ended_at set, not final yet

    pages, before = [], None
    while page := store.history(before=before, limit=3):
        pages.append([r.id for r in page])
        before = page[-1].ended_at
    newest_first = sorted(ended, key=ended.get, reverse=True)
    assert pages == [newest_first[0:3], newest_first[3:6], newest_first[6:]]
    assert [r.user for r in store.history(user="alice")] == ["alice"] * 3
    assert {r.team for r in store.history(team="cv")} == {"cv"}
    assert [ended[r.id] for r in store.history(since=1004.0)] == [6, 5, 4]
    assert not hasattr(store.history(limit=1)[0], "spec")  # the listing leaves specs out


def test_user_load_counts_a_users_active_jobs_and_their_spec_bytes(store):
    add(store, spec_bytes=100)
    add(store, spec_bytes=2**31, state=states.RUNNING)  # a sum past 32 bits
    add(store, spec_bytes=2**31, state=states.STOPPING)
    add(store, spec_bytes=5000, state=states.COMPLETED)  # ended: not counted
    add(store, spec_bytes=7, user="bob")
    assert store.user_load("alice") == (3, 100 + 2**32)
    assert store.user_load("bob") == (1, 7)
    assert store.user_load("user") == (0, 0)  # the column's name, as a value


# -- URLs ------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+psycopg"])
def test_a_plain_postgresql_url_uses_psycopg(pg_database, scheme):
    url = scheme + pg_database.removeprefix("postgresql+psycopg")
    store = Store(url)
    try:
        assert store.engine.dialect.driver == "psycopg"
        assert add(store) == 1
    finally:
        store.close()


def test_a_postgresql_server_that_does_not_answer_is_one_line_naming_the_url(tmp_path):
    url = f"postgresql://mlq:secret@/mlq?host={tmp_path}"  # no server's socket there
    with pytest.raises(DatabaseError) as err:
        Store(url)
    message = str(err.value)
    assert message.startswith(f"open database postgresql+psycopg://mlq:***@/mlq?host={tmp_path}: ")
    assert "\n" not in message and "secret" not in message


def test_a_class_nat_switch_round_trips_and_the_config_seeds_it(store):
    """What `mlq class set batch --no-nat` does to the store; a class of the config
    with ``nat: false`` is stored so, and the others keep schema 9's default."""
    config = ClusterConfig.model_validate(
        {
            "priority_classes": [
                {"name": "serve", "value": 900, "nat": False},
                {"name": "batch", "value": 1},
            ]
        }
    )
    store.seed(config)
    assert {c.name: c.nat for c in store.classes()} == {"serve": False, "batch": True}
    batch = next(c for c in store.classes() if c.name == "batch")
    store.set_class(batch.model_copy(update={"nat": False}))
    fresh = Store(store.url)
    try:
        assert {c.name: c.nat for c in fresh.classes()} == {"serve": False, "batch": False}
        with fresh.engine.connect() as conn:
            stored = conn.execute(
                text("SELECT nat FROM priority_classes WHERE name = 'batch'")
            ).scalar()
        assert stored in (False, 0)
    finally:
        fresh.close()
