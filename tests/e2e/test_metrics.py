"""The Prometheus endpoint of a real daemon, scraped over HTTP and read with
prometheus_client's own parser, as a Prometheus server would."""

from __future__ import annotations

import socket
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from test_running_system import INFERENCE, TRAINING


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[str, dict[tuple, float]]:
    """Every sample by name, keyed by its labels (sorted pairs)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def value(samples: dict[str, dict[tuple, float]], name: str, **labels: str) -> float | None:
    return samples.get(name, {}).get(tuple(sorted(labels.items())))


def test_the_metrics_endpoint_shows_the_queue_the_teams_the_nodes_and_what_happened(
    make_daemon, unix_users
):
    port = free_port()
    d = make_daemon(env={"MLQ_METRICS_ADDRESS": f"127.0.0.1:{port}"}, gpus=2)
    alice, bob = unix_users["alice"], unix_users["bob"]
    train = d.submit(TRAINING, user=alice)
    d.wait_for(train, "RUNNING")
    waiting = d.submit(TRAINING.replace("name: train", "name: later"), user=alice)
    assert d.cli("hold", str(waiting), user=alice).code == 0
    time.sleep(0.5)
    m = scrape(port)
    assert value(m, "mlq_pending_jobs", team="nlp", priority_class="training", reason="Held") == 1
    assert value(m, "mlq_running_jobs", team="nlp", priority_class="training") == 1
    assert value(m, "mlq_admitted_jobs_total", team="nlp", priority_class="training") == 1
    wait_count = "mlq_admission_wait_time_seconds_count"
    assert value(m, wait_count, team="nlp", priority_class="training") == 1
    assert value(m, "mlq_team_resource_usage", team="nlp", resource="gpu") == 2
    assert value(m, "mlq_team_limit", team="nlp", resource="gpu") == 8
    assert value(m, "mlq_node_gpus", node="e2e", model="H100-80GB", state="held") == 2
    assert value(m, "mlq_node_up", node="e2e", state="up") == 1
    assert m["mlq_scheduling_pass_duration_seconds_count"][()] >= 1
    # an inference job preempts the training job: counted with its reason
    serve = d.submit(INFERENCE, user=bob)
    d.wait_for(serve, "COMPLETED")
    m = scrape(port)
    assert (
        value(
            m, "mlq_preempted_jobs_total", team="nlp", priority_class="training", reason="priority"
        )
        == 1
    )
    assert value(m, "mlq_admitted_jobs_total", team="search", priority_class="inference") == 1
    d.cli("node", "drain", "e2e", "--reason", "fan")
    up = {dict(k)["state"]: v for k, v in scrape(port)["mlq_node_up"].items()}
    assert up in ({"draining": 0}, {"drained": 0})  # by whether the requeued job still runs


def test_there_is_no_endpoint_unless_asked_and_a_bad_address_is_refused(make_daemon, tmp_path):
    import subprocess

    d = make_daemon()
    listening = subprocess.run(["ss", "-H", "-ltnp"], capture_output=True, text=True).stdout
    assert f"pid={d.proc.pid}," not in listening  # no TCP port of the daemon's own

    from daemon_helpers import MLQ

    r = subprocess.run(
        [MLQ, "server", "--metrics-address", "nowhere", "--state-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert r.returncode == 2
    assert '--metrics-address: "nowhere" is not HOST:PORT, e.g. 127.0.0.1:9464' in r.stderr
