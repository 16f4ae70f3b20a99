"""Answers from passages: trim what the model reads, check each sentence, quote when needed."""
