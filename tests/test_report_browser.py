"""The report page as a reader sees it: rendered from constructed records, opened in headless Chromium.

Marked ``browser``: deselected, with one line in the summary saying why, where Chromium or
Playwright is missing (conftest.py); `.ci/run` installs both.
"""

import json
import shutil

import numpy as np
import pytest

from cxrbench.reports.report import write_report

pytestmark = pytest.mark.browser
N = 300
RNG = np.random.default_rng(0)
TARGETS = (RNG.random((N, 3)) < 0.3).astype(np.float32)


def _cell(out, method, strength, *, fraction, seed=0, protocol="frozen", baseline=False, display=None):
    from sklearn.metrics import roc_auc_score

    scores = strength * TARGETS + np.random.default_rng(hash((method, fraction, seed, protocol)) % 2**32).normal(size=(N, 3))
    stem = f"{method}__phantom-nih__{protocol}__{fraction:g}pct__seed{seed}"
    (out / "cells").mkdir(parents=True, exist_ok=True)
    np.savez(out / "cells" / f"{stem}.predictions.npz", image_ids=np.array([f"img{i}" for i in range(N)]),
             targets=TARGETS, scores=scores.astype(np.float32))
    auroc = float(np.mean([roc_auc_score(TARGETS[:, c], scores[:, c]) for c in range(3)]))
    record = {"cell": {"method": method, "dataset": "phantom-nih", "protocol": protocol, "label_fraction": fraction, "seed": seed},
              "method_display_name": display or method, "method_is_baseline": baseline, "headline_metric": "mean_auroc",
              "metrics": {"mean_auroc": auroc}, "bootstrap": {"low": auroc - 0.04, "high": auroc + 0.04, "resamples": 1000},
              "predictions_file": f"{stem}.predictions.npz", "config": {"profile": {"name": "standard"}}}
    (out / "cells" / f"{stem}.json").write_text(json.dumps(record))


def test_the_report_page_loads_cleanly_in_chromium_with_real_tables_and_images(tmp_path):
    from playwright.sync_api import sync_playwright

    run = tmp_path / "run"
    for protocol in ("frozen", "finetune"):
        for fraction in (1.0, 10.0, 100.0):
            _cell(run, "sup1", 0.1, fraction=fraction, protocol=protocol, baseline=True, display="Sup.1")
            _cell(run, "simclr", 1.5, fraction=fraction, protocol=protocol, display="SimCLR")
            _cell(run, "vicreg", 0.15, fraction=fraction, protocol=protocol, display="VICReg <b>")  # escaped, not markup
    out = tmp_path / "report"
    write_report(run, out)
    tables_written = sorted(path.stem for path in out.glob("*.md") if path.name != "index.md")

    console, failed, requests = [], [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", lambda message: console.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: console.append(str(error)))
            page.on("requestfailed", lambda request: failed.append(request.url))
            page.on("request", lambda request: requests.append(request.url))
            page.goto((out / "index.html").as_uri(), wait_until="load")
            tables = page.locator("table.results").count()
            images = page.evaluate("Array.from(document.images).map(image => [image.complete, image.naturalWidth])")
            text = page.inner_text("body")
            pre_blocks = page.locator("pre").count()
            tooltip = page.evaluate("document.querySelector('table.results td .pd-t') !== null")
            sticky = page.evaluate("getComputedStyle(document.querySelector('table.results thead th')).position")
            injected = page.locator("b").count()
        finally:
            browser.close()
    assert console == [] and failed == []
    assert all(url.startswith(("file:", "data:")) for url in requests), [u for u in requests if not u.startswith(("file:", "data:"))]
    # every table of the report is an HTML table, none a preformatted Markdown block
    assert tables == len(tables_written) and pre_blocks == 0, (tables, tables_written)
    assert images and all(complete and width > 0 for complete, width in images)
    for markup in ("**", "|:--", "| ---"):
        assert markup not in text, markup
    assert "VICReg <b>" in text and injected == 0  # the display name is shown as text, never parsed as markup
    assert "↑" in text  # SimCLR's clear difference is marked; the page shows the arrow
    assert tooltip and sticky == "sticky"
