"""Hugging Face models end to end: stock attention against attn_implementation="fastattn".

    python bench/transformers_e2e.py [--rounds 5] [--quick] [--only llama-4096,llama-32,minilm,memory]

Config-built models with random weights (no downloads), float32, greedy decoding:

- llama-4096 / llama-32: a LLaMA architecture (hidden 512, 8 heads of 64, 2 K/V heads, 4 layers,
  TinyLlama's MLP ratio and vocabulary) generates 32 tokens after a prompt of 4096 / 32 tokens:
  prefill tokens/s, decode tokens/s, and the time per attention call inside the model (each
  implementation's attention function timed where transformers calls it);
- minilm: an encoder of all-MiniLM-L6-v2's sizes (BERT, hidden 384, 6 layers, 12 heads of 32),
  a batch of 32 sentences padded to 16 tokens (6 to 16 real ones): sentences/s;
- memory: the peak resident memory a 4096-token prefill of small Gemma 2 and GPT-OSS models adds,
  eager (transformers' only exact path for softcap and sinks) against fastattn, each in a fresh
  process.

Stock and fastattn alternate round by round in one process (the machine is shared and noisy); the
tables give medians and their ratio, and check that both decoded the same tokens. The CPU and the
thread counts are printed first. Needs torch and transformers.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS  # noqa: E402

import fastattn  # noqa: E402
import fastattn.transformers  # noqa: E402
from fastattn.bench.environment import cpu_model  # noqa: E402

fastattn.transformers.register()

LLAMA = dict(vocab_size=32000, hidden_size=512, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8,
             num_key_value_heads=2, max_position_embeddings=8192)
MINILM = dict(vocab_size=30522, hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=12,
              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
MEMORY_MODELS = {
    "Gemma 2": ("Gemma2Config", "Gemma2ForCausalLM",
                dict(vocab_size=1024, hidden_size=512, intermediate_size=1024, num_hidden_layers=2,
                     num_attention_heads=8, num_key_value_heads=4, head_dim=64, sliding_window=4096,
                     query_pre_attn_scalar=64)),
    "GPT-OSS": ("GptOssConfig", "GptOssForCausalLM",
                dict(vocab_size=1024, hidden_size=512, intermediate_size=512, num_hidden_layers=2,
                     num_attention_heads=8, num_key_value_heads=2, head_dim=64, sliding_window=128,
                     num_local_experts=4, num_experts_per_tok=2,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
}


# ---- timing attention calls where transformers makes them ----------------------------------------

class CallTimer:
    """Wraps every registered attention function so that the calls of one forward are timed by kind
    (prefill: more than one query row; decode: one)."""

    def __init__(self):
        self.seconds = defaultdict(float)
        self.calls = defaultdict(int)
        for name in ("sdpa", "fastattn"):
            ALL_ATTENTION_FUNCTIONS._global_mapping[name] = self._timed(ALL_ATTENTION_FUNCTIONS._global_mapping[name])

    def _timed(self, function):
        def timed(module, query, *args, **kwargs):
            start = time.perf_counter()
            result = function(module, query, *args, **kwargs)
            kind = "prefill" if query.shape[2] > 1 else "decode"
            self.seconds[kind] += time.perf_counter() - start
            self.calls[kind] += 1
            return result
        return timed

    def take(self):
        """{kind: seconds per call} since the last take."""
        per_call = {kind: self.seconds[kind] / self.calls[kind] for kind in self.calls if self.calls[kind]}
        self.seconds.clear()
        self.calls.clear()
        return per_call


def build(config_class, model_class, arguments, implementation, seed=0):
    config = getattr(transformers, config_class)(**arguments)
    torch.manual_seed(seed)
    model = getattr(transformers, model_class)(config)
    model.set_attn_implementation(implementation)
    return model.eval()


# transformers 5.x calls the cache `cache`, 4.x `past_key_values`
CACHE = "cache" if "cache" in inspect.signature(transformers.LlamaForCausalLM.forward).parameters else "past_key_values"


def generate(model, prompt, new_tokens):
    """Greedy decoding with the KV cache: (prefill seconds, decode seconds, tokens)."""
    with torch.no_grad():
        start = time.perf_counter()
        out = model(input_ids=prompt, use_cache=True, logits_to_keep=1)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        prefilled = time.perf_counter()
        tokens = [token]
        cache = getattr(out, CACHE)
        for _ in range(new_tokens - 1):
            out = model(input_ids=token, use_cache=True, **{CACHE: cache})
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            cache = getattr(out, CACHE)
            tokens.append(token)
        done = time.perf_counter()
    return prefilled - start, done - prefilled, torch.cat(tokens, dim=1)


def llama_case(prompt_length, rounds, timer, progress):
    new_tokens = 32
    models = {impl: build("LlamaConfig", "LlamaForCausalLM", LLAMA, impl) for impl in ("sdpa", "fastattn")}
    prompt = torch.randint(0, LLAMA["vocab_size"], (1, prompt_length), generator=torch.Generator().manual_seed(1))
    results = {impl: defaultdict(list) for impl in models}
    tokens = {}
    generate(models["sdpa"], prompt[:, :64], 4)  # warm-up (threads, allocator)
    generate(models["fastattn"], prompt[:, :64], 4)
    timer.take()
    for r in range(rounds):
        for impl in (("sdpa", "fastattn") if r % 2 == 0 else ("fastattn", "sdpa")):
            progress(f"llama-{prompt_length}", r, rounds, impl)
            prefill, decode, out = generate(models[impl], prompt, new_tokens)
            per_call = timer.take()
            row = results[impl]
            row["prefill_s"].append(prefill)
            row["decode_s"].append(decode)
            row["total_s"].append(prefill + decode)
            row["prefill_call_s"].append(per_call.get("prefill", float("nan")))
            row["decode_call_s"].append(per_call.get("decode", float("nan")))
            tokens[impl] = out
    summary = {impl: {key: statistics.median(values) for key, values in row.items()} for impl, row in results.items()}
    for impl, row in summary.items():
        row["prefill_tok_s"] = prompt_length / row["prefill_s"]
        row["decode_tok_s"] = (new_tokens - 1) / row["decode_s"]
    return dict(case=f"LLaMA, generate {new_tokens} after {prompt_length}", summary=summary,
                speedup=summary["sdpa"]["total_s"] / summary["fastattn"]["total_s"],
                same_tokens=bool(torch.equal(tokens["sdpa"], tokens["fastattn"])))


def minilm_case(rounds, timer, progress, batch=32, length=16):
    models = {impl: build("BertConfig", "BertModel", MINILM, impl) for impl in ("sdpa", "fastattn")}
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1, MINILM["vocab_size"], (batch, length), generator=g)
    lengths = torch.randint(6, length + 1, (batch,), generator=g)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    outputs, results = {}, {impl: defaultdict(list) for impl in models}
    with torch.no_grad():
        for impl, model in models.items():
            model(input_ids=ids, attention_mask=mask)
        timer.take()
        for r in range(rounds):
            for impl in (("sdpa", "fastattn") if r % 2 == 0 else ("fastattn", "sdpa")):
                progress("minilm", r, rounds, impl)
                seconds = []
                for _ in range(5):
                    start = time.perf_counter()
                    outputs[impl] = models[impl](input_ids=ids, attention_mask=mask).last_hidden_state
                    seconds.append(time.perf_counter() - start)
                results[impl]["total_s"].append(statistics.median(seconds))
                results[impl]["prefill_call_s"].append(timer.take().get("prefill", float("nan")))
    summary = {impl: {key: statistics.median(values) for key, values in row.items()} for impl, row in results.items()}
    for row in summary.values():
        row["sentences_s"] = batch / row["total_s"]
    real = mask.bool()
    diff = (outputs["sdpa"] - outputs["fastattn"])[real].abs().max().item()
    return dict(case=f"MiniLM-sized encoder, {batch} x {length} tokens (padded)", summary=summary,
                speedup=summary["sdpa"]["total_s"] / summary["fastattn"]["total_s"], max_diff=diff)


# ---- peak memory, each in a fresh process --------------------------------------------------------

def memory_child(name, implementation, length):
    """Runs in its own process: the peak RSS a prefill adds (MiB), printed as JSON."""
    config_class, model_class, arguments = MEMORY_MODELS[name]
    model = build(config_class, model_class, arguments, implementation)
    ids = torch.randint(0, arguments["vocab_size"], (1, length), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        model(input_ids=ids[:, :64], logits_to_keep=1)  # thread pools, one-time allocations
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # the peak (VmHWM) restarts from the current RSS
        before = _status_kib("VmRSS")
        model(input_ids=ids, use_cache=False, logits_to_keep=1)
        peak = _status_kib("VmHWM")
    print(json.dumps({"added_mib": (peak - before) / 1024}))


def _status_kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def memory_case(length, progress):
    rows = []
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")  # freed blocks go back to the system (test_memory.py)
    for index, name in enumerate(MEMORY_MODELS):
        row = {"model": name}
        for implementation in ("eager", "fastattn"):
            progress(f"memory {name}", index, len(MEMORY_MODELS), implementation)
            child = subprocess.run([sys.executable, __file__, "--memory-child", name, implementation, str(length)],
                                   capture_output=True, text=True, env=env, check=True)
            row[implementation] = json.loads(child.stdout.strip().splitlines()[-1])["added_mib"]
        rows.append(row)
    return rows


# ---- report --------------------------------------------------------------------------------------

def progress_printer():
    started = time.perf_counter()

    def progress(case, index, total, implementation):
        print(f"\r[{time.perf_counter() - started:6.1f} s] {case}: round {index + 1}/{total}, {implementation:<8}",
              end="", flush=True)
    return progress


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one round, a 512-token prompt instead of 4096")
    parser.add_argument("--only", default="llama-4096,llama-32,minilm,memory")
    parser.add_argument("--memory-child", nargs=3, metavar=("MODEL", "IMPLEMENTATION", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        name, implementation, length = args.memory_child
        memory_child(name, implementation, int(length))
        return
    rounds = 1 if args.quick else args.rounds
    long_prompt = 512 if args.quick else 4096
    only = set(args.only.split(","))
    print(f"CPU: {cpu_model()}; torch {torch.__version__} ({torch.get_num_threads()} threads), transformers "
          f"{transformers.__version__}, fastattn {fastattn.__version__} ({fastattn.get_num_threads()} threads, "
          f"{fastattn.get_isa()}); float32, medians of {rounds} alternating rounds", flush=True)
    timer = CallTimer()
    progress = progress_printer()
    cases = []
    if "llama-4096" in only:
        cases.append(llama_case(long_prompt, rounds, timer, progress))
    if "llama-32" in only:
        cases.append(llama_case(32, rounds, timer, progress))
    minilm = minilm_case(rounds, timer, progress) if "minilm" in only else None
    memory = memory_case(long_prompt, progress) if "memory" in only else None
    print(flush=True)

    if cases:
        print("\n| case | prefill tok/s stock / fastattn | decode tok/s stock / fastattn | attention ms/call prefill "
              "stock / fastattn | attention µs/call decode stock / fastattn | end to end speed-up | same tokens |")
        print("|---|---:|---:|---:|---:|---:|---|")
        for case in cases:
            s, f = case["summary"]["sdpa"], case["summary"]["fastattn"]
            print(f"| {case['case']} | {s['prefill_tok_s']:.0f} / {f['prefill_tok_s']:.0f} | "
                  f"{s['decode_tok_s']:.1f} / {f['decode_tok_s']:.1f} | "
                  f"{s['prefill_call_s'] * 1e3:.2f} / {f['prefill_call_s'] * 1e3:.2f} | "
                  f"{s['decode_call_s'] * 1e6:.0f} / {f['decode_call_s'] * 1e6:.0f} | {case['speedup']:.2f} | "
                  f"{'yes' if case['same_tokens'] else 'NO'} |")
    if minilm:
        s, f = minilm["summary"]["sdpa"], minilm["summary"]["fastattn"]
        print("\n| case | sentences/s stock / fastattn | attention µs/call stock / fastattn | speed-up | max diff |")
        print("|---|---:|---:|---:|---:|")
        print(f"| {minilm['case']} | {s['sentences_s']:.0f} / {f['sentences_s']:.0f} | "
              f"{s['prefill_call_s'] * 1e6:.0f} / {f['prefill_call_s'] * 1e6:.0f} | {minilm['speedup']:.2f} | "
              f"{minilm['max_diff']:.1e} |")
    if memory:
        print(f"\n| {long_prompt}-token prefill | peak memory added, eager | fastattn |")
        print("|---|---:|---:|")
        for row in memory:
            print(f"| {row['model']} | {row['eager']:.0f} MiB | {row['fastattn']:.0f} MiB |")


if __name__ == "__main__":
    main()
