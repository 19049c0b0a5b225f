"""One evaluation: the settings checked and the tasks found (Plan, before any model is loaded), then the scores
of a model (score): `bpb` by llm/evaluation/bpb.py, every other task by lm-evaluation-harness through the adapter,
together in lm-eval's results format. `python -m llm.evaluate` and the training callback both run it."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tokenizers import Tokenizer

from llm.chat_template import ChatTemplate
from llm.errors import ConfigError
from llm.evaluation.tasks import BPB, GROUNDED, harness, missing_data, offline, split_tasks, task_manager
from llm.model import GPT

if TYPE_CHECKING:
    from llm.evaluation.bpb import Corpus
    from llm.evaluation.grounded import GroundedTask


def _whole(key: str, value: object, least: int, none: bool = False) -> int | None:
    if value is None and none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        allowed = f"a whole number, at least {least}" + (", or null" if none else "")
        raise ConfigError(f"{key}={value!r} must be {allowed}")
    return value


@dataclass
class Plan:
    """What to score and how; made by Plan.make, which checks every value and finds every task's data."""

    bpb: bool
    names: list[str]  # lm-eval's tasks
    manager: Any  # lm_eval.tasks.TaskManager, None without lm-eval tasks
    num_fewshot: int | None
    limit: int | float | None
    batch_size: int
    max_gen_toks: int
    stride: int | None
    windows: int | None
    seed: int
    log_samples: bool
    grounded: GroundedTask | None = None  # tasks=[grounded]: questions answered with and without retrieval

    @classmethod
    def make(
        cls,
        tasks: Sequence[str] | str,
        include_path: str | None,
        num_fewshot: int | None,
        limit: int | float | None,
        batch_size: int,
        max_gen_toks: int,
        stride: int | None,
        windows: int | None,
        seed: int,
        log_samples: bool,
        prefix: str = "",
        questions: str | None = None,
        retrieval: Mapping | None = None,
        outputs_root: str = "outputs",
    ) -> Plan:
        """prefix: where the keys live, for the messages (`callbacks.evaluate.`)."""
        bpb, names = split_tasks(list(tasks) if not isinstance(tasks, str) else tasks)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0):
            raise ConfigError(
                f"{prefix}limit={limit!r} must be a number of examples per task (or a fraction < 1), or null"
            )
        plan = cls(
            bpb,
            names,
            None,
            _whole(f"{prefix}num_fewshot", num_fewshot, 0, none=True),
            limit,
            _whole(f"{prefix}batch_size", batch_size, 1),
            _whole(f"{prefix}max_gen_toks", max_gen_toks, 1),
            _whole(f"{prefix}stride", stride, 1, none=True),
            _whole(f"{prefix}windows" if prefix else "eval.windows", windows, 1, none=True),
            _whole(f"{prefix}seed", seed, 0),
            bool(log_samples),
        )
        if GROUNDED in (tasks if not isinstance(tasks, str) else [tasks]):
            from llm.evaluation.grounded import GroundedTask

            plan.grounded = GroundedTask.make(questions, retrieval, outputs_root)
        if names:
            is_offline = offline()
            harness()
            plan.manager = task_manager(names, include_path)
            if is_offline:
                problems = list(missing_data(plan.manager, names))
                if problems:
                    raise ConfigError(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
        return plan

    def score(
        self, model: GPT, tokenizer: Tokenizer, corpus: Callable[[], Corpus], template: ChatTemplate | None = None
    ) -> dict:
        """The scores, in lm-eval's results format (with "samples" when log_samples). corpus: bpb's documents;
        template: the model's chat template, for grounded."""
        results: dict = {"results": {}, "configs": {}, "versions": {}, "n-shot": {}, "higher_is_better": {}}
        results["n-samples"] = {}
        if self.names:
            from llm.evaluation.adapter import GPTLM
            from llm.evaluation.tasks import run_harness

            lm = GPTLM(model, tokenizer, self.batch_size, self.max_gen_toks, self.stride)
            results = run_harness(
                lm, self.manager, self.names, self.num_fewshot, self.limit, self.seed, self.log_samples
            )
        if self.grounded is not None:
            start = time.perf_counter()
            scores = self.grounded.score(
                model, tokenizer, template or ChatTemplate.plain(), self.max_gen_toks, self.batch_size
            )
            results["results"][GROUNDED] = {"alias": GROUNDED, **{f"{k},none": v for k, v in scores.items()}}
            n = len(self.grounded.questions)
            results["configs"][GROUNDED] = {
                "task": GROUNDED,
                "index": str(self.grounded.retriever.index.path),
                "k": self.grounded.retriever.k,
                "seconds": round(time.perf_counter() - start, 3),
            }
            results["versions"][GROUNDED] = 1
            results["n-shot"][GROUNDED] = 0
            results["higher_is_better"][GROUNDED] = {k: k != "accuracy_without" for k in scores}
            results["n-samples"][GROUNDED] = {"original": n, "effective": n}
        if self.bpb:
            from llm.evaluation.bpb import bits_per_byte

            start = time.perf_counter()
            docs = corpus()
            scores, counts = bits_per_byte(model, tokenizer, docs, self.windows, self.batch_size)
            results["results"][BPB] = {"alias": BPB, **{f"{k},none": v for k, v in scores.items()}}
            results["results"][BPB]["bpb_stderr,none"] = "N/A"
            results["configs"][BPB] = {
                "task": BPB,
                "documents": docs.source,
                "windows": self.windows,
                "block_size": model.config.block_size,
                "scored": counts,
                "seconds": round(time.perf_counter() - start, 3),
            }
            results["versions"][BPB] = 1
            results["n-shot"][BPB] = 0
            results["higher_is_better"][BPB] = {k: False for k in scores}
            results["n-samples"][BPB] = {"original": len(docs.documents), "effective": len(docs.documents)}
        return results
