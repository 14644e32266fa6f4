"""Model architecture plugins (found by `llmcore.registry`, never imported directly)."""
