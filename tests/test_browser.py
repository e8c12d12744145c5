"""What a user sees in the MLflow UI, checked in a real browser (headless Chromium driven
by Selenium).

A small grid sweep logs into a SQLite store: four trials, one of which diverges (init_scale
4 with neither normalisation nor clipping, as in ``test_e2e_sweep``). A plain ``mlflow
server`` (no login, as ``gradtune ui`` serves) opens that store on 127.0.0.1, and Chromium
opens the experiment's runs table and the parent run's ``report.html``.

How MLflow 3.17's UI shows them (what the checks below rely on):

- the runs table is an ag-grid; each run is a row whose ``row-id`` is its run id, and the
  left-pinned part of the row holds the run name (a link to the run) and the status icon
  (a green check for FINISHED, a red cross for FAILED). Child runs are folded under their
  parent until its expander button is clicked.
- ``/get-artifact?path=report.html&run_uuid=...`` serves the report as an attachment (the
  browser downloads it); the UI's route ``#/experiments/<id>/runs/<run>/artifacts/report.html``
  renders it in a sandboxed ``iframe.mlflow-html-iframe`` with scripts on. That route is the
  one a user clicks through, so the report is checked there.

Every wait polls the page (no fixed sleeps) and, when it gives up, says what the page
showed. Screenshots land in the test's temporary directory and, when
``GRADTUNE_SCREENSHOTS=<dir>`` is set, in that directory too. The test is skipped only when
/usr/bin/chromium or /usr/bin/chromedriver is missing (``.ci/install-browser`` installs
them). Selenium is pointed at /usr/bin/chromedriver, so Selenium Manager downloads nothing.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from selenium import webdriver
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from gradtune import spec as spec_mod
from gradtune import sweep
from tests._servers import MlflowServer, kill_sessions

pytestmark = pytest.mark.e2e

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
WAIT = 90.0  # seconds: a first page load parses MLflow's several-MB JS bundle, on 2 busy cores
EXPERIMENT = "browser"
# The naming contract of a finished trial's run: its outcome first, then its settings.
MARKED = ("diverged", "pruned", "failed")
SEP = " · "


# ------------------------------------------------------------------------ fixtures
@dataclass(frozen=True)
class Sweep:
    tracking_uri: str
    experiment_id: str
    parent_id: str
    children: dict[str, Any]  # run id -> mlflow Run, as the store has it
    empty_experiment_id: str  # an experiment without runs, for the checks' own test


@pytest.fixture(scope="module")
def logged(ray_session, tmp_path_factory) -> Sweep:
    root = tmp_path_factory.mktemp("browser-sweep")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    # Artifacts beside the store (an experiment made by the sweep would put them in ./mlruns).
    client.create_experiment(EXPERIMENT, artifact_location=str(root / "artifacts"))
    empty_id = client.create_experiment("empty", artifact_location=str(root / "artifacts-empty"))
    spec = spec_mod.load(None, {
        "name": EXPERIMENT,
        "search.sampler": "grid",
        "search.space": {"init_scale": [1.0, 4.0], "norm": ["none", "layer"],
                         "clip_method": "none", "batch_size": 32},
        "search.max_concurrent": 2,
        "workload.options": {"depth": 20, "width": 32, "activation": "relu"},
        "training.steps": 40,
        "training.report_every": 5,
        "tracking.uri": uri,
        "storage": str(root / "ray_results"),
    })
    result = sweep.run(spec)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    kids = {r.info.run_id: r for r in runs
            if r.data.tags.get("mlflow.parentRunId") == result.parent_run_id}
    outcomes = sorted(r.data.tags.get("gradtune.outcome", "?") for r in kids.values())
    # The page checks below need both kinds of run to tell them apart.
    assert len(kids) == 4 and "diverged" in outcomes and "completed" in outcomes, outcomes
    return Sweep(uri, exp.experiment_id, result.parent_run_id, kids, empty_id)


@pytest.fixture(scope="module")
def server(logged, tmp_path_factory):
    root = tmp_path_factory.mktemp("browser-server")
    with MlflowServer(root, logged.tracking_uri, auth_db_uri=None) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (apt-get install chromium "
                    "chromium-driver; .ci/install-browser does it in CI)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1600,1000"):
        options.add_argument(arg)
    log = tmp_path_factory.mktemp("browser") / "chromedriver.log"
    # chromedriver (and the Chromium it starts) in a session of their own, so that stopping
    # them touches nothing else on the machine.
    service = Service(str(CHROMEDRIVER), log_output=str(log),
                      popen_kw={"start_new_session": True})
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        try:
            driver.quit()
        finally:
            if service.process is not None:
                kill_sessions([service.process.pid], grace=2.0)


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Callable[[Any, str], Path]:
    """``shots(driver, name)``: a PNG of the page, in the tmp dir and $GRADTUNE_SCREENSHOTS."""
    folder = tmp_path_factory.mktemp("screenshots")
    extra = os.environ.get("GRADTUNE_SCREENSHOTS")

    def take(driver, name: str) -> Path:
        path = folder / f"{name}.png"
        driver.save_screenshot(str(path))
        if extra:
            Path(extra).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(extra) / path.name)
        return path

    return take


# ------------------------------------------------------------------ reading the page
def wait_for(driver, what: str, look: Callable[[], tuple[bool, Any]], timeout: float) -> Any:
    """Poll ``look()`` (-> (done, seen)) until done; on timeout an AssertionError that says
    what was seen last."""
    last: list[Any] = [None]

    def done(_driver) -> bool:
        ok, last[0] = look()
        return ok

    try:
        WebDriverWait(driver, timeout, poll_frequency=0.25).until(done)
    except TimeoutException:
        raise AssertionError(f"{what}: not there after {timeout:.0f}s at {driver.current_url}; "
                             f"the page showed {last[0]!r}") from None
    return last[0]


_ROWS_JS = """
return [...document.querySelectorAll('.ag-pinned-left-cols-container .ag-row[row-id]')]
  .map(row => {
    const link = row.querySelector('a[href*="/runs/"]');
    const icon = row.querySelector('[col-id="runDateAndNestInfo"] [role="img"]');
    return [row.getAttribute('row-id'), link && link.textContent,
            icon && getComputedStyle(icon).color];
  });
"""


@dataclass(frozen=True)
class Row:
    name: str
    status_rgb: tuple[int, ...]  # the colour of the status icon


def runs_url(base: str, experiment_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def load(driver, url: str) -> None:
    """A fresh page load (not a route change inside the app): nothing of the page before
    can satisfy a check of this one."""
    driver.get("about:blank")
    driver.get(url)


def runs_table(driver, url: str, parent_id: str, child_ids: set[str],
               timeout: float = WAIT) -> dict[str, Row]:
    """Open ``url`` (an experiment's runs table), unfold the parent run, and return the rows
    shown (run id -> name and status colour) once the parent and every child are there."""
    load(driver, url)
    clicked = [-math.inf]  # when the parent's expander was last clicked

    def look() -> tuple[bool, Any]:
        rows = {rid: (name, color) for rid, name, color in driver.execute_script(_ROWS_JS)}
        # Unfold the parent; again if, 5 s after a click, no child shows (a click that came
        # before React wired the button up does nothing).
        if (parent_id in rows and not child_ids & set(rows)
                and time.monotonic() - clicked[0] > 5.0):
            if driver.execute_script(
                    "const b = document.querySelector('.ag-pinned-left-cols-container "
                    f".ag-row[row-id=\"{parent_id}\"] button[data-component-id*=\"runnamecell\"]');"
                    "if (b) { b.click(); } return !!b;"):
                clicked[0] = time.monotonic()
        return parent_id in rows and child_ids <= set(rows), rows

    rows = wait_for(driver, f"the runs table with run {parent_id} and its {len(child_ids)} "
                    "child runs", look, timeout)
    return {rid: Row(name or "", _rgb(color)) for rid, (name, color) in rows.items()}


def _rgb(css: str | None) -> tuple[int, ...]:
    return tuple(int(v) for v in re.findall(r"\d+", css or "")[:3])


def is_red(rgb: tuple[int, ...]) -> bool:
    """MLflow's FAILED icon is its danger colour (rgb(200, 45, 76) in 3.17), FINISHED green."""
    return len(rgb) == 3 and rgb[0] > 150 and rgb[0] > 2 * rgb[1]


_PLOTS_JS = """
return [...document.querySelectorAll('.js-plotly-plot')].map(el => ({
  width: el.offsetWidth, height: el.offsetHeight,
  svgs: el.querySelectorAll('svg.main-svg').length,
  traces: (el.data || []).length,
  points: (el.data || []).reduce((n, t) =>
      n + ['x', 'y', 'z', 'values', 'dimensions'].reduce((m, k) =>
          m + ((t[k] && t[k].length) || 0), 0), 0),
}));
"""


def report_plots(driver, base: str, experiment_id: str, run_id: str, path: str = "report.html",
                 timeout: float = WAIT) -> list[dict[str, int]]:
    """Open the run's HTML artifact in the UI and return its plotly plots (size, rendered
    SVGs, traces and data points), once at least one has been drawn."""
    load(driver, f"{base}/#/experiments/{experiment_id}/runs/{run_id}/artifacts/"
                 f"{urllib.parse.quote(path)}")

    def look() -> tuple[bool, Any]:
        driver.switch_to.default_content()
        frames = driver.find_elements(By.CSS_SELECTOR, "iframe.mlflow-html-iframe")
        if not frames:
            body = driver.find_element(By.TAG_NAME, "body").text
            return False, f"no HTML artifact frame; page text: {body[:300]!r}"
        try:
            driver.switch_to.frame(frames[0])
            plots = driver.execute_script(_PLOTS_JS)
        except WebDriverException as exc:  # the frame was replaced while React rendered
            return False, f"frame not readable yet: {exc.msg}"
        finally:
            driver.switch_to.default_content()
        return bool(plots) and all(p["svgs"] for p in plots), plots

    return wait_for(driver, f"plotly plots in {path} of run {run_id}", look, timeout)


def tidy(driver, name_width: int = 360) -> None:
    """Before a screenshot: close MLflow's assistant side panel (open on a first visit) and,
    on a runs table, widen the run-name column so that whole names show."""
    driver.execute_script(
        "document.querySelectorAll('button[data-component-id="
        "\"mlflow.assistant.chat_panel.close\"]').forEach(b => b.click());")
    header = driver.find_elements(By.CSS_SELECTOR, '.ag-header-cell[col-id^="attributes.`Run Name"]')
    if header and header[0].size["width"] < name_width:
        handle = header[0].find_element(By.CSS_SELECTOR, ".ag-header-cell-resize")
        ActionChains(driver).drag_and_drop_by_offset(
            handle, name_width - header[0].size["width"], 0).perform()


# ------------------------------------------------------------------------ the tests
def test_the_runs_table_shows_every_trial_by_name(browser, logged, server, shots):
    rows = runs_table(browser, runs_url(server.url, logged.experiment_id), logged.parent_id,
                      set(logged.children))
    tidy(browser)
    shots(browser, "runs-table")
    assert rows[logged.parent_id].name.startswith(f"sweep {EXPERIMENT} ")
    for run_id, run in logged.children.items():
        shown = rows[run_id].name
        assert shown == run.info.run_name, (shown, run.info.run_name)
        assert re.search(r"norm=\S+ clip=\S+ init=\S+ bs=\d+$", shown), shown


def test_a_diverged_run_is_marked_by_name_and_failed_status(browser, logged, server, shots):
    """The contract (issue 13): a finished trial's run name starts with its outcome when it
    is not ``completed`` (``diverged · norm=...``), and a diverged run ends FAILED, which
    the table shows as a red status icon. Completed runs carry no prefix and a green one.

    Fails until the tracking change that renames and fails such runs is merged: today a
    diverged run is named ``norm=... clip=...`` like the others and ends FINISHED."""
    rows = runs_table(browser, runs_url(server.url, logged.experiment_id), logged.parent_id,
                      set(logged.children))
    tidy(browser)
    shots(browser, "runs-table-marked")
    # name shown -> (outcome tag, status in the store, status icon colour shown)
    seen = {rows[r].name: (run.data.tags["gradtune.outcome"], run.info.status, rows[r].status_rgb)
            for r, run in logged.children.items()}
    for name, (outcome, _, rgb) in seen.items():
        if outcome in MARKED:
            assert name.startswith(outcome + SEP), f"{outcome} run not marked by name: {seen}"
        else:
            assert not name.startswith(tuple(o + SEP for o in MARKED)), seen
        if outcome == "diverged":
            assert is_red(rgb), f"diverged run's status icon is not the FAILED one: {seen}"
        if outcome == "completed":
            assert not is_red(rgb), seen


def test_the_sweep_report_opens_with_its_plots(browser, logged, server, shots):
    """The parent run's ``report.html`` (self-contained plotly) opens in the UI and every
    plot in it is drawn, with data."""
    artifacts = [a.path for a in MlflowClient(logged.tracking_uri).list_artifacts(logged.parent_id)]
    assert "report.html" in artifacts, f"the parent run has no report.html, only {artifacts}"
    plots = report_plots(browser, server.url, logged.experiment_id, logged.parent_id)
    tidy(browser)
    shots(browser, "report")
    for plot in plots:
        assert plot["width"] > 100 and plot["height"] > 100, plots
        assert plot["traces"] >= 1 and plot["points"] >= 1, plots


def test_the_page_checks_fail_on_the_wrong_page(browser, logged, server):
    """The checks above are not vacuous: the traces page, an experiment without runs and a
    page without plots (the ``spec.yaml`` artifact) all fail them."""
    kids = set(logged.children)
    traces = f"{server.url}/#/experiments/{logged.experiment_id}/traces"
    with pytest.raises(AssertionError, match="the runs table"):
        runs_table(browser, traces, logged.parent_id, kids, timeout=10)
    with pytest.raises(AssertionError, match="the runs table"):
        runs_table(browser, runs_url(server.url, logged.empty_experiment_id), logged.parent_id,
                   kids, timeout=10)
    with pytest.raises(AssertionError, match="plotly plots"):
        report_plots(browser, server.url, logged.experiment_id, logged.parent_id,
                     path="spec.yaml", timeout=10)
    assert not is_red((39, 124, 67)) and is_red((200, 45, 76))  # FINISHED, FAILED in 3.17
