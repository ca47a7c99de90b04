"""The Dagster UI in a real browser: launch the ingestion assets for a drop by clicking, then read the result.

Starts ``dagster-webserver`` and ``dagster-daemon`` on a temporary GARDEN_HOME/DAGSTER_HOME with a copy of the
``sample-gardening`` drop, drives Debian's headless Chromium through Playwright, and saves a screenshot per
step into ``$GARDEN_ARTIFACTS/browser`` (else a pytest temporary folder). Needs ``.ci/browser.sh`` (Chromium at
/usr/bin/chromium and the playwright package); skipped without them. Run: ``.venv/bin/python -m pytest -m browser``.

``docs/img/ui-asset-graph.png`` (the README's picture) is written when it is missing or when
``GARDEN_UPDATE_SCREENSHOTS=1``, so an ordinary test run leaves the work tree clean.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import polars as pl
import pytest

from .ui_helpers import CHROMIUM, CHROMIUM_ARGS, ROOT, DagsterUI

if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"{CHROMIUM} is missing: run .ci/browser.sh (apt-get install chromium)", allow_module_level=True)
try:
    from playwright import sync_api
except ImportError as e:  # missing, or installed without its dependencies
    pytest.skip(f"the playwright package is not importable ({e}): run .ci/browser.sh", allow_module_level=True)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(360)]

PARTITION = "sample-gardening"
GROUP = "ingest"
ASSETS = ("raw_posts", "clean_posts")
VIEWPORT = {"width": 1440, "height": 900}  # wide enough for the graph's detailed (not minimal) nodes
DOCS_IMG = ROOT / "docs" / "img" / "ui-asset-graph.png"
DOCS_IMG_MAX_BYTES = 300_000
UI_TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    base = os.environ.get("GARDEN_ARTIFACTS")
    path = Path(base) / "browser" if base else tmp_path_factory.mktemp("artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def dagster_ui(tmp_path_factory, artifacts):
    tmp = tmp_path_factory.mktemp("ui")
    drops = tmp / "drops"
    shutil.copytree(ROOT / "data" / "drops" / PARTITION, drops / PARTITION)
    ui = DagsterUI(home=tmp / "home", drops=drops, logs=artifacts)
    ui.prepare("drops", [PARTITION])  # the partition exists before the UI opens (no waiting on the sensor)
    try:
        ui.start()
        ready_s = ui.wait_ready(timeout=120)
        print(f"dagster UI at {ui.url} ready in {ready_s:.1f} s; artifacts in {artifacts}")
        yield ui
    finally:
        ui.stop()


@pytest.fixture(scope="module")
def page(dagster_ui, tmp_path_factory):
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport=VIEWPORT,
        )
        try:
            context.set_default_timeout(UI_TIMEOUT_MS)
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def shot(page, artifacts: Path, name: str) -> Path:
    path = artifacts / f"{name}.png"
    page.screenshot(path=str(path), animations="disabled")  # finishes fades/slides before the capture
    return path


def dismiss_popups(page) -> None:
    # dagster.yaml turns the community modal off; this is only a fallback if a release brings it back.
    skip = page.get_by_role("button", name="Skip")
    if skip.count() and skip.first.is_visible():
        skip.first.click()


def open_graph(page, ui: DagsterUI) -> None:
    page.goto(ui.group_url(GROUP))
    for asset in ("raw_posts", "clean_posts", "qa_pairs"):
        graph_node(page, asset).wait_for(state="visible")
    dismiss_popups(page)


def graph_node(page, asset: str):
    # Graph nodes live in SVG <foreignObject>s; the name is exact text in both the detailed and the
    # zoomed-out (minimal) rendering, while the sidebar's copy of the name is outside any foreignObject.
    return page.locator("foreignObject").get_by_text(asset, exact=True).first


def metadata_row(page, label: str):
    return page.locator("tr").filter(has=page.get_by_text(label, exact=True)).first


def test_materialize_ingestion_from_ui(dagster_ui, page, artifacts):
    started = time.monotonic()
    ui = dagster_ui
    try:
        # 1. The asset graph (the ingest group's lineage page).
        open_graph(page, ui)
        sync_api.expect(page.get_by_role("button", name=re.compile(r"Materialize all"))).to_be_visible()
        shot(page, artifacts, "01-asset-graph")

        # 2. Select raw_posts + clean_posts (click, shift-click) and open the launch dialog.
        graph_node(page, ASSETS[0]).click()
        graph_node(page, ASSETS[1]).click(modifiers=["Shift"])
        page.get_by_role("button", name=re.compile(r"Materialize selected \(2\)")).click()
        dialog = page.get_by_role("dialog").filter(has_text="Launch runs to materialize 2 assets")
        sync_api.expect(dialog).to_be_visible()

        # 3. Choose the partition in the dialog's partition picker.
        dialog.get_by_text("Select a partition or create one").click()
        page.get_by_role("menuitem").filter(has_text=re.compile(rf"^{re.escape(PARTITION)}")).click()
        dialog.get_by_text("Launch runs to materialize 2 assets").click()  # closes the picker's popover
        sync_api.expect(page.get_by_placeholder("Filter partitions")).to_be_hidden()
        sync_api.expect(dialog.get_by_text("1 partition", exact=True)).to_be_visible()
        launch = dialog.get_by_role("button", name="Launch 1 run")
        sync_api.expect(launch).to_be_enabled()
        shot(page, artifacts, "02-launch-dialog")

        # 4. Launch by clicking; the run id comes from the UI's own launch mutation.
        with page.expect_response(lambda r: "/graphql" in r.url and "LaunchPipelineExecution" in (r.request.post_data or "")) as launched:
            launch.click()
        result = launched.value.json()["data"]["launchPipelineExecution"]
        assert result["__typename"] == "LaunchRunSuccess", result
        run_id = result["run"]["id"]
        sync_api.expect(page.get_by_text(f"Launched run {run_id[:8]}")).to_be_visible()
        shot(page, artifacts, "03-run-launched")

        # 5. Wait for the run (GraphQL, bounded), then look at it in the UI.
        status = ui.wait_run(run_id, timeout=150)
        page.goto(f"{ui.url}/runs/{run_id}")
        if status != "SUCCESS":
            page.wait_for_timeout(3000)
            shot(page, artifacts, "04-run-not-successful")
            pytest.fail(f"run {run_id} ended {status}; see {artifacts}\n{ui.diagnostics()}")
        sync_api.expect(page.get_by_text("RUN_SUCCESS", exact=True).first).to_be_visible()
        sync_api.expect(page.get_by_text(f"partition: {PARTITION}")).to_be_visible()
        page.wait_for_timeout(1000)  # let the step timeline settle
        shot(page, artifacts, "04-run-success")

        # 6. clean_posts' page: the materialization event of our run and its metadata preview (markdown table).
        page.goto(f"{ui.url}/assets/clean_posts?view=events")
        sync_api.expect(page.get_by_text(re.compile(rf"materialized in run\s*{run_id[:8]}"))).to_be_visible()
        preview = metadata_row(page, "preview")
        sync_api.expect(preview).to_be_visible()
        sync_api.expect(preview.locator("th")).to_have_count(5)  # the markdown table renders after its row shows
        headers = [h.strip() for h in preview.locator("th").all_inner_texts()]
        assert headers == ["id", "post_type", "score", "title", "text"], headers
        cells = preview.locator("tbody tr")
        assert cells.count() == 5
        stored = pl.read_parquet(ui.storage / "clean_posts" / f"{PARTITION}.parquet")
        assert cells.first.locator("td").first.inner_text().strip() == str(stored["id"][0])
        rows_out = metadata_row(page, "rows_out").locator("td").nth(1).inner_text().strip()
        assert rows_out == str(stored.height) and stored.height > 0, (rows_out, stored.height)
        preview.scroll_into_view_if_needed()
        shot(page, artifacts, "05-asset-metadata")

        # 7. The graph again, for the README: wait (best effort, bounded) for automation to build qa_pairs too.
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and not ui.latest_materialization_run("qa_pairs"):
            time.sleep(2)
        open_graph(page, ui)
        page.wait_for_timeout(1000)
        final = shot(page, artifacts, "06-asset-graph-materialized")
        if not DOCS_IMG.exists() or os.environ.get("GARDEN_UPDATE_SCREENSHOTS") == "1":
            assert final.stat().st_size < DOCS_IMG_MAX_BYTES, final.stat().st_size
            DOCS_IMG.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(final, DOCS_IMG)
        print(f"UI flow took {time.monotonic() - started:.1f} s; screenshots in {artifacts}")
    except Exception:
        try:
            shot(page, artifacts, "failure")
            (artifacts / "failure.html").write_text(page.content())
        except Exception:
            pass
        raise


def test_raw_posts_preview_is_a_markdown_table(dagster_ui, page, artifacts):
    if not dagster_ui.latest_materialization_run("raw_posts"):
        pytest.skip("needs test_materialize_ingestion_from_ui to have materialized raw_posts")
    page.goto(f"{dagster_ui.url}/assets/raw_posts?view=events")
    preview = metadata_row(page, "preview")
    sync_api.expect(preview).to_be_visible()
    shown = preview.get_by_text("[Show Markdown]")
    if shown.count():  # long markdown opens in a dialog
        shown.click()
        preview = page.get_by_role("dialog").filter(has_text="preview")
        sync_api.expect(preview.get_by_role("button", name="Close")).to_be_visible()
    sync_api.expect(preview.get_by_text("post_type").first).to_be_visible()
    shot(page, artifacts, "07-raw-posts-preview")
    headers = [h.strip() for h in preview.locator("th").all_inner_texts()]
    assert headers[:3] == ["id", "post_type", "parent_id"], headers
