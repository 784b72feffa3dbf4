"""cgroup limits, for real: the 2 AM incident, memory.high, pids.max, cpu.max.

These run on the host's driver (v1 here) and again inside user-mode-linux on
cgroup v2 (tests/vm); the assertions are the same on both.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from exec_helpers import finish, request, run
from mlq.executor import Outcome, Resources, start

MiB = 2**20
# The interpreter itself, not the venv's link to it: a checkout under /tmp is hidden
# from host-image jobs, whose /tmp is their own tmpfs.
PY = os.path.realpath(sys.executable)

HOG = """
import time
chunks = []
for i in range(100):
    chunks.append(bytearray(8 << 20))   # 8 MiB, touched
    for j in range(0, 8 << 20, 4096):
        chunks[-1][j] = 1
    print(i, flush=True)
"""

SERVER = """
import socket, threading
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(16)
port = srv.getsockname()[1]
def serve():
    while True:
        c, _ = srv.accept(); c.sendall(c.recv(100).upper()); c.close()
threading.Thread(target=serve, daemon=True).start()
ok = 0
for i in range(200):
    s = socket.create_connection(("127.0.0.1", port)); s.sendall(b"ping"); ok += s.recv(100) == b"PING"; s.close()
print("served", ok)
"""


def test_the_incident_one_job_past_its_memory_is_killed_and_its_neighbour_is_unharmed(state_dir):
    hog = start(
        request(state_dir, [PY, "-c", HOG], resources=Resources(memory_max=64 * MiB, pids_max=64))
    )
    server = start(
        request(state_dir, [PY, "-c", SERVER], resources=Resources(memory_max=256 * MiB))
    )
    hog_status = finish(hog)
    server_status = finish(server)
    assert hog_status.state == Outcome.OUT_OF_MEMORY
    assert hog_status.oom_kills >= 1
    assert hog_status.signal == "SIGKILL"
    assert hog_status.max_memory_bytes <= 64 * MiB
    assert server_status.state == Outcome.COMPLETED
    assert Path(server.stdout).read_text().strip() == "served 200"


def test_a_job_growing_into_the_high_band_is_marked_before_the_kill(state_dir):
    # v2 throttles allocations above memory.high (the job crawls, and the time limit
    # ends it); v1 has no throttle, the crossings are counted and the limit kills it.
    st, out, _ = run(
        state_dir,
        [PY, "-c", HOG],
        resources=Resources(memory_max=64 * MiB, memory_high=40 * MiB),
        time_limit_s=6,
        grace_period_s=1,
    )
    assert st.stats.memory_high_events > 0
    assert st.max_memory_bytes > 40 * MiB
    assert st.state in (Outcome.OUT_OF_MEMORY, Outcome.TIMEOUT)
    assert out.split()[-1] != "99"  # it never got its 800 MiB


def test_a_job_that_kills_itself_with_sigkill_is_failed_not_out_of_memory(state_dir):
    st, _, _ = run(state_dir, ["/bin/sh", "-c", "kill -9 $$"])
    assert st.state == Outcome.FAILED
    assert st.signal == "SIGKILL"
    assert st.oom_kills == 0


FORK_BOMB = """
import os, time
n = 0
while n < 200:
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    n += 1
print(n, flush=True)
"""


def test_a_fork_bomb_stops_at_pids_max(state_dir):
    st, out, _ = run(
        state_dir, [PY, "-c", FORK_BOMB], resources=Resources(memory_max=512 * MiB, pids_max=16)
    )
    assert st.state == Outcome.COMPLETED  # its sleeping children die with the job
    assert int(out) < 16
    assert st.stats.pids_max_events > 0


# Two busy processes ask for two CPUs: even on a host loaded by others the job wants
# more than its half CPU, so the quota (not the neighbours) is what holds it back.
BUSY = """
import os, time
os.fork()
end = time.time() + 1.5
while time.time() < end:
    pass
"""


def test_a_busy_loop_under_half_a_cpu_is_throttled_to_about_half(state_dir):
    st, _, _ = run(
        state_dir,
        [PY, "-c", BUSY],
        resources=Resources(memory_max=256 * MiB, cpu_quota_us=50_000, cpu_period_us=100_000),
    )
    assert st.state == Outcome.COMPLETED
    assert st.stats.cpu_throttled_periods > 0
    rate = st.stats.cpu_usage_usec / 1e6 / st.duration_s
    # bounded above by the quota (plus start-up slack); below depends on the host's load
    assert 0 < rate < 0.65, rate
