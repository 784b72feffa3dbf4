"""The web dashboard in a real browser (Debian's chromium, driven by its chromedriver
through selenium): a user signs in with the URL ``mlq dashboard`` printed, sees the
job they submitted, its GPU on the node, its log, and sees it end; another user's
browser is refused that job's log. The last screenshot is kept as docs/dashboard.png
(the README shows it)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from daemon_helpers import ROOT

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOT = ROOT / "docs" / "dashboard.png"

JOB = """
name: dashboard-demo
team: nlp
kind: training
command: [/bin/sh, -c, 'echo "hello from the job"; while [ ! -e /gate/open ]; do sleep 0.1; done; echo "done"']
resources: {{gpus: 1, cpus: 1, memory: 128Mi}}
volumes: [{{source: {gate}, target: /gate, readonly: true}}]
"""

WAITING = """
name: waits-for-gpus
team: nlp
kind: batch
command: [/bin/true]
resources: {gpus: 2, cpus: 1, memory: 64Mi}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def browser() -> Iterator[object]:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        pytest.fail(
            f"the dashboard's browser test needs {' and '.join(missing)} "
            "(Debian's chromium and chromium-driver; scripts/test installs them)",
            pytrace=False,
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1300"):
        options.add_argument(arg)
    options.add_argument("--disable-dev-shm-usage")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait_until(driver, what: str, check, timeout: float = 30.0):
    """Poll ``check(driver)`` until it gives something true; fail saying ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        got = check(driver)
        if got:
            return got
        if time.monotonic() > deadline:
            text = driver.find_element("tag name", "body").text
            raise AssertionError(f"the page never showed {what}; it shows:\n{text}")
        time.sleep(0.1)


def row(driver, table: str, job_id: int):
    found = driver.find_elements("css selector", f"#{table} tr[data-job='{job_id}']")
    return found[0] if found else None


def login_url(d, user) -> str:
    r = d.cli("dashboard", "--json", user=user)
    assert r.code == 0, r.err
    return r.json()["url"]


def test_a_user_signs_in_sees_their_job_run_and_end_and_another_user_may_not_read_its_log(
    make_daemon, unix_users, browser
):
    port = free_port()
    d = make_daemon(env={"MLQ_DASHBOARD_ADDRESS": f"127.0.0.1:{port}"}, gpus=2)
    alice, bob = unix_users["alice"], unix_users["bob"]
    gate = d.home / "gate"
    gate.mkdir()
    job = d.submit(JOB.format(gate=gate), user=alice)
    d.wait_for(job, "RUNNING")

    url = login_url(d, alice)
    assert url.startswith(f"http://127.0.0.1:{port}/login?token=")
    browser.get(url)
    wait_until(
        browser, "who is signed in", lambda b: f"signed in as {alice.pw_name}" in b.page_source
    )
    assert "token" not in browser.current_url  # the token is spent and out of the address bar

    # the queue shows the job running, the node shows the GPU it holds
    line = wait_until(browser, f"job {job} in the queue", lambda b: row(b, "queue", job))
    assert line.get_attribute("data-state") == "RUNNING"
    assert "dashboard-demo" in line.text and alice.pw_name in line.text
    holder = wait_until(
        browser,
        "the job holding a GPU of node e2e",
        lambda b: b.find_elements(
            "css selector", f"[data-node='e2e'] .gpu.held a[data-job='{job}']"
        ),
    )
    assert holder
    pending = d.submit(WAITING, user=alice)
    queued = wait_until(browser, f"job {pending} pending", lambda b: row(b, "queue", pending))
    wait_until(
        browser, "its reason", lambda b: "Resources" in (row(b, "queue", pending) or queued).text
    )
    wait_until(
        browser,
        "the team's GPU use",
        lambda b: (
            b.find_elements("css selector", "[data-team='nlp'] tr[data-resource='gpu'] .used")
            and b.find_element(
                "css selector", "[data-team='nlp'] tr[data-resource='gpu'] .used"
            ).text
            == "1"
        ),
    )

    SCREENSHOT.parent.mkdir(exist_ok=True)
    browser.save_screenshot(str(SCREENSHOT))  # a running job, a pending one, GPUs, teams

    # the job's panel: its timeline and the log tail
    browser.find_element("css selector", f"#queue tr[data-job='{job}'] a").click()
    wait_until(
        browser,
        "the job's log",
        lambda b: "hello from the job" in b.find_element("id", "job-log").text,
    )
    events = browser.find_element("id", "job-events").text
    assert "PENDING" in events and "RUNNING" in events

    # it ends: the page moves it to the ended jobs without a reload
    (gate / "open").touch()
    d.wait_for(job, "COMPLETED")
    ended = wait_until(browser, f"job {job} ended", lambda b: row(b, "recent", job))
    assert ended.get_attribute("data-state") == "COMPLETED"
    wait_until(browser, "the job gone from the queue", lambda b: row(b, "queue", job) is None)
    wait_until(
        browser, "the rest of its log", lambda b: "done" in b.find_element("id", "job-log").text
    )

    # the login URL was good once: opened again it signs nobody in
    again = httpx.get(url, follow_redirects=False)
    assert again.status_code == 401 and "mlq dashboard" in again.text

    # bob's browser sees the queue but not alice's log (mlq logs' rule)
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base) as bobs:
        signed = bobs.get(login_url(d, bob).removeprefix(base), follow_redirects=False)
        assert signed.status_code == 303
        assert bobs.get("/api/whoami").json()["user"] == bob.pw_name
        seen = {j["id"] for j in bobs.get("/api/queue").json()["recent"]}
        assert job in seen
        refused = bobs.get(f"/api/jobs/{job}/log")
        assert refused.status_code == 403
        assert f"{bob.pw_name} may not read the logs of job {job}" in refused.json()["message"]
    # and nobody without a session gets anything
    assert httpx.get(f"{base}/api/queue").status_code == 401


def test_mlq_dashboard_on_a_server_without_one_says_how_to_start_it(make_daemon, unix_users):
    d = make_daemon()
    r = d.cli("dashboard", user=unix_users["alice"])
    assert r.code != 0
    assert "--dashboard-address" in r.err and "Traceback" not in r.err
