"""fastattn.dask.attention on a two-process LocalCluster against fastattn.attention in memory.

The workers are separate processes that import the installed fastattn. Results are compared to
a few ulp: a block of rows may be packed into the kernel's register tiles differently from the
one in-memory call (with Lq blocks that are multiples of the kernel's query block, today 60
rows, they happen to be bitwise equal, but that is the kernel's business, not this contract's).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("dask.distributed")

from dask.utils import key_split  # noqa: E402  (after the skips)

import fastattn  # noqa: E402
import fastattn.dask as fdask  # noqa: E402

B, HQ, HKV, LQ, D, DV = 2, 4, 2, 150, 16, 8
CHUNKS = (1, 2, 60, 8)  # q's chunks: 60-row blocks; D split too, so that it must be merged
TOL = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}


@pytest.fixture(scope="module")
def client():
    logger = logging.getLogger("distributed")
    level = logger.level
    logger.setLevel(logging.ERROR)  # the scheduler's INFO lines would fill the live log
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=logging.ERROR)
    # Not the default scheduler: a .compute() hidden in fastattn.dask would then run here, in
    # this process, where test_lazy_inputs_never_reach_the_client would catch it.
    c = distributed.Client(cluster, set_as_default=False)
    try:
        yield c
    finally:
        c.close()
        cluster.close()
        logger.setLevel(level)


def arrays(rng, dtype, lk, *, q_shape=(B, HQ, LQ, D), hkv=HKV):
    q = rng.standard_normal(q_shape).astype(dtype)
    kv = q_shape[:-3] + (hkv, lk) if len(q_shape) > 2 else (lk,)
    return q, rng.standard_normal(kv + (D,)).astype(dtype), rng.standard_normal(kv + (DV,)).astype(dtype)


def run(client, q, k, v, q_chunks, *, exact=False, tolerance=None, **options):
    """The cluster's result and the lazy array, after checking it against the in-memory call."""
    ref = fastattn.attention(q, k, v, **options)
    out = fdask.attention(da.from_array(q, chunks=q_chunks), k, v, **options)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    got = client.compute(out).result()
    if exact:
        np.testing.assert_array_equal(got, ref)
    else:
        np.testing.assert_allclose(got, ref, **(tolerance or TOL[q.dtype.type]))
    return out


# name: (Lk, options made from an rng, whether Lq stays split). The last column is the
# positional-rule handling: False marks the cases kept in one Lq chunk (see the docstring).
CASES = {
    "plain": (200, lambda r: {}, True),
    "causal-upper-left": (200, lambda r: dict(causal=True), True),
    "causal-upper-left-Lq>Lk": (100, lambda r: dict(causal="upper_left"), False),  # rows past Lk
    "causal-lower-right-Lq<Lk": (200, lambda r: dict(causal="lower_right"), True),
    "causal-lower-right-Lq>Lk": (40, lambda r: dict(causal="lower_right"), True),  # zero rows
    "window-causal": (200, lambda r: dict(causal=True, window=(30, 0)), True),
    "window-lower-right": (100, lambda r: dict(causal="lower_right", window=(25, 3)), True),
    "alibi-causal": (200, lambda r: dict(causal=True, alibi_slopes=r.random(HQ)), True),
    "alibi-lower-right-per-batch": (100, lambda r: dict(causal="lower_right", alibi_slopes=r.random((B, HQ))), True),
    "window-no-causal": (100, lambda r: dict(window=(20, 10)), False),
    "alibi-no-causal": (100, lambda r: dict(alibi_slopes=r.random(HQ)), False),
    "bool-mask": (100, lambda r: dict(mask=r.random((B, 1, LQ, 100)) < 0.7), True),
    "bool-mask-dask-causal": (200, lambda r: dict(
        causal=True, mask=da.from_array(r.random((B, HQ, LQ, 200)) < 0.7, chunks=(2, 1, 50, 70))), True),
    "float-mask-dask-lower-right": (100, lambda r: dict(
        causal="lower_right", mask=da.from_array(r.standard_normal((HQ, LQ, 100)), chunks=(3, 40, 30))), True),
    "key-padding-mask-dask": (100, lambda r: dict(
        mask=da.from_array(r.random((B, 1, 1, 100)) < 0.5, chunks=(1, 1, 1, 50))), True),
    "lengths": (100, lambda r: dict(q_lengths=[150, 77], kv_lengths=[100, 31]), True),
    "lengths-lower-right-window": (100, lambda r: dict(
        causal="lower_right", q_lengths=[150, 77], kv_lengths=[100, 31], window=(10, 0)), True),
    "lengths-dask-lower-right-alibi": (200, lambda r: dict(
        causal="lower_right", q_lengths=da.from_array(np.array([61, 150]), chunks=1),
        kv_lengths=da.from_array(np.array([200, 7]), chunks=1), alibi_slopes=r.random(HQ)), True),
    "q-lengths-upper-left": (200, lambda r: dict(causal=True, q_lengths=[150, 100]), True),
    "kv-lengths-upper-left": (200, lambda r: dict(causal=True, q_lengths=[150, 100], kv_lengths=[200, 90]), False),
    "softcap-lower-right": (100, lambda r: dict(causal="lower_right", softcap=3.0, scale=0.7), True),
    # align="lower_right" without causal: FlashAttention's windows and ALiBi (issue 26)
    "window-aligned-lower-right": (200, lambda r: dict(align="lower_right", window=(20, 10)), False),
    "alibi-aligned-lower-right-lengths": (100, lambda r: dict(
        align="lower_right", alibi_slopes=r.random(HQ), q_lengths=[150, 77], kv_lengths=[100, 31]), False),
    "causal-aligned-lower-right": (200, lambda r: dict(causal=True, align="lower_right", window=(25, 0)), True),
    "sinks-causal": (200, lambda r: dict(causal=True, sinks=r.standard_normal((B, HQ))), True),
    "sinks-dask-window": (100, lambda r: dict(
        sinks=da.from_array(r.standard_normal(HQ), chunks=2), window=(9, 9)), False),
    "precision-medium": (200, lambda r: dict(causal=True, precision="medium"), True),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_in_memory(client, case, dtype):
    lk, make_options, split = CASES[case]
    rng = np.random.default_rng(sorted(CASES).index(case))
    q, k, v = arrays(rng, dtype, lk)
    options = make_options(rng)
    if options.get("precision") == "medium" and dtype == np.float32:
        # "medium" rounds P to bf16 where an engine does (the AMX tiles), and computes as "highest"
        # where none does, or for calls too short for the tiles (the last chunk's 30 rows on the
        # amx ISA): the chunks agree with the whole call to medium's error (docs/precision.md).
        options["tolerance"] = dict(rtol=2.0**-6, atol=2.0**-8)
    out = run(client, q, k, v, CHUNKS, num_threads=1, **options)
    assert out.chunks == ((1, 1), (2, 2), (60, 60, 30) if split else (LQ,), (DV,))


def test_gqa_head_chunks_and_unaligned_blocks(client, rng):
    """Hq = 8 over Hkv = 4 (g = 2) with q head chunks of 3, rounded up to (4, 2, 2); Lq blocks of
    7 rows, mid-tile, so only a few ulp of agreement; every option at once; dask k, v."""
    q, k, v = arrays(rng, np.float32, 90, q_shape=(B, 8, 50, D), hkv=4)
    k, v = da.from_array(k, chunks=(1, 3, 40, 5)), da.from_array(v, chunks=(2, 1, 90, 3))
    options = dict(causal="lower_right", window=(12, 2), alibi_slopes=rng.random(8), softcap=4.0,
                   q_lengths=[50, 33], kv_lengths=[90, 45], mask=rng.standard_normal((1, 8, 50, 1)))
    ref = fastattn.attention(q, np.asarray(k), np.asarray(v), **options)
    out = fdask.attention(da.from_array(q, chunks=(1, 3, 7, D)), k, v, **options)
    assert out.chunks == ((1, 1), (4, 2, 2), (7,) * 7 + (1,), (DV,))
    np.testing.assert_allclose(client.compute(out).result(), ref, **TOL[np.float32])


def test_3d_5d_and_2d(client, rng):
    # 3-D (H, L, D), MQA, scalar lengths.
    q, k, v = arrays(rng, np.float64, 130, q_shape=(HQ, LQ, D), hkv=1)
    out = run(client, q, k, v, (1, 60, D), causal="lower_right", q_lengths=140, kv_lengths=120, window=(40, 0))
    assert out.chunks[-2] == (60, 60, 30)
    # 5-D (B1, B2, Hq, L, D), a broadcast mask and per-(B1, B2) key lengths (own diagonals).
    q, k, v = arrays(rng, np.float32, 100, q_shape=(2, 3, HQ, LQ, D))
    mask = rng.random((3, 1, LQ, 100)) < 0.8
    out = run(client, q, k, v, (1, 2, 2, 60, D), causal="lower_right", mask=mask,
              kv_lengths=[[100, 80, 3], [0, 50, 99]])
    assert out.chunks[:3] == ((1, 1), (2, 1), (2, 2)) and out.chunks[-2] == (60, 60, 30)
    # 2-D (L, D): one head.
    q, k, v = arrays(rng, np.float32, 80, q_shape=(LQ, D))
    out = run(client, q, k, v, (60, D), causal="lower_right", alibi_slopes=0.25)
    assert out.chunks == ((60, 60, 30), (DV,))


def test_numpy_inputs_and_default_options(client, rng):
    q, k, v = arrays(rng, np.float32, 64)
    out = fdask.attention(q, k, v)
    assert isinstance(out, da.Array)
    np.testing.assert_array_equal(client.compute(out).result(), fastattn.attention(q, k, v))


def test_graph_is_per_block_calls_and_rechunks(rng):
    """Building the graph computes nothing; it holds one fastattn task per output block, and the
    rest is only the inputs, rechunking/reshaping and the row offsets (arange)."""
    q = da.random.default_rng(0).standard_normal((B, HQ, LQ, D), chunks=CHUNKS)
    k = da.random.default_rng(1).standard_normal((B, HKV, 100, D), chunks=(1, 1, 30, 8))
    v = da.random.default_rng(2).standard_normal((B, HKV, 100, DV), chunks=(2, 2, 100, 8))
    mask = da.random.default_rng(3).random((B, 1, LQ, 100), chunks=(1, 1, 50, 50)) < 0.5
    out = fdask.attention(q, k, v, causal="lower_right", mask=mask, kv_lengths=np.array([100, 50]))
    layers = out.__dask_graph__().layers
    inputs = set().union(*(x.__dask_graph__().layers for x in (q, k, v, mask)))  # how they are made
    calls = [name for name in layers if key_split(name) == "fastattn-attention"]
    assert len(calls) == 1 and len(layers[calls[0]]) == np.prod(out.numblocks) == 12
    other = {key_split(name) for name in layers if name not in inputs and name not in calls}
    assert other <= {"rechunk-merge", "rechunk-split", "arange", "array", "reshape"}


def test_lazy_inputs_never_reach_the_client(client):
    """Inputs made on the workers (da.random) behind a guard that fails in this process: the
    graph is built and run and only a reduction of the output comes back."""
    here = os.getpid()

    def guard(block):  # a closure: pickled by value, run on a worker
        if os.getpid() == here:
            raise AssertionError("an input block was materialised on the client")
        return block

    shapes = {"q": (B, HQ, LQ, D), "k": (B, HKV, 120, D), "v": (B, HKV, 120, DV)}
    lazy = {n: da.random.default_rng(i).standard_normal(s, chunks=(1, 2, 60, D), dtype=np.float32)
            for i, (n, s) in enumerate(shapes.items())}
    guarded = {n: x.map_blocks(guard, dtype=x.dtype) for n, x in lazy.items()}
    out = fdask.attention(guarded["q"], guarded["k"], guarded["v"], causal="lower_right", window=(50, 0))
    total, rows = client.gather(client.compute([out.sum(dtype=np.float64), out[1, 3, -1]]))
    q, k, v = client.gather(client.compute(list(lazy.values())))  # the oracle's copy, for the check only
    ref = fastattn.attention(q, k, v, causal="lower_right", window=(50, 0))
    np.testing.assert_array_equal(rows, ref[1, 3, -1])
    np.testing.assert_allclose(total, ref.sum(dtype=np.float64), rtol=1e-12)


def test_errors_at_graph_build():
    q = da.zeros((B, HQ, LQ, D), chunks=CHUNKS)
    with pytest.raises(ValueError, match=r"k.shape\[-1\] \(=15\) must equal q.shape\[-1\] \(=16\)"):
        fdask.attention(q, da.zeros((B, HKV, 9, 15)), da.zeros((B, HKV, 9, DV)))
    with pytest.raises(ValueError, match="must be a multiple of"):
        fdask.attention(q, da.zeros((B, 3, 9, D)), da.zeros((B, 3, 9, DV)))
    with pytest.raises(ValueError, match="mask.shape"):
        fdask.attention(q, da.zeros((B, HKV, 9, D)), da.zeros((B, HKV, 9, DV)), mask=da.ones((LQ, 8), dtype=bool))
    with pytest.raises(ValueError, match="kv_lengths"):
        fdask.attention(q, da.zeros((B, HKV, 9, D)), da.zeros((B, HKV, 9, DV)), kv_lengths=[9, 10])
    with pytest.raises(TypeError, match="dtype"):
        fdask.attention(q.astype(np.int32), da.zeros((B, HKV, 9, D)), da.zeros((B, HKV, 9, DV)))


def test_mask_broadcast_axes_stay_size_one():
    q = da.zeros((B, HQ, LQ, D), chunks=CHUNKS)
    pad = fdask._chunk_like(da.ones((B, 1, 1, 100), dtype=bool), q, 4)
    assert pad.chunks == ((1, 1), (1,), (1,), (100,))
    bias = fdask._chunk_like(da.ones((HQ, LQ, 100), chunks=(1, 7, 9)), q, 4)
    assert bias.chunks == ((1,), (2, 2), (60, 60, 30), (100,))


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_import_fastattn_does_not_import_dask():
    result = _python("import sys, fastattn; print(sorted(m for m in sys.modules if m.split('.')[0] == 'dask'))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_import_without_dask_says_how_to_install():
    result = _python("import sys; sys.modules['dask'] = None\n"
                     "try:\n    import fastattn.dask\nexcept ImportError as e:\n    print(e)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "fastattn.dask needs Dask: pip install 'dask[array]'"
