"""The engines' scaling study: the benchmark script's output, read back by the report section."""

import json
import subprocess
import sys
from pathlib import Path

from vqnqs.report.incremental import incremental_section

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_scaling_benchmark_feeds_the_report(tmp_path):
    results = tmp_path / "results"
    command = [
        sys.executable, str(REPO_ROOT / "benchmarks" / "incremental_scaling.py"), "--sizes", "8,16", "--batch", "4",
        "--dense-samples", "1", "--d-model", "16", "--n-heads", "2", "--n-blocks", "1", "--check-samples", "2",
        "--time", "--repeats", "1", "--threads", "1", "--out-dir", str(results),
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
    written = json.loads((results / "incremental_tfim_untrained_d16_6bits.json").read_text())
    record = written["records"][-1]
    assert set(record["flops_per_sample"]) == set(record["seconds_per_sample"]) == {"dense", "dedup", "incremental"}
    assert record["float32_check"]["codes_identical"] >= 0.999
    assert set(written["fits"]["flops_per_sample"]["total"]) == {"dense", "dedup", "incremental"}

    out = tmp_path / "report"
    (out / "figures").mkdir(parents=True)
    lines, pictures = incremental_section(out, out / "figures", results, "incremental_tfim_untrained_d16_*bits.json")
    assert any("incremental_scaling.py --sizes 8,16" in line for line in lines)
    (path,) = pictures.values()
    assert (out / path).is_file() and (out / "incremental_scaling.csv").is_file()
    assert incremental_section(out, out / "figures", tmp_path / "nowhere") == ([], {})
