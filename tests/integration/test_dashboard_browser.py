"""The dashboard in a real headless browser (Debian's chromium driven by Playwright) against a real
server: every page loads without console errors, charts render, a rollback through the UI takes
effect, and the playground returns demonstrations with thumbnails. With EXEMPLAR_SCREENSHOT_DIR
set, a screenshot of each page is saved there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from exemplar.app.auth import hash_key
from tests.processes import free_port, running

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
KEY = "dashboard-admin-key-0123456789"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (`apt-get install chromium`; .ci/run installs it)")
    root = tmp_path_factory.mktemp("dashboard")
    env = {"EXEMPLAR_DATA_DIR": str(root / "data"),
           "EXEMPLAR_API_KEYS": json.dumps([{"name": "ops", "sha256": hash_key(KEY), "scopes": ["admin"]}])}
    full = dict(os.environ, HF_HUB_OFFLINE="1", **env)
    subprocess.run([sys.executable, "-m", "exemplar", "demo", "--no-serve", "--per-class", "4"], env=full, check=True,
                   capture_output=True, timeout=300)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with running(["-m", "exemplar", "serve", "--port", str(port)], f"{base}/readyz", root / "serve.log", env=env):
        headers = {"authorization": f"Bearer {KEY}"}
        sample = httpx.get(f"{base}/v1/pools/demo", headers=headers).json()
        assert sample["current_version"] == 1
        # a second version, so that there is something to roll back from
        from tests.helpers import png_b64

        r = httpx.post(f"{base}/v1/pools/demo/items", headers=headers, timeout=60,
                       json={"items": [{"id": "new-red", "label": "circle", "domain": "site-a", "image": png_b64()}]})
        assert r.status_code == 201 and r.json()["version"] == 2
        for strategy in ("balanced", "topk", "balanced"):
            httpx.post(f"{base}/v1/pools/demo/select", headers=headers, timeout=60,
                       json={"query": {"text": "a circle"}, "strategy": strategy, "k": 4})
        yield base


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield instance
        instance.close()


def shoot(page, name: str) -> None:
    folder = os.environ.get("EXEMPLAR_SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"dashboard-{name}.png"), full_page=True)


def test_dashboard_pages_charts_rollback_and_playground(server: str, browser) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))

    def visit(hash_: str, ready: str) -> None:
        page.evaluate(f"location.hash = {hash_!r}")
        page.wait_for_selector(ready, timeout=15_000)

    page.goto(f"{server}/dashboard")
    page.fill("#apikey", KEY)
    page.click("#savekey")
    page.wait_for_selector("#overview", timeout=15_000)
    cards = page.locator("#overview .card b").all_inner_texts()
    assert cards[:2] == ["1", "49"], cards  # 4 classes x 3 domains x 4, plus one added
    shoot(page, "overview")

    visit("#/pools", "#pools")
    assert "demo" in page.inner_text("#pools")
    shoot(page, "pools")

    visit("#/pools/demo", "#pool-detail")
    assert page.locator("#chart-labels rect").count() == 4
    assert page.locator("#chart-domains rect").count() == 3
    # version 2 (an addition on top of version 1) inherits version 1's adapter with its manifest
    assert "trained on version 1" in page.inner_text("#adapter")
    assert "recall@" in page.inner_text("#pool-detail")
    assert page.inner_text("#segments").strip() == "· 2 segments"  # the build's and the addition's
    shoot(page, "pool")
    page.click("#versions tr[data-version='1'] button.activate")
    page.wait_for_selector("#versions tr[data-version='2'] button.activate", timeout=15_000)
    assert "1 (current)" in page.inner_text("#versions")
    assert "CCI linear head" in page.inner_text("#adapter")
    pool = httpx.get(f"{server}/v1/pools/demo", headers={"authorization": f"Bearer {KEY}"}).json()
    assert pool["current_version"] == 1, "the rollback in the UI took effect on the server"

    visit("#/jobs", "#jobs")
    assert "succeeded" in page.inner_text("#jobs") and "adapter" in page.inner_text("#jobs")
    shoot(page, "jobs")

    visit("#/activity", "#chart-latency")
    assert page.locator("#chart-latency path").count() == 2
    assert page.locator("#chart-strategies rect").count() == 2
    assert page.locator("#chart-balance-demo rect").count() >= 1
    shoot(page, "activity")

    visit("#/playground", "#playground")
    page.fill("#pg-text", "a red circle")
    page.click("#pg-go")
    page.locator("#pg-results .demo").nth(7).wait_for(timeout=15_000)
    assert page.locator("#pg-results .demo").count() == 8
    # (the page's CSP forbids eval, so the wait is polled from here rather than with wait_for_function)
    loaded = "[...document.querySelectorAll('#pg-results img')].every(i => i.complete && i.naturalWidth > 0)"
    deadline = time.monotonic() + 15
    while not page.evaluate(loaded) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert page.evaluate(loaded), "every thumbnail loaded"
    labels = page.locator("#pg-results .demo b").all_inner_texts()
    assert sorted(set(labels)) == ["circle", "cross", "square", "triangle"], "balanced: every class"
    shoot(page, "playground")

    assert errors == [], errors
    page.close()


def test_dashboard_without_a_key_shows_the_error_and_no_data(server: str, browser) -> None:
    page = browser.new_page()
    page.goto(f"{server}/dashboard#/pools")
    page.wait_for_selector("body[data-ready='pools']", timeout=15_000)
    assert "API key" in page.inner_text("#status")
    assert page.locator("#pools").count() == 0
    page.close()
