"""The engine thread: one thread owns the model and runs every forward pass; requests reach it through a
bounded queue and their tokens come back through each request's asyncio queue.

Scheduling (continuous batching): there are `n_slots` slots, each with its own context (KV cache). A waiting
request takes a free slot (the one whose cached tokens share the longest prefix with its prompt, so the
next turn of a chat reuses the previous turns). Each loop turn then runs one forward pass, one read of the
weights, over the next chunk of every new prompt (up to batch_size tokens in all) and a token for every slot
with one to feed (the last token of a prompt this pass completes or completed, or the token sampled last):
prompts arriving while others generate cost no second pass (`Model.step`). A finished or cancelled request
leaves at the next turn; a new one joins at the next turn. Neither batching, nor which rows share a pass,
nor the cached prefix changes a request's output (see `model/forward.py`).

An embedding request takes a slot too, and each turn evaluates one piece of it: one forward pass over up to
batch_size tokens of one input (the bound of a prefill pass), so decode steps go on between its pieces and a
cancelled one stops at the next turn. Slots are shared by turns: whenever a request waits, an embedding
request that has just finished one of its inputs gives its slot up and goes to the back of the queue, its
progress kept in its job (between inputs an embedding needs nothing of its context: the next input starts at
position 0, in whichever slot it lands). So a chat waits at most one input's pieces for a slot, however many
embedding requests hold them, and its vectors are the same bits however its pieces are spread out.

A cancelled request leaves the queue at once (`requests_deferred` counts only requests that still wait).

A server of several models has an engine per model. They take turns: a turn runs holding `COMPUTE`, one lock
for the process, so two models never compute at once. Each would use every core anyway, and numba's
`workqueue` threading layer (what it falls back to without OpenMP or TBB) must not be entered from two
threads at once.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from ..decode.generation import Generation, Step
from ..decode.grammar_limits import MASK_BUDGET_S
from ..errors import LlamapyzError
from ..machine.threads import set_threads
from ..model.model import Context, Embedding, Model, Prompt

log = logging.getLogger("llamapyz.engine")

MASK_POLL_S = MASK_BUDGET_S / 4  # how often the engine looks whether a mask it waits for is overdue
COMPUTE = threading.Lock()  # held for each engine turn and each model's warm-up: one model computes at a time


class Overloaded(LlamapyzError):
    """Every slot is busy and the waiting queue is full."""


@dataclass
class Timings:
    """As llama.cpp's server reports them: prompt tokens evaluated (prompt_n) vs reused (cache_n)."""

    cache_n: int = 0
    prompt_n: int = 0
    prompt_ms: float = 0.0
    predicted_n: int = 0
    predicted_ms: float = 0.0

    def as_dict(self) -> dict:
        def per_second(n: int, ms: float) -> float:
            return n / ms * 1e3 if ms > 0 else 0.0

        return dict(cache_n=self.cache_n, prompt_n=self.prompt_n, prompt_ms=round(self.prompt_ms, 3),
                    prompt_per_second=per_second(self.prompt_n, self.prompt_ms),
                    predicted_n=self.predicted_n, predicted_ms=round(self.predicted_ms, 3),
                    predicted_per_second=per_second(self.predicted_n, self.predicted_ms))


@dataclass
class Job:
    """One generation request as the engine sees it. `events` receives ("step", Step) per token, then
    ("done", Timings) or ("error", exception)."""

    prompt: list[int]
    generation: Generation | None  # None: an embedding request
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    timings: Timings = field(default_factory=Timings)
    inputs: list[list[int]] = field(default_factory=list)  # embedding requests: the tokenized inputs
    embedding: Embedding | None = None  # an embedding request's progress (kept while it waits for a slot again)

    def emit(self, kind: str, value: object) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is closed: the server is shutting down
            self.cancelled = True


@dataclass
class Slot:
    index: int
    context: Context
    job: Job | None = None
    prompt: Prompt | None = None  # until the first token is sampled
    next_token: int | None = None  # to be fed at the next decode step
    logits: np.ndarray | None = None  # (n_vocab,) waiting for the job's constraint to compute its mask
    last_used: float = 0.0
    started: float = 0.0
    first_token_at: float = 0.0


class Engine:
    def __init__(self, model: Model, n_slots: int = 4, max_queue: int = 64) -> None:
        self.model = model
        self.slots = [Slot(i, model.new_context()) for i in range(max(1, n_slots))]
        self.max_queue = max_queue
        self.waiting: collections.deque[Job] = collections.deque()
        self.wake = threading.Condition()
        self.stopping = False
        self.stats = collections.Counter()  # prompt_tokens, generated_tokens, requests, ... (totals)
        self.busy_s = {"prompt": 0.0, "decode": 0.0}
        self.thread = threading.Thread(target=self._run, name="llamapyz-engine", daemon=True)

    def start(self) -> Engine:
        self.thread.start()
        return self

    def stop(self) -> None:
        with self.wake:
            self.stopping = True
            self.wake.notify()
        self.thread.join(timeout=10)

    # --- the asyncio side ------------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        with self.wake:
            free = sum(slot.job is None for slot in self.slots)
            if len(self.waiting) >= self.max_queue + free:
                raise Overloaded(f"the server is busy: {len(self.slots)} requests running and {len(self.waiting)} "
                                 "waiting; try again later")
            self.waiting.append(job)
            self.wake.notify()

    def cancel(self, job: Job) -> None:
        """Stop a job: one that waits leaves the queue now; one in a slot leaves at the next turn."""
        job.cancelled = True
        with self.wake:
            for i, waiting in enumerate(self.waiting):
                if waiting is job:  # by identity: two jobs may hold equal fields
                    del self.waiting[i]
                    break
            self.wake.notify()

    @property
    def n_running(self) -> int:
        return sum(slot.job is not None for slot in self.slots)

    @property
    def n_waiting(self) -> int:
        """Requests waiting for a slot (a cancelled one no longer counts)."""
        with self.wake:
            return sum(not job.cancelled for job in self.waiting)

    # --- the engine thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        set_threads(self.model.n_threads)  # numba's thread count is per thread: this one's is the model's -t
        while True:
            with self.wake:
                while not self.stopping and not self._has_work():
                    # only masks being computed: woken when one is done, or to end an overdue one
                    self.wake.wait(MASK_POLL_S if self.n_running else None)
                if self.stopping:
                    break
                self._admit()
            try:
                with COMPUTE:
                    self._turn()
            except Exception as exc:  # never let one bad request take the engine down
                log.exception("engine step failed")
                for slot in self.slots:
                    if slot.job is not None:
                        slot.context.tokens = []  # its cache may be half written: trust none of it
                        self._finish(slot, error=exc)
        for slot in self.slots:
            if slot.job is not None:
                self._finish(slot, error=LlamapyzError("the server is shutting down"))

    def _admit(self) -> None:
        """Move waiting jobs into free slots (called with the lock held)."""
        while self.waiting:
            free = [s for s in self.slots if s.job is None]
            if not free:
                return
            job = self.waiting.popleft()
            if job.cancelled:
                continue
            slot = max(free, key=lambda s: (s.context.common_prefix(job.prompt), -s.last_used))
            slot.job, slot.started, slot.next_token, slot.prompt = job, time.perf_counter(), None, None
            if job.generation is None:
                if job.embedding is not None:  # back from the queue, between two inputs: on in this slot
                    job.embedding.ctx = slot.context
                continue
            try:
                slot.prompt = self.model.start_prompt(job.prompt, slot.context)
            except (LlamapyzError, ValueError) as exc:
                self._finish(slot, error=exc)
                continue
            job.timings.cache_n = slot.prompt.cached
            job.timings.prompt_n = len(job.prompt) - slot.prompt.cached

    def _has_work(self) -> bool:
        """Whether a turn has something to do: a waiting job and a free slot, or a job in a slot that is not
        just waiting for its mask (called with the lock held)."""
        if self.waiting and any(slot.job is None for slot in self.slots):
            return True
        now = time.perf_counter()
        return any(slot.job is not None and (slot.logits is None or slot.job.generation.ready
                                             or slot.job.generation.overdue(now) is not None)
                   for slot in self.slots)

    def _turn(self) -> None:
        """One loop turn: drop cancelled jobs, sample the tokens whose masks came, a piece of each embedding,
        then one forward pass for the next chunk of the prompts being evaluated and a token of every slot that
        decodes (its prompt's last token, or the one it sampled last)."""
        for slot in self.slots:
            if slot.job is not None and slot.job.cancelled:
                self._finish(slot)
        now = time.perf_counter()
        for slot in self.slots:
            if slot.job is not None and slot.logits is not None:
                overdue = slot.job.generation.overdue(now)
                if overdue is not None:
                    self._finish(slot, error=overdue)
                elif slot.job.generation.ready:
                    logits, slot.logits = slot.logits, None
                    self._advance(slot, logits)
        for slot in self.slots:
            if slot.job is not None and slot.job.generation is None:
                self._embed(slot)
        prefilling = [s for s in self.slots if s.prompt is not None and s.prompt.remaining > 0]
        chunks = self.model.chunk_plan([s.prompt for s in prefilling]) if prefilling else []
        finishing = {id(prompt) for prompt, n in chunks if n == prompt.remaining}
        for slot in self.slots:  # a prompt done by this pass's chunk sends its last token in the same pass
            if slot.prompt is not None and slot.next_token is None and (
                    slot.prompt.remaining == 0 or id(slot.prompt) in finishing):
                slot.next_token = slot.prompt.last_token
        decoding = [s for s in self.slots if s.job is not None and s.next_token is not None]
        if chunks or decoding:
            self._step(chunks, decoding)

    def _step(self, chunks: list, slots: list[Slot]) -> None:
        """The turn's one forward pass: the prompts' chunks and a token for each of `slots`, then each slot's
        next token sampled from its row (the pass's time is counted as prompt and decode time by rows)."""
        started = time.perf_counter()
        logits = self.model.step(chunks, [s.next_token for s in slots], [s.context for s in slots])
        now = time.perf_counter()
        n_prompt = sum(n for _, n in chunks)
        self.busy_s["prompt"] += (now - started) * n_prompt / (n_prompt + len(slots))
        self.busy_s["decode"] += (now - started) * len(slots) / (n_prompt + len(slots))
        if not slots:
            return
        self.stats["decode_steps"] += 1
        self.stats["decode_rows"] += len(slots)
        for slot, row in zip(slots, logits, strict=True):
            if slot.prompt is not None:  # the first token: the prompt is done
                slot.prompt = None
                slot.job.timings.prompt_ms = (now - slot.started) * 1e3
                slot.first_token_at = now
                self.stats["prompt_tokens"] += slot.job.timings.prompt_n
            self._advance(slot, row)

    def _advance(self, slot: Slot, logits: np.ndarray) -> None:
        """Sample one token for the slot's job from its logits and hand it over; if its constraint's mask is
        still being computed (on a grammar worker), keep the logits for a later turn: the others go on."""
        job = slot.job
        if not job.generation.ready:
            slot.logits, slot.next_token = logits.copy(), None  # the row is the model's buffer: reused next step
            job.generation.when_ready(self._wake_up)
            return
        try:
            step: Step = job.generation.step(logits)
        except LlamapyzError as exc:  # its constraint failed or cost too much, NaN logits: said in one line
            log.warning("a request ended: %s", exc)
            self._finish(slot, error=exc)
            return
        except Exception as exc:  # a bug: this request alone ends, and the traceback is logged
            log.exception("sampling failed for one request")
            self._finish(slot, error=exc)
            return
        job.timings.predicted_n += 1
        self.stats["generated_tokens"] += 1
        job.emit("step", step)
        if step.finish_reason:
            self._finish(slot)
        else:
            slot.next_token = step.token

    def _wake_up(self) -> None:
        """From a grammar worker: a mask the engine may be waiting for is done."""
        with self.wake:
            self.wake.notify()

    def _embed(self, slot: Slot) -> None:
        """One piece of the slot's embedding request (`Model.embed_chunk`); its vectors go out once the last
        input is done."""
        job = slot.job
        started = time.perf_counter()
        try:
            if job.embedding is None:
                job.embedding = self.model.start_embedding(job.inputs, slot.context)
            n_tokens = 0 if job.embedding.done else self.model.embed_chunk(job.embedding)
        except (LlamapyzError, ValueError) as exc:
            self._finish(slot, error=exc)
            return
        self.busy_s["prompt"] += time.perf_counter() - started
        job.timings.prompt_n += n_tokens
        self.stats["prompt_tokens"] += n_tokens
        if job.embedding.done:
            job.emit("embeddings", job.embedding.vectors)
            self._finish(slot)
        elif not job.embedding.parts:  # between two inputs: the slot goes to a request that waits, if any
            with self.wake:
                if any(not waiting.cancelled for waiting in self.waiting):
                    self.waiting.append(job)
                    slot.job, slot.last_used = None, time.perf_counter()

    def _finish(self, slot: Slot, error: Exception | None = None) -> None:
        job, now = slot.job, time.perf_counter()
        if slot.first_token_at:
            job.timings.predicted_ms = (now - slot.first_token_at) * 1e3
        if error is not None:
            job.emit("error", error)
        else:
            job.emit("done", job.timings)
        self.stats["requests_cancelled" if job.cancelled else "requests"] += 1
        slot.job, slot.prompt, slot.next_token, slot.logits = None, None, None, None
        slot.last_used, slot.first_token_at = now, 0.0
