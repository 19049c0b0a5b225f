"""A served tiny checkpoint for the server's tests: the engine and uvicorn on 127.0.0.1, port 0, in a thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from llm.checkpoint import load_checkpoint, read_chat_template, save_model
from llm.config import model_preset
from llm.model import GPT
from llm.tokenizer import train_tokenizer

TEXTS = ["def add(a, b):\n    return a + b\n", "The quick brown fox jumps over the lazy dog.", "héllo € 日本語"]


def write_checkpoint(path: Path, block_size: int = 128) -> Path:
    """A checkpoint as train.py writes it: a tiny model with weights large enough to say varied things."""
    tok = train_tokenizer(TEXTS * 20, vocab_size=320)
    torch.manual_seed(0)
    switches = dict(qk_norm=False, zero_init_proj=False, logit_softcap=None, tie_embeddings=True)
    config = model_preset(
        "tiny", vocab_size=320, block_size=block_size, n_layer=2, n_head=4, n_kv_head=None, n_embd=64, **switches
    )
    model = GPT(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.5 if name == "wte.weight" else 0.2)
    return save_model(path, model, tok)


@pytest.fixture(scope="session")
def serve_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("serve") / "run" / "checkpoints" / "last.ckpt")


@dataclass
class Served:
    url: str  # http://127.0.0.1:PORT
    engine: object  # llm.serve.engine.Engine


@contextmanager
def served(checkpoint: Path, start_engine: bool = True, **settings) -> Iterator[Served]:
    """The app of llm.serve.app over an engine of the checkpoint, listening on a free port until the block ends."""
    uvicorn = pytest.importorskip("uvicorn")
    pytest.importorskip("fastapi")
    from llm.loading import hugging_face_folder
    from llm.serve.app import create_app
    from llm.serve.engine import Engine
    from llm.serve.gate import allowed_host_names

    if hugging_face_folder(checkpoint) is not None:  # a Hugging Face model folder, as serve.py's ckpt_path takes it
        from llm.init_from import model_for, open_start

        start = open_start(str(checkpoint), None)
        model, tokenizer, template = model_for(start), start.tokenizer, start.chat_template
    else:
        model, tokenizer, _ = load_checkpoint(checkpoint)
        template = read_chat_template(checkpoint)
    engine_args = dict(max_batch=4, queue_size=16, compile=False)
    engine_args |= {k: settings.pop(k) for k in list(settings) if k in engine_args}
    engine = Engine(model, tokenizer, **engine_args)
    app_args = (
        dict(
            model_name="llm",
            request_timeout=30.0,
            default_max_tokens=32,
            retry_after=1,
            max_request_bytes=8 * 2**20,
            max_request_values=262_144,
            max_messages=4_096,
            api_key=None,
            chat_template=template,
        )
        | settings
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app_args.setdefault("allowed_hosts", allowed_host_names("127.0.0.1", sock.getsockname()[1]))
    app = create_app(engine, **app_args)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    if start_engine:
        engine.start()
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.01)
        yield Served(f"http://127.0.0.1:{sock.getsockname()[1]}", engine)
    finally:
        server.should_exit = True
        thread.join(10)
        engine.stop()
        sock.close()
