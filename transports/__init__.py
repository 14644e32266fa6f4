"""Transports move bytes between clients and llmcore's OpenAI service: an h11
HTTP/1.1 server (TCP, TLS, Unix socket) and a JSON-lines batch pipe. They use
llmcore's public API only and never touch the scheduler or the model."""
