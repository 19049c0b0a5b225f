"""Serve a trained checkpoint over an OpenAI-compatible API: `python serve.py ckpt_path=last`.

The code is in llm/serve/cli.py."""

from llm.serve.cli import main, serve

__all__ = ["main", "serve"]

if __name__ == "__main__":
    main()
