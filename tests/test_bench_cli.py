"""Smoke test of `python -m fastattn.bench --quick`: it runs, writes its JSON, and a PNG when it can;
it grades no speed target on its tiny shapes, and its progress counter runs 1..N once."""

import dataclasses
import importlib.util
import json
import re
import subprocess
import sys

import pytest


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
    for row in report["rows"] + report["training_rows"]:
        # Checked against the float64 oracle even with --no-numpy and no torch.
        assert row["check"]["ok"] and row["check"]["reference"] == "float64 NumPy, batch 0, head 0"
        assert set(row["check"]["max_abs_diff"]) == set(row["results"])
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
    assert len(checks) == (6 if "cpp" in report["implementations"] else 0)
    # Smoke shapes: the speed targets are not graded, and nothing reads as a missed target.
    assert report["graded"] is False and all(row["ok"] is None for row in report["reliability_rows"])
    assert "--quick: a smoke test on tiny shapes" in completed.stdout
    assert "| NO |" not in completed.stdout and "MISSED" not in completed.stdout
    # One progress counter over every measured row: [1/N] ... [N/N], the same N throughout.
    counters = re.findall(r"^\[ *(\d+)/(\d+)\] ", completed.stdout, re.M)
    total = len(report["rows"]) + len(report["training_rows"]) + len(report["cache_rows"]) + len(checks)
    assert counters == [(str(i), str(total)) for i in range(1, total + 1)], counters
    assert not checks or len(checks) == 6 and any("2 threads" in c for c in checks) and any("subnormal" in c for c in checks)
    assert all(row["ratio"] > 0 for row in report["reliability_rows"])

    # The plot is written exactly when matplotlib can be imported (it is optional).
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None
    assert png_path.exists() == has_matplotlib
    if has_matplotlib:
        assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_output_check_can_fail():
    """check_outputs compares every implementation with the float64 oracle's first head: a wrong
    value there (or a wrong gradient) fails the row, and the bench's exit status with it."""
    import numpy as np

    import fastattn
    from fastattn.bench.runners import check_outputs, first_head

    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 3, 8, 4)).astype(np.float32) for _ in range(3))
    want = (fastattn.attention(*first_head(q, k, v), backend="numpy"),)
    good = fastattn.attention(q, k, v)
    assert check_outputs({"cpp": good}, want)["ok"]
    bad = good.copy()
    bad[0, 0, 5, 1] += 1e-2
    check = check_outputs({"cpp": good, "torch": bad}, want)
    assert not check["ok"] and check["max_abs_diff"]["torch"] > 9e-3 > check["max_abs_diff"]["cpp"]
    # Gradients: a tuple per implementation, compared array by array.
    grads = tuple(x[:1, :1].astype(np.float64) for x in (q, k, v))
    wrong = (q, k, v * 2)
    assert not check_outputs({"cpp": wrong}, grads)["ok"]
    assert check_outputs({"cpp": (q, k, v)}, grads)["ok"]


def test_check_speed_sets_the_exit_status(monkeypatch, tmp_path, capsys):
    """The reliability timings are measurements: a missed target fails the run only with
    --check-speed (here the timings are replaced by a missed and a met one)."""
    import fastattn
    from fastattn.bench import cli, reliability

    if fastattn.show_config()["backend"] != "cpp":
        pytest.skip("no timings without the C++ extension")
    missed = dict(check="2 threads (fake)", baseline="serial", baseline_ms=2.0, measured_ms=2.0, ratio=1.0,
                  ratio_name="speedup", target=">= 1.7", ok=False)
    met = dict(missed, check="subnormal (fake)", ok=True)
    monkeypatch.setattr(reliability, "measure_gil", lambda *args: [missed])
    monkeypatch.setattr(reliability, "measure_denormals", lambda *args: [met])
    monkeypatch.setattr(cli, "FULL", dataclasses.replace(cli.QUICK, graded=True))  # the full plan, in seconds
    monkeypatch.chdir(tmp_path)
    args = ["--no-numpy", "--no-plot"]
    assert cli.main(args) == 0
    assert "| NO |" in capsys.readouterr().out  # printed, but not fatal
    assert cli.main(args + ["--check-speed"]) == 1
    assert "SPEED TARGET MISSED (--check-speed): 2 threads (fake)" in capsys.readouterr().out


def test_check_speed_refuses_the_smoke_shapes(capsys):
    from fastattn.bench import cli

    with pytest.raises(SystemExit) as exit_:
        cli.parse_args(["--quick", "--check-speed"])
    assert exit_.value.code == 2 and "--check-speed grades the full run's shapes" in capsys.readouterr().err


def test_a_percentage_over_the_ceiling_is_marked_and_explained():
    """% GEMM is of numpy.matmul's measured rate, not a hardware peak: a cell over 100% carries a
    mark, and its table the note that says why it can happen."""
    from fastattn.bench.report import GEMM_NOTE, throughput_table

    def row(fraction):
        return {"label": f"case {fraction}", "torch_over_cpp": None, "check": {"max_abs_diff": {}},
                "results": {"cpp": {"median_s": 1e-3, "gflops": 100 * fraction, "gemm_fraction": fraction}}}

    under = throughput_table([row(0.9)], ["cpp"])
    assert "90%" in under and GEMM_NOTE not in under
    over = throughput_table([row(0.9), row(1.02)], ["cpp"])
    assert "102%*" in over and over.endswith(GEMM_NOTE) and "not this CPU's peak" in GEMM_NOTE
