"""The linear-cost benchmark end to end on tiny chains: it trains by VMC, measures every engine, writes the
lists, fits and verdicts the issue names, and the report's section reads them back."""

import json
import subprocess
import sys
from pathlib import Path

from vqnqs.report.linear_cost import linear_cost_section

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_linear_cost_benchmark_feeds_the_report(tmp_path):
    results = tmp_path / "results" / "linear_cost_d8"
    command = [
        sys.executable, str(REPO_ROOT / "benchmarks" / "linear_cost.py"), "--models", "baseline,position",
        "--sizes", "8,16", "--d-model", "8", "--bits", "6", "--window", "2", "--first-steps", "2", "--steps", "1",
        "--n-samples", "16", "--batch", "8", "--dense-samples", "2", "--repeats", "1", "--out-dir", str(results),
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    written = json.loads((results / "linear_cost.json").read_text())
    assert written["sizes"] == [8, 16]
    for model in ("baseline", "position"):
        for engine in ("dense", "dedup", "incremental"):
            lists = written[f"{model}/{engine}"]
            for key in ("forwards_per_sample", "rows_per_config", "seconds_per_sample", "rel_error", "train_seconds"):
                assert len(lists[key]) == 2, key
            assert set(written["fits"][f"{model}/{engine}"]) >= {"forwards_per_sample", "seconds_per_sample"}
        # dense runs every connected configuration: N + 1 forward passes on the open chain
        assert written[f"{model}/dense"]["forwards_per_sample"] == [9.0, 17.0]
    assert written["records"]["position/16"]["model"]["attention"] == "position"
    assert written["records"]["position/16"]["model"]["window"] == 2
    assert {"forwards_at_largest_le_3", "rows_exponent_le_0.2", "x10_faster_than_dense"} <= set(written["verdicts"])
    assert not (tmp_path / "mlflow.db").exists()  # the benchmark's runs stay in its own store

    out = tmp_path / "report"
    (out / "figures").mkdir(parents=True)
    lines, pictures = linear_cost_section(out, out / "figures", tmp_path / "results")
    assert any("linear_cost.py --models baseline,position" in line for line in lines)
    (path,) = pictures.values()
    assert (out / path).is_file() and (out / "linear_cost.csv").is_file()
    assert linear_cost_section(out, out / "figures", tmp_path / "nowhere") == ([], {})
