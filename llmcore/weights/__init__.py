"""Weight loading: GGUF files and Hugging Face safetensors folders."""
