"""Any array library: objects with __dlpack__ on the CPU are read in place (no copy); other
devices, tensors that require grad and array_likes behave as docs/integrations.md says."""

from __future__ import annotations

import numpy as np
import pytest

import fastattn
from fastattn import _contract


class Foreign:
    """A minimal DLPack producer: some other library's CPU array (or one on `device`)."""

    def __init__(self, array: np.ndarray, device=(1, 0)):
        self.array, self.device = array, device

    def __dlpack__(self, **kwargs):
        return self.array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.device


def test_dlpack_input_is_read_in_place(rng):
    base = rng.standard_normal((2, 3, 40, 16)).astype(np.float32)
    view = _contract.asarray(Foreign(base), "q")
    assert np.shares_memory(view, base)
    q, k, v = (Foreign(rng.standard_normal((2, 3, 40, 16)).astype(np.float32)) for _ in range(3))
    out = fastattn.attention(q, k, v, causal=True)
    np.testing.assert_array_equal(out, fastattn.attention(q.array, k.array, v.array, causal=True))
    grads = fastattn.attention_backward(Foreign(out), q, k, v, out, fastattn.attention(q, k, v, return_lse=True)[1])
    assert [g.shape for g in grads] == [(2, 3, 40, 16)] * 3


def test_strided_dlpack_input_keeps_its_strides(rng):
    base = rng.standard_normal((40, 2, 3, 16)).astype(np.float64)
    q = base.transpose(1, 2, 0, 3)  # (2, 3, 40, 16), not contiguous: still read in place
    view = _contract.asarray(Foreign(q), "q")
    assert np.shares_memory(view, base) and view.strides == q.strides
    np.testing.assert_array_equal(fastattn.attention(Foreign(q), q, q), fastattn.attention(q, q, q))


def test_dlpack_input_on_another_device_is_a_value_error():
    q = np.zeros((2, 4, 8), np.float32)
    with pytest.raises(ValueError, match=r"k is on a DLPack device \(2, 0\), not the CPU"):
        fastattn.attention(q, Foreign(q, device=(2, 0)), q)


def test_array_likes_still_work():
    q = [[[0.5, 1.0], [1.0, 0.0]]]
    np.testing.assert_allclose(fastattn.attention(q, q, q), fastattn.attention(*(np.asarray(q),) * 3))


def test_jax_arrays_are_read_in_place():
    jnp = pytest.importorskip("jax.numpy")
    q = jnp.arange(2 * 3 * 8 * 4, dtype=jnp.float32).reshape(2, 3, 8, 4) / 50
    view = _contract.asarray(q, "q")
    assert view.ctypes.data == q.unsafe_buffer_pointer()  # no copy
    np.testing.assert_allclose(fastattn.attention(q, q, q), fastattn.attention(*(np.asarray(q),) * 3))


def test_torch_tensors_are_read_in_place():
    torch = pytest.importorskip("torch")
    q = torch.randn(2, 3, 8, 4)
    assert _contract.asarray(q, "q").ctypes.data == q.data_ptr()
    with pytest.raises(TypeError, match="q cannot be shared through DLPack"):
        fastattn.attention(q.requires_grad_(), q.detach(), q.detach())
