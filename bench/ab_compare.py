"""A/B speed comparison of two fastattn builds installed in two virtual environments.

Runs the same attention cases under two interpreters (a baseline build and a new one) in a
single run, interleaved request by request, so that the noise of a shared machine (other
builds, frequency changes, thermal drift) hits both sides alike::

    python bench/ab_compare.py --base /work/baseline/.venv/bin/python \\
        --new /path/to/other/.venv/bin/python [--reps 15] [--threads 2] [--quick] \\
        [--filter bwd] [--markdown out.md]

How it works: the driver (standard library only) starts this file once per interpreter in
``--worker`` mode; each worker speaks JSON lines over stdin/stdout. For every case both workers
build identical inputs (same seed, standard normal float32, then cast), warm up, and then time
ONE repetition per request (``time.perf_counter`` around the call). The driver alternates
base/new (ABAB…, the order swapped every other round to cancel drift), takes ``--reps`` timings
per side and reports medians. Cases: forward / backward (``attention_backward`` alone, its
``out, lse`` from one forward at setup) × float32 / bfloat16 × D ∈ {64, 128} × causal or not,
shape (B, H, L, D) = (1, 8, 1024, D), L = 256 with ``--quick``; ``--decode`` adds decoding
(Lq = 1, 32 query heads on 8 K/V heads, Lk = 4096, D = 128, B = 1 and 4).

``--cache`` adds decoding over a ``KVCache`` (float32, bfloat16, int8 storage; B = 8); ``--small``
adds short calls: (32, 12, 16, 32), a MiniLM sentence batch, and (1, 8, 64, 64).

Columns: medians in ms, new/base (ratio of medians), noise = IQR/median of each side, the
q1–q3 of the per-round paired ratios new/base (a ``*`` marks a case where that whole range is
above or below 1: a difference beyond the noise), and whether both builds gave bitwise equal
results (else the max abs difference). PYTHONPATH is removed from the workers' environment so
that each imports the fastattn installed in its own venv (the header shows which one), and
OMP_WAIT_POLICY defaults to PASSIVE there, so that the OpenMP threads of the idle worker do not
spin on the cores the timed one needs (set it in the environment to override).
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time

SEED = 1234


# ----------------------------------------------------------------------------- worker side
def worker():
    import gc, traceback
    import numpy as np
    import fastattn
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything printed by libraries goes to stderr, never into the protocol
    state = {}

    def setup(c):
        state.clear()
        gc.collect()
        dtype = np.float32
        if c["dtype"] in ("bfloat16", "int8"):  # int8: a KVCache's storage, from bfloat16-rounded values
            import ml_dtypes
            dtype = ml_dtypes.bfloat16
        rng = np.random.default_rng(SEED)
        shape = (c["B"], c["H"], c["L"], c["D"])
        kv_shape = (c["B"], c.get("Hkv", c["H"]), c.get("Lk", c["L"]), c["D"])
        q = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
        k, v = (rng.standard_normal(kv_shape, dtype=np.float32).astype(dtype) for _ in range(2))
        kw = dict(causal=c["causal"], num_threads=c["threads"])
        if c["pass"] == "cache":  # decoding over a KVCache of c["dtype"] (bfloat16 takes bfloat16 queries)
            storage = "int8" if c["dtype"] == "int8" else dtype
            q = q if c["dtype"] == "bfloat16" else q.astype(np.float32)
            k, v = k.astype(np.float32), v.astype(np.float32)
            cache = fastattn.KVCache(kv_shape[1], c["D"], dtype=storage, block_size=c["block_size"])
            seqs = list(range(c["B"]))
            cache.append(seqs, list(k), list(v))
            fn = lambda: cache.attention(q, seqs, num_threads=c["threads"])
        elif c["pass"] == "forward":
            fn = lambda: fastattn.attention(q, k, v, **kw)
        else:
            dout = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
            out, lse = fastattn.attention(q, k, v, return_lse=True, **kw)
            fn = lambda: fastattn.attention_backward(dout, q, k, v, out, lse, **kw)
        res = fn()
        for _ in range(2):  # warm-up
            fn()
        parts = res if isinstance(res, tuple) else (res,)
        flat = np.concatenate([np.asarray(p, dtype=np.float32).ravel() for p in parts])
        state.update(fn=fn, flat=flat)  # float32 is exact for float32 and bfloat16 results
        return {"sum": float(flat.sum(dtype=np.float64)), "maxabs": float(np.abs(flat).max())}

    def timeit():
        fn = state["fn"]
        gc.disable()
        t0 = time.perf_counter()
        fn()
        t = time.perf_counter() - t0
        gc.enable()
        return {"t": t}

    def compare(path):
        other, mine = np.load(path), state["flat"]
        if other.shape != mine.shape:
            return {"equal": False, "maxdiff": float("inf")}
        if np.array_equal(other.view(np.uint32), mine.view(np.uint32)):
            return {"equal": True, "maxdiff": 0.0}
        diff = np.abs(other.astype(np.float64) - mine.astype(np.float64))
        return {"equal": False, "maxdiff": float(np.nanmax(diff)) if diff.size else 0.0}

    ops = {"setup": lambda m: setup(m["case"]), "time": lambda m: timeit(),
           "save": lambda m: (np.save(m["path"], state["flat"]), {})[1],
           "compare": lambda m: compare(m["path"]),
           "info": lambda m: {"isa": fastattn.get_isa(), "file": fastattn.__file__,
                              "version": getattr(fastattn, "__version__", "?")}}
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["op"] == "quit":
            break
        try:
            reply = ops[msg["op"]](msg)
        except Exception:
            reply = {"error": traceback.format_exc()}
        proto.write(json.dumps(reply) + "\n")


# ----------------------------------------------------------------------------- driver side
class Worker:
    def __init__(self, name, python):
        self.name, self.python = name, python
        self.err = tempfile.TemporaryFile(mode="w+")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # an idle worker's threads must not spin
        self.proc = subprocess.Popen([python, os.path.abspath(__file__), "--worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.err, text=True, env=env,
                                     cwd=tempfile.gettempdir())

    def die(self, why):
        self.err.seek(0)
        sys.stderr.write(f"\n{self.name} worker ({self.python}) failed: {why}\n--- its stderr ---\n"
                         f"{self.err.read()}\n")
        raise SystemExit(2)

    def ask(self, op, **kw):
        try:
            self.proc.stdin.write(json.dumps(dict(op=op, **kw)) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except OSError:  # BrokenPipeError: the worker is gone
            line = ""
        if not line:
            self.proc.wait()
            self.die(f"exited with status {self.proc.returncode}")
        reply = json.loads(line)
        if "error" in reply:
            self.die(f"request {op!r} raised:\n{reply['error']}")
        return reply

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write('{"op": "quit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(timeout=10)
            except Exception:
                self.proc.kill()


def quartiles(xs):
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[1], q[2]


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="python of the baseline venv")
    ap.add_argument("--new", required=True, help="python of the venv with the new build")
    ap.add_argument("--reps", type=int, default=15, help="timed repetitions per side per case")
    ap.add_argument("--threads", type=int, default=2, help="num_threads of every call")
    ap.add_argument("--quick", action="store_true", help="L = 256 instead of 1024")
    ap.add_argument("--filter", default="", help="only cases whose name contains this")
    ap.add_argument("--decode", action="store_true",
                    help="add decoding cases (forward, Lq = 1, GQA 32/8 heads, Lk = 4096, D = 128)")
    ap.add_argument("--small", action="store_true",
                    help="add small calls: 32x12x16x16x32 (a MiniLM batch) and 1x8x64x64x64")
    ap.add_argument("--cache", action="store_true",
                    help="add decoding over a KVCache (float32, bfloat16, int8; B = 8, 32/8 heads, "
                         "4096 tokens, D = 128, block_size 128)")
    ap.add_argument("--markdown", help="also write the table as Markdown to this file")
    args = ap.parse_args()
    if args.reps < 2:
        ap.error("--reps must be >= 2 (quartiles need two timings)")
    L = 256 if args.quick else 1024
    cases = [dict(B=1, H=8, L=L, D=D, causal=c, threads=args.threads, dtype=dt, **{"pass": p})
             for p in ("forward", "backward") for dt in ("float32", "bfloat16")
             for D in (64, 128) for c in (False, True)]
    if args.decode:  # direct mode (K/V read in place) and split-KV; B = 1 and 4
        cases += [dict(B=b, H=32, Hkv=8, L=1, Lk=4096, D=128, causal=False, threads=args.threads, dtype=dt,
                       **{"pass": "forward"}) for b in (1, 4) for dt in ("float32", "bfloat16")]
    if args.small:  # a MiniLM sentence batch (32 x 12 heads of 16 tokens, D = 32), a short call
        cases += [dict(B=B, H=H, L=L_, D=D, causal=False, threads=args.threads, dtype=dt, **{"pass": p})
                  for (B, H, L_, D) in ((32, 12, 16, 32), (1, 8, 64, 64)) for dt in ("float32", "bfloat16")
                  for p in ("forward", "backward")]
    if args.cache:
        cases += [dict(B=8, H=32, Hkv=8, L=1, Lk=4096, D=128, causal=False, threads=args.threads, dtype=dt,
                       block_size=128, **{"pass": "cache"}) for dt in ("float32", "bfloat16", "int8")]

    def name(c):
        dt = {"float32": "f32", "bfloat16": "bf16"}.get(c["dtype"], c["dtype"])
        kind = "fwd" if c["pass"] == "forward" else "bwd"
        if c["pass"] == "cache":
            return f"KVCache {dt} B{c['B']} H32/8 Lk{c['Lk']} D{c['D']}"
        if c["L"] <= 64 and c["L"] > 1:
            return f"{kind} {dt} {c['B']}x{c['H']}x{c['L']}x{c['L']}x{c['D']}"
        if c["L"] == 1:
            return f"decode {dt} B{c['B']} H32/8 Lk{c['Lk']} D{c['D']}"
        return f"{kind} {dt} D{c['D']}{' causal' if c['causal'] else ''}"
    cases = [c for c in cases if args.filter in name(c)]
    t_start = time.perf_counter()
    base, new = Worker("base", args.base), Worker("new", args.new)
    rows, tmp = [], tempfile.TemporaryDirectory()
    try:
        info = {w.name: w.ask("info") for w in (base, new)}
        header = [f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs); threads={args.threads}, "
                  f"B=1 H=8 L={L}, reps={args.reps}, "
                  f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'PASSIVE')}"]
        header += [f"{n}: fastattn {i['version']} ISA={i['isa']} ({i['file']})" for n, i in info.items()]
        print("\n".join(header), flush=True)
        for c in cases:
            sums = [w.ask("setup", case=c) for w in (base, new)]
            path = os.path.join(tmp.name, "new.npy")
            new.ask("save", path=path)
            cmp = base.ask("compare", path=path)
            times = {"base": [], "new": []}
            for r in range(args.reps):
                for w in ((base, new) if r % 2 == 0 else (new, base)):
                    times[w.name].append(w.ask("time")["t"])
            (b1, bm, b3), (n1, nm, n3) = quartiles(times["base"]), quartiles(times["new"])
            p1, _, p3 = quartiles([n / b for n, b in zip(times["new"], times["base"])])
            flag = "*" if p1 > 1 or p3 < 1 else ""
            bit = "bitwise equal" if cmp["equal"] else f"max|diff|={cmp['maxdiff']:.3g}"
            if not cmp["equal"]:
                bit += f" (sum {sums[0]['sum']:.6g} vs {sums[1]['sum']:.6g})"
            rows.append([name(c), f"{bm * 1e3:.2f}", f"{nm * 1e3:.2f}", f"{nm / bm:.3f}{flag}",
                         f"{(b3 - b1) / bm:.0%} / {(n3 - n1) / nm:.0%}", f"{p1:.3f}–{p3:.3f}", bit])
            print("  " + " | ".join(rows[-1]), flush=True)
    finally:
        base.close()
        new.close()
        tmp.cleanup()
    cols = ["case", "base median ms", "new median ms", "new/base", "noise IQR/med (base / new)",
            "paired new/base q1–q3", "bitwise"]
    widths = [max(len(x) for x in col) for col in zip(cols, *rows)]
    fmt = lambda r: "  ".join(x.ljust(w) if i == 0 or i == 6 else x.rjust(w)
                              for i, (x, w) in enumerate(zip(r, widths)))
    wall = time.perf_counter() - t_start
    footer = (f"* = the paired ratios' q1–q3 lies entirely above or below 1: beyond noise, roughly a "
              f"sign test at p ~ 0.05-0.1 (so ~1 false * in 16 cases is expected). Wall time {wall:.1f} s.")
    print("\n" + fmt(cols) + "\n" + fmt(["-" * w for w in widths]))
    print("\n".join(fmt(r) for r in rows) + "\n" + footer)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n\n".join(header) + "\n\n| " + " | ".join(cols) + " |\n|"
                    + "|".join("---" if i in (0, 6) else "---:" for i in range(len(cols))) + "|\n")
            f.writelines("| " + " | ".join(r) + " |\n" for r in rows)
            f.write("\n" + footer + "\n")


if __name__ == "__main__":
    if "--worker" in sys.argv[1:]:
        worker()
    else:
        main()
