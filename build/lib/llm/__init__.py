"""llm: a GPT written by hand, trained on your own documents with Lightning and Hydra."""

__version__ = "0.1.0"
