"""Train a GPT on your documents: `python train.py [overrides]`. The code is in llm/train.py."""

from llm.train import main, train

__all__ = ["main", "train"]

if __name__ == "__main__":
    main()
