"""Tokenizers (Hugging Face tokenizer.json, SentencePiece, GGUF vocabularies) and
streaming detokenization."""
