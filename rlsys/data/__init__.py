"""Prompt datasets, the synthetic verifiable task, and the tokenizer/model builders of the embedded default."""
