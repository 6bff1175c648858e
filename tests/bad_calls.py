"""One table of bad calls to attention and attention_backward, for test_bad_calls.py.

Each entry is a call that must raise TypeError or ValueError whose message names the
offending argument. Entries marked dangerous would touch huge shapes, extreme strides or the
extension's own backstop: the test runs those in a child process (``python bad_calls.py
NAME...``), so that a crash would fail one test instead of killing the test run.
"""

from __future__ import annotations

import json
import sys
from typing import Callable, NamedTuple

import numpy as np

import fastattn

B, HQ, HKV, LQ, LK, D, DV = 2, 4, 2, 5, 7, 8, 6


class BadCall(NamedTuple):
    name: str
    call: Callable[[], object]
    error: type
    match: str  # a regular expression the message must contain; it names the argument
    dangerous: bool = False


def _qkv(dtype=np.float32):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((B, HQ, LQ, D)).astype(dtype), rng.standard_normal((B, HKV, LK, D)).astype(dtype),
            rng.standard_normal((B, HKV, LK, DV)).astype(dtype))


def fwd(q=None, k=None, v=None, **options):
    q0, k0, v0 = _qkv()
    return fastattn.attention(q0 if q is None else q, k0 if k is None else k, v0 if v is None else v, **options)


def bwd(dout=None, q=None, k=None, v=None, out=None, lse=None, **options):
    """attention_backward with valid arguments except those given."""
    q0, k0, v0 = _qkv()
    out0, lse0 = fastattn.attention(q0, k0, v0, return_lse=True)
    args = [np.ones_like(out0) if dout is None else dout, q0 if q is None else q, k0 if k is None else k,
            v0 if v is None else v, out0 if out is None else out, lse0 if lse is None else lse]
    return fastattn.attention_backward(*args, **options)


def _huge(shape, dtype=np.float32):
    """A read-only view of one element broadcast to `shape` (no memory behind the size)."""
    return np.broadcast_to(np.zeros((), dtype), shape)


def _strided_q():
    """q whose second row lies 2**33 bytes after the first: the view is fine, the offsets are big."""
    base = np.zeros(2, np.float32)
    return np.lib.stride_tricks.as_strided(base, shape=(1, 1, 1, 1), strides=(2**33, 2**33, 2**33, 4))


def _out_overlapping_v():
    buffer = np.zeros((B, HQ, LQ, DV), np.float32)
    return fwd(k=K[:, :, :LQ], v=buffer[:, :HKV], out=buffer)


def _core_forward(**changes):
    """The extension's forward with consistent arguments except `changes` (its backstop)."""
    from fastattn import _backend
    q, k, v = _qkv()
    args = dict(q=q, k=k, v=v, out=np.empty((B, HQ, LQ, DV), np.float32), lse=None)
    args.update(changes)
    return _backend._core.forward(args["q"], args["k"], args["v"], args["out"], args["lse"], None,
                                  *_backend.binding_args(0.5, 0, 1))


Q, K, V = _qkv()
SHAPE_CALLS = [
    BadCall("q-1d", lambda: fwd(q=np.ones(D, np.float32)), ValueError, r"q\.ndim \(=1\)"),
    BadCall("q-0d", lambda: fwd(q=np.float32(1)), ValueError, r"q\.ndim \(=0\)"),
    BadCall("k-ndim", lambda: fwd(k=K[0]), ValueError, r"k\.ndim \(=3\) must equal q\.ndim"),
    BadCall("v-ndim", lambda: fwd(v=V[None]), ValueError, r"v\.ndim \(=5\) must equal q\.ndim"),
    BadCall("batch", lambda: fwd(k=K[:1], v=V[:1]), ValueError, r"k\.shape\[:-3\] \(=\(1,\)\)"),
    BadCall("v-heads", lambda: fwd(v=V[:, :1]), ValueError, r"v\.shape\[-3\] \(=1\) must equal k\.shape\[-3\]"),
    BadCall("hq-not-multiple", lambda: fwd(q=Q[:, :3]), ValueError, r"q\.shape\[-3\] \(=3\) must be a multiple"),
    BadCall("no-kv-heads", lambda: fwd(k=K[:, :0], v=V[:, :0]), ValueError, r"k\.shape\[-3\] \(=0\) must be >= 1"),
    BadCall("head-dim", lambda: fwd(k=K[..., :-1]), ValueError, r"k\.shape\[-1\] \(=7\) must equal q\.shape\[-1\]"),
    BadCall("lk", lambda: fwd(v=V[:, :, :-1]), ValueError, r"v\.shape\[-2\] \(=6\) must equal k\.shape\[-2\]"),
    BadCall("d-zero", lambda: fwd(q=Q[..., :0], k=K[..., :0]), ValueError, r"q\.shape\[-1\] \(=0\) must be >= 1"),
]
DTYPE_CALLS = [
    BadCall("q-int32", lambda: fwd(q=Q.astype(np.int32)), TypeError, r"q\.dtype"),
    BadCall("k-bool", lambda: fwd(k=K > 0), TypeError, r"k\.dtype"),
    BadCall("v-complex", lambda: fwd(v=V.astype(np.complex64)), TypeError, r"v\.dtype"),
    BadCall("q-object", lambda: fwd(q=Q.astype(object)), TypeError, r"\bq\b"),
    BadCall("q-str", lambda: fwd(q=np.full(Q.shape, "a")), TypeError, r"q\.dtype"),
    BadCall("mixed", lambda: fwd(k=K.astype(np.float64)), TypeError, r"k\.dtype \(=float64\) must equal q\.dtype"),
    BadCall("q-object-scalar", lambda: fwd(q=object()), TypeError, r"\bq\b"),
    BadCall("k-str", lambda: fwd(k="keys"), TypeError, r"\bk\b"),
    BadCall("v-ragged", lambda: fwd(v=[[1.0, 2.0], [3.0]]), TypeError, r"\bv\b"),
]
OPTION_CALLS = [
    BadCall("scale-nan", lambda: fwd(scale=float("nan")), ValueError, r"scale"),
    BadCall("scale-inf", lambda: fwd(scale=float("inf")), ValueError, r"scale"),
    BadCall("scale-str", lambda: fwd(scale="0.5"), TypeError, r"scale"),
    BadCall("causal-str", lambda: fwd(causal="lower-right"), ValueError, r"causal"),
    BadCall("causal-int", lambda: fwd(causal=1), TypeError, r"causal"),
    BadCall("return-lse", lambda: fwd(return_lse="yes"), TypeError, r"return_lse"),
    BadCall("backend", lambda: fwd(backend="torch"), ValueError, r"backend"),
    BadCall("threads-0", lambda: fwd(num_threads=0), ValueError, r"num_threads \(=0\)"),
    BadCall("threads-negative", lambda: fwd(num_threads=-2), ValueError, r"num_threads \(=-2\)"),
    BadCall("threads-huge", lambda: fwd(num_threads=2**63), ValueError, r"num_threads", dangerous=True),
    BadCall("threads-float", lambda: fwd(num_threads=2.0), TypeError, r"num_threads"),
    BadCall("window-negative", lambda: fwd(window=(-1, 0)), ValueError, r"window"),
    BadCall("alibi-shape", lambda: fwd(alibi_slopes=np.ones(HQ + 1)), ValueError, r"alibi_slopes"),
    BadCall("softcap-zero", lambda: fwd(softcap=0.0), ValueError, r"softcap"),
]
OUT_CALLS = [
    BadCall("out-shape", lambda: fwd(out=np.empty((B, HQ, LQ, D), np.float32)), ValueError, r"out\.shape"),
    BadCall("out-dtype", lambda: fwd(out=np.empty((B, HQ, LQ, DV), np.float64)), TypeError, r"out\.dtype"),
    BadCall("out-read-only", lambda: fwd(out=_huge((B, HQ, LQ, DV))), ValueError, r"\bout\b"),
    BadCall("out-strided", lambda: fwd(out=np.empty((B, HQ, LQ, 2 * DV), np.float32)[..., ::2]), ValueError,
            r"out must be C-contiguous"),
    BadCall("out-overlaps-v", lambda: _out_overlapping_v(), ValueError, r"\bout\b"),
]
MASK_CALLS = [
    BadCall("mask-shape", lambda: fwd(mask=np.ones((LQ, LK + 1), bool)), ValueError, r"mask"),
    BadCall("mask-int", lambda: fwd(mask=np.ones((LQ, LK), np.int32)), TypeError, r"mask"),
    BadCall("mask-complex", lambda: fwd(mask=np.ones((LQ, LK), np.complex64)), TypeError, r"mask"),
    BadCall("kv-lengths-shape", lambda: fwd(kv_lengths=np.ones(B + 1, np.int64)), ValueError, r"kv_lengths"),
    BadCall("kv-lengths-float", lambda: fwd(kv_lengths=np.ones(B)), TypeError, r"kv_lengths"),
    BadCall("kv-lengths-above", lambda: fwd(kv_lengths=[LK, LK + 1]), ValueError, r"kv_lengths\[1\] \(=8\)"),
    BadCall("kv-lengths-negative", lambda: fwd(kv_lengths=[-1, 0]), ValueError, r"kv_lengths\[0\] \(=-1\)"),
    BadCall("q-lengths-above", lambda: fwd(q_lengths=[LQ + 1, 0]), ValueError, r"q_lengths\[0\] \(=6\)"),
    BadCall("q-lengths-int64-max", lambda: fwd(q_lengths=[2**63 - 1, 0]), ValueError, r"q_lengths\[0\]",
            dangerous=True),
]
BACKWARD_CALLS = [
    BadCall("bwd-dout-shape", lambda: bwd(dout=np.ones((B, HQ, LQ, D), np.float32)), ValueError, r"dout\.shape"),
    BadCall("bwd-dout-dtype", lambda: bwd(dout=np.ones((B, HQ, LQ, DV))), TypeError, r"dout\.dtype"),
    BadCall("bwd-out-shape", lambda: bwd(out=np.ones((B, HQ, LQ - 1, DV), np.float32)), ValueError, r"out\.shape"),
    BadCall("bwd-lse-shape", lambda: bwd(lse=np.zeros((B, HQ, LQ, 1), np.float32)), ValueError, r"lse\.shape"),
    BadCall("bwd-lse-dtype", lambda: bwd(lse=np.zeros((B, HQ, LQ), np.float16)), TypeError, r"lse\.dtype"),
    BadCall("bwd-lse-none", lambda: bwd(lse=object()), TypeError, r"\blse\b"),
    BadCall("bwd-q-int", lambda: bwd(q=Q.astype(np.int64)), TypeError, r"q\.dtype"),
    BadCall("bwd-head-dim", lambda: bwd(k=K[..., 1:]), ValueError, r"k\.shape\[-1\]"),
    BadCall("bwd-threads", lambda: bwd(num_threads=0), ValueError, r"num_threads"),
    BadCall("bwd-mask", lambda: bwd(mask=np.ones((3, LQ, LK), bool)), ValueError, r"mask"),
    BadCall("bwd-kv-lengths", lambda: bwd(kv_lengths=[LK + 1, 0]), ValueError, r"kv_lengths"),
    BadCall("bwd-scale", lambda: bwd(scale=float("nan")), ValueError, r"scale"),
    BadCall("bwd-causal", lambda: bwd(causal="bottom_right"), ValueError, r"causal"),
]
DANGEROUS_CALLS = [
    # Element counts past 2**64 (the output) and past 2**32 (the inputs), from broadcast views.
    # (The lse has fewer bytes than q, so it cannot overflow when q exists.)
    BadCall("out-bytes-overflow", lambda: fwd(q=_huge((2**40, 1, 2**20, 1)), k=_huge((2**40, 1, 4, 1)),
                                              v=_huge((2**40, 1, 4, 2**10))), ValueError, r"output shape", True),
    BadCall("huge-lk-mismatch", lambda: fwd(k=_huge((B, HKV, 2**40, D)), v=_huge((B, HKV, 2**40 + 1, DV))),
            ValueError, r"v\.shape\[-2\]", True),
    BadCall("huge-head-dim", lambda: fwd(q=_huge((1, 1, 2**30, 2**30)), k=_huge((1, 1, 2**30, 2**30 - 1)),
                                                 v=_huge((1, 1, 2**30, DV))),
            ValueError, r"k\.shape\[-1\]", True),
    BadCall("mask-huge", lambda: fwd(mask=_huge((2**40, LQ, LK), np.bool_)), ValueError, r"mask", True),
    BadCall("far-strides-mismatch", lambda: fwd(q=_strided_q(), k=K[0, 0, :, :2], v=V[0, 0]), ValueError,
            r"q\.ndim|k\.ndim", True),
    # The extension's own checks, behind the Python ones: misuse of _core raises, never writes.
    BadCall("core-out-too-small", lambda: _core_forward(out=np.empty((B, HQ, LQ - 1, DV), np.float32)),
            ValueError, r"inconsistent shapes", True),
    BadCall("core-out-read-only", lambda: _core_forward(out=_huge((B, HQ, LQ, DV))), ValueError, r"out", True),
    BadCall("core-k-strided", lambda: _core_forward(k=np.ones((B, HKV, LK, 2 * D), np.float32)[..., ::2]),
            ValueError, r"k: last axis must be contiguous", True),
    BadCall("core-lse-shape", lambda: _core_forward(lse=np.empty((B, HQ, LQ + 1), np.float32)), ValueError,
            r"lse must have shape", True),
]
CALLS = SHAPE_CALLS + DTYPE_CALLS + OPTION_CALLS + OUT_CALLS + MASK_CALLS + BACKWARD_CALLS + DANGEROUS_CALLS
BY_NAME = {c.name: c for c in CALLS}
assert len(BY_NAME) == len(CALLS), "bad call names must be unique"


def outcome(name: str) -> dict:
    """What calling entry `name` did: the exception's type and message, or that it returned."""
    try:
        BY_NAME[name].call()
    except Exception as e:  # noqa: BLE001 - the test compares the type
        return {"type": type(e).__name__, "message": str(e)}
    return {"type": None, "message": "returned"}


if __name__ == "__main__":  # the child process of test_bad_calls.py: one JSON line per name
    for name in sys.argv[1:]:
        print(json.dumps({"name": name, **outcome(name)}), flush=True)
