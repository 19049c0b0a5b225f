"""Answers grounded in the documents: passages indexed at ingestion (index.py, passages.py), found for a question and
given to the model in its chat template (context.py)."""
