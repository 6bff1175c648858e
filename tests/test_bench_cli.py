"""Smoke test of `python -m fastattn.bench --quick`: it runs, writes its JSON, and a PNG when it can."""

import importlib.util
import json
import subprocess
import sys


def test_quick_bench_writes_json_and_plot(tmp_path):
    json_path = tmp_path / "bench.json"
    png_path = tmp_path / "bench.png"
    command = [sys.executable, "-m", "fastattn.bench", "--quick", "--no-numpy",
               "--json", str(json_path), "--plot", str(png_path)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert completed.returncode == 0, completed.stdout + completed.stderr

    report = json.loads(json_path.read_text())
    assert report["ceilings"]["gemm_gflops"] > 0
    assert report["ceilings"]["read_bandwidth_gbs"] > 0
    assert report["rows"]
    for row in report["rows"]:
        assert row["check"]["ok"]
        assert row["results"], row["label"]
        for result in row["results"].values():
            assert result["median_s"] > 0 and result["repeats"] >= 5
            assert result["gemm_fraction"] > 0
    assert "| case" in completed.stdout  # the Markdown table
    # The KVCache decode rows: dense float32, then each storage dtype, all checked against dense.
    names = [row["name"] for row in report["cache_rows"]]
    if "cpp" in report["implementations"]:
        assert names[:2] == ["dense float32 attention", "KVCache float32"] and names[-1] == "KVCache int8"
        assert "## KVCache decode" in completed.stdout
    for row in report["cache_rows"]:
        assert row["check"]["ok"], row
        assert row["median_s"] > 0 and row["bandwidth_gbs"] > 0 and row["over_dense_float32"] > 0
    checks = [row["check"] for row in report["reliability_rows"]]
    assert len(checks) == (4 if "cpp" in report["implementations"] else 0)
    assert not checks or len(checks) == 4 and any("2 threads" in c for c in checks) and any("subnormal" in c for c in checks)
    assert all(row["ratio"] > 0 for row in report["reliability_rows"])

    # The plot is written exactly when matplotlib can be imported (it is optional).
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None
    assert png_path.exists() == has_matplotlib
    if has_matplotlib:
        assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
