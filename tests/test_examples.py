"""The examples in examples/: they run, they learn, their hand-written gradients are right, each
describes itself in --help (which needs no optional package), and the character model is saved
and reused.

Each example runs as a subprocess with this interpreter and environment (so it uses whichever
fastattn this test run imports), in a temporary directory (what it saves goes there), on short
settings, and its exit status and printed results are checked. The char transformer's building
blocks are imported from its file and their backward passes compared with central finite
differences in float64.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# Short settings for the char transformer: under a second on 2 cores, and every seed tried (0-7)
# reaches a held-out accuracy of 1.0 per character with them; the script's own bar is 2× chance.
CHAR_CI_ARGS = ["--steps", "60", "--batch-size", "32", "--d-model", "32", "--seq-len", "8", "--alphabet", "8"]


def run_example(name: str, *args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, timeout=300,
                            cwd=cwd, env=env)
    # Decoded by hand: text=True would turn the progress bar's \r into \n.
    result.stdout, result.stderr = result.stdout.decode(), result.stderr.decode()
    return result


def load_example(name: str):
    """Import examples/<name>.py as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"fastattn_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the scripts ----------------------------------------------------------------------------------

def test_train_self_attention_halves_the_loss_and_saves_what_it_trained(tmp_path):
    saved = tmp_path / "saved"
    result = run_example("train_self_attention.py", "--epochs", "100", "--seed", "0", "--save", str(saved),
                         cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    losses = [float(x) for x in re.findall(r"^Epoch \d+, Loss: (\S+)$", result.stdout, re.M)]
    assert len(losses) == 100
    assert losses[-1] < 0.5 * losses[0]
    assert f"Final loss: {losses[-1]:.6f}" in result.stdout
    assert "attention weights (1, 10, 10)" in result.stdout

    # Reloaded, the script's model predicts bitwise what the same training does here, and its
    # optimizer resumes bitwise: one more step from the files equals one more step in memory.
    from fastattn.layers import MultiHeadAttention
    from fastattn.optim import Adam
    ex = load_example("train_self_attention")
    model, optimizer, x, here = ex.train(100, 0, 32, log=lambda line: None)
    assert here == losses
    loaded = MultiHeadAttention.load(saved / "model.npz")
    for got, want in zip(loaded.forward(x, need_weights=True), model.forward(x, need_weights=True)):
        np.testing.assert_array_equal(got, want)
    resumed = Adam.load(saved / "adam.npz", ex.trainable(loaded))
    for m, opt in ((model, optimizer), (loaded, resumed)):
        m.backward(m.forward(x) - 0.5)
        opt.step({name: m.grads()[name] for name in ex.TRAINED})
    for name, p in model.parameters().items():
        np.testing.assert_array_equal(loaded.parameters()[name], p, err_msg=name)


def test_train_self_attention_fails_when_the_loss_does_not_halve(tmp_path):
    # One epoch: the final loss is the first, so the script's CI check must fail.
    result = run_example("train_self_attention.py", "--epochs", "1", "--save", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL" in result.stderr


def test_char_transformer_learns_to_reverse(tmp_path):
    result = run_example("char_transformer.py", *CHAR_CI_ARGS, "--seed", "0", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"held-out accuracy: (\S+) per character, (\S+) whole strings", result.stdout)
    assert match, result.stdout
    chance = 1 / 8
    assert float(match[1]) > 2 * chance  # the script's own bar (it exited 0)
    # A stricter one, with a wide margin below the 1.0 every seed reaches: a subtly wrong
    # gradient that only slows learning fails here rather than passing at 30%.
    assert float(match[1]) > 0.5
    # The progress bar: one line on stderr, redrawn with \r, ending at the last step.
    assert "\rstep 60/60 [####################] loss" in result.stderr
    assert "|" in result.stdout  # sample outputs "abc| -> cba"
    assert "saved the trained model to char_transformer.npz" in result.stdout
    assert (tmp_path / "char_transformer.npz").stat().st_size > 0


def test_visualize_attention_draws_the_reversal(tmp_path):
    pytest.importorskip("matplotlib")
    result = run_example("visualize_attention.py", "--dpi", "40", *CHAR_CI_ARGS, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.name for p in (tmp_path / "attention-maps").iterdir()) == [
        "attention-layer0.png", "attention-layer1.png", "attention-reversal.png"]
    share = float(re.search(r"(\d\.\d+) of the output rows' weight on the mirrored input", result.stdout).group(1))
    assert share > 0.5  # the script's own bar; these settings reach ~0.75


def test_generate_with_cache_agrees_with_recomputing(tmp_path):
    """The KV-cache decoder gives recomputation's greedy outputs (float32) and learns (int8)."""
    result = run_example("generate_with_cache.py", *CHAR_CI_ARGS, "--held-out", "100", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    rates = dict(re.findall(r"^\((\w)\) .*?\s+(\d+)\s+[\d.]+", result.stdout, re.M))
    assert set(rates) == {"a", "b", "c"}, result.stdout  # tokens/s of each method
    accuracy = [float(x) for x in re.findall(r"^\(\w\) .*?\s+\d+\s+([\d.]+)", result.stdout, re.M)]
    assert min(accuracy) > 0.25, result.stdout


def test_char_transformer_quiet(tmp_path):
    result = run_example("char_transformer.py", *CHAR_CI_ARGS, "--steps", "5", "--quiet", "--no-save", cwd=tmp_path)
    assert result.returncode in (0, 1)
    assert "\rstep" not in result.stderr
    assert "held-out accuracy:" in result.stdout
    assert not list(tmp_path.iterdir())  # --no-save


def test_the_generation_example_reuses_the_saved_model(tmp_path):
    """char_transformer.py saves its model; generate_with_cache.py loads it when it was trained with
    the same options, trains (and saves) a new one when not, and --retrain trains it anyway."""
    model = tmp_path / "model.npz"
    trained = run_example("char_transformer.py", *CHAR_CI_ARGS, "--quiet", "--save", str(model), cwd=tmp_path)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    generate = ["generate_with_cache.py", *CHAR_CI_ARGS, "--quiet", "--model", str(model)]
    loaded = run_example(*generate, cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    assert f"loaded the trained model from {model}" in loaded.stdout and "saved" not in loaded.stdout
    other = run_example(*generate, "--seed", "1", cwd=tmp_path)
    assert other.returncode == 0, other.stdout + other.stderr
    assert f"{model} holds a model trained with other options (--seed 0 (asked: 1))" in other.stdout
    assert f"saved the trained model to {model}" in other.stdout
    retrained = run_example(*generate, "--seed", "1", "--retrain", cwd=tmp_path)
    assert "loaded" not in retrained.stdout and f"saved the trained model to {model}" in retrained.stdout
    # The same model, loaded or trained: the same greedy outputs and accuracies.
    table = re.compile(r"^\(\w\) .*?\s+\d+\s+([\d.]+)", re.M)
    assert table.findall(run_example(*generate, "--seed", "1", cwd=tmp_path).stdout) == table.findall(retrained.stdout)


def test_a_saved_character_model_loads_bitwise(tmp_path, ct):
    args = ct.parse_args([*CHAR_CI_ARGS, "--steps", "5", "--quiet"])
    model, task = ct.fit(args)
    ct.save(model, args, tmp_path / "m")  # the name as given: no ".npz" appended
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
    loaded, loaded_task = ct.load(tmp_path / "m", args)
    np.testing.assert_array_equal(loaded_task.test, task.test)
    tokens = task.sequences(task.test[:4])[:, :-1]
    np.testing.assert_array_equal(loaded.forward(tokens), model.forward(tokens))
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ValueError, match="notes.txt is not a model saved by char_transformer.py"):
        ct.load(tmp_path / "notes.txt", args)


# -- --help: each example describes itself, and needs no optional package for it -----------------

def without(tmp_path: Path, *modules: str) -> dict:
    """An environment in which importing any of `modules` raises ImportError (a stand-in package
    first on PYTHONPATH), whether or not they are installed."""
    for name in modules:
        (tmp_path / "blocked" / name).mkdir(parents=True)
        (tmp_path / "blocked" / name / "__init__.py").write_text(f"raise ImportError('{name} is blocked')\n")
    path = os.pathsep.join(filter(None, [str(tmp_path / "blocked"), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def first_paragraph(path: Path) -> str:
    doc = re.match(r'\s*"""(.*?)(?:\n\n|""")', path.read_text(), re.S).group(1)
    return " ".join(doc.split())


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_help_describes_the_example_without_optional_packages(tmp_path, name):
    result = run_example(name, "--help", cwd=tmp_path, env=without(tmp_path, "matplotlib", "torch", "jax"))
    assert result.returncode == 0 and not result.stderr, result.stderr
    assert result.stdout.startswith(f"usage: {name} ")
    shown = " ".join(re.sub(r"(\w-)\n\s*", r"\1", result.stdout).split())  # argparse wraps after hyphens
    own = first_paragraph(EXAMPLES / name)
    others = [first_paragraph(p) for p in EXAMPLES.glob("*.py") if p.name != name]
    if name == "train_self_attention.py":  # its argparse description, shorter than the docstring
        own = "Train the self-attention article's Keras model with fastattn, in NumPy, and save it."
    assert own in shown, f"{name} --help does not show its own description {own!r}"
    assert not any(other in shown for other in others), f"{name} --help shows another example's description"
    assert not list((tmp_path).glob("*.npz"))  # --help trains and saves nothing


def test_visualize_without_matplotlib_says_what_to_install(tmp_path):
    result = run_example("visualize_attention.py", *CHAR_CI_ARGS, cwd=tmp_path, env=without(tmp_path, "matplotlib"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == ("visualize_attention.py draws with matplotlib, which is not installed: "
                                     'pip install matplotlib (in a clone of fastattn: pip install ".[viz]")')


# -- finite-difference gradient checks (float64, tiny sizes) --------------------------------------

def numerical_grad(f, array: np.ndarray, index, eps: float = 1e-6) -> float:
    """∂f/∂array[index] by central differences; array is perturbed in place and restored."""
    saved = array[index]
    array[index] = saved + eps
    up = f()
    array[index] = saved - eps
    down = f()
    array[index] = saved
    return (up - down) / (2 * eps)


def some_indices(shape, rng, count: int = 6):
    """Up to `count` distinct positions of an array of `shape` (all of them if fewer)."""
    size = int(np.prod(shape))
    flat = rng.choice(size, size=min(count, size), replace=False)
    return [np.unravel_index(i, shape) for i in flat]


def check_module_grads(module, x: np.ndarray, rng) -> None:
    """Compare module.backward with finite differences of the scalar loss ``Σ forward(x)·r``."""
    r = rng.standard_normal(module.forward(x).shape)

    def loss() -> float:
        return float((module.forward(x) * r).sum())

    loss()
    dx = module.backward(r)
    grads = {name: g.copy() for name, g in module.grads().items()}
    for index in some_indices(x.shape, rng, count=12):
        np.testing.assert_allclose(dx[index], numerical_grad(loss, x, index), rtol=1e-6, atol=1e-8)
    for name, p in module.parameters().items():
        for index in some_indices(p.shape, rng):
            np.testing.assert_allclose(grads[name][index], numerical_grad(loss, p, index), rtol=1e-6, atol=1e-8,
                                       err_msg=f"gradient of {name}{list(index)}")


@pytest.fixture(scope="module")
def ct():
    return load_example("char_transformer")


def test_layer_norm_gradients(ct, rng):
    ln = ct.LayerNorm(7, dtype=np.float64)
    ln.parameters()["gamma"][...] = rng.standard_normal(7)  # not the initial ones and zeros
    ln.parameters()["beta"][...] = rng.standard_normal(7)
    check_module_grads(ln, rng.standard_normal((2, 3, 7)), rng)


def test_mlp_gradients(ct, rng):
    mlp = ct.MLP(5, rng, dtype=np.float64)
    for p in mlp.parameters().values():
        p[...] = rng.standard_normal(p.shape)  # non-zero biases too
    check_module_grads(mlp, rng.standard_normal((2, 4, 5)), rng)


def test_gelu_matches_its_definition(ct):
    x = np.linspace(-6, 6, 101)
    y, dy = ct.gelu(x)
    np.testing.assert_allclose(y, 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3))))
    eps = 1e-6
    np.testing.assert_allclose(dy, (ct.gelu(x + eps)[0] - ct.gelu(x - eps)[0]) / (2 * eps), rtol=1e-6, atol=1e-9)


def tiny_model(ct, rng, backend: str):
    # One thread: hundreds of tiny calls, and results do not depend on the thread count.
    return ct.Model(vocab=5, max_len=7, dim=8, num_heads=2, layers=2, rng=rng, dtype=np.float64, backend=backend,
                    num_threads=1)


def test_model_gradients(ct, rng, backend):
    """Every parameter of the whole model, attention (fastattn's backward) included, on each backend."""
    model = tiny_model(ct, rng, backend)
    for p in model.parameters().values():  # LayerNorm's ones/zeros and zero biases would hide errors
        p += 0.1 * rng.standard_normal(p.shape)
    tokens = rng.integers(0, 5, size=(2, 7))
    targets = rng.integers(0, 5, size=(2, 7))
    weight = (rng.random((2, 7)) < 0.6).astype(np.float64)
    weight[0, 0] = 1.0  # at least one position counts

    def loss() -> float:
        return ct.cross_entropy(model.forward(tokens), targets, weight)[0]

    _, dlogits = ct.cross_entropy(model.forward(tokens), targets, weight)
    model.backward(dlogits)
    grads = {name: g.copy() for name, g in model.grads().items()}
    assert grads.keys() == model.parameters().keys()
    assert any(name.startswith("blocks.1.attn.w_q") for name in grads)
    for name, p in model.parameters().items():
        for index in some_indices(p.shape, rng, count=4):
            np.testing.assert_allclose(grads[name][index], numerical_grad(loss, p, index), rtol=1e-5, atol=1e-8,
                                       err_msg=f"gradient of {name}{list(index)}")


def test_model_is_causal(ct, rng, backend):
    """The logits at position t depend on tokens 0..t only: no peeking at the answer."""
    model = tiny_model(ct, rng, backend)
    tokens = rng.integers(0, 5, size=(3, 7))
    changed = tokens.copy()
    changed[:, 4:] = (changed[:, 4:] + 1) % 5
    a, b = model.forward(tokens), model.forward(changed)
    np.testing.assert_array_equal(a[:, :4], b[:, :4])
    assert not np.allclose(a[:, 4:], b[:, 4:])


def test_self_attention_model_is_the_articles(rng, backend):
    """train_self_attention.py's model computes the article's (softmax(Q·Kᵀ/√d)·V, weights) with
    Q, K, V = x·W + b, and its backward is right (finite differences, float64)."""
    ex = load_example("train_self_attention")
    model = ex.self_attention_model(6, 0, dtype=np.float64, backend=backend)
    for name in ex.TRAINED:  # non-zero biases too
        model.parameters()[name][...] = rng.standard_normal(model.parameters()[name].shape)
    x = rng.standard_normal((5, 6))
    p = model.parameters()
    q, k, v = (x @ p[f"w_{n}"] + p[f"b_{n}"] for n in "qkv")
    scores = q @ k.T / np.sqrt(6)
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    output, got_weights = model.forward(x, need_weights=True)
    np.testing.assert_allclose(output, weights @ v, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got_weights[0], weights, rtol=1e-12, atol=1e-14)
    check_module_grads(model, x, rng)


