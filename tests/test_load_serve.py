"""scripts/load_serve.py --quick: a few seconds per level, then the report's fields.

A smoke run on the kitchenware model: the script starts `keras-xception
serve` and the naive server, loads them, and writes its report. The figures
are not judged (timings never sit in unit tests): only that every field is
there, every request was answered, and the soak read the server's memory.
"""

import json
import pathlib
import subprocess
import sys

import pytest

from tests import servers

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_quick_run_reports_every_field(kitchen_model, tmp_path):
    model = servers.save_kitchen(kitchen_model, tmp_path,
                                 ["cup", "fork", "glass", "knife", "plate", "spoon"])
    report_path = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "load_serve.py"), "--model", str(model),
         "--precision", "float32", "--quick", "--seconds", "1", "--json", str(report_path)],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert {"date", "machine", "command", "offline", "serve", "soak", "naive",
            "ratios"} <= set(report)
    assert report["offline"]["images_per_s"] > 0 and report["offline"]["batch_size"] == 8
    assert report["offline"]["batch1_latency_ms"] > 0
    assert [r["concurrency"] for r in report["serve"]] == [1, 4]
    assert [r["concurrency"] for r in report["naive"]] == [4]
    for level in report["serve"] + report["naive"] + [report["soak"]]:
        assert level["requests"] > 0 and level["errors"] == {}, level
        assert level["p50_ms"] <= level["p95_ms"] <= level["p99_ms"]
        assert level["requests_per_s"] > 0
    assert report["soak"]["requests"] == 60 and report["soak"]["concurrency"] == 4
    assert report["soak"]["at_end_mb"] > 0 and "rss_growth_mb" in report["soak"]
    assert set(report["ratios"]) == {"concurrency", "serve_over_offline",
                                     "serve_over_naive", "c1_p50_minus_batch1_ms"}
    assert report["ratios"]["serve_over_naive"] is not None
    # The table on stdout names the ratios.
    assert "serve/offline" in done.stdout and "| serve | 1 |" in done.stdout
