"""`Model`: the public Python API of the engine.

    from llamapyz import Model
    model = Model.load("SmolLM2-135M-Instruct.Q4_1.gguf", n_ctx=2048, n_threads=2)
    ids = model.tokenize("The capital of France is")
    logits = model.logits(ids)                           # (n_tokens, n_vocab), fresh context
    vectors = model.embed(["a text", "another"])         # (2, n_embd), mean-pooled, unit length

A model holds one context (a `Context`: KV cache plus the tokens in it) for this simple API, which
`decode.generation.generate` drives: it reuses the cached prefix it shares with the previous call, so a chat
that grows turn by turn only processes the new tokens. The server makes one `Context` per slot
(`new_context`) and decodes them together (`decode_batch`). A Model is not thread-safe: one thread drives it.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..chat.template import ChatTemplate, SpecialTexts, max_chars_for
from ..errors import ContextOverflowError, LlamapyzError, require_finite
from ..gguf.reader import GGUFFile, Source, load_gguf
from ..machine.threads import physical_cores, set_threads
from ..tokenizer import Tokenizer
from .forward import Transformer
from .hparams import ModelConfig
from .kv_cache import KVCache
from .placement import GpuStatus
from .weights import load_weights

DEFAULT_N_CTX = 4096
DEFAULT_BATCH_SIZE = 512
# (config, weights, rope tables, n_ctx) -> (the offloaded layers' forward pass or None, GpuStatus): `gpu.setup`
Offloader = Callable[..., tuple[Any, GpuStatus]]


def settle() -> None:
    """Call once the model is loaded, in a process that serves it: the objects loading made (tokenizer
    tables, weight views: tens of thousands) live as long as the process, so they are moved out of the cyclic
    garbage collector's sight (`gc.freeze`). Otherwise a full collection walks them all in the middle of a
    request (measured: a 20-token prompt's first token 106-133 ms before, 71-85 ms after)."""
    gc.collect()
    gc.freeze()


def release_heap() -> None:
    """Give the memory freed since (a model's KV cache, its buffers) back to the system. glibc's malloc keeps
    it otherwise: after large blocks are freed it raises its mmap threshold (up to 32 MiB), so later blocks of
    that size come from the heap and stay in the process when freed. Elsewhere (macOS, Windows, musl): nothing."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # no malloc_trim here
        pass


def check_memory(n_bytes: int, what: str) -> None:
    """Refuse up front what this machine's memory cannot hold (rather than a MemoryError, or the OOM killer,
    halfway through)."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): nothing to check against
        return
    if n_bytes > total:
        raise LlamapyzError(f"{what} needs {n_bytes / 2**30:.1f} GiB of memory; this machine has "
                            f"{total / 2**30:.1f} GiB", hint="use a smaller context (-c N) or fewer slots (-np N)")


class Model:
    def __init__(self, gguf: GGUFFile, n_ctx: int | None = None, n_threads: int | None = None,
                 kv_type: str = "f16", batch_size: int = DEFAULT_BATCH_SIZE, offload: Offloader | None = None
                 ) -> None:
        """offload: what puts some layers on a GPU, called with (config, weights, rope tables, n_ctx) once they
        are ready: (the offloaded part of the forward pass or None, a `GpuStatus`). `loader.load_model` passes
        `gpu.setup` for -ngl; without it every layer runs on the CPU. What that came to is `self.gpu`."""
        started = time.perf_counter()
        self.gguf = gguf
        self.config = ModelConfig.from_metadata(gguf.metadata)
        self.tokenizer = Tokenizer.from_gguf(gguf)
        self.weights = load_weights(gguf, self.config)
        if n_ctx is None or n_ctx <= 0:
            n_ctx = min(DEFAULT_N_CTX, self.config.n_ctx_train)
        self.n_ctx = int(n_ctx)
        self.kv_type = kv_type
        check_memory(self.context_bytes_for(self.config.n_layer), f"a context of {self.n_ctx} tokens")
        self.batch_size = max(1, int(batch_size))
        self.n_threads = set_threads(n_threads or physical_cores())
        self.transformer = Transformer(self.config, self.weights, self.n_ctx)
        self.transformer.offload, self.gpu = (None, GpuStatus(0, self.config.n_layer)) if offload is None else \
            offload(self.config, self.weights, self.transformer.rope_of_layer, self.n_ctx)
        self.context = self.new_context()
        self._chat_template: ChatTemplate | None = None
        self.load_time_s = time.perf_counter() - started

    @classmethod
    def load(cls, path: Source, n_ctx: int | None = None, n_threads: int | None = None, **options) -> Model:
        """Open a GGUF file (or (path, offset, length) inside a larger file) and prepare it to run."""
        return cls(load_gguf(path), n_ctx=n_ctx, n_threads=n_threads, **options)

    def new_context(self) -> Context:
        """A fresh context of n_ctx positions (its cache's memory is touched only as far as it is used)."""
        cache = KVCache(self.n_cpu_layers, self.n_ctx, self.config.kv_dim, self.kv_type)
        if self.transformer.offload is not None:
            cache.device = self.transformer.offload.new_kv(self.n_ctx)
        return Context(cache)

    @property
    def n_cpu_layers(self) -> int:
        """The layers that run on the CPU (all but the -ngl offloaded ones)."""
        return self.config.n_layer - self.gpu.layers

    @property
    def context_bytes(self) -> int:
        """Host memory one context of n_ctx positions can take: its KV cache of the CPU layers (and the rope
        tables, made once)."""
        return self.context_bytes_for(self.n_cpu_layers)

    def context_bytes_for(self, n_layers: int) -> int:
        """`context_bytes` with n_layers on the CPU (before -ngl is settled: every layer)."""
        c = self.config
        return KVCache.n_bytes_for(n_layers, self.n_ctx, c.kv_dim, self.kv_type) + self.n_ctx * c.n_rot * 4

    @property
    def cache(self) -> KVCache:
        return self.context.cache

    @property
    def n_vocab(self) -> int:
        return self.weights.output.n_rows

    @property
    def n_embd(self) -> int:
        return self.config.n_embd

    @property
    def derived_bytes(self) -> int:
        return self.transformer.derived_bytes

    @property
    def file_bytes(self) -> int:
        return len(self.gguf.buffer)

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, tokens: Sequence[int], special: bool = False) -> str:
        return self.tokenizer.decode(tokens, special=special)

    @property
    def chat_template(self) -> ChatTemplate:
        """The model's own chat template, else the built-in fallback (see `set_chat_template`)."""
        if self._chat_template is None:
            self.set_chat_template(None)
        return self._chat_template

    def set_chat_template(self, override: str | None) -> None:
        """Use a built-in template by name (`chat.BUILTIN`) or a Jinja2 source instead of the model's."""
        self._chat_template = ChatTemplate.from_metadata(self.gguf.metadata, self.tokenizer.vocab.tokens, override)

    def chat_tokens(self, messages: Sequence[dict], **context: Any) -> list[int]:
        """The prompt tokens for a conversation, through the model's chat template; `context`: further
        template variables (tools=[…]). The template's markup is tokenized with special tokens parsed, the
        client's strings (contents, names, tools, …) as literal text: a user who types "<|im_end|>" gets
        those characters, never the control token (`ChatTemplate.render_parts`). Rendering stops at
        `chat.max_chars_for` characters (more than the context could hold) or `chat.DEFAULT_TIMEOUT_S`."""
        max_chars = max_chars_for(self.n_ctx, self.tokenizer.longest_token_chars)
        parts = self.chat_template.render_parts(messages, self._chat_special_texts, max_chars=max_chars, **context)
        tokens = self.tokenizer.encode_parts(parts)
        bos = self.tokenizer.bos_id
        if bos is not None and tokens[:2] == [bos, bos]:  # the template wrote BOS and tokenize added one
            tokens = tokens[1:]
        return tokens

    @functools.cached_property
    def _chat_special_texts(self) -> SpecialTexts:
        """The texts client strings must not spell into control tokens, indexed once (`chat_tokens`)."""
        return SpecialTexts(self.tokenizer.markup_texts)

    # --- evaluation ------------------------------------------------------------------------------------

    def _check_tokens(self, tokens: Sequence[int]) -> np.ndarray:
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if len(ids) == 0:
            raise ValueError("no tokens to evaluate")
        if len(ids) > self.n_ctx:
            raise ContextOverflowError(f"{len(ids)} tokens do not fit in the context of {self.n_ctx}")
        if ids.min() < 0 or ids.max() >= self.weights.token_embd.n_rows:
            raise ValueError(f"token ids must be in [0, {self.weights.token_embd.n_rows})")
        return ids

    def _run(self, ids: np.ndarray, pos0: int, output: str, ctx: Context | None = None) -> np.ndarray | None:
        """Evaluate ids at pos0.. in chunks of batch_size; chunk outputs concatenated ("none": cache only)."""
        cache = (ctx or self.context).cache
        parts = []
        for start in range(0, len(ids), self.batch_size):
            chunk = ids[start:start + self.batch_size]
            parts.append(self.transformer.forward(chunk, pos0 + start, cache, output=output))
        if output == "none":
            return None
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        """float32 (n_tokens, n_vocab): the logits after every position, from a fresh context."""
        ids = self._check_tokens(tokens)
        self.context.tokens = []
        logits = self._run(ids, 0, "all")
        self.context.tokens = ids.tolist()
        return logits

    def prefill(self, tokens: Sequence[int], ctx: Context | None = None) -> np.ndarray:
        """Logits (n_vocab,) after the last token, reusing the cached prefix shared with earlier calls.

        The last chunk and the last token go in one forward pass (one pass over the weights for a short
        prompt); its logits are the same bits as decoding that token after the rest, whatever was cached
        (one numeric path: tests/test_exactness.py), so the same request gives the same output.
        `ctx`: which context (default: the model's own).
        """
        prompt = self.start_prompt(tokens, ctx)
        while prompt.remaining >= self.batch_size:
            self.prefill_chunks([prompt])
        start = len(prompt.ctx.tokens)
        logits = self.transformer.forward(prompt.ids[start:], start, prompt.ctx.cache, output="last")
        prompt.ctx.tokens = prompt.ids.tolist()
        return logits[0]

    def start_prompt(self, tokens: Sequence[int], ctx: Context | None = None) -> Prompt:
        """Check a prompt and trim the context to the prefix it shares with it; `prefill_chunks` then
        evaluates the rest but the last token, which the caller feeds to `decode` / `decode_batch`."""
        ctx = ctx or self.context
        ids = self._check_tokens(tokens)
        common = min(ctx.common_prefix(ids.tolist()), len(ids) - 1)
        ctx.tokens = ctx.tokens[:common]
        return Prompt(ids, ctx, common)

    def chunk_plan(self, prompts: Sequence[Prompt], budget: int | None = None) -> list[tuple[Prompt, int]]:
        """How many tokens of each prompt the next pass evaluates: in order, up to `budget` tokens in all
        (default batch_size), at least one token of the first prompt."""
        budget = budget or self.batch_size
        plan = []
        for prompt in prompts:
            n = min(prompt.remaining, budget)
            if n <= 0:
                break
            plan.append((prompt, n))
            budget -= n
        return plan

    def step(self, chunks: Sequence[tuple[Prompt, int]], tokens: Sequence[int], contexts: Sequence[Context]
             ) -> np.ndarray | None:
        """One forward pass (one read of the weights) for a server's turn: the next `n` tokens of each prompt
        (`chunk_plan`) and token i appended to contexts[i]: logits (len(tokens), n_vocab), or None without
        tokens. A context may take its prompt's last chunk and then its last token in the same pass. Each row
        is exactly what it would be alone (`prefill_chunks`, `decode`): tests/test_exactness.py."""
        plan = [(prompt.ids[len(prompt.ctx.tokens):len(prompt.ctx.tokens) + n], len(prompt.ctx.tokens),
                 prompt.ctx.cache) for prompt, n in chunks]
        added = {id(prompt.ctx): n for prompt, n in chunks}
        positions = [len(ctx.tokens) + added.get(id(ctx), 0) for ctx in contexts]  # after this pass's chunks
        if any(position >= self.n_ctx for position in positions):
            raise ContextOverflowError(f"the context of {self.n_ctx} tokens is full")
        ids = np.asarray(tokens, dtype=np.int64)
        if len(ids) and (ids.min() < 0 or ids.max() >= self.weights.token_embd.n_rows):
            raise ValueError(f"token ids must be in [0, {self.weights.token_embd.n_rows})")
        logits = self.transformer.step(plan, ids, positions, [c.cache for c in contexts])
        for (prompt, n), (_, start, _) in zip(chunks, plan, strict=True):  # what the caches now hold
            prompt.ctx.tokens = prompt.ids[:start + n].tolist()
        for ctx, token in zip(contexts, ids.tolist(), strict=True):
            ctx.tokens.append(token)
        return logits

    def prefill_chunks(self, prompts: Sequence[Prompt], budget: int | None = None) -> None:
        """Evaluate the next chunk of each prompt in one forward pass (`chunk_plan`)."""
        self.step(self.chunk_plan(prompts, budget), [], [])

    def decode(self, token: int, ctx: Context | None = None) -> np.ndarray:
        """Logits (n_vocab,) after appending one token to the cached context."""
        return self.decode_batch([token], [ctx or self.context])[0]

    def decode_batch(self, tokens: Sequence[int], contexts: Sequence[Context]) -> np.ndarray:
        """Logits (n, n_vocab): token i appended to contexts[i], all in one forward step. Each row is
        exactly what `decode` alone would give."""
        return self.step([], tokens, contexts)

    # --- generation and embeddings ---------------------------------------------------------------------

    def embed(self, texts: Sequence[str] | str) -> np.ndarray:
        """float32 (n_texts, n_embd): each text's final hidden states, mean-pooled and L2-normalized."""
        if isinstance(texts, str):
            texts = [texts]
        return self.embed_tokens([self.tokenize(text) for text in texts])

    def embed_tokens(self, inputs: Sequence[Sequence[int]], ctx: Context | None = None) -> np.ndarray:
        """`embed` for inputs already tokenized; `ctx`: which context to compute in."""
        embedding = self.start_embedding(inputs, ctx)
        while not embedding.done:
            self.embed_chunk(embedding)
        return embedding.vectors

    def start_embedding(self, inputs: Sequence[Sequence[int]], ctx: Context | None = None) -> Embedding:
        """Check every input, then compute nothing yet: `embed_chunk` evaluates the embedding piece by
        piece (the server runs one piece per engine turn, between decode steps)."""
        return Embedding([self._check_tokens(tokens) for tokens in inputs], ctx or self.context, self.n_embd)

    def embed_chunk(self, embedding: Embedding) -> int:
        """Evaluate the next piece of an embedding: up to batch_size tokens of its current input, in one
        forward pass, at the same chunk boundaries as `_run` (0, batch_size, ...), so an input's vector is
        the same bits however the pieces are spread over time. Returns the number of tokens evaluated."""
        ids, ctx = embedding.inputs[embedding.index], embedding.ctx
        start = len(embedding.parts) * self.batch_size
        if start == 0:
            ctx.tokens = []
        chunk = ids[start:start + self.batch_size]
        embedding.parts.append(self.transformer.forward(chunk, start, ctx.cache, output="hidden"))
        ctx.tokens = ids[:start + len(chunk)].tolist()
        if start + len(chunk) == len(ids):  # the input is done: mean-pool its hidden states, unit length
            parts = embedding.parts
            pooled = (np.concatenate(parts) if len(parts) > 1 else parts[0]).mean(axis=0)
            require_finite(pooled, f"values for the embedding of input {embedding.index}")  # never NaN in JSON
            norm = float(np.linalg.norm(pooled))
            embedding.vectors[embedding.index] = pooled / norm if norm > 0 else pooled
            embedding.index, embedding.parts = embedding.index + 1, []
        return len(chunk)


class Context:
    """One context: a KV cache and the tokens whose keys and values it holds, in order."""

    def __init__(self, cache: KVCache) -> None:
        self.cache = cache
        self.tokens: list[int] = []

    def common_prefix(self, tokens: list[int]) -> int:
        """How many leading tokens are already in this context."""
        n = 0
        for a, b in zip(self.tokens, tokens, strict=False):
            if a != b:
                break
            n += 1
        return n


class Prompt:
    """A prompt being prefilled into a context: `remaining` tokens still to evaluate before the last one."""

    def __init__(self, ids: np.ndarray, ctx: Context, common: int) -> None:
        self.ids = ids
        self.ctx = ctx
        self.cached = common  # tokens reused from the context

    @property
    def remaining(self) -> int:
        return len(self.ids) - 1 - len(self.ctx.tokens)

    @property
    def last_token(self) -> int:
        return int(self.ids[-1])


class Embedding:
    """An embedding being computed in a context (`Model.start_embedding`): `inputs[index]` is the input in
    progress, `parts` its final hidden states so far, one array per chunk evaluated."""

    def __init__(self, inputs: list[np.ndarray], ctx: Context, n_embd: int) -> None:
        self.inputs = inputs
        self.ctx = ctx
        self.vectors = np.zeros((len(inputs), n_embd), np.float32)  # (n_inputs, n_embd), filled in order
        self.index = 0
        self.parts: list[np.ndarray] = []

    @property
    def done(self) -> bool:
        return self.index == len(self.inputs)
