"""The cluster-wide dashboard in a real browser (issue 15, views): headless
Chromium loads the page of one peer of a 2-peer cluster and sees the jobs of
both homes, filters them by state, and opens a job's page (another home's
job: its output; a running job: its live output)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time

import pytest

from executor.client import Client
from tests.conftest import PeerProcess, free_port
from tests.test_http import wait_http

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
_MISSING = "chromium is not installed (.ci/run installs it: apt-get install chromium)"


@pytest.fixture(autouse=True)
def _chromium_present():
    """As tests/test_browser.py: outside CI a machine without Chromium skips
    and says why; in CI (`CI` set) a missing Chromium is a failure."""
    if CHROMIUM is None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(f"{_MISSING}; CI is set, so this is a failure, not a skip")
        pytest.skip(_MISSING)


def dom(tmp_path, url: str) -> str:
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,900",
         "--virtual-time-budget=5000", "--dump-dom", url],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def table_ids(html: str) -> set[str]:
    """The job ids in the jobs table's rows."""
    body = html.split('<table id="jobs">', 1)[1].split("</table>", 1)[0]
    return set(re.findall(r'<tr class="job[^"]*" data-id="([^"]+)"', body))


def test_the_dashboard_shows_both_homes_filters_by_state_and_opens_a_job(tmp_path):
    port = free_port()
    a = PeerProcess(tmp_path, name="bc1", slots=2, extra=["--http", f"127.0.0.1:{port}"])
    a.start()
    b = PeerProcess(tmp_path, name="bc2", slots=2, join=[a.addr])  # no --http: asked through its client port
    b.start()
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(base)
        with Client(a.addr) as ca, Client(b.addr) as cb:
            deadline = time.monotonic() + 15
            while len(ca.peers()) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            here = ca.submit("echo output-of-bc1")
            there = cb.submit("echo output-of-bc2")
            failed = cb.submit("echo failing; exit 4")
            for client, job in ((ca, here), (cb, there), (cb, failed)):
                client.wait(job, timeout_s=20)
            slow = cb.submit("echo live-browser-output; sleep 30")
            try:
                html = dom(tmp_path, f"{base}/#job={there}")
                assert {here, there, failed} <= table_ids(html)
                assert "echo output-of-bc1" in html and "echo output-of-bc2" in html  # commands of both homes
                assert f"Job <code>{there}</code>" in html and "home bc2" in html
                assert '<pre id="stdout">output-of-bc2\n</pre>' in html
                assert "bc1" in html and "bc2" in html and "alive" in html  # the peers card, as before

                only_failed = table_ids(dom(tmp_path, f"{base}/#state=failed"))
                assert failed in only_failed and not only_failed & {here, there, slow}

                only_bc1 = table_ids(dom(tmp_path, f"{base}/#peer=bc1"))
                assert here in only_bc1 and not only_bc1 & {there, failed, slow}

                deadline = time.monotonic() + 20
                while True:
                    html = dom(tmp_path, f"{base}/#job={slow}")
                    if "live-browser-output" in html or time.monotonic() > deadline:
                        break
                    time.sleep(0.5)
                assert "● live" in html and '<pre id="stdout">live-browser-output\n</pre>' in html
            finally:
                cb.cancel(slow)
    finally:
        b.stop()
        a.stop()
