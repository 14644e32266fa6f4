"""Parts of llmcore chosen by name: model architectures (found through
`llmcore.registry`), tool-call and reasoning parsers (through
`llmcore.parsers.registry`)."""
