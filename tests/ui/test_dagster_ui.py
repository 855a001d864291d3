"""The Dagster UI as people see it, in headless Chromium: the agent's lineage, a day that failed its
gates shown as a failed partition (the reason one click away), the evaluation plots on the asset
page. Debian's `chromium` driven by playwright (.ci/run installs it); skips, saying why, without it."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.ui.state import BAD_DAY, GOOD_DAYS, build_state

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
CHAIN = ["dataset", "customer_features", "training_set", "trained_agent", "evaluation_report",
         "registered_version", "drift_report"]


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it as root: apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed (it is in the dev extra: make install)")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _location_loaded(port: int) -> bool:
    query = '{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }'
    req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query}).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            entries = json.loads(resp.read())["data"]["workspaceOrError"]["locationEntries"]
    except (OSError, KeyError, TypeError):
        return False
    return any(e["name"] == "agentops_pipelines" and e["loadStatus"] == "LOADED" for e in entries)


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """The webserver on a loopback port over a state folder where the lifecycle ran, and a page."""
    chromium = _chromium()
    from playwright.sync_api import sync_playwright

    tmp = tmp_path_factory.mktemp("ui")
    home = tmp / "agentops"
    approvers = tmp / "approvers.yaml"
    approvers.write_text("agents: {}\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AGENTOPS_HOME", str(home))
        mp.setenv("AGENTOPS_APPROVERS_FILE", str(approvers))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("DAGSTER_HOME", raising=False)
        dagster_home = build_state(home)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TZ", "PYTHONPATH")}
    env |= {"AGENTOPS_HOME": str(home), "DAGSTER_HOME": str(dagster_home), "AGENTOPS_APPROVERS_FILE": str(approvers),
            "GX_ANALYTICS_ENABLED": "False", "FEAST_USAGE": "False"}
    log = open(tmp / "webserver.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "dagster_webserver", "-w", str(ROOT / "workspace.yaml"),
                               "-h", "127.0.0.1", "-p", str(port)], cwd=dagster_home, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while not _location_loaded(port):
            assert server.poll() is None and time.time() < deadline, (tmp / "webserver.log").read_text()[-3000:]
            time.sleep(1)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True)
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(30_000)
            base = f"http://127.0.0.1:{port}"
            page.goto(base + "/")
            skip = page.get_by_role("button", name="Skip")  # the community sign-up dialog, first visit
            try:
                skip.click(timeout=10_000)
            except Exception:  # noqa: BLE001 - not shown this time
                pass
            yield page, base
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_lineage_of_the_agents_group(ui, tmp_path):
    page, base = ui
    page.goto(f"{base}/locations/agentops_pipelines/asset-groups/support_agent/lineage")
    graph = page.locator("[data-testid='asset-graph'], svg").first
    graph.wait_for()
    boxes = {}
    for name in CHAIN:
        node = page.get_by_text(name, exact=True).first
        node.wait_for()
        boxes[name] = node.bounding_box()
    page.screenshot(path=str(tmp_path / "lineage.png"))
    # laid out left to right along the lifecycle: each asset right of the one it reads
    xs = [boxes[name]["x"] for name in CHAIN]
    assert xs == sorted(xs) and len(set(xs)) == len(xs), boxes
    # deployments are another group (out of this group's "Materialize all"): here only a link to it
    link = page.get_by_text("deployment", exact=True).first
    assert link.bounding_box()["height"] < boxes["registered_version"]["height"]


def test_failed_gate_partition_is_shown_failed_with_the_reason_one_click_away(ui, tmp_path):
    page, base = ui
    page.goto(f"{base}/assets/support_agent/dataset?view=partitions&status=FAILED&partition={BAD_DAY}")
    page.get_by_text("Failed (1)").wait_for()
    assert page.get_by_text(f"Materialized ({len(GOOD_DAYS)})").count() == 1
    banner = page.get_by_text("failed, and did not materialize this asset")
    banner.wait_for()
    page.screenshot(path=str(tmp_path / "failed_partition.png"))
    page.get_by_text("View logs").click()
    page.get_by_text("rejected by its gates", exact=False).first.wait_for()
    body = page.inner_text("body")
    assert "known_labels" in body and ".rejected.json" in body
    page.screenshot(path=str(tmp_path / "failed_partition_logs.png"))


def test_evaluation_plots_render_on_the_asset_page(ui, tmp_path):
    page, base = ui
    page.goto(f"{base}/assets/support_agent/evaluation_report")
    row = page.locator("tr", has_text="plots").filter(has=page.get_by_text("[Show Markdown]"))
    row.get_by_text("[Show Markdown]").click()
    images = page.locator('[role="dialog"] img[src^="data:image/png;base64,"]')
    images.first.wait_for()
    page.wait_for_function("() => [...document.querySelectorAll('[role=dialog] img')].every(i => i.complete)")
    page.screenshot(path=str(tmp_path / "evaluation_plots.png"))
    shown = [images.nth(i).evaluate("(e) => [e.alt, e.naturalWidth, e.naturalHeight]") for i in range(images.count())]
    assert [alt for alt, _, _ in shown] == ["Per-tool F1", "Confusion matrix", "Confidence calibration", "Latency"]
    assert all(w > 300 and h > 200 for _, w, h in shown), shown  # decoded images, not broken icons
