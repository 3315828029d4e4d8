"""Turning a request into an engine job: sampling parameters, stop strings, output constraints, prompts;
and the pieces of the responses built from a job's steps."""

from __future__ import annotations

import asyncio

from ..chat import ChatTemplateError
from ..generation import Generation, Step
from ..json_constraint import JsonConstraint
from ..model.model import Model
from ..sampling import SamplingParams
from .engine import Job
from .schema import ApiError
from .state import ServerState

MAX_STOP_STRINGS = 16


def sampling_params(fields: dict, model: Model) -> SamplingParams:
    bias = {}
    for key, value in (fields["logit_bias"] or {}).items():
        try:
            token = int(key)
        except ValueError:
            raise ApiError(400, f"logit_bias keys must be token ids, got {key!r}", param="logit_bias") from None
        if not 0 <= token < model.n_vocab or not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ApiError(400, f"logit_bias: token {key} is outside the vocabulary or its bias is not a number",
                           param="logit_bias")
        bias[token] = float(max(-100.0, min(100.0, value)))
    try:
        return SamplingParams(temperature=fields["temperature"], top_k=fields["top_k"], top_p=fields["top_p"],
                              min_p=fields["min_p"], repeat_penalty=fields["repeat_penalty"],
                              presence_penalty=fields["presence_penalty"],
                              frequency_penalty=fields["frequency_penalty"], repeat_last_n=fields["repeat_last_n"],
                              logit_bias=bias, seed=None if (fields["seed"] or 0) < 0 else fields["seed"])
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None


def stop_strings(value: str | list | None) -> list[str]:
    stops = [value] if isinstance(value, str) else list(value or [])
    if len(stops) > MAX_STOP_STRINGS:
        raise ApiError(400, f"at most {MAX_STOP_STRINGS} stop strings", param="stop")
    return stops


def response_format(value: dict | None) -> bool:
    """True when the output must be one JSON object."""
    kind = (value or {}).get("type", "text")
    if kind not in ("text", "json_object"):
        raise ApiError(400, f"response_format type {kind!r} is not supported (use 'text' or 'json_object')",
                       param="response_format")
    return kind == "json_object"


def check_prompt_fits(prompt: list[int], model: Model, param: str) -> None:
    if len(prompt) >= model.n_ctx:
        raise ApiError(400, f"the prompt has {len(prompt)} tokens, which does not leave room for an answer in the "
                       f"context of {model.n_ctx} tokens", param=param, code="context_length_exceeded",
                       n_prompt_tokens=len(prompt), n_ctx=model.n_ctx)


def make_job(state: ServerState, fields: dict, prompt: list[int], logprobs: int | None, param: str,
             end_of_turn: str | None = None) -> Job:
    """A job for the engine; `end_of_turn` (chat only: the template's markup) stops it besides `stop`."""
    model = state.model
    check_prompt_fits(prompt, model, param)
    room = model.n_ctx - len(prompt)
    max_tokens = fields["max_completion_tokens"] or fields["max_tokens"] or room
    constraint = None
    if response_format(fields["response_format"]):
        constraint = JsonConstraint(model.tokenizer.token_bytes, model.tokenizer.eog_ids)
    generation = Generation(model.tokenizer, prompt, max_tokens, sampling_params(fields, model), model.n_ctx,
                            stop=stop_strings(fields["stop"]) + ([end_of_turn] if end_of_turn else []),
                            logprobs=logprobs, constraint=constraint)
    return Job(prompt=prompt, generation=generation, loop=asyncio.get_running_loop())


def chat_prompt(messages: list[dict], model: Model) -> list[int]:
    clean = []
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or role not in ("system", "developer", "user", "assistant", "tool"):
            raise ApiError(400, f"messages[{i}].role must be system, user or assistant", param="messages")
        if isinstance(content, list):  # content parts: only text
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ApiError(400, f"messages[{i}].content: only text parts are supported", param="messages")
                texts.append(part["text"])
            content = "\n".join(texts)
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string or a list of text parts", param="messages")
        clean.append({"role": "system" if role == "developer" else role, "content": content})
    if not clean:
        raise ApiError(400, "messages must not be empty", param="messages")
    try:
        return model.chat_tokens(clean)
    except ChatTemplateError as exc:
        raise ApiError(400, str(exc), param="messages") from None


def completion_prompt(prompt: str | list, model: Model) -> list[int]:
    if isinstance(prompt, list):
        if len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
        if isinstance(prompt, list):
            if not prompt or not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
                raise ApiError(400, "prompt must be a string, a list with one string, or a list of token ids",
                               param="prompt")
            if min(prompt) < 0 or max(prompt) >= model.n_vocab:
                raise ApiError(400, f"prompt token ids must be in [0, {model.n_vocab})", param="prompt")
            return list(prompt)
    tokens = model.tokenize(prompt)
    if not tokens:
        raise ApiError(400, "the prompt is empty", param="prompt")
    return tokens


# --- response shapes --------------------------------------------------------------------------------------

def token_text(model: Model, token: int) -> str:
    return model.tokenizer.token_bytes(token).decode("utf-8", errors="replace")


def chat_logprob(model: Model, step: Step) -> dict:
    def entry(token: int, logprob: float) -> dict:
        data = model.tokenizer.token_bytes(token)
        return {"token": data.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(data)}

    return {**entry(step.token, step.logprob),
            "top_logprobs": [entry(t, lp) for t, lp in step.top_logprobs or []]}


def usage(job: Job) -> dict:
    prompt = len(job.prompt)
    return {"prompt_tokens": prompt, "completion_tokens": job.timings.predicted_n,
            "total_tokens": prompt + job.timings.predicted_n,
            "prompt_tokens_details": {"cached_tokens": job.timings.cache_n}}
