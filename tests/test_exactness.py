"""Exactness: a prompt's KV cache and logits are the same bits however they are computed.

The engine's promise (llamapyz/model/forward.py): a row's result depends only on its own sequence. So on
tiny synthetic models of every weight format and every architecture's options these must be bit-identical
(compared as raw bits, so not even -0.0 against 0.0 passes; never a tolerance):

- one pass over the prompt, chunks of 5, chunks of 1, token by token through `decode`, `prefill_chunks` with a
  small budget, and prompts that reuse (or cut back) a cached prefix;
- a sequence prefilled and decoded alone, and together with 1, 3 or 7 others of other lengths, in any order,
  with chunk budgets that split sequences across passes;
- one thread and two;
- every CPU tier this machine runs (each in a child process forced to it).

The server's batching and prompt cache, and `llamapyz run` giving everyone the same text, rest on this.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest

from llamapyz import Model
from llamapyz.kernels import KERNELS, TARGET
from llamapyz.machine.threads import set_threads
from llamapyz.model.model import Context
from tests.test_architectures import VARIANTS
from tests.test_model import WEIGHT_TYPES
from tests.test_tiers import HERE, run_forced

PROMPT = "the cat in the hat, there and here; the end of it all, and then some more of the cat"
# name: (arch, weight_type, write_model options, n_ctx): llama in every format, with its own output matrix;
# gemma3 (sliding windows, qk-norm, post-norms) in an integer format of each activation kind (q8_0, q8_K)
# and a float one; every other architecture's options (biases, fused qkv, soft-capping, experts, rope
# factors...) in Q4_K
MODELS = {f"llama-{t}": ("llama", t, {"tied": False}, 64) for t in WEIGHT_TYPES}
MODELS |= {f"gemma3-{t}": ("gemma3", t, {}, 64) for t in ("Q8_0", "Q4_K", "F16")}
MODELS |= {f"{name}-Q4_K": (arch, "Q4_K", options, n_ctx) for name, (arch, options, n_ctx) in VARIANTS.items()}
# a float32 cache too, where an f16 one could round a difference away (prefill passes output only keys and
# values: a last-bit difference there reaches the logits only if it survives the f16 rounding)
F32_CACHE = ["llama-Q4_K", "llama-F16", "gemma3-Q8_0"]
# a sequence with 1, 3 and 7 others (indices into `sequences`), in varied orders, and prefill chunk budgets:
# all at once, or 10 tokens a pass (sequences split across passes, several in one pass)
GROUPS = [(3, 0), (0, 5, 2, 7), (6, 1, 4, 0, 7, 2, 5, 3)]
BUDGETS = [None, 10]


@pytest.fixture(scope="module")
def model_path(tiny_models):
    def get(name: str):
        arch, weight_type, options, _ = MODELS[name]
        return tiny_models(arch, weight_type, **options)

    return get


def load(model_path, name: str, **options) -> Model:
    # one thread unless told: each numba parallel region waits for every thread, which on a busy 2-core
    # machine makes these tiny models 5-20x slower; thread counts are compared on their own below
    return Model.load(model_path(name), n_ctx=MODELS[name][3], **{"n_threads": 1, **options})


def kv(ctx: Context) -> tuple[np.ndarray, np.ndarray]:
    """Copies of every layer's keys and values (n_layer, n_tokens, kv_dim) of the tokens in ctx."""
    n = len(ctx.tokens)
    return ctx.cache.keys[:, :n].copy(), ctx.cache.values[:, :n].copy()


def assert_bits(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """The same dtype, shape and bits; else where the first difference is (e.g. (layer, position, dim))."""
    got, want = np.ascontiguousarray(got), np.ascontiguousarray(want)
    assert (got.dtype, got.shape) == (want.dtype, want.shape), what
    differ = got.view(f"u{got.itemsize}") != want.view(f"u{want.itemsize}")
    if differ.any():
        first = tuple(int(i) for i in np.argwhere(differ)[0])
        pytest.fail(f"{what}: {int(differ.sum())} of {differ.size} values differ, the first at {first}: "
                    f"{got[first]!r} != {want[first]!r}")


def assert_same_kv(got: Context, want: tuple[np.ndarray, np.ndarray], what: str) -> None:
    keys, values = kv(got)
    assert_bits(keys, want[0], f"{what}: keys")
    assert_bits(values, want[1], f"{what}: values")


@pytest.mark.parametrize("name, kv_type", [(name, "f16") for name in sorted(MODELS)] +
                         [(name, "f32") for name in F32_CACHE])
def test_chunking_does_not_change_the_bits(model_path, name, kv_type):
    """One pass, chunks of 5 and of 1, decode token by token, small prefill budgets, reused prefixes."""
    model = load(model_path, name, kv_type=kv_type)
    tokens = model.tokenize(PROMPT)[:model.n_ctx]
    whole = model.logits(tokens)  # (n_tokens, n_vocab), one pass (batch_size 512)
    whole_kv = kv(model.context)
    for batch_size in (5, 1):
        chunked = load(model_path, name, kv_type=kv_type, batch_size=batch_size)
        assert_bits(chunked.logits(tokens), whole, f"batch_size {batch_size}: logits")
        assert_same_kv(chunked.context, whole_kv, f"batch_size {batch_size}")

    ctx = model.new_context()
    decoded = np.stack([model.decode(token, ctx) for token in tokens])
    assert_bits(decoded, whole, "token by token through decode: logits")
    assert_same_kv(ctx, whole_kv, "token by token through decode")

    for budget in (3, 1):  # as Model.prefill, in passes of `budget` tokens
        ctx = model.new_context()
        prompt = model.start_prompt(tokens, ctx)
        while prompt.remaining:
            model.prefill_chunks([prompt], budget=budget)
        assert_bits(model.decode(prompt.last_token, ctx), whole[-1], f"prefill budget {budget}: logits")
        assert_same_kv(ctx, whole_kv, f"prefill budget {budget}")

    ctx = model.new_context()  # a cached prefix reused, then the context cut back to a shorter prompt
    model.prefill(tokens[:10], ctx)
    assert_bits(model.prefill(tokens, ctx), whole[-1], "after a reused prefix of 10: logits")
    assert_same_kv(ctx, whole_kv, "after a reused prefix of 10")
    assert_bits(model.prefill(tokens[:20], ctx), whole[19], "cut back to 20 tokens: logits")
    assert_same_kv(ctx, (whole_kv[0][:, :20], whole_kv[1][:, :20]), "cut back to 20 tokens")


def sequences(n_vocab: int) -> list[tuple[list[int], list[int]]]:
    """Eight (prompt, continuation) pairs of distinct prompt lengths, one of a single token."""
    rng = np.random.default_rng(0)
    return [(rng.integers(2, n_vocab, length).tolist(), rng.integers(2, n_vocab, 3).tolist())
            for length in (19, 1, 7, 25, 12, 4, 22, 9)]  # + 3 fit phi3-short's n_ctx 32


def run_alone(model: Model, prompt: list[int], continuation: list[int]) -> tuple[np.ndarray, Context]:
    """Logits (1 + len(continuation), n_vocab) after the prompt and each continuation token, fresh context."""
    ctx = model.new_context()
    rows = [model.prefill(prompt, ctx)]
    rows += [model.decode(token, ctx) for token in continuation]
    return np.stack(rows), ctx


def run_together(model: Model, group: list[tuple[list[int], list[int]]],
                 budget: int | None) -> tuple[np.ndarray, list[Context]]:
    """`run_alone` for several sequences at once, as the server does: prompts prefilled together in passes
    of `budget` tokens, then every step decoded for all of them in one `decode_batch`. Logits
    (n_sequences, steps, n_vocab)."""
    contexts = [model.new_context() for _ in group]
    prompts = [model.start_prompt(prompt, ctx) for (prompt, _), ctx in zip(group, contexts, strict=True)]
    while live := [p for p in prompts if p.remaining]:
        model.prefill_chunks(live, budget)
    steps = [[p.last_token for p in prompts], *zip(*(continuation for _, continuation in group), strict=True)]
    rows = [model.decode_batch(list(tokens), contexts) for tokens in steps]
    return np.stack(rows, axis=1), contexts


@pytest.mark.parametrize("name, kv_type", [(name, "f16") for name in sorted(MODELS)] +
                         [(name, "f32") for name in F32_CACHE])
def test_batching_does_not_change_the_bits(model_path, name, kv_type):
    """Each sequence prefilled and decoded with 1, 3 or 7 others gives what it gives alone."""
    model = load(model_path, name, kv_type=kv_type)
    pairs = sequences(model.n_vocab)
    alone = [run_alone(model, prompt, continuation) for prompt, continuation in pairs]
    alone = [(logits, kv(ctx)) for logits, ctx in alone]
    for group in GROUPS:
        for budget in BUDGETS:
            logits, contexts = run_together(model, [pairs[i] for i in group], budget)
            for i, row, ctx in zip(group, logits, contexts, strict=True):
                what = f"sequence {i} with {len(group) - 1} others, budget {budget}"
                assert_bits(row, alone[i][0], f"{what}: logits")
                assert_same_kv(ctx, alone[i][1], what)



def run_mixed(model: Model, group: list[tuple[list[int], list[int]]], budget: int) -> tuple[np.ndarray, list[Context]]:
    """`run_alone` for several sequences as the server's engine turns run them: sequence i arrives at turn i,
    and each turn is one `Model.step` with the next chunks of the prompts (`chunk_plan`) and a token for
    every sequence that decodes, a prompt's last token in the pass that evaluates its last chunk. Logits
    (n_sequences, steps, n_vocab)."""
    contexts = [model.new_context() for _ in group]
    prompts, fed, rows = [], [[] for _ in group], [[] for _ in group]  # fed: tokens each sequence decoded
    turn = 0
    while any(len(f) < 1 + len(c) for f, (_, c) in zip(fed, group, strict=True)):
        if turn < len(group):
            prompts.append(model.start_prompt(group[turn][0], contexts[turn]))
        chunks = model.chunk_plan([p for p in prompts if p.remaining > 0], budget)
        finishing = {id(p) for p, n in chunks if n == p.remaining}
        decoding = [i for i, p in enumerate(prompts) if len(fed[i]) < 1 + len(group[i][1])
                    and (fed[i] or p.remaining == 0 or id(p) in finishing)]
        tokens = [group[i][1][len(fed[i]) - 1] if fed[i] else prompts[i].last_token for i in decoding]
        logits = model.step(chunks, tokens, [contexts[i] for i in decoding])
        for i, token, row in zip(decoding, tokens, logits if decoding else [], strict=True):
            fed[i].append(token)
            rows[i].append(row)
        turn += 1
    return np.stack([np.stack(r) for r in rows]), contexts


@pytest.mark.parametrize("name", sorted(MODELS))
def test_one_pass_of_chunks_and_tokens_does_not_change_the_bits(model_path, name):
    """Prompts arriving while others decode share each pass with them (the engine's one pass per turn), and
    a prompt's last chunk and last token share a pass: each sequence still gives what it gives alone."""
    model = load(model_path, name)
    pairs = sequences(model.n_vocab)
    for budget in (4, 512):
        logits, contexts = run_mixed(model, pairs, budget)
        for i, (prompt, continuation) in enumerate(pairs):
            want, ctx = run_alone(model, prompt, continuation)
            what = f"sequence {i} in mixed passes, budget {budget}"
            assert_bits(logits[i], want, f"{what}: logits")
            assert_same_kv(contexts[i], kv(ctx), what)

# every model whose weights have integer kernels: its layers run as the fused numba steps
FUSED = [name for name in sorted(MODELS) if getattr(KERNELS.get(MODELS[name][1]), "format_id", None) is not None]


@pytest.mark.parametrize("name", FUSED)
def test_the_layer_kernels_give_the_python_steps_bits(model_path, name):
    """A layer whose products allow runs each step as one numba call (kernels/layer.py); the Python steps
    that other layers take (float formats, experts) must give the same bits, prefill and batched decode."""
    fused, steps = load(model_path, name), load(model_path, name)
    assert all(f.qkv is not None and f.o is not None for f in fused.transformer.fused)
    steps.transformer.fused = [dataclasses.replace(f, qkv=None, o=None, gate_up=None, down=None)
                               for f in steps.transformer.fused]
    pairs = sequences(fused.n_vocab)[:3]
    results = []
    for model in (fused, steps):
        whole = model.logits(model.tokenize(PROMPT)[:model.n_ctx])
        logits, contexts = run_together(model, pairs, budget=10)
        results.append((whole, kv(model.context), logits, [kv(ctx) for ctx in contexts]))
    (whole, whole_kv, logits, kvs), (want_whole, want_kv, want_logits, want_kvs) = results
    assert_bits(whole, want_whole, "one pass: logits")
    assert_bits(whole_kv[0], want_kv[0], "one pass: keys")
    assert_bits(logits, want_logits, "three sequences decoded together: logits")
    for got, want in zip(kvs, want_kvs, strict=True):
        assert_bits(got[0], want[0], "batched: keys")
        assert_bits(got[1], want[1], "batched: values")


# --- threads and CPU tiers: a fingerprint of each model ---------------------------------------------------

FINGERPRINTED = ["llama-Q4_1", "llama-Q8_0", "llama-Q3_K", "llama-Q4_K", "llama-Q6_K", "llama-F16", "llama-BF16",
                 "llama-IQ4_NL", "llama-IQ4_XS", "llama-MXFP4", "llama-TQ1_0", "llama-IQ2_XS", "llama-IQ3_S",
                 "llama-IQ1_M",
                 "gemma3-Q4_K", "gemma2-Q4_K", "qwen3moe-Q4_K"]
FINGERPRINTS = ("import json, sys; from tests.test_exactness import fingerprint; "
                "print(json.dumps({path: fingerprint(path) for path in sys.argv[1:]}))")


def fingerprint(path: str, n_threads: int = 1) -> dict[str, str]:
    """sha256 of a fixed prompt's logits (one pass, then 4 greedy steps through decode) and of its KV cache."""
    model = Model.load(path, n_ctx=64, n_threads=n_threads)
    rows = model.logits(model.tokenize(PROMPT)[:56])
    steps = [rows]
    for _ in range(4):
        steps.append(model.decode(int(steps[-1][-1].argmax()))[None])
    keys, values = kv(model.context)
    return {"logits": hashlib.sha256(np.concatenate(steps).tobytes()).hexdigest(),
            "kv": hashlib.sha256(keys.tobytes() + values.tobytes()).hexdigest()}


def test_thread_count_does_not_change_the_bits(model_path):
    if set_threads(2) < 2:
        pytest.skip("numba runs one thread here")
    for name in ["llama-Q8_0", "llama-Q4_K", "llama-F16", "qwen3moe-Q4_K"]:
        path = str(model_path(name))
        assert fingerprint(path, n_threads=2) == fingerprint(path, n_threads=1), name


@pytest.mark.slow  # child processes; and test_tiers.py runs this file's other tests under every tier
def test_every_runnable_cpu_tier_gives_the_same_bits(model_path):
    """This process's tier against each other tier this CPU runs, each in one child process forced to it."""
    others = [name for name in HERE if name != TARGET.name]
    if not others:
        pytest.skip(f"this CPU runs one tier only ({TARGET.name})")
    paths = [str(model_path(name)) for name in FINGERPRINTED]
    here = {path: fingerprint(path) for path in paths}
    for tier in others:
        done = run_forced(tier, "-c", FINGERPRINTS, *paths, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        there = json.loads(done.stdout.splitlines()[-1])
        differ = [f"{name} {part}" for name, path in zip(FINGERPRINTED, paths, strict=True)
                  for part in ("logits", "kv") if there[path][part] != here[path][part]]
        assert not differ, f"{tier} differs from {TARGET.name}: {', '.join(differ)}"
