"""The chat template: how a conversation becomes one string of text, written once and carried everywhere.

A model fine-tuned on conversations (experiment=sft) learned one template, and every path that talks to it uses
that template: training (which tokens carry the loss), `infer.py chat=true`, the server's /v1/chat/completions
and chat page, and the Hugging Face export (tokenizer_config.json), so transformers' apply_chat_template gives
the same ids. The checkpoint stores it (llm/checkpoint.py).

- Our own BPE reserves ChatML's markers <|im_start|> and <|im_end|> (llm/tokenizer.py): CHATML is the template of
  every model fine-tuned from one of ours. <|im_end|> ends a turn: generation stops there.
- A Hugging Face base keeps its own template (the Jinja of its tokenizer_config.json), rendered the way
  transformers renders it: a sandboxed Jinja environment with trim_blocks, lstrip_blocks, loop controls, a
  `tojson` filter that does not escape HTML, `raise_exception` and `strftime_now`, and the tokenizer's special
  tokens (bos_token, eos_token, ...) as variables.
- A model without a template (a base trained on documents only) gets PLAIN: a transcript any text model can
  continue ("User: ...", "Assistant:"), which stops where the model starts the next turn.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache

from tokenizers import Tokenizer

from llm.errors import ConfigError
from llm.tokenizer import IM_END, IM_START

ROLES = ("system", "user", "assistant")

CHATML = (
    "{% for message in messages %}"
    f"{{{{ '{IM_START}' + message['role'] + '\\n' + message['content'] + '{IM_END}' + '\\n' }}}}"
    "{% endfor %}"
    f"{{% if add_generation_prompt %}}{{{{ '{IM_START}assistant\\n' }}}}{{% endif %}}"
)
PLAIN = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\\n' }}"
    "{% else %}{{ 'Assistant: ' + message['content'] + '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
PLAIN_STOPS = ("\nUser:", "\nAssistant:")  # where a text model starts the next turn of PLAIN


@cache
def _compile(source: str):
    """A Jinja template compiled as transformers compiles chat templates (chat_template_utils)."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise ConfigError(f"chat_template: not a valid Jinja template ({e})") from None


def check_messages(messages: object) -> list[dict[str, str]]:
    """A conversation as OpenAI writes it: a list of {"role": system|user|assistant, "content": text}."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages: a non-empty list of {role, content} objects is expected")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(f"messages[{i}] is not an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f"messages[{i}].role={role!r} is not one of {list(ROLES)}")
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}].content must be a string")
        checked.append({"role": role, "content": content})
    return checked


@dataclass(frozen=True)
class ChatTemplate:
    """A Jinja chat template with the special tokens it may name, and the stop strings a model without a turn-end
    token needs."""

    source: str
    special: dict[str, str] = field(default_factory=dict)  # bos_token, eos_token, ... as the template sees them
    stop_strings: tuple[str, ...] = ()
    name: str = "hf"  # chatml | plain | hf

    @classmethod
    def chatml(cls) -> ChatTemplate:
        return cls(CHATML, name="chatml")

    @classmethod
    def plain(cls) -> ChatTemplate:
        return cls(PLAIN, stop_strings=PLAIN_STOPS, name="plain")

    @classmethod
    def from_hf_config(cls, config: Mapping) -> ChatTemplate | None:
        """From a Hugging Face tokenizer_config.json's keys: its chat_template and special tokens; None without one."""
        source = config.get("chat_template")
        if isinstance(source, list):  # several named templates: the default one
            source = next((t["template"] for t in source if t.get("name") == "default"), None)
        if not source:
            return None
        special = {}
        for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
            value = config.get(key)
            if isinstance(value, Mapping):  # an AddedToken written out
                value = value.get("content")
            if isinstance(value, str):
                special[key] = value
        return cls(source, special)

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "special": dict(self.special),
            "stop_strings": list(self.stop_strings),
            "name": self.name,
        }

    @classmethod
    def from_dict(cls, data: Mapping | None) -> ChatTemplate:
        """The template a checkpoint stores; PLAIN for one that stores none (a base trained on documents)."""
        if not data:
            return cls.plain()
        return cls(
            data["source"], dict(data.get("special", {})), tuple(data.get("stop_strings", ())), data.get("name", "hf")
        )

    def render(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = False) -> str:
        """The conversation as text; add_generation_prompt: followed by the opening of an assistant turn."""
        return _compile(self.source).render(
            messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt, **self.special
        )


class ChatTokens:
    """A template with the tokenizer it writes for: prompt ids, assistant-token masks for training, the turn end.

    Special tokens in the rendered text (<|im_start|>, ...) are read as such, as transformers does; the project's
    tokenizers read them as plain text elsewhere (llm/tokenizer.py), so this keeps a copy of its own."""

    def __init__(self, template: ChatTemplate, tokenizer: Tokenizer) -> None:
        self.template = template
        self.tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self.tokenizer.encode_special_tokens = False
        self.end_ids = self._turn_end()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def prompt_ids(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        """What the model continues to answer: the conversation and the opening of the assistant's turn."""
        return self.encode(self.template.render(messages, add_generation_prompt=True))

    def _turn_end(self) -> list[int]:
        """The special token(s) a template writes right after an assistant's words: where a reply stops."""
        probe = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
        try:
            text = self.template.render(probe)
        except Exception:  # a template that wants more (a system message first, ...): no turn-end token known
            return []
        after = text[text.rfind("y") + 1 :]
        added = {t.content for t in self.tokenizer.get_added_tokens_decoder().values()}
        encoding = self.tokenizer.encode(after, add_special_tokens=False)
        return [i for i, t in zip(encoding.ids, encoding.tokens, strict=True) if t in added][:1]

    def training_example(self, messages: Sequence[Mapping[str, str]]) -> tuple[list[int], list[bool]]:
        """The conversation's ids and, for each, whether it is the assistant's to learn: its words and the end of its
        turn, never the system's or user's words nor the markers that open a turn."""
        full = self.template.render(messages)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self.template.render(messages[:i], add_generation_prompt=True)
            upto = self.template.render(messages[: i + 1])
            if not upto.startswith(before) or not full.startswith(upto):
                raise ValueError(
                    "the chat template renders an earlier turn differently once later turns follow: the assistant's "
                    "tokens cannot be told apart (a template that rewrites history is not supported for training)"
                )
            spans.append((len(before), len(upto)))
        encoding = self.tokenizer.encode(full, add_special_tokens=False)
        mask = []
        ended: set[int] = set()  # spans whose turn-end token is in: what the template writes after it is not learned
        for token, (start, _) in zip(encoding.ids, encoding.offsets, strict=True):
            span = next((k for k, (a, b) in enumerate(spans) if a <= start < b), None)
            mask.append(span is not None and span not in ended)
            if span is not None and token in self.end_ids:
                ended.add(span)
        return encoding.ids, mask
