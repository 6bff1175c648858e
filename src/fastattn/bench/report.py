"""What the benchmark prints and writes: the header, the progress lines (one counter over every
measured row), the Markdown tables (throughput, decode bandwidth, training), the JSON report and
the PNG of GFLOP/s against sequence length (when matplotlib is installed)."""

from __future__ import annotations

import json
from typing import List

IMPLEMENTATION_LABELS = {"cpp": "fastattn C++", "numpy": "fastattn NumPy", "torch": "torch SDPA"}
IMPLEMENTATION_COLORS = {"cpp": "C0", "numpy": "C1", "torch": "C2"}  # the same in every plot
DEFAULT_PLOT_PATH = "fastattn-bench.png"


def is_plot_case(row: dict) -> bool:
    """The series the PNG shows: square, non-causal, B=1, H=8 (no GQA), D=64."""
    return (not row["causal"] and row["lq"] == row["lk"] > 1 and row["batch"] == 1
            and row["hq"] == row["hkv"] == 8 and row["d"] == 64)


def print_header(machine: dict) -> None:
    config = machine["fastattn_config"]
    if config["backend"] == "cpp":
        backend = (f"C++ backend, ISA {config['selected_isa']} "
                   f"(compiled: {', '.join(config['compiled_isas'])}; "
                   f"this CPU: {', '.join(config['supported_isas'])}), "
                   f"OpenMP {'on' if config['openmp'] else 'off'}")
    else:
        backend = f"NumPy backend only ({config.get('import_error')})"
    torch_threads = machine["torch_threads"] if machine["torch"] else "-"
    print("# fastattn benchmark")
    print(f"fastattn  {machine['fastattn']}, {backend}")
    print(f"CPU       {machine['cpu']} ({machine['logical_cpus']} logical CPUs)")
    print(f"versions  Python {machine['python']}, NumPy {machine['numpy']}, "
          f"torch {machine['torch'] or 'not installed'}")
    print(f"threads   fastattn {machine['fastattn_threads']}, torch {torch_threads}, "
          f"NumPy BLAS its own default")
    print(flush=True)


def format_ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 10 else f"{ms:.1f}"


def format_check(check: dict) -> str:
    if not check["max_abs_diff"]:  # no implementation ran
        return "-"
    worst = max(check["max_abs_diff"].values())
    return f"{'ok' if check['ok'] else 'FAIL'} {worst:.0e}"


class Progress:
    """One counter over every row the run measures, whatever part it belongs to:
    ``[ 7/15] text``. The total is known before the first row."""

    def __init__(self, total: int):
        self.total, self.done = total, 0

    def line(self, text: str) -> None:
        self.done += 1
        print(f"[{self.done:>{len(str(self.total))}}/{self.total}] {text}", flush=True)


def progress_text(row: dict) -> str:
    parts = [f"{row['label']:<28}"]
    for impl, result in row["results"].items():
        parts.append(f"{impl} {format_ms(result['median_s'])} ms ({result['gflops']:.1f} GFLOP/s)")
    if row["torch_over_cpp"] is not None:
        parts.append(f"torch/cpp {row['torch_over_cpp']:.2f}")
    parts.append(f"check {format_check(row['check'])}")
    return "  ".join(parts)


# The ceilings are this run's measurements of numpy.matmul and numpy.sum, the rates an ordinary
# NumPy program gets here, not hardware peaks: a kernel can pass them, and a cell that does says so.
OVER_CEILING_MARK = "*"
GEMM_NOTE = (f"{OVER_CEILING_MARK} over 100%: faster than numpy.matmul in this run's ceiling measurement, which "
             "is NumPy's BLAS (its own thread count and vector width), not this CPU's peak; fastattn's kernels "
             "use the CPU's widest ISA.")
READ_NOTE = (f"{OVER_CEILING_MARK} over 100%: more than one thread's numpy.sum read from a large array in this "
             "run's ceiling measurement; a call reads K and V with several threads, or from the caches when "
             "they fit.")


def percent(fraction: float) -> str:
    """A fraction of a ceiling as a table cell, marked when it exceeds the ceiling."""
    return f"{100 * fraction:.0f}%" + (OVER_CEILING_MARK if fraction > 1 else "")


def with_note(table: str, note: str) -> str:
    """The table, followed by the note when one of its cells carries the over-ceiling mark."""
    marked = any(cell.strip().endswith("%" + OVER_CEILING_MARK) for line in table.splitlines()
                 for cell in line.split("|"))
    return table + ("\n\n" + note if marked else "")


def markdown_table(headers: List[str], rows: List[List[str]]) -> str:
    """A Markdown table, columns padded to line up; the first column left-aligned, others right."""
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows)]

    def line(cells):
        padded = [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(["-" * (widths[0] + 2)] + ["-" * (w + 1) + ":" for w in widths[1:]]) + "|"
    return "\n".join([line(headers), rule] + [line(r) for r in rows])


def throughput_table(rows: List[dict], impls: List[str]) -> str:
    headers = ["case"]
    for impl in impls:
        headers += [f"{impl} ms", f"{impl} GFLOP/s", f"{impl} % GEMM"]
    if "cpp" in impls and "torch" in impls:
        headers.append("torch/cpp")
    headers.append("check (max abs diff)")
    body = []
    for row in rows:
        cells = [row["label"]]
        for impl in impls:
            result = row["results"][impl]
            cells += [format_ms(result["median_s"]), f"{result['gflops']:.1f}", percent(result["gemm_fraction"])]
        if "cpp" in impls and "torch" in impls:
            cells.append(f"{row['torch_over_cpp']:.2f}")
        cells.append(format_check(row["check"]))
        body.append(cells)
    return with_note(markdown_table(headers, body), GEMM_NOTE)


def decode_table(rows: List[dict], impls: List[str]) -> str:
    headers = ["case", "K+V MiB"]
    for impl in impls:
        headers += [f"{impl} GB/s", f"{impl} % of read BW"]
    body = []
    for row in rows:
        cells = [row["label"], f"{row['kv_bytes'] / 2 ** 20:.1f}"]
        for impl in impls:
            result = row["results"][impl]
            cells += [f"{result['bandwidth_gbs']:.1f}", percent(result["bandwidth_fraction"])]
        body.append(cells)
    return with_note(markdown_table(headers, body), READ_NOTE)


def print_training_table(rows: List[dict], ceilings: dict) -> None:
    impls = list(rows[0]["results"])
    print(f"## Training: forward + backward (float32; FLOPs = 14·B·H·L²·D, halved for causal; "
          f"% GEMM: of numpy.matmul's {ceilings['gemm_gflops']:.0f} GFLOP/s)")
    print()
    print(throughput_table(rows, impls))
    print(flush=True)


def print_tables(rows: List[dict], impls: List[str], ceilings: dict) -> None:
    print()
    ratio_note = "; torch/cpp > 1: fastattn is faster" if {"cpp", "torch"} <= set(impls) else ""
    print(f"## Throughput (float32; median time; FLOPs = 4·B·Hq·Lq·Lk·D, halved for causal; "
          f"% GEMM: of numpy.matmul's {ceilings['gemm_gflops']:.0f} GFLOP/s{ratio_note})")
    print()
    print(throughput_table(rows, impls))
    decode_rows = [row for row in rows if row["lq"] == 1]
    if decode_rows:
        print()
        print(f"## Decode bandwidth (bytes of K and V read / time; "
              f"read bandwidth {ceilings['read_bandwidth_gbs']:.1f} GB/s, one thread)")
        print()
        print(decode_table(decode_rows, impls))
    print(flush=True)


def write_json(path: str, report: dict) -> None:
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {path}", flush=True)


def write_plot(path: str, rows: List[dict], impls: List[str], ceilings: dict, machine: dict) -> None:
    """GFLOP/s against L for the plot series, one line per implementation, GEMM ceiling dashed."""
    try:
        import matplotlib
    except ImportError:
        print("note: matplotlib is not installed; no plot (pip install matplotlib)", flush=True)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = sorted((row for row in rows if is_plot_case(row)), key=lambda row: row["lq"])
    if not series:
        print("note: no square non-causal B=1 H=8 D=64 shapes were run; no plot", flush=True)
        return
    lengths = [row["lq"] for row in series]
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    for impl in impls:
        ax.plot(lengths, [row["results"][impl]["gflops"] for row in series], marker="o",
                label=IMPLEMENTATION_LABELS[impl], color=IMPLEMENTATION_COLORS[impl])
    n = ceilings["gemm_size"]
    ax.axhline(ceilings["gemm_gflops"], linestyle="--", color="gray",
               label=f"float32 GEMM ceiling (numpy.matmul {n}x{n})")
    ax.set_xscale("log", base=2)
    ax.minorticks_off()
    ax.set_xticks(lengths)
    ax.set_xticklabels([str(length) for length in lengths])
    ax.set_ylim(0, 1.1 * max(ax.get_ylim()[1], ceilings["gemm_gflops"]))  # room above the ceiling
    ax.set_xlabel("sequence length L (Lq = Lk)")
    ax.set_ylabel("GFLOP/s")
    ax.set_title("Attention throughput, float32, non-causal, B=1 H=8 D=64\n"
                 f"{machine['cpu']}, fastattn threads: {machine['fastattn_threads']}")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)  # below, clear of the lines
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    print(f"wrote {path}", flush=True)
