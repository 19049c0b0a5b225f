"""Data: ingest files into documents, tokenize them into token files, serve windows to the trainer."""
