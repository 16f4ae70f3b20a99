"""The OpenAI-compatible HTTP API (`rag serve`): chat completions with sources, search, uploads."""
