"""`python serve.py [overrides]` (or `llm-serve` when installed): serve a checkpoint over an OpenAI-compatible API.

Example: `python serve.py ckpt_path=last port=8000`. See conf/serve.yaml for every key, docs/serving.md for the API.
FastAPI and uvicorn come with the `serve` extra: `pip install -e '.[serve]'`.
"""

from __future__ import annotations

import logging
import socket
import sys

import hydra
from omegaconf import DictConfig

from llm.config import config_dir, register_resolvers
from llm.errors import ConfigError
from llm.infer import load
from llm.sampler import resolve_compile

log = logging.getLogger(__name__)


def positive(key: str, value: object, minimum: float = 1) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise ConfigError(f"{key}={value!r} must be a number >= {minimum}")
    return value


def check(cfg: DictConfig) -> None:
    """Every key before the checkpoint loads: one line naming the key."""
    for key in ("max_batch", "queue_size", "default_max_tokens"):
        if isinstance(cfg[key], bool) or not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ConfigError(f"{key}={cfg[key]!r} must be an integer >= 1")
    positive("request_timeout", cfg.request_timeout, 0.001)
    positive("retry_after", cfg.retry_after, 0)
    if isinstance(cfg.port, bool) or not isinstance(cfg.port, int) or not 0 <= cfg.port <= 65535:
        raise ConfigError(f"port={cfg.port!r} must be an integer in [0, 65535] (0: any free port)")
    if not cfg.model_name:
        raise ConfigError("model_name is empty: give the name clients will send as 'model'")


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
    except ImportError as e:
        raise ConfigError(f"serve.py needs the serve extra ({e.name} is missing): pip install -e '.[serve]'") from None
    from llm.serve.engine import Engine

    sock = bind(cfg.host, cfg.port)
    model, tokenizer, device = load(cfg)
    compile = resolve_compile(cfg.compile, device, kv_cache=True)
    engine = Engine(model, tokenizer, cfg.max_batch, cfg.queue_size, compile)
    if compile:
        log.info("compiling the decode step before serving (a minute or two on a CPU)")
        engine.warm_up()
    app = create_app(engine, cfg.model_name, cfg.request_timeout, cfg.default_max_tokens, int(cfg.retry_after))
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
    engine.start()
    try:
        server.run(sockets=[sock])
    finally:
        engine.stop()
        sock.close()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="serve")
def _hydra_main(cfg: DictConfig) -> None:
    """Bad config: one line naming the key on stderr, exit code 2, no traceback."""
    try:
        serve(cfg)
    except ConfigError as e:
        log.error("%s", e)
        sys.exit(2)


def main() -> None:
    register_resolvers()
    _hydra_main()


if __name__ == "__main__":
    main()
