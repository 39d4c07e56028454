"""What a researcher sees: TensorBoard on a small real run, its dashboards loaded in headless Chromium.

Needs Debian's ``chromium`` and ``chromium-driver`` (``scripts/test.sh`` installs them where it can)
and ``selenium`` (the ``test`` extra); skipped with the reason where one is missing.

``EMERGENCE_DOCS_SCREENSHOTS=1`` writes the screenshots to ``docs/figures/dashboard-*.png`` (the
images the README and docs/dashboards.md show); otherwise they go to the test's temporary folder.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from dashboard_run import BRANCHES, HIDDEN, make_dashboard_run

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (the `test` extra has it)"
)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None or DRIVER is None,
        reason="Debian's chromium and chromium-driver are not installed "
        "(apt-get install -y chromium chromium-driver)",
    ),
]
DOCS_FIGURES = Path(__file__).resolve().parents[2] / "docs" / "figures"
WAIT_S = 90


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def tensorboard(tmp_path_factory):
    """TensorBoard serving a parent run and its three branches; yields its address."""
    root = tmp_path_factory.mktemp("dashboards")
    make_dashboard_run(root)
    port = _free_port()
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(root / "mlp"), "--port", str(port)]
    command += ["--host", "127.0.0.1", "--load_fast", "false", "--reload_interval", "0"]
    log = open(root / "tensorboard.log", "w")  # a file, not a pipe nobody drains (TensorBoard would block)
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                runs = urllib.request.urlopen(f"{url}/data/runs", timeout=5).read().decode()
                if all(name in runs for name in BRANCHES):
                    break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                log.flush()
                output = (root / "tensorboard.log").read_text()[-2000:]
                pytest.fail(f"TensorBoard did not serve the runs: {output}")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1400,1300")
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    if os.environ.get("EMERGENCE_DOCS_SCREENSHOTS") == "1":
        DOCS_FIGURES.mkdir(parents=True, exist_ok=True)
        return DOCS_FIGURES
    return tmp_path_factory.mktemp("screenshots")


def _open(browser, url: str, dashboard: str, ready: str) -> str:
    """Load a dashboard and wait until ``ready`` is on the page; returns the page's text."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # Unsmoothed lines (TensorBoard smooths by 0.6 by default), so a screenshot shows the measured values.
    browser.get(f"{url}/#{dashboard}&_smoothingWeight=0")
    WebDriverWait(browser, WAIT_S).until(lambda d: ready in d.find_element(By.TAG_NAME, "body").text)
    time.sleep(2)  # the charts draw after their titles
    return browser.find_element(By.TAG_NAME, "body").text


# The "Ignore outliers in chart scaling" box (checked by default) clips a branch's peak; it sits in
# Polymer shadow roots, out of reach of selectors.
UNCHECK_OUTLIERS = """
function find(root) {
  for (const el of root.querySelectorAll('*')) {
    if (el.tagName === 'PAPER-CHECKBOX' && el.textContent.includes('Ignore outliers')) return el;
    if (el.shadowRoot) { const found = find(el.shadowRoot); if (found) return found; }
  }
  return null;
}
const box = find(document);
if (box && box.checked) box.click();
return box ? box.checked : null;
"""


def _show_outliers(browser) -> None:
    assert browser.execute_script(UNCHECK_OUTLIERS) is False
    time.sleep(2)  # redrawn on the full range


def test_custom_scalars_one_chart_per_quantity(tensorboard, browser, screenshots):
    text = _open(browser, tensorboard, "custom_scalars", "E: paths from dead to active nodes")
    for title in (
        "emergence", "relative emergence", "accuracy", "dead nodes per layer", "active nodes per layer",
        "E: paths from dead to active nodes", "log10 E", "Ẽ = E / free parameters", "training accuracy",
        "validation accuracy", "training loss", "validation loss", "share of active nodes, all layers",
    ):  # fmt: skip
        assert title in text, title
    lines = text.splitlines()
    # One dead-nodes chart per hidden layer, titled with the width the model was built with.
    per_layer = [line for line in lines if line.startswith("dead nodes: ")]
    assert [line.rsplit("(", 1)[1] for line in per_layer] == [f"{width} nodes)" for width in HIDDEN]
    # Under each chart TensorBoard counts its series: one per run (parent + 3 branches).
    for title, series in (
        ("E: paths from dead to active nodes", 4),
        ("validation accuracy", 4),
        (per_layer[0], 4),
    ):
        after = lines[lines.index(title) :]
        assert next(line for line in after if line.startswith("Matches")) == f"Matches ({series})", title
    _show_outliers(browser)
    browser.save_screenshot(str(screenshots / "dashboard-custom-scalars.png"))


def test_hparams_has_a_row_per_run_named_with_its_settings_and_metrics(tensorboard, browser, screenshots):
    browser.set_window_size(2400, 600)  # wide enough for every column TensorBoard shows by default
    text = _open(browser, tensorboard, "hparams", "Trial ID")
    lines = text.splitlines()
    for column in (
        "branch/name", "branch/amount", "branch/pruning_fn", "emergence/threshold", "emergence/statistic",
        "summary/final_val_acc", "summary/best_val_acc", "summary/E_end", "summary/log10_E_end",
        "summary/relative_E_end",
    ):  # fmt: skip
        assert column in lines, column
    # The run uses Lightning's default logger: its placeholder (hp_metric = -1) hides no column.
    assert "hp_metric" not in text
    for trial, name in (("seed-0", "parent"), *((f"seed-0/branches/{name}", name) for name in BRANCHES)):
        row = lines.index(trial)  # the trial id, then its cells
        assert name in lines[row + 1 : row + 40], trial  # the branch/name cell
    assert "Number of matching session groups: 4" in text  # the parent and three branches
    # The table's columns: TensorBoard shows the first five hyperparameters (by name) and metrics.
    header = lines[lines.index("Trial ID") : lines.index("seed-0")]
    for column in (
        "branch/name",
        "branch/amount",
        "branch/pruning_fn",
        "summary/final_val_acc",
        "summary/log10_E_end",
    ):
        assert column in header, header
    browser.save_screenshot(str(screenshots / "dashboard-hparams.png"))
    browser.set_window_size(1400, 1300)


def test_scalars_dashboard_shows_every_run_and_the_emergence_tags(tensorboard, browser, screenshots):
    text = _open(browser, tensorboard, "scalars", "tag: emergence/E")
    lines = text.splitlines()
    # Groups (a tag's first path component) follow the tag filter, sorted by name: the end-of-run
    # `summary/*` scalars sort after `emergence`, so the first section a user sees is E's.
    first = lines.index("Filter tags (regular expressions supported)") + 1
    assert lines[first] == "emergence"
    assert "summary" in lines[first:] and "branch" not in lines[first:]
    for run in ("seed-0", *(f"seed-0/branches/{name}" for name in BRANCHES)):
        assert run in text, run
    for tag in ("emergence/E", "emergence/relative", "emergence/log10_E", "emergence/active_fraction"):
        assert f"tag: {tag}" in text, tag
    _show_outliers(browser)
    browser.save_screenshot(str(screenshots / "dashboard-scalars.png"))
