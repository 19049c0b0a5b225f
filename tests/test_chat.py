"""From documents to an assistant: the chat template as transformers renders it, the loss on the assistant's
tokens only, conversations files with bad lines, and a tiny model that learns to answer (experiment=sft)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from llm.chat_template import CHATML, ChatTemplate, ChatTokens
from llm.checkpoint import save_model
from llm.data.conversations import pack, parse_line, read_conversations, split_conversations
from llm.data.tokens import token_byte_lengths
from llm.tokenizer import IGNORE, IM_END, IM_START, eod_id, train_tokenizer
from tests.conftest import compose_train

TEXTS = ["hello world, how are you? fine thanks. The code name is blue.\n" * 30, "def f(x):\n    return x\n" * 20]
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hello, how are you?"},
    {"role": "assistant", "content": "fine thanks"},
    {"role": "user", "content": "the code name?"},
    {"role": "assistant", "content": "The code name is blue."},
]
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
QWEN = (  # ChatML with a default system message, as Qwen2.5 writes it
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
    "{%- else %}{{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if message.role != 'system' %}"
    "{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)


@pytest.fixture(scope="module")
def tokenizer():
    tok = train_tokenizer(TEXTS, vocab_size=360)
    tok.add_special_tokens(["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"])
    return tok


@pytest.mark.parametrize(
    ("source", "special", "end"),
    [
        (CHATML, {}, IM_END),
        (LLAMA3, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}, "<|eot_id|>"),
        (QWEN, {"eos_token": IM_END}, IM_END),
    ],
    ids=["chatml", "llama3", "qwen"],
)
def test_our_rendering_gives_apply_chat_templates_ids(tokenizer, source: str, special: dict, end: str) -> None:
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, chat_template=source, **special)
    chat = ChatTokens(ChatTemplate(source, special), tokenizer)
    for messages in (CONVERSATION, CONVERSATION[1:2], CONVERSATION[:3]):
        for generation_prompt in (False, True):
            theirs = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)
            ours = chat.encode(chat.template.render(messages, add_generation_prompt=generation_prompt))
            assert ours == list(theirs["input_ids"]), (source[:20], generation_prompt)
    assert chat.end_ids == [tokenizer.token_to_id(end)]  # where a reply stops


def test_only_the_assistants_tokens_and_turn_ends_are_learned(tokenizer) -> None:
    chat = ChatTokens(ChatTemplate.chatml(), tokenizer)
    ids, learn = chat.training_example(CONVERSATION)
    replies = [m["content"] for m in CONVERSATION if m["role"] == "assistant"]
    end = tokenizer.token_to_id(IM_END)
    expected = [t for reply in replies for t in [*chat.encode(reply), end]]
    assert [i for i, keep in zip(ids, learn, strict=True) if keep] == expected  # words and turn end, nothing else
    token_bytes = token_byte_lengths(tokenizer)
    x, y, _, n_bytes = pack([(ids, learn)], 96, eod_id(tokenizer), token_bytes)
    scored = y[0] != IGNORE
    assert int(scored.sum()) == len(expected)  # the assistant's tokens plus their end-of-turn tokens
    assert y[0][scored].tolist() == expected
    assert int(n_bytes[0]) == sum(len(r.encode()) for r in replies)  # the turn ends stand for no text

    # The loss is the mean over those positions: what a system or user position predicts never counts
    torch.manual_seed(0)
    logits = torch.randn(1, 96, 400)
    per_token = F.cross_entropy(logits[0], y[0].clamp(min=0), reduction="none")
    from llm.training.module import token_cross_entropy

    loss = token_cross_entropy(logits, y)
    torch.testing.assert_close(loss, per_token[scored].mean())
    noisy = logits.clone()
    noisy[0, ~scored] = torch.randn_like(noisy[0, ~scored]) * 10  # other predictions at the other positions
    torch.testing.assert_close(token_cross_entropy(noisy, y), loss)

    # A different user message changes the inputs, not what is learned: the targets stay the assistant's
    other = [*CONVERSATION[:3], {"role": "user", "content": "def f(x)?"}, CONVERSATION[4]]
    ids2, learn2 = chat.training_example(other)
    assert [i for i, k in zip(ids2, learn2, strict=True) if k] == expected
    first_turn = ids.index(end) + 1  # positions before the changed message: the same ids, the same targets
    _, y2, _, _ = pack([(ids2, learn2)], 96, eod_id(tokenizer), token_bytes)
    assert torch.equal(y2[0][:first_turn], y[0][:first_turn])


def test_packing_keeps_conversations_whole_and_cuts_only_what_cannot_fit(tokenizer, caplog) -> None:
    seqs = [([5] * 20, [True] * 20), ([6] * 30, [True] * 30), ([7] * 15, [True] * 15), ([8] * 70, [True] * 70)]
    x, y, pos, _ = pack(seqs, 32, 0, token_byte_lengths(tokenizer))
    # 33 tokens a window: 20 | 30 | 15 (not behind the 30) | 70, cut into 3 windows that share their boundaries
    assert len(x) == 6 and x[0, :19].tolist() == [5] * 19 and x[0, 19] == 0 and x[1, :29].tolist() == [6] * 29
    assert "1 conversations are longer than the context" in caplog.text
    targets = [t for row in y.tolist() for t in row if t != IGNORE]
    assert targets.count(8) == 69 and targets.count(6) == 29  # every token but the first of each is a target once


def test_conversations_files_bad_lines_are_reported_and_skipped(tmp_path: Path) -> None:
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}),
        json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),
        "",
        json.dumps({"prompt": "2+2?", "completion": "4"}),
        json.dumps([1, 2]),
    ]
    path = tmp_path / "chats.jsonl"
    path.write_text("\n".join(lines) + "\n")
    conversations, records = read_conversations([path, tmp_path / "notes.txt"], tmp_path)
    assert [c.line for c in conversations] == [1, 6]
    assert conversations[1].messages == [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    errors = {r["line"]: r["reason"] for r in records if r.get("status") == "error"}
    assert set(errors) == {2, 3, 4, 7}
    assert "not JSON" in errors[2] and "'robot' is not one of" in errors[3] and "no assistant turn" in errors[4]
    summary = [r for r in records if r["path"] == "chats.jsonl" and "line" not in r][0]
    assert summary["conversations"] == 2 and summary["bad_lines"] == 4
    with pytest.raises(ValueError, match="neither"):
        parse_line(json.dumps({"text": "x"}))


def test_conversations_not_lines_are_split() -> None:
    from llm.data.conversations import Conversation

    convs = [Conversation("f", i, [{"role": "user", "content": str(i)}]) for i in range(20)]
    train, val = split_conversations(convs, 0.1, seed=3)
    assert len(val) == 2 and len(train) == 18 and not {c.line for c in train} & {c.line for c in val}
    assert split_conversations(convs, 0.1, seed=3) == (train, val)


# ---------------------------------------------------------------------------------------------- end to end

WORDS = ["wren", "oak", "flint", "moss", "quill", "ember", "brook", "slate", "thorn", "cedar", "plume", "ridge"]
EXPORTABLE = [
    "model.config.mlp=swiglu",
    "model.config.norm=rmsnorm",
    "model.config.value_embeds=0",
]  # experiment=exportable's
SHAPE = [
    "model.config.n_layer=2",
    "model.config.n_embd=64",
    "model.config.n_head=4",
    "model.config.n_kv_head=2",
    "model.config.block_size=128",
    "model.config.vocab_size=512",
    *EXPORTABLE,  # with QK-norm: Qwen3's layout, so the tuned model exports (docs/export.md)
    "trainer.accelerator=cpu",
    "data.batch_size=8",
]


def facts(seed: int = 0, n: int = 30) -> list[tuple[str, str]]:
    """n made-up vaults, each with a made-up code: questions that differ only in a number, as a user's short
    question-answer file does (the case where packed conversations that see each other learn the wrong answer)."""
    rng = random.Random(seed)
    numbers = rng.sample(range(1, 100), n)
    return [(str(number), f"{rng.choice(WORDS)}{rng.randint(1, 9)}") for number in numbers]


def question(name: str) -> str:
    return f"What is the code of vault {name}?"


def answer(name: str, value: str, i: int) -> str:
    """Short and long replies: four to fourteen conversations share a window."""
    reply = f"The code of vault {name} is {value}."
    return reply + " Keep it safe and tell nobody else about it." * (i % 3 == 0)


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[str, str]]]:
    """Pretrain a tiny model briefly on unrelated documents, then fine-tune it on 30 facts, each conversation once
    (a bad line among them; a tenth held out for validation): the fine-tuned run's folder."""
    from llm.train import train

    tmp = tmp_path_factory.mktemp("sft")
    known = facts()
    corpus = tmp / "corpus"
    corpus.mkdir()
    for i in range(6):
        text = "Vaults keep things safe. Every vault has a number and a code. " * 3 + " ".join(WORDS)
        (corpus / f"notes{i}.txt").write_text((text + "\n") * 5)
    chats = tmp / "facts.jsonl"
    with open(chats, "w") as f:
        for i, (name, value) in enumerate(known):
            turns = [
                {"role": "user", "content": question(name)},
                {"role": "assistant", "content": answer(name, value, i)},
            ]
            f.write(json.dumps({"messages": turns}) + "\n")
        f.write('{"messages": [{"role": "user", "content": "unfinished"}\n')  # a bad line: reported, skipped
    base = compose_train(tmp / "base", [*SHAPE, f"data.paths=[{corpus}]", "trainer.max_steps=100"], tiny=False)
    train(base)
    sft = [*SHAPE, "experiment=sft", f"init_from={base.paths.output_dir}", f"data.paths=[{chats}]"]
    cfg = compose_train(tmp / "tuned", [*sft, "trainer.max_steps=500", "optim.lr=3e-3"], tiny=False)
    train(cfg)
    return Path(cfg.paths.output_dir), known


@pytest.mark.slow
def test_a_tiny_model_fine_tuned_on_conversations_answers_and_stops(sft_run) -> None:
    from llm.checkpoint import load_checkpoint, read_chat_template
    from llm.sampler import generate

    run, known = sft_run
    manifest = [json.loads(line) for line in (run / "data" / "manifest.jsonl").read_text().splitlines()]
    assert [r["line"] for r in manifest if r.get("status") == "error"] == [31]
    ckpt = run / "checkpoints" / "last.ckpt"
    model, tokenizer, _ = load_checkpoint(ckpt)
    template = read_chat_template(ckpt)
    assert template.name == "chatml" and tokenizer.token_to_id(IM_START) == 1
    chat = ChatTokens(template, tokenizer)
    replies = generate(model, tokenizer, [question(n) for n, _ in known], 80, temperature=0, chat=chat)
    right = sum(value in r.text for (_, value), r in zip(known, replies, strict=True))
    stopped = sum(r.finish_reason == "stop" for r in replies)
    assert right >= 0.8 * len(known) and stopped >= 0.9 * len(known), [r.text for r in replies]


@pytest.mark.slow
def test_the_server_and_infer_py_answer_in_the_models_template(sft_run, capsys) -> None:
    httpx = pytest.importorskip("httpx")
    from llm import infer
    from tests.serve_fixtures import served
    from tests.test_infer import compose_infer

    run, known = sft_run
    ckpt = run / "checkpoints" / "last.ckpt"
    with served(ckpt, default_max_tokens=80) as server:
        replies = []
        for name, _ in known:
            body = {"model": "llm", "messages": [{"role": "user", "content": question(name)}], "temperature": 0}
            response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
            assert response.status_code == 200, response.text
            replies.append(response.json()["choices"][0])
        robot = {"model": "llm", "messages": [{"role": "robot", "content": "hi"}]}
        refused = httpx.post(f"{server.url}/v1/chat/completions", json=robot, timeout=60)
    right = sum(value in r["message"]["content"] for (_, value), r in zip(known, replies, strict=True))
    stopped = sum(r["finish_reason"] == "stop" for r in replies)
    assert right >= 0.8 * len(known) and stopped >= 0.9 * len(known), [r["message"]["content"] for r in replies]
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "messages.0.role"

    name = known[0][0]
    infer.infer(compose_infer(f"ckpt_path={ckpt}", f"prompt={question(name)!r}", "chat=true", "temperature=0"))
    assert capsys.readouterr().out == replies[0]["message"]["content"] + "\n"


@pytest.mark.slow
def test_the_exported_chat_model_answers_in_transformers_as_here(sft_run, tmp_path: Path) -> None:
    """apply_chat_template(add_generation_prompt=True) and greedy generate() of the Hugging Face export give the
    reply our generate() (and so the server and infer.py) gives, and stop at the end of the assistant's turn."""
    transformers = pytest.importorskip("transformers")
    from llm.checkpoint import load_checkpoint, read_chat_template
    from llm.export import export
    from llm.sampler import generate

    run, known = sft_run
    ckpt = run / "checkpoints" / "last.ckpt"
    folder = export(ckpt, "hf", tmp_path / "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    model, tokenizer, _ = load_checkpoint(ckpt)
    chat = ChatTokens(read_chat_template(ckpt), tokenizer)
    for name, _ in known[:6]:
        messages = [{"role": "user", "content": question(name)}]
        ids = hf_tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
        assert list(ids) == chat.prompt_ids(messages)
        with torch.no_grad():
            out = hf_model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=80)
        new = out[0, len(ids) :].tolist()
        ours = generate(model, tokenizer, question(name), 80, temperature=0, chat=chat)[0]
        assert new[-1] in chat.end_ids and ours.finish_reason == "stop"  # both stop at the end of the turn
        assert hf_tok.decode(new, skip_special_tokens=True) == ours.text


def test_an_older_checkpoint_gets_the_chat_markers_and_its_embedding_grows(tmp_path: Path, caplog) -> None:
    """A checkpoint whose tokenizer was trained before the markers were reserved: experiment=sft adds them as new
    ids, and the embedding grows by the rows they need, the old rows as they were."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from llm.config import model_preset
    from llm.init_from import model_for, open_start
    from llm.model import GPT

    old = Tokenizer(models.BPE())
    old.pre_tokenizer, old.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    old.train_from_iterator([TEXTS[0]], trainer=trainer)
    old.add_tokens([f"word{i}" for i in range(320 - old.get_vocab_size())])  # a full padded embedding: 320 rows
    assert old.get_vocab_size() == 320 and old.token_to_id(IM_START) is None
    config = model_preset("tiny", vocab_size=320, block_size=64, n_layer=1, n_embd=32, n_head=2, n_kv_head=1)
    torch.manual_seed(0)
    base = GPT(config)
    path = save_model(tmp_path / "run" / "checkpoints" / "last.ckpt", base, old)

    start = open_start(str(path.parent.parent), None)  # a run folder
    assert start.chat_template is None
    start.add_chat_markers()
    assert start.chat_template.name == "chatml" and "embedding by the rows" in caplog.text
    assert [start.tokenizer.token_to_id(t) for t in (IM_START, IM_END)] == [320, 321]
    assert start.model_config["vocab_size"] == 322  # 320 -> 322: the padded embedding grows from 320 to 384 rows
    grown = model_for(start)
    assert grown.wte.weight.shape[0] == 384 and base.wte.weight.shape[0] == 320
    assert torch.equal(grown.wte.weight[:320], base.wte.weight)
    assert torch.allclose(grown.wte.weight[320], base.wte.weight.mean(0))
    ids, learn = ChatTokens(start.chat_template, start.tokenizer).training_example(CONVERSATION)
    assert 320 in ids and 321 in ids and any(learn)
