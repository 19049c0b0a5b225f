"""Scoring a checkpoint: lm-evaluation-harness tasks through an adapter, bits per byte on held-out documents,
and the report card of a run.

adapter.py: our GPT as an lm-eval `LM`; tasks.py: task names checked (and their data found offline) before any
work, and the harness run; bpb.py: bits per byte by kind of document; results.py: eval/results.json and the
run's loggers; report.py: report.md and its figures; callbacks.py: the same during training.
"""
