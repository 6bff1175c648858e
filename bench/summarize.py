"""Print Markdown tables from a pytest-benchmark JSON file written by the suites in bench/.

Usage: python bench/summarize.py BENCH.json

test_bench_attention.py: one row per shape + causal mode; median milliseconds and GFLOP/s per
implementation, and the ratios torch/cpp and numpy/cpp of the medians (> 1 means fastattn's C++
kernel is faster). test_bench_training.py adds rows of pass "fwd+bwd" (forward + backward).
test_bench_features.py: one row per variant, its median and its ratio to its group's baseline;
and the peak-memory measurement.
"""

import json
import sys

IMPLS = ("cpp", "numpy", "torch")


def load(path):
    """{(B, H, L, D, causal, pass): {impl: (median_s, gflops)}}, from the benchmarks' extra_info;
    pass is "fwd" or, for test_bench_training.py, "fwd+bwd"."""
    with open(path) as f:
        data = json.load(f)
    rows = {}
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        if "impl" not in info:
            continue
        key = (info["B"], info["H"], info["Lq"], info["D"], info["causal"], info.get("pass", "fwd"))
        median = bench["stats"]["median"]
        rows.setdefault(key, {})[info["impl"]] = (median, info["flops"] / median / 1e9)
    return data.get("machine_info", {}), rows


def fmt(x, spec):
    return "–" if x is None else format(x, spec)


def main(argv):
    if len(argv) != 2:
        sys.exit(__doc__)
    machine, rows = load(argv[1])
    env = machine.get("bench_environment", {})
    if env:
        print(", ".join(f"{k}={v}" for k, v in env.items()) + "\n")

    if not rows:
        print_features(argv[1])
        return
    print("| B | H | L | D | causal | pass | " + " | ".join(f"{i} ms" for i in IMPLS) + " | "
          + " | ".join(f"{i} GFLOP/s" for i in IMPLS) + " | torch/cpp | numpy/cpp |")
    print("|" + "---:|" * 4 + ":---:|:---:|" + "---:|" * (2 * len(IMPLS) + 2))
    for key in sorted(rows):
        res = rows[key]
        ms = {i: res[i][0] * 1e3 if i in res else None for i in IMPLS}
        gf = {i: res[i][1] if i in res else None for i in IMPLS}
        ratio = {i: ms[i] / ms["cpp"] if ms[i] and ms["cpp"] else None for i in ("torch", "numpy")}
        cells = [*map(str, key[:4]), "yes" if key[4] else "no", key[5]]
        cells += [fmt(ms[i], ".2f") for i in IMPLS] + [fmt(gf[i], ".1f") for i in IMPLS]
        cells += [fmt(ratio["torch"], ".2f"), fmt(ratio["numpy"], ".2f")]
        print("| " + " | ".join(cells) + " |")
    print_features(argv[1])


def features(path):
    """Rows of the feature suite: (case, variant, median_s, baseline median_s)."""
    with open(path) as f:
        benches = [b for b in json.load(f)["benchmarks"] if b["extra_info"].get("suite") == "features"]
    base = {b["extra_info"]["case"]: b["stats"]["median"] for b in benches if b["extra_info"]["baseline"]}
    return [(b["extra_info"]["case"], b["extra_info"]["variant"], b["stats"]["median"],
             base.get(b["extra_info"]["case"])) for b in benches]


def print_features(path):
    rows = features(path)
    if rows:
        print("\n| case | variant | median ms | time / baseline | speed-up vs baseline |")
        print("|---|---|---:|---:|---:|")
        for case, variant, median, base in rows:
            ratio = median / base if base else None
            print(f"| {case} | {variant} | {median * 1e3:.1f} | {fmt(ratio, '.3f')} | "
                  f"{fmt(1 / ratio if ratio else None, '.2f')} |")
    with open(path) as f:
        for b in json.load(f)["benchmarks"]:
            info = b["extra_info"]
            if info.get("suite") == "memory":
                print(f"\n{b['group']}: peak extra memory {info['extra_mib']:.1f} MiB "
                      f"(output {info['out_mib']:.1f} MiB; target <= output + 16 MiB)")


if __name__ == "__main__":
    main(sys.argv)
