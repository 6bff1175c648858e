"""Benchmark fastattn against torch's scaled_dot_product_attention, next to the machine's ceilings.

Usage::

    python -m fastattn.bench                      # the default table of shapes, float32
    python -m fastattn.bench --quick              # a few tiny shapes: a smoke test, ~seconds, nothing graded
    python -m fastattn.bench --no-numpy           # skip the (slow) NumPy backend
    python -m fastattn.bench --threads 4          # num_threads for fastattn, torch.set_num_threads
    python -m fastattn.bench --json results.json --plot throughput.png

What it does, in order:

1. Prints a header: fastattn's configuration (from ``fastattn.show_config()``), the CPU model,
   the NumPy and torch versions and the thread counts.
2. Measures two ceilings of this machine: float32 GEMM throughput (``numpy.matmul`` of two
   2048x2048 matrices, GFLOP/s) and read bandwidth (``numpy.sum`` over a 1 GiB float32 array,
   GB/s). ``numpy.sum`` runs on one thread, so the bandwidth is what one core can read, and
   NumPy's BLAS picks its own thread count for the GEMM (``--threads`` does not change it).
3. For each shape (B, Hq, Hkv, Lq, Lk, D), float32, runs the implementations: fastattn's C++
   backend, fastattn's NumPy backend and torch's SDPA (each only when available). The output
   of each one's first call is checked against torch's (or, without torch, against the
   NumPy backend's) with a loose tolerance. Then each is timed in turn: a 0.2 s pause (so
   the previous one's threads stop spinning), warm-up calls, then repeated calls (at least
   5, and at least 0.5 s in all, at most 10000), keeping the median.
4. Prints one progress line per measured row as it finishes (``[ i/N]``: one counter over
   every part below), then Markdown tables: time, GFLOP/s and its fraction of the GEMM
   ceiling per implementation, the ratio torch time / fastattn C++ time (> 1: fastattn is
   faster) and, for decode shapes (Lq = 1), the bandwidth achieved reading K and V and its
   fraction of the measured read bandwidth. The ceilings are what numpy.matmul and one
   thread's numpy.sum reach here, not hardware peaks: a fraction over 100% is marked ``*``
   and its table says why that can happen.
5. Training: for (B, H, L, D) = (1, 8, 2048, 64), non-causal and causal, times forward +
   backward: ``attention(..., return_lse=True)`` then ``attention_backward`` against torch's
   SDPA forward and ``.backward()`` (autograd), after checking that the gradients agree. Its
   FLOPs are 14·B·H·L²·D (seven matrix products), halved for causal.
6. KVCache decoding (C++ backend only): B=8 sequences of 4096 cached tokens, 32 query heads on 8
   K/V heads, D=128, one query token each, over a ``fastattn.KVCache`` (block_size 128) of each
   storage dtype (float32; bfloat16 when ml_dtypes is installed; int8), next to dense float32
   ``attention`` over the same values: time, bytes read (K, V and int8's scales), GB/s, its
   fraction of the read bandwidth and time over dense float32; each output checked against
   dense float32's.
7. Reliability (docs/reliability.md; ``--no-reliability`` skips it): two Python threads each
   calling with ``num_threads=1`` against the same calls made serially (the GIL is released
   around the kernel, so on 2 cores the speedup should be >= 1.7), and subnormal against
   normal inputs (no more than 2× slower), forward and backward, in alternating rounds.
   ``--quick`` times them on its tiny shapes and does not grade them ("not graded"): the
   targets are defined for the full run's shapes.
8. Writes every result to ``--json FILE`` and, when matplotlib is installed, a PNG
   (``--plot FILE``, default ``fastattn-bench.png``; ``--no-plot`` to skip) of GFLOP/s
   against L for the square non-causal B=1 H=8 D=64 shapes, with the GEMM ceiling dashed.

FLOPs per call are 4·B·Hq·Lq·Lk·D (two matrix products), halved for causal when Lq = Lk.
The exit status is 1 when an output check failed, else 0.

torch and matplotlib are optional: without them their parts are skipped with a note.

The modules, one concern each:

* ``cases``: the shape tables, ``Case`` and its inputs.
* ``environment``: torch (optional), fastattn's configuration, the CPU and versions.
* ``timing``: ``Settings``, ``time_calls`` and the two ceilings.
* ``runners``: how each implementation is run, checked and timed (``make_training_runner``).
* ``cache``: the KVCache decode rows and their table.
* ``reliability``: the GIL-release and subnormal-input timings.
* ``report``: the header, progress lines, Markdown tables, JSON and PNG.
* ``cli``: the options, ``main`` and the exit status; ``__main__`` runs it.
"""

from .cli import main
from .runners import make_training_runner

__all__ = ["main", "make_training_runner"]
