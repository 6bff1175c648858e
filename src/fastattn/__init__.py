"""fastattn: exact scaled dot-product attention for NumPy on CPUs.

``attention(q, k, v, ...)`` runs a SIMD + OpenMP C++ kernel (flash-style, O(L) memory) when
the extension is built, and a NumPy implementation of the same contract otherwise.
"""

from ._api import attention, attention_backward, attention_weights
from .kv_cache import KVCache
from ._runtime import get_isa, get_num_threads, set_isa, set_num_threads, show_config
from . import layers, optim  # training: layers.MultiHeadAttention, optim.Adam

try:
    from importlib.metadata import version as _version

    __version__ = _version("fastattn")
except Exception:  # pragma: no cover - running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["attention", "attention_backward", "attention_weights", "KVCache", "get_isa", "set_isa", "show_config", "get_num_threads", "set_num_threads", "layers", "optim", "__version__"]
