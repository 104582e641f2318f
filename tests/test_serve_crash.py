"""A decision service killed with SIGKILL under load loses no answered decision."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest

from clients.decision_log import read_trail
from tests.processes import group_alive
from tests.serving import build_package, records, served

CLIENTS = 8
ANSWERED_BEFORE_KILL = 150


def _load(url: str, applications: list[dict], answered: list[dict], failures: list[str], stop: threading.Event):
    """Send applications one after another until ``stop``; keep every answered decision."""
    with httpx.Client(base_url=url, timeout=30) as client:
        i = 0
        while not stop.is_set():
            try:
                r = client.post("/v1/decisions", json=applications[i % len(applications)])
            except httpx.HTTPError as exc:  # the service is gone: what was not answered does not count
                failures.append(type(exc).__name__)
                time.sleep(0.05)
                continue
            if r.status_code == 201:
                answered.append(r.json())
            else:
                failures.append(f"HTTP {r.status_code}: {r.text[:200]}")
            i += 1


@pytest.mark.slow
def test_sigkill_under_load_loses_no_answered_decision(tmp_path):
    _, apps = build_package(tmp_path / "model", rows=1000)
    applications = records(apps)
    trail_dir = tmp_path / "decisions"
    answered: list[dict] = []
    failures: list[str] = []
    stop = threading.Event()
    with served(["--model", tmp_path / "model", "--decisions", trail_dir], tmp_path / "serve-1.log") as service:
        threads = [threading.Thread(target=_load, args=(service.url, applications[k::CLIENTS], answered, failures,
                                                        stop)) for k in range(CLIENTS)]
        for t in threads:
            t.start()
        try:
            deadline = time.monotonic() + 300
            while len(answered) < ANSWERED_BEFORE_KILL and time.monotonic() < deadline:
                time.sleep(0.05)
            os.killpg(service.proc.pid, signal.SIGKILL)  # under load: requests in flight, groups being written
            killed_at = len(answered)
            service.proc.wait(timeout=30)
            time.sleep(0.5)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)
        assert not group_alive(service.proc.pid)
    assert killed_at >= ANSWERED_BEFORE_KILL, f"only {killed_at} decisions answered before the kill"
    assert not [f for f in failures if f.startswith("HTTP")], failures[:5]  # only connection errors after the kill

    trail = read_trail(trail_dir)
    assert trail.check.ok or trail.check.torn_tail, trail.check.reason  # at most an interrupted last write
    refs = trail.index.decisions
    lost = [a["decision_id"] for a in answered if refs.get(a["decision_id"]) is None
            or refs[a["decision_id"]].hash != a["trail"]["hash"]]
    assert not lost, f"{len(lost)} of {len(answered)} answered decisions are not on the trail"
    torn = trail.check.torn_tail

    # the next start repairs a torn tail (if any), and the trail verifies whole, every answer still on it
    with served(["--model", tmp_path / "model", "--decisions", trail_dir], tmp_path / "serve-2.log") as service:
        r = httpx.post(service.url + "/v1/decisions", json=applications[0], timeout=60)
        assert r.status_code == 201
    trail = read_trail(trail_dir)
    assert trail.check.ok, trail.check.reason
    assert trail.index.counts.get("recovered", 0) == int(torn)
    assert all(trail.index.decisions[a["decision_id"]].hash == a["trail"]["hash"] for a in answered)
    assert trail.index.counts["service-start"] == 2 and trail.index.counts["service-stop"] == 1
