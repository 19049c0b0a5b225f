"""Serving: an OpenAI-compatible HTTP API (app.py) over a continuous-batching engine (engine.py) that owns the model.

engine.py needs only torch; app.py and the CLI (cli.py) need the `serve` extra (FastAPI, uvicorn)."""
