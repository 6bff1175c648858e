"""The benchmark's cases: the tables of float32 shapes (the default run, ``--quick`` and the
forward + backward training shapes), ``Case`` (one shape: its FLOPs, the bytes of K and V it
reads, its label) and the random inputs of a case."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np

FLOAT32_BYTES = 4

# (B, Hq, Hkv, Lq, Lk, D); each runs non-causal and causal.
DEFAULT_PREFILL_SHAPES = [
    (1, 8, 8, 512, 512, 64),
    (1, 8, 8, 1024, 1024, 64),
    (1, 8, 8, 2048, 2048, 64),
    (1, 8, 8, 4096, 4096, 64),
    (4, 12, 12, 1024, 1024, 64),
    (1, 8, 8, 2048, 2048, 128),
    (1, 1, 1, 16, 16, 16),
]
# One query row per sequence against a KV cache; non-causal only.
DEFAULT_DECODE_SHAPES = [
    (8, 32, 32, 1, 4096, 128),
    (8, 32, 8, 1, 4096, 128),  # GQA: 4 query heads per KV head
]

QUICK_PREFILL_SHAPES = [(1, 8, 8, 32, 32, 64), (1, 8, 8, 64, 64, 64)]
QUICK_DECODE_SHAPES = [(2, 4, 2, 1, 256, 32)]
# Forward + backward (training), (B, H, L, D), each non-causal then causal.
DEFAULT_TRAINING_SHAPES = [(1, 8, 2048, 64)]
QUICK_TRAINING_SHAPES = [(1, 2, 64, 32)]


@dataclass(frozen=True)
class Case:
    """One attention shape, float32, with Dv = D."""

    batch: int
    hq: int
    hkv: int
    lq: int
    lk: int
    d: int
    causal: bool = False

    @property
    def is_decode(self) -> bool:
        return self.lq == 1

    @property
    def flops(self) -> float:
        flops = 4.0 * self.batch * self.hq * self.lq * self.lk * self.d
        if self.causal and self.lq == self.lk:
            flops /= 2
        return flops

    @property
    def kv_bytes(self) -> int:
        """Bytes of K and V that one call has to read."""
        return FLOAT32_BYTES * self.batch * self.hkv * self.lk * 2 * self.d

    @property
    def label(self) -> str:
        heads = f"H{self.hq}" if self.hq == self.hkv else f"H{self.hq}/{self.hkv}"
        length = f"L{self.lq}" if self.lq == self.lk else f"Lq{self.lq} Lk{self.lk}"
        return f"B{self.batch} {heads} {length} D{self.d}" + (" causal" if self.causal else "")


def build_cases(prefill_shapes, decode_shapes) -> List[Case]:
    """Each prefill shape non-causal then causal, followed by the decode shapes (non-causal)."""
    cases = [Case(*shape, causal=causal) for shape in prefill_shapes for causal in (False, True)]
    cases += [Case(*shape) for shape in decode_shapes]
    return cases


def make_inputs(case: Case, seed: int = 0):
    """q, k, v ~ N(0, 1), float32."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((case.batch, case.hq, case.lq, case.d), dtype=np.float32)
    k = rng.standard_normal((case.batch, case.hkv, case.lk, case.d), dtype=np.float32)
    v = rng.standard_normal((case.batch, case.hkv, case.lk, case.d), dtype=np.float32)
    return q, k, v
