"""Other formats in and out: Hugging Face folders (hf), their tokenizers (tokenizer), llama.cpp's GGUF (gguf)."""
