"""A request in: its body parsed and checked field by field, its prompts tokenized and fitted to the context, the
engine's jobs built (completion_jobs, chat_jobs). Anything wrong is a BadRequest: 400 with OpenAI's error body,
naming the field, before the engine sees it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import ValidationError
from tokenizers import Tokenizer, decoders

from llm.chat_template import ChatTemplate, ChatTokens
from llm.errors import ConfigError
from llm.retrieval.context import Retriever, fit
from llm.sampler import SamplingParams
from llm.serve.engine import Engine, Job
from llm.serve.schemas import FORMS, ChatRequest, CompletionRequest, Sampling

MAX_STOPS = 4  # stop strings per request, as OpenAI

Prompt = str | list[int]  # text, or token ids


class BadRequest(Exception):
    """Answered with status and OpenAI's error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


@dataclass(frozen=True)
class Limits:
    """What the request functions need of the model and serve.yaml."""

    model_name: str
    tokenizer: Tokenizer
    block_size: int
    vocab_size: int  # token ids are in [0, vocab_size)
    queue_size: int
    token_bytes: int  # the most UTF-8 bytes of text one token stands for (longest_token_bytes)
    default_max_tokens: int
    request_timeout: float
    chat: ChatTokens  # the model's chat template with its tokenizer: /v1/chat/completions' prompts and stops
    max_values: int  # serve.yaml's max_request_values: JSON values a body may hold
    max_messages: int  # serve.yaml's max_messages: messages a chat may have
    retriever: Retriever | None = None  # retrieval.index: passages for each chat's last user message

    @classmethod
    def of(
        cls,
        engine: Engine,
        model_name: str,
        default_max_tokens: int,
        request_timeout: float,
        max_values: int,
        max_messages: int,
        chat_template: ChatTemplate | None = None,
        retriever: Retriever | None = None,
    ) -> Limits:
        tokenizer = engine.tokenizer
        return cls(
            model_name,
            tokenizer,
            engine.block_size,
            engine.vocab_size,
            engine.queue_size,
            longest_token_bytes(tokenizer),
            default_max_tokens,
            request_timeout,
            ChatTokens(chat_template or ChatTemplate.plain(), tokenizer),
            max_values,
            max_messages,
            retriever,
        )


def longest_token_bytes(tokenizer: Tokenizer) -> int:
    """The most UTF-8 bytes of text one token can stand for, read off the vocabulary once: a text of more than
    (block_size - 1) x this many bytes is at least block_size tokens, which is known without tokenizing it.

    A byte-level vocabulary writes each byte as one character, so a token stands for as many bytes as it has
    characters; any other writes a token as its text or longer ("▁" for a space, "<0x0A>" for one byte), so its
    UTF-8 length bounds it. Special tokens count only where text can produce them (llm.tokenizer sets
    encode_special_tokens, so it cannot). Assumes no normalizer deletes text: none of the project's tokenizers,
    or those llm.interop imports, does."""
    added = {t.content: t.special for t in tokenizer.get_added_tokens_decoder().values()}
    byte_level = isinstance(tokenizer.decoder, decoders.ByteLevel)
    longest = 1
    for token in tokenizer.get_vocab(with_added_tokens=True):
        if token in added:
            if added[token] and tokenizer.encode_special_tokens:
                continue
            longest = max(longest, len(token.encode("utf-8")))  # added tokens are stored as their text
        else:
            longest = max(longest, len(token) if byte_level else len(token.encode("utf-8")))
    return longest


# ---------------------------------------------------------------------------------------------- request -> jobs


def parse_body(schema: type[Sampling], raw: bytes, max_values: int, max_messages: int) -> Sampling:
    """The body as schema, or BadRequest naming the first thing wrong. Parses JSON: call it off the event loop.

    Validating costs time and memory per value, with the GIL held: a body of millions of token ids or messages
    under the size limit would stop every other request for seconds. So before parsing, two counts over the raw
    bytes (milliseconds for the largest body) bound what it can hold: its commas bound its values, and its
    '"role"' keys bound its messages (a '"' inside a JSON string is escaped, so only keys and values count)."""
    values = raw.count(b",") + 1
    if values > max_values:
        message = f"the body holds up to {values:,} values: the most a request may hold is {max_values:,}"
        raise BadRequest(413, message, None, "request_too_large")
    if schema is ChatRequest and (messages := raw.count(b'"role"')) > max_messages:
        message = f"the body holds up to {messages:,} messages: the most a chat may have is {max_messages:,}"
        raise BadRequest(413, message, "messages", "request_too_large")
    try:
        return schema.model_validate_json(raw)
    except ValidationError as e:
        raise invalid(e.errors()[0], schema) from None


def invalid(error: dict, schema: type[Sampling]) -> BadRequest:
    """A 400 for one of pydantic's errors, naming the field as OpenAI's param does ("messages.0.role")."""
    where = [str(part) for part in error.get("loc", ())]
    param = ".".join(where) or None
    kind = error.get("type")
    if kind == "extra_forbidden":
        known = f": the fields are {sorted(schema.model_fields)}" if len(where) == 1 else ""
        message = f"unknown field {param!r}{known}"
    elif kind == "json_invalid":
        message, param = f"the body is not valid JSON: {error.get('ctx', {}).get('error', error['msg'])}", None
    elif where and where[0] in FORMS and kind != "missing":  # a value that fits none of the field's forms
        param = where[0]
        message = f"{param} must be {FORMS[param]}"
    else:
        message = f"{param or 'body'}: {error['msg']}"
    return BadRequest(400, message, param)


def check_model(body: Sampling, model_name: str) -> None:
    if body.model != model_name:
        message = f"model {body.model!r} is not served here: this server serves {model_name!r}"
        raise BadRequest(404, message, "model", "model_not_found")


def completion_prompts(prompt: str | list) -> list[Prompt]:
    """The prompts of /v1/completions' prompt: a string, strings, token ids, or lists of token ids."""
    if isinstance(prompt, str):
        prompts = [prompt]
    elif prompt and isinstance(prompt[0], int):
        prompts = [prompt]
    else:
        prompts = list(prompt)
    if not prompts:
        raise BadRequest(400, "prompt: the list is empty", "prompt")
    return prompts


def sampling_params(body: Sampling, jobs: int) -> list[SamplingParams]:
    """One SamplingParams per job: job j draws with seed + j (SamplingParams.for_row; no seed: the engine draws a
    fresh one for each)."""
    try:
        params = SamplingParams(
            temperature=body.temperature,
            top_k=max(body.top_k, 0),  # vLLM's -1 is off, as 0
            top_p=body.top_p,
            min_p=body.min_p,
            repetition_penalty=body.repetition_penalty,
            seed=body.seed,
        )
        return [params.for_row(j) for j in range(jobs)]
    except ConfigError as e:  # its message starts with the key: "top_k=... must be ..."
        key = str(e).split("=", 1)[0]
        raise BadRequest(400, str(e), key if key in Sampling.model_fields else None) from None


def stops(body: Sampling, vocab_size: int) -> tuple[list[str], list[int]]:
    """The request's stop strings and stop token ids, checked."""
    strings = body.stop_strings()
    if len(strings) > MAX_STOPS:
        raise BadRequest(400, f"stop: {len(strings)} strings given, at most {MAX_STOPS}", "stop")
    ids = list(body.stop_token_ids or [])
    for token in ids:
        if not 0 <= token < vocab_size:
            message = f"stop_token_ids: {token} is not a token id: ids are in [0, {vocab_size})"
            raise BadRequest(400, message, "stop_token_ids")
    return strings, ids


def label(i: int, count: int) -> str:
    return "prompt" if count == 1 else f"prompt {i}"


def prompt_ids(prompts: Sequence[Prompt], limits: Limits, param: str) -> list[list[int]]:
    """Each prompt as token ids. A text longer in bytes than the context can hold in tokens is refused before it
    is tokenized (longest_token_bytes); token ids are checked against the context and the vocabulary. Tokenizes:
    call it off the event loop."""
    block, most = limits.block_size, (limits.block_size - 1) * limits.token_bytes
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise BadRequest(400, f"{label(i, len(prompts))} is empty: give some text to continue", param)
        if isinstance(prompt, str):
            size = len(prompt.encode("utf-8"))
            if size > most:
                message = (
                    f"prompt {i} is {size} bytes, so at least {math.ceil(size / limits.token_bytes)} tokens "
                    f"(a token here is at most {limits.token_bytes} bytes): the context holds {block}, "
                    f"so at most {block - 1}"
                )
                raise BadRequest(400, message, param, "context_length_exceeded")
            continue
        too_long(i, len(prompt), block, param)  # before the ids are read one by one
        bad = next((token for token in prompt if not 0 <= token < limits.vocab_size), None)
        if bad is not None:
            message = f"{label(i, len(prompts))}: {bad} is not a token id: ids are in [0, {limits.vocab_size})"
            raise BadRequest(400, message, param)
    texts = [prompt for prompt in prompts if isinstance(prompt, str)]
    encoded = iter(limits.tokenizer.encode_batch(texts) if texts else [])  # encode_batch releases the GIL
    ids = [next(encoded).ids if isinstance(prompt, str) else list(prompt) for prompt in prompts]
    for i, one in enumerate(ids):
        if not one:
            raise BadRequest(400, f"{label(i, len(prompts))} is empty: give some text to continue", param)
        too_long(i, len(one), block, param)
    return ids


def too_long(i: int, tokens: int, block: int, param: str) -> None:
    if tokens >= block:
        message = f"prompt {i} is {tokens} tokens: the context holds {block}, so at most {block - 1}"
        raise BadRequest(400, message, param, "context_length_exceeded")


def budgets(ids: Sequence[Sequence[int]], max_tokens: int | None, limits: Limits) -> list[int]:
    """New tokens each prompt may have: max_tokens (refused where it passes the context), or default_max_tokens
    cut to what the context leaves."""
    out = []
    for prompt in ids:
        room = limits.block_size - len(prompt)
        if max_tokens is not None and max_tokens > room:
            message = (
                f"max_tokens={max_tokens} with a prompt of {len(prompt)} tokens passes the context of "
                f"{limits.block_size}: at most {room}"
            )
            raise BadRequest(400, message, "max_tokens", "context_length_exceeded")
        out.append(max_tokens if max_tokens is not None else min(limits.default_max_tokens, room))
    return out


def build_jobs(
    body: Sampling,
    prompts: Sequence[Prompt],
    max_tokens: int | None,
    limits: Limits,
    param: str = "prompt",
    extra_stops: Sequence[str] = (),
    logprobs: int | None = None,
    extra_stop_ids: Sequence[int] = (),
) -> list[Job]:
    """n jobs per prompt, in order (job j = prompt i's choice c, j = i * n + c), after every check. Tokenizes:
    call it off the event loop."""
    strings, stop_ids = stops(body, limits.vocab_size)
    count = len(prompts) * body.n
    if count > limits.queue_size:
        message = f"n: {len(prompts)} prompts x n={body.n} exceeds the queue of {limits.queue_size}"
        raise BadRequest(400, message, "n")
    params = sampling_params(body, count)
    ids = prompt_ids(prompts, limits, param)
    allowed = budgets(ids, max_tokens, limits)
    return [
        Job(
            prompt,
            budget,
            params[i * body.n + c],
            stop=[*strings, *extra_stops],
            stop_token_ids=[*stop_ids, *extra_stop_ids],
            logprobs=logprobs,
            timeout=limits.request_timeout,
        )
        for i, (prompt, budget) in enumerate(zip(ids, allowed, strict=True))
        for c in range(body.n)
    ]


def completion_jobs(body: CompletionRequest, limits: Limits) -> list[Job]:
    prompts = completion_prompts(body.prompt)
    return build_jobs(body, prompts, body.max_tokens, limits, logprobs=body.logprobs)


def chat_jobs(body: ChatRequest, limits: Limits) -> list[Job]:
    """One prompt: the conversation in the model's chat template (llm/chat_template.py), opening the assistant's
    turn; the reply ends with that turn (its end token, or for the plain template where the next turn starts).
    Tokenizes: call it off the event loop."""
    if body.max_tokens is not None and body.max_completion_tokens is not None:
        raise BadRequest(400, "give max_tokens or max_completion_tokens, not both", "max_completion_tokens")
    max_tokens = body.max_completion_tokens or body.max_tokens
    size = sum(len(m.content.encode("utf-8")) for m in body.messages)
    if size > (limits.block_size - 1) * limits.token_bytes:  # the words alone pass the context: not rendered
        message = f"the messages are {size} bytes, so more than the context of {limits.block_size} tokens holds"
        raise BadRequest(400, message, "messages", "context_length_exceeded")
    messages = [{"role": m.role, "content": m.content} for m in body.messages]
    hits = limits.retriever.search(messages) if limits.retriever is not None else []
    try:
        if hits:  # as many as fit what the reply leaves of the context
            reply = max_tokens if max_tokens is not None else min(limits.default_max_tokens, limits.block_size // 4)
            messages, hits = fit(limits.chat, messages, hits, limits.block_size - reply)
        ids = limits.chat.prompt_ids(messages)
    except Exception as e:  # the template refused the conversation (raise_exception in its Jinja)
        raise BadRequest(400, f"messages: the chat template refused them: {e}", "messages") from None
    chat = limits.chat
    jobs = build_jobs(body, [ids], max_tokens, limits, "messages", chat.template.stop_strings, None, chat.end_ids)
    if limits.retriever is not None:
        for job in jobs:
            job.sources = [hit.to_dict() for hit in hits]
    return jobs
