"""fastattn.transformers: attn_implementation="fastattn" in config-built tiny Hugging Face models (random
weights, no downloads) against transformers' own attention — sdpa, or eager where sdpa cannot (Gemma 2's
softcap, GPT-OSS's sinks): logits on the real tokens, greedy generation with the KV cache token for token,
a training step's gradients, bfloat16; how masks are recognised; what falls back to eager, visibly.
Skipped without torch and transformers."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
fatr = pytest.importorskip("fastattn.transformers")
from transformers import masking_utils  # noqa: E402

fatr.register()

VOCAB = 97
SMALL = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
             num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0)
# name: (config class, model class, config arguments, the stock implementation to compare with)
ARCHITECTURES = {
    "llama-gqa": ("LlamaConfig", "LlamaForCausalLM", SMALL, "sdpa"),
    "mistral-window": ("MistralConfig", "MistralForCausalLM", dict(SMALL, sliding_window=8), "sdpa"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM",
              dict(SMALL, use_sliding_window=True, sliding_window=8, max_window_layers=1), "sdpa"),
    "gemma2-softcap-window": ("Gemma2Config", "Gemma2ForCausalLM",
                              dict(SMALL, num_attention_heads=4, head_dim=16, sliding_window=8,
                                   attn_logit_softcapping=5.0, final_logit_softcapping=30.0,
                                   query_pre_attn_scalar=16), "eager"),
    # Every token takes all 4 experts: a top-k routing choice would flip on rounding noise (bfloat16 router
    # logits tie often), and this compares attention, not routing.
    "gpt-oss-sinks-window": ("GptOssConfig", "GptOssForCausalLM",
                             dict(SMALL, num_attention_heads=4, head_dim=16, sliding_window=8, num_local_experts=4,
                                  num_experts_per_tok=4, rope_parameters={"rope_type": "default",
                                                                          "rope_theta": 10000.0}), "eager"),
    "bert-padding": ("BertConfig", "BertForMaskedLM",
                     dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                          num_attention_heads=4, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                          pad_token_id=0), "sdpa"),
}
DECODERS = [name for name in ARCHITECTURES if not name.startswith("bert")]


def build(name: str, implementation: str, dtype=torch.float32):
    """The architecture's tiny model with seeded random weights (the same for every implementation), in eval
    mode; GPT-OSS's sinks drawn large enough to matter."""
    config_class, model_class, arguments, _ = ARCHITECTURES[name]
    config = getattr(transformers, config_class)(**arguments)
    torch.manual_seed(0)
    model = getattr(transformers, model_class)._from_config(config, attn_implementation=implementation)
    for module in model.modules():
        if isinstance(getattr(module, "sinks", None), torch.nn.Parameter):
            module.sinks.data.normal_(0.0, 1.0)
    return model.to(dtype).eval()


def batch(length: int = 24, padded: int = 5):
    """Token ids (2, length) and their attention mask: row 1 left-padded by `padded` tokens."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (2, length), generator=g)
    mask = torch.ones(2, length, dtype=torch.long)
    mask[1, :padded] = 0
    ids[1, :padded] = 0
    return ids, mask


def logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits.float()


def stock(name: str) -> str:
    return ARCHITECTURES[name][3]


@pytest.fixture(autouse=True)
def _count_fallbacks():
    fatr.fallbacks.clear()
    yield


@pytest.fixture
def fastattn_calls(monkeypatch):
    """The calls of the "fastattn" implementation (a counter wrapped around the registered function)."""
    calls = []
    registered = transformers.AttentionInterface._global_mapping["fastattn"]
    monkeypatch.setitem(transformers.AttentionInterface._global_mapping, "fastattn",
                        lambda *a, **k: calls.append(1) or registered(*a, **k))
    return calls


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_logits_match_stock(name, fastattn_calls):
    ids, mask = batch()
    ours, theirs = logits(build(name, "fastattn"), ids, mask), logits(build(name, stock(name)), ids, mask)
    real = mask.bool()
    assert (ours[real] - theirs[real]).abs().max().item() <= 2e-5
    assert len(fastattn_calls) == 2 and not fatr.fallbacks  # one call per layer, none on eager


@pytest.mark.parametrize("name", DECODERS)
def test_greedy_generation_matches_stock(name):
    ids, mask = batch(padded=3)
    kwargs = dict(attention_mask=mask, max_new_tokens=16, do_sample=False, min_new_tokens=16)
    with torch.no_grad():
        ours = build(name, "fastattn").generate(ids, **kwargs)
        theirs = build(name, stock(name)).generate(ids, **kwargs)
    assert ours.shape == (2, 24 + 16)
    assert torch.equal(ours, theirs)
    assert not fatr.fallbacks


def training_grads(model, ids, mask):
    model.train()
    # No loss on padding, nor on the first real token of a left-padded row: its logits come from a padded
    # position, whose query sees no real key (stock attention and fastattn output different things there).
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, 1:] = labels[:, 1:].masked_fill(mask[:, :-1] == 0, -100)
    if isinstance(model, transformers.BertForMaskedLM):
        labels = labels.masked_fill(torch.arange(ids.shape[1]) % 3 != 0, -100)  # a few masked-LM targets
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_training_step_gradients_match_stock(name):
    ids, mask = batch()
    ours = training_grads(build(name, "fastattn"), ids, mask)
    theirs = training_grads(build(name, stock(name)), ids, mask)
    assert ours.keys() == theirs.keys()
    if name.startswith("gpt-oss"):
        assert any(n.endswith("sinks") for n in ours)  # the sinks are trained too
    for n, grad in theirs.items():
        scale = grad.abs().max().item()
        # (a floor for gradients that are zero but for rounding, such as BERT's key bias: softmax ignores it)
        assert (ours[n] - grad).abs().max().item() <= 1e-4 * max(scale, 1e-6), n
    assert not fatr.fallbacks


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_bfloat16_logits_as_close_to_float32_as_stock(name):
    pytest.importorskip("ml_dtypes")
    ids, mask = batch()
    real = mask.bool()
    reference = logits(build(name, stock(name)), ids, mask)[real]

    def error(implementation):
        return (logits(build(name, implementation, torch.bfloat16), ids, mask)[real] - reference).square().mean().sqrt()

    assert error("fastattn") <= 1.25 * error(stock(name))
    assert not fatr.fallbacks


# ---- masks ---------------------------------------------------------------------------------------

def make_mask(**kwargs):
    arguments = dict(batch_size=2, q_length=6, kv_length=6, q_offset=0, kv_offset=0, dtype=torch.float32)
    arguments.update(kwargs)
    return fatr.mask(**arguments)


def test_mask_style_describes_causal_window_and_padding():
    causal = make_mask()
    assert (causal.causal, causal.offset, causal.window, causal.padding, causal.dense) == (True, 0, None, None, None)
    window = make_mask(mask_function=masking_utils.sliding_window_causal_mask_function(3), q_length=1,
                       kv_length=5, q_offset=9, kv_offset=5)
    assert (window.causal, window.offset, window.window) == (True, 4, (2, 0))  # keys kv > q - 3
    pad = torch.ones(2, 6, dtype=torch.long)
    pad[0, :2] = 0
    padded = make_mask(attention_mask=pad)
    assert torch.equal(padded.padding, pad.bool())  # (B, Lk), a view of the 2-D mask's keys
    assert make_mask(attention_mask=torch.ones(2, 6, dtype=torch.long)).padding is None
    both = make_mask(mask_function=masking_utils.bidirectional_mask_function)
    assert (both.causal, both.window) == (False, None)


def test_right_padding_becomes_key_lengths(monkeypatch):
    """Padding at the end of every row: the kernel gets kv_lengths (it skips those keys), not a mask."""
    pad = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    assert torch.equal(make_mask(attention_mask=pad).lengths, torch.tensor([4, 6]))
    assert make_mask(attention_mask=pad.flip(-1)).lengths is None  # left padding: a mask
    seen = []
    real = fatr.forward_prepared
    monkeypatch.setattr(fatr, "forward_prepared", lambda *a, **k: seen.append(a[4]) or real(*a, **k))
    ids, _ = batch(length=6, padded=0)
    with torch.no_grad():
        ours = build("bert-padding", "fastattn")(input_ids=ids, attention_mask=pad).logits
        theirs = build("bert-padding", "sdpa")(input_ids=ids, attention_mask=pad).logits
    assert seen[0].mask is None and list(seen[0].kv_lengths) == [4, 6]
    real_tokens = pad.bool()
    assert (ours[real_tokens] - theirs[real_tokens]).abs().max().item() <= 2e-5


def test_unrecognised_patterns_get_transformers_boolean_mask():
    chunked = masking_utils.and_masks(masking_utils.causal_mask_function,
                                      lambda b, h, q, kv: (q // 2) == (kv // 2))
    got = make_mask(mask_function=chunked)
    want = masking_utils.sdpa_mask(batch_size=2, q_length=6, kv_length=6, mask_function=chunked,
                                   allow_is_causal_skip=False)
    assert got.dense is not None and torch.equal(got.dense, want)


def test_a_pattern_that_means_something_else_is_not_taken_for_a_window(monkeypatch):
    """The recogniser checks what a function computes: were transformers' overlay to keep kv >= q - w
    instead, the mask would be built, not read as window (w - 1, 0)."""
    def sliding_window_overlay(sliding_window):
        def inner_mask(batch_idx, head_idx, q_idx, kv_idx):
            return kv_idx >= q_idx - sliding_window
        inner_mask.__qualname__ = "sliding_window_overlay.<locals>.inner_mask"
        inner_mask.__module__ = masking_utils.__name__
        return inner_mask

    monkeypatch.setattr(fatr, "_CHECKED", {})
    function = masking_utils.and_masks(sliding_window_overlay(3), masking_utils.causal_mask_function)
    assert fatr._pattern(function) is None
    assert make_mask(mask_function=function).dense is not None


@pytest.mark.parametrize("name", ["llama-gqa", "gemma2-softcap-window"])
def test_packed_sequences(name):
    """Several sequences in one row (no mask, position ids that restart): not plain causal."""
    ids, _ = batch(padded=0)
    positions = torch.cat([torch.arange(10), torch.arange(14)])[None].expand(2, -1)
    with torch.no_grad():  # (transformers looks for packed sequences only without a cache)
        ours = build(name, "fastattn")(input_ids=ids, position_ids=positions, use_cache=False).logits
        theirs = build(name, stock(name))(input_ids=ids, position_ids=positions, use_cache=False).logits
        alone = build(name, stock(name))(input_ids=ids[:, 10:], position_ids=positions[:, 10:], use_cache=False).logits
    assert (ours - theirs).abs().max().item() <= 2e-5
    assert (ours[:, 10:] - alone).abs().max().item() <= 2e-5  # the second sequence sees nothing of the first


def test_static_cache_generation():
    """A static cache: keys past the sequence are free slots, the diagonal sits at the query's position."""
    ids, mask = batch(padded=3)
    kwargs = dict(attention_mask=mask, max_new_tokens=8, min_new_tokens=8, do_sample=False,
                  cache_implementation="static")
    with torch.no_grad():
        ours = build("llama-gqa", "fastattn").generate(ids, **kwargs)
        theirs = build("llama-gqa", "sdpa").generate(ids, **kwargs)
    assert torch.equal(ours, theirs)
    assert not fatr.fallbacks


def test_a_4d_mask_given_by_the_caller():
    ids, _ = batch(length=8, padded=0)
    keep = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(3)) > 0.3
    keep |= torch.eye(8, dtype=torch.bool)
    with torch.no_grad():
        ours = build("llama-gqa", "fastattn")(input_ids=ids, attention_mask=keep).logits
        theirs = build("llama-gqa", "sdpa")(input_ids=ids, attention_mask=keep).logits
    assert (ours - theirs).abs().max().item() <= 2e-5


# ---- what falls back to eager --------------------------------------------------------------------

def test_dropout_in_training_runs_eager_visibly(caplog):
    name = "llama-gqa"
    ids, mask = batch()
    model = build(name, "fastattn")
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.5
    model.train()
    with caplog.at_level("DEBUG", logger="fastattn.transformers"):
        torch.manual_seed(5)
        ours = model(input_ids=ids, attention_mask=mask).logits
    assert fatr.fallbacks["attention dropout while training"] == 2  # one call per layer
    assert any("eager" in record.message for record in caplog.records)
    eager = build(name, "eager")
    for layer in eager.model.layers:
        layer.self_attn.attention_dropout = 0.5
    eager.train()
    torch.manual_seed(5)
    theirs = eager(input_ids=ids, attention_mask=mask).logits  # the same dropout draws: eager's computation
    assert torch.equal(ours, theirs)


def test_output_attentions_runs_eager():
    ids, mask = batch()
    with torch.no_grad():
        ours = build("gemma2-softcap-window", "fastattn")(input_ids=ids, attention_mask=mask, output_attentions=True)
        theirs = build("gemma2-softcap-window", "eager")(input_ids=ids, attention_mask=mask, output_attentions=True)
    assert len(ours.attentions) == 2 and all(a is not None for a in ours.attentions)
    for a, b in zip(ours.attentions, theirs.attentions):
        torch.testing.assert_close(a, b)
    assert fatr.fallbacks["attention weights asked for (output_attentions)"] == 2


def test_the_docs_page_example_runs():
    import pathlib
    import re

    page = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "transformers.md").read_text()
    namespace: dict = {}
    for block in re.findall(r"```python\n(.*?)```", page, re.S):
        exec(compile(block, "docs/transformers.md", "exec"), namespace)
    assert namespace["tokens"].shape[0] == 1 and 12 < namespace["tokens"].shape[1] <= 20 and not fatr.fallbacks


NO_EXTENSION = """
import json, os, warnings
os.environ["HF_HUB_OFFLINE"] = "1"
import torch, transformers
import fastattn, fastattn.transformers
fastattn.transformers.register()
def config():  # one each: a model keeps its config's attention implementation
    return transformers.LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                    num_attention_heads=8, num_key_value_heads=2)
torch.manual_seed(0)
ours = transformers.LlamaForCausalLM._from_config(config(), attn_implementation="fastattn").eval()
theirs = transformers.LlamaForCausalLM._from_config(config(), attn_implementation="sdpa").eval()
theirs.load_state_dict(ours.state_dict())
ids = torch.randint(1, 97, (2, 10))
with warnings.catch_warnings(record=True) as caught, torch.no_grad():
    warnings.simplefilter("always")
    diff = (ours(input_ids=ids).logits - theirs(input_ids=ids).logits).abs().max().item()
print(json.dumps(dict(file=fastattn.__file__, backend=fastattn.show_config()["backend"], diff=diff,
                      warnings=[(w.category.__name__, str(w.message)) for w in caught
                                if "fastattn" in str(w.message)], fallbacks=dict(fastattn.transformers.fallbacks))))
"""


@pytest.mark.skipif(not list(__import__("pathlib").Path(fatr.__file__).parent.glob("_core.*.so")),
                    reason="the installed fastattn has no compiled extension to remove")
def test_without_the_extension_the_numpy_backend_runs_with_its_one_warning(tmp_path):
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    package = Path(fatr.__file__).parent
    shutil.copytree(package, tmp_path / "fastattn", ignore=shutil.ignore_patterns("_core.*.so", "__pycache__"))
    result = subprocess.run([sys.executable, "-c", NO_EXTENSION], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=str(tmp_path)), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.splitlines()[-1])
    assert seen["file"] == str(tmp_path / "fastattn" / "__init__.py") and seen["backend"] == "numpy"
    assert [w[0] for w in seen["warnings"]] == ["RuntimeWarning"]  # fastattn's one fallback warning
    assert "Using the NumPy backend" in seen["warnings"][0][1]
    assert 0 < seen["diff"] <= 2e-5 and not seen["fallbacks"]  # (0: the same implementation ran twice)


def test_register_is_idempotent_and_named():
    fatr.register()
    fatr.register()
    assert transformers.AttentionInterface._global_mapping["fastattn"] is fatr.attention_forward
    assert masking_utils.AttentionMaskInterface._global_mapping["fastattn"] is fatr.mask


def test_lean_door_for_inference_custom_op_for_training(monkeypatch):
    """No grad: the kernel straight from the tensors (forward_prepared); with grad: the custom op."""
    seen = []
    real_prepared, real_op = fatr.forward_prepared, fatr.fat._sdpa
    monkeypatch.setattr(fatr, "forward_prepared", lambda *a, **k: seen.append("lean") or real_prepared(*a, **k))
    monkeypatch.setattr(fatr.fat, "_sdpa", lambda *a, **k: seen.append("op") or real_op(*a, **k))
    ids, mask = batch()
    model = build("gpt-oss-sinks-window", "fastattn")
    logits(model, ids, mask)
    assert seen == ["lean", "lean"]
    seen.clear()
    model(input_ids=ids, attention_mask=mask).logits.sum().backward()
    assert seen == ["op", "op"]
    assert np.all([layer.self_attn.sinks.grad is not None for layer in model.model.layers])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bfloat16", "float32"])
def test_register_precision_reaches_every_call(dtype, monkeypatch):
    """register(precision="medium") runs each layer at "medium" (inference and training), the default
    register() at "highest" (torch's default float32 matmul precision); a bad value is refused and
    changes nothing."""
    from fastattn import _contract
    seen = []
    real_prepared, real_op = fatr.forward_prepared, fatr.fat._sdpa
    monkeypatch.setattr(fatr, "forward_prepared",
                        lambda q, k, v, out, options: seen.append(options.precision) or real_prepared(q, k, v, out, options))
    monkeypatch.setattr(fatr.fat, "_sdpa", lambda *a: seen.append(a[-1]) or real_op(*a))
    ids, mask = batch()
    model = build("llama-gqa", "fastattn", dtype)
    try:
        fatr.register(precision="medium")
        logits(model, ids, mask)
        model(input_ids=ids, attention_mask=mask).logits.sum().backward()
        assert seen == [_contract.PRECISIONS["medium"]] * 2 + ["medium"] * 2
        with pytest.raises(ValueError, match="precision"):
            fatr.register(precision="low")
        assert fatr._precision == "medium"
    finally:
        fatr.register()
    seen.clear()
    logits(model, ids, mask)
    assert seen == [_contract.PRECISIONS["highest"]] * 2  # (torch's float32 matmul precision: "highest")
