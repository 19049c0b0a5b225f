"""`python serve.py [overrides]` (or `llm-serve` when installed): serve a checkpoint over an OpenAI-compatible API.

Example: `python serve.py ckpt_path=last port=8000`. See conf/serve.yaml for every key, docs/serving.md for the API.
FastAPI and uvicorn come with the `serve` extra: `pip install -e '.[serve]'`.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from llm.config import run_command
from llm.errors import ConfigError
from llm.loading import load
from llm.retrieval.context import Retriever
from llm.sampler import resolve_compile

if TYPE_CHECKING:
    import uvicorn

    from llm.serve.engine import Engine

log = logging.getLogger(__name__)


def positive(key: str, value: object, minimum: float = 1) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise ConfigError(f"{key}={value!r} must be a number >= {minimum}")
    return value


def check(cfg: DictConfig) -> None:
    """Every key before the checkpoint loads: one line naming the key."""
    for key in ("max_batch", "queue_size", "default_max_tokens", "max_request_bytes"):
        if isinstance(cfg[key], bool) or not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ConfigError(f"{key}={cfg[key]!r} must be an integer >= 1")
    positive("request_timeout", cfg.request_timeout, 0.001)
    positive("liveness_timeout", cfg.liveness_timeout, 0.001)
    positive("max_request_values", cfg.max_request_values)
    positive("max_messages", cfg.max_messages)
    positive("retry_after", cfg.retry_after, 0)
    if isinstance(cfg.port, bool) or not isinstance(cfg.port, int) or not 0 <= cfg.port <= 65535:
        raise ConfigError(f"port={cfg.port!r} must be an integer in [0, 65535] (0: any free port)")
    if not cfg.model_name:
        raise ConfigError("model_name is empty: give the name clients will send as 'model'")
    if cfg.api_key is not None and (not isinstance(cfg.api_key, str) or not cfg.api_key):
        raise ConfigError(
            f"api_key={cfg.api_key!r} must be a non-empty string, or null for none (quote a key that looks like a "
            "number: api_key=\"'123'\", or set LLM_API_KEY)"
        )


def read_api_key(value: str | None) -> str | None:
    """The key every request but /health must send: api_key, else the environment's LLM_API_KEY; None: no key."""
    return value if value is not None else os.environ.get("LLM_API_KEY") or None


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exit_on_death(engine: Engine, server: uvicorn.Server, liveness_timeout: float) -> list[str]:
    """Make the engine thread's death, or a decode step that has not returned for liveness_timeout seconds, stop the
    server: why goes in the list returned, uvicorn is told to exit, and serve() then exits with status 1. Neither is
    restarted in place: the device state may be corrupt, and a process supervisor restarts the whole process
    cleanly (docs/serving.md)."""
    died: list[str] = []

    def on_death() -> None:  # on the engine thread
        died.append(f"the engine thread died: {engine.died or 'see the error logged above'}")
        server.should_exit = True

    def watch() -> None:  # a thread of its own: the engine's may be the one that hangs
        while not server.should_exit:
            stalled = engine.stalled(liveness_timeout)
            if stalled is not None:
                died.append(f"a decode step has not returned for {stalled:.1f} s (liveness_timeout={liveness_timeout})")
                server.should_exit = True
                return
            time.sleep(min(1.0, liveness_timeout / 4))

    engine.on_death = on_death
    threading.Thread(target=watch, name="llm-liveness", daemon=True).start()
    return died


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, bound before the server starts so port=0 can be logged as the port it got."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"host={host} port={port}: cannot listen there ({e.strerror})") from None
    return sock


def serve(cfg: DictConfig) -> None:
    check(cfg)
    try:
        import uvicorn

        from llm.serve.app import create_app
        from llm.serve.gate import allowed_host_names
    except ImportError as e:
        raise ConfigError(f"serve.py needs the serve extra ({e.name} is missing): pip install -e '.[serve]'") from None
    from llm.serve.engine import Engine

    retriever = Retriever.from_config(cfg.get("retrieval"), cfg.paths.outputs_root)
    sock = bind(cfg.host, cfg.port)
    model, tokenizer, device, chat_template = load(cfg)
    compile = resolve_compile(cfg.compile, device, kv_cache=True)
    engine = Engine(model, tokenizer, cfg.max_batch, cfg.queue_size, compile)
    if compile:
        log.info("compiling the decode step before serving (a minute or two on a CPU)")
        engine.warm_up()
    key = read_api_key(cfg.api_key)
    if key is None and not loopback(cfg.host):
        log.warning(
            "host=%s serves the network without an API key: anyone who reaches it can use it (set api_key or "
            "LLM_API_KEY)",
            cfg.host,
        )
    app = create_app(
        engine,
        cfg.model_name,
        cfg.request_timeout,
        cfg.default_max_tokens,
        int(cfg.retry_after),
        cfg.max_request_bytes,
        cfg.max_request_values,
        cfg.max_messages,
        key,
        chat_template,
        retriever,
        allowed_host_names(cfg.host, sock.getsockname()[1], list(cfg.allowed_hosts or [])),
        cfg.liveness_timeout,
    )
    host, port = sock.getsockname()[:2]
    url_host = f"[{host}]" if ":" in host else host
    log.info(
        "serving %s (context %d, max_batch %d) on http://%s:%d (chat page at /, API at /v1)",
        cfg.model_name,
        engine.block_size,
        cfg.max_batch,
        url_host,
        port,
    )
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, timeout_graceful_shutdown=5))
    died = exit_on_death(engine, server, cfg.liveness_timeout)
    engine.start()
    try:
        server.run(sockets=[sock])
    finally:
        engine.stop(wait=cfg.liveness_timeout)  # a hung step is not waited for: its thread is a daemon
        sock.close()
    if died:
        log.error("%s; exiting with status 1 for a supervisor to restart serve.py", died[0])
        sys.exit(1)


def main() -> None:
    run_command("serve", serve)


if __name__ == "__main__":
    main()
