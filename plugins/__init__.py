"""Parts of llmcore chosen by name: model architectures today; tool-call and
reasoning parsers later. llmcore finds them through `llmcore.registry`."""
