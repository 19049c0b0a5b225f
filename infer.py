"""Generate text from a trained checkpoint: `python infer.py ckpt_path=last 'prompt="def "'`.

The code is in llm/infer.py."""

from llm.infer import infer, main

__all__ = ["infer", "main"]

if __name__ == "__main__":
    main()
