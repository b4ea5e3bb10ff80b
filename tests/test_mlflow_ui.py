"""The MLflow UI in a real browser: what a user sees when opening the project's runs.

Builds a small store with the project's own tracking functions (two training runs, each with a nested
sampling run, the way ``experiments.train`` and ``experiments.sample`` log them), starts ``mlflow ui``
on it and drives headless Chromium with Playwright. Screenshots go to the test's ``tmp_path``.

Needs a Chromium (``apt-get install chromium``, or ``$MASKFLOW_CHROMIUM``) and the ``playwright``
wheel (``pip install -e '.[browser]'``; its own browser download is never used); skipped otherwise.

    .venv/bin/pytest -q tests/test_mlflow_ui.py
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = os.environ.get("MASKFLOW_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
# as the machine notes say Chromium must start here: no sandbox (root), no GPU, no background networking
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
TIMEOUT_MS = 90_000  # a loaded 2-core machine renders the UI slowly

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium found (apt-get install chromium, or set MASKFLOW_CHROMIUM)"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright wheel is not installed (pip install -e '.[browser]')")


def _clip(seed: int) -> np.ndarray:
    """A small moving square: ``uint8 [8, 16, 16, 3]``."""
    colour = np.random.default_rng(seed).integers(60, 255, 3)
    x = np.zeros((8, 16, 16, 3), np.uint8)
    for t in range(8):
        x[t, 4:10, t : t + 6] = colour
    return x


def _build_store(root: Path) -> dict[str, str]:
    """Two training runs (metrics over steps, frame strips, an MP4) each with a nested sampling run,
    logged with the functions experiments.train / experiments.sample use."""
    from experiments import tracking
    from experiments.video_io import side_by_side, upscale, write_mp4

    client = tracking.get_client(f"sqlite:///{root}/mlflow.db")
    shards = root / "tokens"
    shards.mkdir()
    manifest = {"shards": [{"path": "part-0.parquet", "rows": 6}], "tokenizer": {"tokenizer_id": "patch_kmeans:ui"},
                "counts": {"segments": 6}, "split": {"mode": "video"}}
    ids: dict[str, str] = {}
    for name, rate in (("train-a", 1.0), ("train-b", 0.5)):
        run_id, _ = tracking.get_or_create_run(client, "ui-test", name, resume_key=("ray_run_name", name),
                                               tags={"stage": "train"}, description=f"training run {name}",
                                               experiment_description="runs made by tests/test_mlflow_ui.py")
        tracking.log_config(client, run_id, {"model": {"size": "tiny"}, "optim": {"lr": rate * 1e-3}, "chunk_size": 8})
        tracking.log_dataset(client, run_id, str(shards), "training", manifest=manifest)
        for step in (10, 20, 30):
            tracking.log_metrics(client, run_id, {"masked_ce": 3 - rate * step / 30, "masked_ce_smoothed": 3.1 - rate * step / 30},
                                 step=step, prefix="train/", tags={"epoch": step // 10})
            tracking.log_metrics(client, run_id, {"masked_ce": 3.2 - rate * step / 40}, step=step, prefix="val/")
            tracking.log_frame_strip(client, run_id, _clip(step), _clip(step + int(10 * rate)), 2, step=step)
        real, fake = _clip(0), _clip(int(10 * rate))
        video = write_mp4(upscale(side_by_side(real, fake), 8), root / f"{name}.mp4")
        tracking.log_artifact(client, run_id, video, artifact_path="samples")

        sample_id, _ = tracking.get_or_create_run(client, "ui-test", f"mgm-s6-{name}", parent_run_id=run_id,
                                                  tags={"stage": "sample"}, description=f"sampling of {name}")
        tracking.log_config(client, sample_id, {"sampler": "mgm", "stride": 6, "checkpoint": f"runs:/{run_id}/model"})
        tracking.log_metrics(client, sample_id, {"nfe": 9, "token_accuracy": 0.5 + 0.3 * rate}, prefix="sample/")
        tracking.log_frame_strip(client, sample_id, real, fake, 2)
        tracking.log_artifact(client, sample_id, write_mp4(upscale(fake, 8), root / "sample_00_mgm.mp4"), artifact_path="videos")
        tracking.end_run(client, sample_id)
        tracking.end_run(client, run_id)
        ids[name], ids[f"sample-{name}"] = run_id, sample_id
    ids["experiment"] = client.get_experiment_by_name("ui-test").experiment_id
    ids["link"] = tracking.ui_link(client, ids["train-a"], base="")  # what the demo prints, without host
    return ids


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """``(base_url, ids, browser)``: ``mlflow ui`` on the test store and a headless Chromium."""
    root = tmp_path_factory.mktemp("mlflow-ui")
    old_uri = os.environ.get("MLFLOW_TRACKING_URI")
    ids = _build_store(root)
    if old_uri is None:  # the session's store stays the default for the other tests
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old_uri
    port = _free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=open(root / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=5)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mlflow ui did not start:\n{(root / 'server.log').read_text()[-3000:]}")
                time.sleep(1)
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            yield base, ids, browser
            browser.close()
    finally:  # the server and its uvicorn worker: the process group started above
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)


def _url(base: str, ids: dict[str, str], path: str, **query: str) -> str:
    """A UI link in the model-training view (MLflow 3.17 opens GenAI unless the URL or the user's own
    toggle says otherwise; the experiment's ``mlflow.experimentKind`` tag is not consulted)."""
    q = "&".join(f"{k}={v}" for k, v in {"workflowType": "machine_learning", **query}.items())
    return f"{base}/#/experiments/{ids['experiment']}{path}?{q}"


@pytest.fixture
def page(ui):
    """A fresh page (its own browser context: no UI state such as expanded runs carried over)."""
    context = ui[2].new_context(viewport={"width": 1600, "height": 1400})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    context.close()


def _expand_nested_runs(page) -> None:
    expanders = page.locator("button[data-component-id*=runnamecellrenderer]")
    expanders.first.wait_for()
    for i in range(expanders.count()):
        expanders.nth(i).click()


def test_experiment_opens_on_its_runs_table_with_the_nested_sampling_run(ui, page, tmp_path):
    base, ids, _ = ui
    page.set_viewport_size({"width": 2400, "height": 1100})  # the grid renders only the columns in view
    page.goto(base + ids["link"])
    page.get_by_text("train-b", exact=True).first.wait_for()
    assert page.get_by_text("runs made by tests/test_mlflow_ui.py").count() >= 1  # the experiment's description
    assert page.get_by_text("mgm-s6-train-a", exact=True).count() == 0  # nested: collapsed under its parent
    _expand_nested_runs(page)
    page.get_by_text("mgm-s6-train-a", exact=True).first.wait_for()
    page.screenshot(path=str(tmp_path / "runs_table.png"))
    headers = set(page.locator("[role=columnheader]").all_inner_texts())
    assert {"train/masked_ce", "sample/token_accuracy", "stride", "Models"} <= headers, headers  # the link's view
    index = page.locator("[role=row]", has_text="mgm-s6-train-a").first.get_attribute("aria-rowindex")
    cells = "\n".join(page.locator(f"[role=row][aria-rowindex='{index}']").all_inner_texts()).split("\n")
    assert "6" in cells and "0.8" in cells, cells  # the nested run's stride and token accuracy (pinned + scrolled parts)
    rows = page.locator("[role=row]").all_inner_texts()
    order = [n for r in rows for n in ("mgm-s6-train-a", "train-a") if n in r.split("\n")]
    assert order.index("train-a") < order.index("mgm-s6-train-a"), rows


def test_a_training_run_shows_its_metric_charts_by_namespace(ui, page, tmp_path):
    base, ids, _ = ui
    page.goto(_url(base, ids, f"/runs/{ids['train-a']}/model-metrics"))
    page.get_by_text("train-a (train/masked_ce)", exact=True).first.wait_for()
    page.get_by_text("train-a (train/masked_ce_smoothed)", exact=True).first.wait_for()
    page.screenshot(path=str(tmp_path / "run_metrics.png"))
    val = page.get_by_text("val", exact=True).first  # the section of val/ metrics, below train/
    val.scroll_into_view_if_needed()
    page.get_by_text("train-a (val/masked_ce)", exact=True).first.wait_for()
    assert page.get_by_text("epoch", exact=True).count() == 0 and page.get_by_text("step", exact=True).count() == 0


def test_a_sampling_run_plays_its_video_artifact(ui, page, tmp_path):
    base, ids, _ = ui
    page.goto(_url(base, ids, f"/runs/{ids['sample-train-a']}/artifacts/videos/sample_00_mgm.mp4"))
    page.locator("video").first.wait_for()
    page.wait_for_function("() => { const v = document.querySelector('video'); return v && v.readyState >= 1; }")
    width = page.evaluate("() => document.querySelector('video').videoWidth")
    page.screenshot(path=str(tmp_path / "video_artifact.png"))
    assert width == 128  # 16 px frames x 8: the browser decoded the MP4


def test_the_image_chart_compares_the_frames_of_two_runs(ui, page, tmp_path):
    base, ids, _ = ui
    page.goto(_url(base, ids, "/runs", compareRunsMode="CHART"))
    _expand_nested_runs(page)
    page.get_by_text("mgm-s6-train-b", exact=True).first.wait_for()
    card = page.get_by_text("sample/real_vs_generated", exact=True).first
    card.wait_for()
    card.scroll_into_view_if_needed()
    strips = page.locator("img[src*='sample~real_vs_generated']")
    page.wait_for_function(
        "() => [...document.querySelectorAll(\"img[src*='sample~real_vs_generated']\")]"
        ".filter(i => i.complete && i.naturalWidth > 0).length >= 2"
    )
    page.screenshot(path=str(tmp_path / "image_comparison.png"))
    runs = {src.split("run_uuid=")[1].split("&")[0] for src in (strips.nth(i).get_attribute("src") for i in range(strips.count()))
            if "run_uuid=" in src}
    assert {ids["sample-train-a"], ids["sample-train-b"]} <= runs, runs
