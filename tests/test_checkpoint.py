"""Saving and loading: MultiHeadAttention.save/load/load_parameters and Adam.save/load.

A loaded layer predicts bitwise what the saved one did, training resumed from a saved layer and
optimizer continues bitwise as if uninterrupted, and every file that is not exactly such a file
(foreign, truncated, bit-flipped, of another shape or dtype, from a newer version) raises
ValueError and changes nothing.
"""

from __future__ import annotations

import io
import json
import re
import zipfile

import numpy as np
import pytest

from fastattn.layers import MultiHeadAttention
from fastattn.optim import Adam

CONFIGS = [
    dict(embed_dim=16, num_heads=4),
    dict(embed_dim=16, num_heads=4, num_kv_heads=2, causal=True),
    dict(embed_dim=12, num_heads=3, num_kv_heads=1, bias=False, causal="lower_right", dtype=np.float64),
]


def trained(rng, steps=3, **config):
    """A layer and its Adam after `steps` steps on random data (the moments are non-zero)."""
    layer = MultiHeadAttention(**config, rng=rng)
    opt = Adam(layer.parameters(), lr=1e-2, weight_decay=0.01)
    x = data(rng, layer)
    for _ in range(steps):
        train_step(layer, opt, x)
    return layer, opt, x


def data(rng, layer, batch=2, length=7):
    return rng.standard_normal((batch, length, layer.embed_dim)).astype(layer.dtype)


def train_step(layer, opt, x, skip=()):
    y = layer(x)
    layer.backward(y - 1)  # the gradient of 0.5·|y − 1|²
    opt.step({name: None if name in skip else g for name, g in layer.grads().items()})


def saved(obj) -> bytes:
    buf = io.BytesIO()
    obj.save(buf)
    return buf.getvalue()


def rewrite(data: bytes, header=None, drop=(), replace=None) -> bytes:
    """The archive `data` with its header updated by `header`, arrays `drop`ped or `replace`d."""
    with np.load(io.BytesIO(data), allow_pickle=False) as f:
        arrays = {name: f[name] for name in f.files}
    meta = json.loads(str(arrays["__fastattn__"]))
    meta.update(header or {})
    arrays["__fastattn__"] = np.array(json.dumps(meta))
    for name in drop:
        del arrays[name]
    arrays.update(replace or {})
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def same_params(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


# --- round trips -------------------------------------------------------------------------

@pytest.mark.parametrize("config", CONFIGS, ids=["mha", "gqa-causal", "mqa-nobias-f64"])
def test_a_loaded_layer_predicts_bitwise_the_same(tmp_path, rng, backend, config):
    layer, _, x = trained(rng, **config)
    layer.backend = backend
    layer.save(tmp_path / "model.npz")
    loaded = MultiHeadAttention.load(tmp_path / "model.npz", backend=backend)
    assert loaded.config() == layer.config() and repr(loaded) == repr(layer)
    assert same_params(loaded.parameters(), layer.parameters())
    y, w = layer(x, need_weights=True)
    y2, w2 = loaded(x, need_weights=True)
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(w2, w)
    # An open format: plain NumPy reads the parameters by name.
    with np.load(tmp_path / "model.npz", allow_pickle=False) as f:
        assert set(f.files) == set(layer.parameters()) | {"__fastattn__"}
        np.testing.assert_array_equal(f["w_q"], layer.w_q)


@pytest.mark.parametrize("config", CONFIGS, ids=["mha", "gqa-causal", "mqa-nobias-f64"])
def test_training_resumes_bitwise(tmp_path, rng, config):
    layer, opt, x = trained(rng, **config)
    train_step(layer, opt, x, skip=("w_o",))  # per-parameter step counts now differ
    opt.lr = 3e-3  # a schedule changed it: the saved lr is the current one
    layer.save(tmp_path / "model")
    opt.save(tmp_path / "adam")
    resumed = MultiHeadAttention.load(tmp_path / "model")
    resumed_opt = Adam.load(tmp_path / "adam", resumed.parameters())
    assert resumed_opt.steps == opt.steps and resumed_opt.steps["w_o"] == opt.steps["w_q"] - 1
    assert (resumed_opt.lr, resumed_opt.betas, resumed_opt.eps, resumed_opt.weight_decay) == \
        (opt.lr, opt.betas, opt.eps, opt.weight_decay)
    for _ in range(4):
        train_step(layer, opt, x)
        train_step(resumed, resumed_opt, x)
    assert same_params(resumed.parameters(), layer.parameters())
    assert same_params(resumed_opt.exp_avg, opt.exp_avg) and same_params(resumed_opt.exp_avg_sq, opt.exp_avg_sq)


def test_paths_are_taken_as_given_and_replaced_whole(tmp_path, rng):
    layer = MultiHeadAttention(8, 2, rng=rng)
    target = tmp_path / "checkpoint"  # no .npz appended (np.savez would)
    target.write_bytes(b"an older file")
    layer.save(str(target))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]  # no temporary file left
    assert same_params(MultiHeadAttention.load(str(target)).parameters(), layer.parameters())


def test_file_objects(rng):
    layer, opt, _ = trained(rng, embed_dim=8, num_heads=2)
    model, state = io.BytesIO(saved(layer)), io.BytesIO(saved(opt))
    loaded = MultiHeadAttention.load(model)
    assert same_params(loaded.parameters(), layer.parameters())
    assert same_params(Adam.load(state, loaded.parameters()).exp_avg, opt.exp_avg)


def test_load_parameters_in_place(rng):
    layer, _, x = trained(rng, embed_dim=8, num_heads=2, causal=True)
    other = MultiHeadAttention(8, 2, causal=True, rng=1)
    before = other.parameters()
    opt = Adam(before)  # holds the arrays: it must see the loaded values
    other.load_parameters(io.BytesIO(saved(layer)))
    assert all(other.parameters()[k] is before[k] for k in before)
    assert same_params(opt.params, layer.parameters())
    np.testing.assert_array_equal(other(x), layer(x))


# --- files that must be refused ----------------------------------------------------------

def test_a_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        MultiHeadAttention.load(tmp_path / "nothing.npz")


NOT_AN_NPZ = "is not a fastattn {kind} file (expected a NumPy .npz archive, as {kind}.save writes): "


@pytest.mark.parametrize("contents, reason", [
    (b"", "it is empty"),
    (b"not a numpy file at all", "it does not start as a zip archive does (its first bytes: b'not a numpy file'"),
    (b"\x80\x04\x95 a pickle", "it does not start as a zip archive does (its first bytes: b'\\x80\\x04\\x95"),
], ids=["empty", "text", "pickle"])
@pytest.mark.parametrize("kind", ["MultiHeadAttention", "Adam"])
def test_foreign_files(tmp_path, contents, reason, kind):
    """A file that is not an .npz archive: the error names the file, says what was expected and what
    it is, and carries no advice on unpickling (np.load's, for any such file: the wrong hint for a
    text file, and fastattn never loads pickles)."""
    path = tmp_path / "notes.txt"
    path.write_bytes(contents)
    with pytest.raises(ValueError) as error:
        if kind == "Adam":
            Adam.load(path, MultiHeadAttention(8, 2, rng=0).parameters())
        else:
            MultiHeadAttention.load(path)
    assert str(error.value).startswith(f"{str(path)!r} " + NOT_AN_NPZ.format(kind=kind) + reason)
    assert "allow_pickle" not in str(error.value)


def test_a_file_object_is_read_from_where_it_was(rng):
    data = saved(MultiHeadAttention(8, 2, rng=rng))
    f = io.BytesIO(b"junk" + data)
    f.seek(4)
    assert MultiHeadAttention.load(f).config() == MultiHeadAttention(8, 2, rng=rng).config()
    f.seek(0)
    with pytest.raises(ValueError, match=re.escape(f"the file {NOT_AN_NPZ.format(kind='MultiHeadAttention')}"
                                                   "it does not start as a zip archive does (its first bytes: b'junkPK")):
        MultiHeadAttention.load(f)
    assert f.tell() == 0


def test_a_single_npy_array_is_not_a_checkpoint(tmp_path):
    np.save(tmp_path / "a.npy", np.ones(3))
    with pytest.raises(ValueError, match=re.escape(NOT_AN_NPZ.format(kind="MultiHeadAttention")
                                                   + "it is a single .npy array")):
        MultiHeadAttention.load(tmp_path / "a.npy")


def test_an_npz_without_header(tmp_path, rng):
    layer = MultiHeadAttention(8, 2, rng=rng)
    np.savez(tmp_path / "plain.npz", **layer.parameters())
    with pytest.raises(ValueError, match=r"is not a fastattn file: it has no __fastattn__ header \(arrays: \['b_k'"):
        MultiHeadAttention.load(tmp_path / "plain.npz")


def test_pickled_arrays_are_refused_unread(tmp_path):
    np.savez(tmp_path / "p.npz", __fastattn__=np.array("{}"), w_q=np.array([{"code": "never run"}], dtype=object))
    with pytest.raises(ValueError) as error:
        MultiHeadAttention.load(tmp_path / "p.npz")
    assert str(error.value) == (f"{str(tmp_path / 'p.npz')!r} is not a readable fastattn MultiHeadAttention file: "
                                "it holds an array of Python objects (a pickle), which a fastattn file never does")


def test_the_kinds_are_not_interchangeable(rng):
    layer, opt, _ = trained(rng, embed_dim=8, num_heads=2)
    with pytest.raises(ValueError, match=r"the file holds 'fastattn.Adam', not 'fastattn.MultiHeadAttention'"):
        MultiHeadAttention.load(io.BytesIO(saved(opt)))
    with pytest.raises(ValueError, match=r"the file holds 'fastattn.MultiHeadAttention', not 'fastattn.Adam'"):
        Adam.load(io.BytesIO(saved(layer)), layer.parameters())


def test_a_newer_format_version(rng):
    data = rewrite(saved(MultiHeadAttention(8, 2, rng=rng)), header={"version": 2})
    with pytest.raises(ValueError, match="has format version 2; this fastattn reads versions 1 to 1: upgrade fastattn"):
        MultiHeadAttention.load(io.BytesIO(data))


@pytest.mark.parametrize("change, message", [
    (dict(drop=["w_o"]), r"arrays do not match: missing \['w_o'\], unexpected \[\]"),
    (dict(replace={"extra": np.zeros(1)}), r"missing \[\], unexpected \['extra'\]"),
    (dict(replace={"w_k": np.zeros((8, 4), np.float32)}),
     r"w_k has shape \(8, 4\) and dtype float32, expected shape \(8, 8\) and dtype float32"),
    (dict(replace={"b_v": np.zeros(8, np.float64)}),
     r"b_v has shape \(8,\) and dtype float64, expected shape \(8,\) and dtype float32"),
    (dict(header={"embed_dim": 9}), r"its configuration is not a valid layer: embed_dim \(=9\) must be divisible"),
    (dict(header={"dtype": "int32"}), r"its configuration is not a valid layer: dtype \(=int32\)"),
    (dict(header={"num_heads": True}), r"num_heads \(=True\) has the wrong type"),
    (dict(header={"bias": 1}), r"bias \(=1\) has the wrong type"),
    (dict(header={"surprise": 1}), r"its header has unexpected entries \['surprise'\]"),
], ids=["missing", "extra", "shape", "dtype", "config", "config-dtype", "bool-as-int", "int-as-bool", "unknown-key"])
def test_inconsistent_layer_files(rng, change, message):
    data = rewrite(saved(MultiHeadAttention(8, 2, rng=rng)), **change)
    with pytest.raises(ValueError, match=message):
        MultiHeadAttention.load(io.BytesIO(data))


def test_load_parameters_refuses_another_layer_and_changes_nothing(rng):
    layer = MultiHeadAttention(8, 2, causal=True, rng=rng)
    before = {k: v.copy() for k, v in layer.parameters().items()}
    for other, diff in [(MultiHeadAttention(8, 4, rng=1), "num_heads 4 (the layer's: 2), num_kv_heads 4 (the layer's: 2), "
                                                          "causal False (the layer's: True)"),
                        (MultiHeadAttention(8, 2, causal=True, dtype=np.float64, rng=1),
                         "dtype 'float64' (the layer's: 'float32')")]:
        with pytest.raises(ValueError, match=re.escape(f"the file is for another layer: {diff}")):
            layer.load_parameters(io.BytesIO(saved(other)))
        assert same_params(layer.parameters(), before)
    # Consistent header, one wrong array: refused before any parameter is written.
    data = rewrite(saved(MultiHeadAttention(8, 2, causal=True, rng=1)), replace={"w_o": np.zeros((8, 8))})
    with pytest.raises(ValueError, match="w_o has shape"):
        layer.load_parameters(io.BytesIO(data))
    assert same_params(layer.parameters(), before)


def test_adam_refuses_a_state_of_other_parameters(rng):
    layer, opt, _ = trained(rng, embed_dim=8, num_heads=2)
    data = saved(opt)
    no_bias = MultiHeadAttention(8, 2, bias=False, rng=1)
    with pytest.raises(ValueError, match=r"is the state of parameters \['b_k', .*\], not of params \['w_k', "):
        Adam.load(io.BytesIO(data), no_bias.parameters())
    wider = MultiHeadAttention(16, 2, rng=1)
    with pytest.raises(ValueError, match=r"exp_avg.0 has shape \(8, 8\) and dtype float32, expected shape \(16, 16\)"):
        Adam.load(io.BytesIO(data), wider.parameters())
    f64 = MultiHeadAttention(8, 2, dtype=np.float64, rng=1)
    with pytest.raises(ValueError, match=r"expected shape \(8, 8\) and dtype float64"):
        Adam.load(io.BytesIO(data), f64.parameters())
    with pytest.raises(TypeError, match="params must be a dict of name -> numpy.ndarray, got list"):
        Adam.load(io.BytesIO(data), [layer.w_q])  # the caller's argument: the constructor's error


@pytest.mark.parametrize("header, message", [
    ({"lr": -1.0}, r"its hyperparameters are invalid: lr \(=-1.0\) must be a finite number >= 0"),
    ({"betas": [0.9, 1.5]}, r"its hyperparameters are invalid: betas\[1\] \(=1.5\) must be in \[0, 1\)"),
    ({"steps": [1, 2]}, r"steps \(=\[1, 2\]\) must be one count >= 0 per parameter \(8\)"),
    ({"lr": "fast"}, r"lr \(='fast'\) has the wrong type"),
], ids=["lr", "betas", "steps", "lr-type"])
def test_inconsistent_adam_files(rng, header, message):
    layer, opt, _ = trained(rng, embed_dim=8, num_heads=2)
    with pytest.raises(ValueError, match=message):
        Adam.load(io.BytesIO(rewrite(saved(opt), header=header)), layer.parameters())


def test_adam_save_needs_str_names():
    with pytest.raises(TypeError, match=r"save\(\) needs str parameter names, got 0"):
        Adam({0: np.zeros(2)}).save(io.BytesIO())


def test_load_checks_its_own_arguments_first(tmp_path):
    with pytest.raises(ValueError, match="backend"):
        MultiHeadAttention.load(tmp_path / "nothing.npz", backend="gpu")
    with pytest.raises(TypeError, match="num_threads"):
        MultiHeadAttention.load(tmp_path / "nothing.npz", num_threads="2")


def test_every_truncation_and_bit_flip_is_refused_or_harmless(rng):
    """Each prefix of a saved file, and the file with each byte's lowest or highest bit flipped:
    ValueError, or (a flip in a zip field nothing checks, e.g. a timestamp) bitwise the same
    parameters — never another exception, never other values."""
    layer = MultiHeadAttention(8, 2, rng=rng)
    data = saved(layer)
    corrupt = [data[:n] for n in range(len(data))]
    for i in range(len(data)):
        for bit in (1, 128):
            flipped = bytearray(data)
            flipped[i] ^= bit
            corrupt.append(bytes(flipped))
    refused = 0
    for contents in corrupt:
        target = MultiHeadAttention(8, 2, rng=rng)  # a fresh layer: a failed load must not touch it
        before = {k: v.copy() for k, v in target.parameters().items()}
        try:
            target.load_parameters(io.BytesIO(contents))
        except ValueError:
            refused += 1
            assert same_params(target.parameters(), before)
        else:
            assert same_params(target.parameters(), layer.parameters())
    assert refused >= len(data)  # every truncation at least


def test_archive_members_read_with_a_bad_crc_are_refused(rng):
    """A flipped byte inside an array's data: zipfile's CRC check catches it on reading."""
    data = bytearray(saved(MultiHeadAttention(8, 2, rng=rng)))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as z:
        info = z.getinfo("w_q.npy")
    data[info.header_offset + 30 + len(info.filename) + len(info.extra) + 200] ^= 0x40
    with pytest.raises(ValueError, match="is not a readable fastattn MultiHeadAttention file: Bad CRC-32"):
        MultiHeadAttention.load(io.BytesIO(bytes(data)))
