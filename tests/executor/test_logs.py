"""A job's output goes through its supervisor: capped and rotated per stream, the
dropped bytes counted in ``logcut.json``, nothing lost when the job exits at once;
and a run's status is complete, absent, or read as a FAILED run, never an exception."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from exec_helpers import finish, leftovers, request, run
from mlq.executor import Outcome, User, adopt, poll, start, stats, wait
from mlq.executor.rundir import read_stream

PY = sys.executable  # runs on the host image, with the venv
MIB = 2**20

# Writes LINES numbered 10-byte lines to stdout in blocks of 10,000 (100 kB), and
# after every block ERR 100-byte lines to stderr: both streams are known exactly.
WRITER = r"""
import sys
lines, err = int(sys.argv[1]), int(sys.argv[2])
out, errs = sys.stdout.buffer, sys.stderr.buffer
for block in range(lines // 10000):
    out.write(b"".join(b"%09d\n" % i for i in range(block * 10000, (block + 1) * 10000)))
    out.flush()
    for k in range(err):
        errs.write(b"e%08d %s\n" % (block * err + k, b"x" * 89))
    errs.flush()
"""


# The same stdout as WRITER, 10 kB at a time with a pause after each: a reader
# keeps up with it, and meets the supervisor's rotations half-way.
PACED = r"""
import sys, time
out = sys.stdout.buffer
for b in range(int(sys.argv[1])):
    out.write(b"".join(b"%09d\n" % i for i in range(b * 1000, b * 1000 + 1000)))
    out.flush()
    time.sleep(0.0005)
"""


def out_tail(lines: int, n: int) -> bytes:
    """The last ``n`` bytes WRITER puts on stdout."""
    first = max(lines - n // 10 - 1, 0)
    return b"".join(b"%09d\n" % i for i in range(first, lines))[-n:] if n else b""


def err_tail(blocks: int, err: int, n: int) -> bytes:
    """The last ``n`` bytes WRITER puts on stderr."""
    total = blocks * err
    first = max(total - n // 100 - 1, 0)
    return b"".join(b"e%08d %s\n" % (k, b"x" * 89) for k in range(first, total))[-n:] if n else b""


def kept(run_dir: Path, stream: str) -> bytes:
    """What is on disk of a stream, oldest first: ``stream.1`` then ``stream``."""
    old = run_dir / f"{stream}.1"
    return (old.read_bytes() if old.exists() else b"") + (run_dir / stream).read_bytes()


def logcut(run_dir: Path) -> dict[str, int]:
    return json.loads((run_dir / "logcut.json").read_text())


def test_a_job_writing_50_mb_keeps_at_most_its_log_limit_per_stream_and_the_newest_bytes_exactly(
    state_dir,
):
    lines, err = 5_000_000, 30  # 50,000,000 bytes of stdout, 1,500,000 of stderr
    h = start(request(state_dir, [PY, "-c", WRITER, str(lines), str(err)], log_limit=MIB))
    st = finish(h, timeout=120)
    assert st.state == Outcome.COMPLETED, Path(h.stderr).read_bytes()[-500:]
    run_dir = Path(h.run_dir)
    out, errs = kept(run_dir, "stdout"), kept(run_dir, "stderr")
    # each file holds at most half the limit, so the two never pass it
    for name in ("stdout", "stdout.1", "stderr", "stderr.1"):
        assert (run_dir / name).stat().st_size <= MIB // 2, name
    assert MIB // 2 < len(out) <= MIB and MIB // 2 < len(errs) <= MIB
    assert out == out_tail(lines, len(out))
    assert errs == err_tail(lines // 10000, err, len(errs))
    err_total = lines // 10000 * err * 100
    assert logcut(run_dir) == {"stdout": 10 * lines - len(out), "stderr": err_total - len(errs)}


def test_a_job_without_a_log_limit_keeps_all_of_its_output(state_dir):
    lines, err = 500_000, 2
    st, out, errs = run(state_dir, [PY, "-c", WRITER, str(lines), str(err)])
    assert st.state == Outcome.COMPLETED
    assert out.encode() == out_tail(lines, 10 * lines)
    assert errs.encode() == err_tail(lines // 10000, err, 100 * err * lines // 10000)
    run_dir = Path(state_dir) / "runs"
    (rd,) = run_dir.iterdir()
    assert not (rd / "stdout.1").exists() and not (rd / "stderr.1").exists()
    assert logcut(rd) == {"stdout": 0, "stderr": 0}


def test_a_reader_following_a_job_that_rotates_every_few_milliseconds_gets_every_byte_in_place(
    state_dir,
):
    # 64Ki kept: a rotation every 32Ki, 300 of them while the reader follows along
    lines = 1_000_000
    h = start(request(state_dir, [PY, "-c", PACED, str(lines // 1000)], log_limit=64 * 1024))
    stream = out_tail(lines, 10 * lines)
    run_dir, pos, got, skipped_total = Path(h.run_dir), 0, 0, 0
    while True:
        ended = poll(h) is not None
        skipped, data = read_stream(run_dir, "stdout", pos, 16384)
        assert data == stream[pos + skipped : pos + skipped + len(data)], f"at {pos}+{skipped}"
        pos += skipped + len(data)
        got += len(data)
        skipped_total += skipped
        if ended and not data and not skipped:
            break
    assert pos == 10 * lines and got > 0
    assert skipped_total <= logcut(run_dir)["stdout"]  # what it skipped is gone


@pytest.mark.parametrize(
    ("log_limit", "size"),
    [
        pytest.param(None, 300_000, id="an unlimited job's last bytes are all there"),
        pytest.param(
            64 * 1024, 150_000, id="output left in the pipe at the end is cut like the rest"
        ),
    ],
)
def test_the_output_of_a_job_that_exits_at_once_is_complete(state_dir, log_limit, size):
    # written in one go, then exit 3 at once: init is reaped with output still in the pipe
    script = f"head -c {size} /dev/zero | tr '\\0' a; printf END; printf oops >&2; exit 3"
    expected = b"a" * size + b"END"
    for _ in range(5):
        h = start(request(state_dir, ["/bin/sh", "-c", script], log_limit=log_limit))
        st = finish(h)
        assert (st.state, st.exit_code) == (Outcome.FAILED, 3)
        rd = Path(h.run_dir)
        out = kept(rd, "stdout")
        assert out == expected[len(expected) - len(out) :]
        assert logcut(rd) == {"stdout": len(expected) - len(out), "stderr": 0}
        assert kept(rd, "stderr") == b"oops"
        if log_limit is None:
            assert out == expected
        else:
            assert log_limit // 2 <= len(out) <= log_limit


def test_a_job_of_another_user_can_reopen_its_output_through_dev_stdout(state_dir):
    # /dev/stdout is /proc/self/fd/1: reopening the pipe checks its owner, the job's user
    script = "echo out > /dev/stdout && echo err > /dev/stderr"
    st, out, err = run(state_dir, ["/bin/sh", "-c", script], user=User(65534, 65534))
    assert (st.state, out, err) == (Outcome.COMPLETED, "out\n", "err\n"), err


@pytest.mark.parametrize(
    ("content", "why"),
    [
        pytest.param("", "it is empty", id="an empty status file"),
        pytest.param(
            '{"state": "COMPLETED", "exit_co', "Unterminated string", id="a truncated one"
        ),
        pytest.param("not json\n", "Expecting value", id="one that is not JSON"),
        pytest.param('{"state": "COMPLETED"}', "exit_code", id="one that lacks a key"),
        pytest.param('{"state": "DONE", "exit_code": 0}', "DONE", id="one with no known state"),
        pytest.param("[1, 2]", "not an object", id="one that is not an object"),
    ],
)
def test_a_corrupt_status_file_is_a_failed_run_that_names_the_file_never_an_exception(
    state_dir, content, why
):
    h = start(request(state_dir, ["/bin/true"]))
    assert finish(h).state == Outcome.COMPLETED
    path = Path(h.run_dir) / "status.json"
    path.write_text(content)
    for got in (poll(h.run_dir), wait(h.run_dir, timeout=1), adopt(h.run_dir)):
        assert got.state == Outcome.FAILED and got.exit_code == -1
        assert got.error.startswith(f"status file {path} is unreadable: "), got.error
        assert why in got.error
    assert stats(h.run_dir).memory_current == 0


def test_a_state_dir_that_the_jobs_output_overflows_still_ends_the_run_and_the_next_run_works(
    tmp_path, state_dir
):
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(tiny)], check=True)
    try:
        # 8 MB of output, no log limit, on a 1 MiB state dir
        h = start(request(str(tiny), [PY, "-c", WRITER, "800000", "1"]))
        st = wait(h, timeout=60)
        assert st is not None, "the run never ended"
        if st.state == Outcome.COMPLETED:
            assert logcut(Path(h.run_dir))["stdout"] > 0
        else:  # no room for its status: recorded FAILED by the recovery
            assert st.state == Outcome.FAILED and "status" in (st.error or ""), st
        again = poll(h.run_dir)
        assert again is not None and again.state == st.state
        # nothing of the run remains but the tmpfs itself, unmounted below
        deadline = time.monotonic() + 20
        while (left := set(leftovers(str(tiny))) - {str(tiny)}) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not left
    finally:
        subprocess.run(["umount", str(tiny)], check=False)
    st, out, _ = run(state_dir, ["/bin/sh", "-c", "echo next"])
    assert (st.state, out) == (Outcome.COMPLETED, "next\n")


def test_mlq_run_streams_a_jobs_whole_output_across_rotations(tmp_path):
    # a class that keeps 64Ki per stream, files of 32Ki: 20 kB pieces a third of a
    # second apart rotate the file every other piece, and mlq run prints every byte
    config = tmp_path / "cluster.yaml"
    config.write_text(
        "priority_classes:\n"
        "  - {name: inference, value: 1000, preemptible: false}\n"
        "  - {name: training, value: 500}\n"
        "  - {name: batch, value: 100, log_limit: 64Ki}\n"
    )
    script = "for i in 1 2 3 4 5 6 7 8; do head -c 20000 /dev/zero | tr '\\0' $i; sleep 0.3; done"
    job = tmp_path / "job.yaml"
    job.write_text(
        json.dumps(
            {
                "name": "rot",
                "team": "nlp",
                "command": ["/bin/sh", "-c", script],
                "resources": {"memory": "64Mi"},
            }
        )
    )
    env = dict(os.environ, MLQ_STATE_DIR=str(tmp_path / "state"))
    mlq = str(Path(PY).with_name("mlq"))
    p = subprocess.run(
        [mlq, "run", str(job), "--config", str(config)], env=env, capture_output=True, timeout=120
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"".join(str(i).encode() * 20000 for i in range(1, 9))
    (rd,) = (tmp_path / "state" / "runs").iterdir()
    assert logcut(rd)["stdout"] > 0  # the files did rotate under it
