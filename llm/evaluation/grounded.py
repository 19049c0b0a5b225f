"""The `grounded` task: questions about your documents, answered with and without retrieval.

A questions file is JSON Lines, one question a line:

    {"question": "What is the code of vault 17?", "answer": "wren3", "source": "notes/annual.pdf", "page": 3}

`answer` is a string the reply must hold (case-insensitive); `source` (optional) a file the answer is in, matched as
the end of a passage's path (`annual.pdf`, `notes/annual.pdf` or the whole path), and `page` (optional) its page.
Scores, each a share of the questions: `accuracy` (greedy replies with the passages that hold the answer),
`accuracy_without` (the same model asked without passages), `source_share` (grounded replies whose passages include
the expected file, and page where given) and `recall@k` (the index's k best hold it: retrieval alone).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from llm.chat_template import ChatTemplate, ChatTokens
from llm.errors import ConfigError
from llm.model import GPT
from llm.retrieval.context import Retriever, fit
from llm.retrieval.index import Hit


@dataclass(frozen=True)
class Question:
    question: str
    answer: str
    source: str | None = None
    page: int | None = None

    def found_in(self, hits: list[Hit]) -> bool:
        """Whether one of the passages is from the expected file (and page)."""
        if self.source is None:
            return False
        return any(
            (h.path == self.source or h.path.endswith("/" + self.source)) and (self.page is None or h.page == self.page)
            for h in hits
        )


def read_questions(path: str | Path) -> list[Question]:
    """The questions of a .jsonl file, or a ConfigError naming eval.questions and the line."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"eval.questions={path}: no such file (a .jsonl of question, answer, source)")
    out = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            question = Question(str(obj["question"]), str(obj["answer"]), obj.get("source"), obj.get("page"))
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"eval.questions={path}: line {number} is not a question ({e})") from None
        out.append(question)
    if not out:
        raise ConfigError(f"eval.questions={path}: no question in it")
    return out


@dataclass
class GroundedTask:
    questions: list[Question]
    retriever: Retriever

    @classmethod
    def make(cls, questions: str | None, retrieval: Mapping | None, outputs_root: str | Path) -> GroundedTask:
        if questions is None:
            raise ConfigError("tasks=[grounded] needs eval.questions=FILE: a .jsonl of question, answer, source")
        retriever = Retriever.from_config(retrieval, outputs_root)
        if retriever is None:
            raise ConfigError("tasks=[grounded] needs retrieval.index: the index to answer from (docs/retrieval.md)")
        return cls(read_questions(questions), retriever)

    def score(
        self, model: GPT, tokenizer: Tokenizer, template: ChatTemplate, max_new_tokens: int, batch_size: int
    ) -> dict:
        """The scores of every question, asked greedily with and without the passages, batch_size at a time."""
        from llm.sampler import generate

        def answers(prompts: list) -> list:
            return [
                reply
                for i in range(0, len(prompts), batch_size)
                for reply in generate(
                    model, tokenizer, prompts[i : i + batch_size], max_new_tokens, temperature=0, chat=chat
                )
            ]

        chat = ChatTokens(template, tokenizer)
        k, budget = self.retriever.k, model.config.block_size - max_new_tokens
        asked = [[{"role": "user", "content": q.question}] for q in self.questions]
        top = [self.retriever.search(messages) for messages in asked]  # the k best: recall@k
        grounded = [fit(chat, messages, hits, budget) for messages, hits in zip(asked, top, strict=True)]
        with_passages, without = answers([m for m, _ in grounded]), answers(asked)
        n = len(self.questions)

        def right(replies) -> float:
            return sum(q.answer.lower() in r.text.lower() for q, r in zip(self.questions, replies, strict=True)) / n

        def share(found: list) -> float:  # of the questions with a source, those whose passages hold it
            pairs = [(q, hits) for q, hits in zip(self.questions, found, strict=True) if q.source is not None]
            return sum(q.found_in(hits) for q, hits in pairs) / len(pairs)

        scores = {"accuracy": right(with_passages), "accuracy_without": right(without)}
        if any(q.source is not None for q in self.questions):
            scores["source_share"] = share([hits for _, hits in grounded])  # the passages that fit the context
            scores[f"recall@{k}"] = share(top)
        return scores
