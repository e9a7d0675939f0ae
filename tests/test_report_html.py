"""The whole DAG as Snakemake runs it on the `ci` profile, and its HTML report as a reader opens it.

One Snakemake run in a temporary copy of the repository feeds three checks: the VQ-NQS trained by VMC was
profiled; every trained model is an MLflow logged model with its metrics linked; `snakemake --report` gives
a self-contained page that headless Chromium (Debian's chromium and chromedriver, which `make test` installs
where absent) renders with Table 1 and every figure, each loaded and captioned. The screenshots stay in the
copy's `results/screenshots/` (pytest's `--basetemp` chooses where) for a person to look at.
"""

import json
import os
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from vqnqs.report.captions import FIGURE_CAPTIONS, TABLE1_COLUMNS

from .test_pipeline import copy_repository, run

BIN = Path(sys.executable).parent
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# As the project's machines start Chromium: no sandbox (root), no background connections (closed network).
CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1600,1000",
)  # fmt: skip

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A copy of the repository after `snakemake --cores 2` and `snakemake --report results/report.html`."""
    root = tmp_path_factory.mktemp("snakemake")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        patch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.1")  # samples within the shortest run
        workdir = copy_repository(root / "repo")
        run(workdir, "snakemake", "--cores", "2")
        run(workdir, "snakemake", "--report", "results/report.html")
    return workdir


def test_the_vq_training_branch_is_profiled(finished):
    """reference -> train_vq(bits) -> profile_vq: a VQ-NQS trained by VMC, profiled beside the baseline."""
    job = yaml.safe_load((finished / "params.yaml").read_text())["train_vq_runs"][0]
    run_key, bits = job["run"], job["bits"]
    metrics = json.loads((finished / "data" / "train_vq" / run_key / f"bits{bits}" / "metrics.json").read_text())
    assert (metrics["model"], metrics["bits"]) == ("vq", bits)
    assert all(metrics[f"mean_{part}_s"] > 0 for part in ("sampling", "local_energy", "gradient", "sr", "upkeep"))
    table = pd.read_csv(finished / "data" / "profile_vq" / run_key / f"bits{bits}.csv")
    assert list(table["model"]) == ["baseline", "vq-nqs"] and table.loc[1, "bits"] == bits
    assert pd.isna(table.loc[0, "quantized_ops_savings"]) and table.loc[1, "quantized_ops_savings"] > 1


def test_every_model_is_an_mlflow_logged_model(finished):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{finished.parent / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(yaml.safe_load((finished / "params.yaml").read_text())["experiment"])
    models = {model.model_id: model for model in client.search_logged_models([experiment.experiment_id])}
    stage_dirs = [
        path.parent
        for stage in ("train", "distill", "train_vq")
        for path in finished.glob(f"data/{stage}/**/metrics.json")
    ]
    assert len(models) == len(stage_dirs)
    for stage_dir in stage_dirs:
        metrics = json.loads((stage_dir / "metrics.json").read_text())
        model = models[metrics["mlflow_model_id"]]
        linked = {metric.key: metric.value for metric in model.metrics}
        assert linked["final_rel_error"] == pytest.approx(metrics["rel_error"]), stage_dir
        if stage_dir.parts[-3] == "distill":  # the profile stage linked its savings to the student
            assert linked["vq-nqs_total_savings"] > 1, stage_dir
        training = client.get_run(model.source_run_id)
        # MLflow's system metrics, recorded: a percentage (its first sample can read 0 on a short run)
        assert 0 <= training.data.metrics["system/cpu_utilization_percentage"] <= 100


@pytest.fixture(scope="module")
def browser():
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip(f"{CHROMIUM} or {CHROMEDRIVER} absent: `make browser` installs Debian's chromium, chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def click(browser, element) -> None:
    """Click ``element`` through the page's own event handlers: a wide figure in the content panel can lie over
    the menu's buttons, which a pointer click at their coordinates would then hit instead."""
    browser.execute_script("arguments[0].click()", element)


def test_the_html_report_shows_table1_and_every_figure_in_chromium(finished, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    page, shots = finished / "results" / "report.html", finished / "results" / "screenshots"
    shots.mkdir()
    browser.get(page.as_uri())
    wait = WebDriverWait(browser, 30)
    wait.until(lambda b: b.execute_script("return typeof app !== 'undefined' && typeof results !== 'undefined'"))
    browser.save_screenshot(str(shots / "start.png"))
    # the workflow's description (its start may lie above the centred panel's top: read the page, not the view)
    assert "vqnqs: VQ-NQS" in browser.execute_script("return document.body.textContent")

    figures = sorted(path.stem for path in (finished / "results" / "figures").glob("*.png"))
    assert set(figures) <= set(FIGURE_CAPTIONS) and {"vmc_convergence", "error_vs_time"} <= set(figures)
    category = "0. Table 1 and figures"
    for name in [*figures, "table1"]:
        # as a reader does: the category in the menu, then the eye button of the result's row
        click(browser, browser.find_element(By.XPATH, f"//nav//*[normalize-space(text())='{category}']"))
        result = f"results/figures/{name}.png" if name != "table1" else "results/table1.html"
        row = f"//nav//td[normalize-space(text())='{result}']/ancestor::tr[1]"
        click(browser, browser.find_element(By.XPATH, f"{row}//a[@iconname='eye']"))
        if name == "table1":
            frame = wait.until(lambda b: b.find_element(By.TAG_NAME, "iframe"))
            browser.switch_to.frame(frame)
            headers = [cell.text for cell in browser.find_elements(By.TAG_NAME, "th")]
            rows = browser.find_elements(By.XPATH, "//table//tbody/tr")
            browser.switch_to.default_content()
            assert headers[: len(TABLE1_COLUMNS)] == list(TABLE1_COLUMNS) and len(rows) >= 2
        else:
            image = wait.until(lambda b: b.find_element(By.XPATH, "//div[contains(@class,'p-3')]/img"))
            wait.until(lambda b, image=image: b.execute_script("return arguments[0].complete", image))
            width = browser.execute_script("return arguments[0].naturalWidth", image)
            assert width > 100, f"{name}: the figure did not load"
        browser.save_screenshot(str(shots / f"{name}.png"))
        # its caption: the info button of the same row
        click(browser, browser.find_element(By.XPATH, f"//nav//*[normalize-space(text())='{category}']"))
        click(browser, browser.find_element(By.XPATH, f"{row}//a[@iconname='information-circle']"))
        caption = FIGURE_CAPTIONS[name] if name != "table1" else "Table 1: energies and local-energy cost"
        first_words = " ".join(caption.replace("`", "").split()[:6])
        wait.until(lambda b, words=first_words: words in b.find_element(By.TAG_NAME, "nav").text)
        browser.save_screenshot(str(shots / f"{name}_caption.png"))
