"""AEMG-dist core: config, events, tokens, model, pretraining, evaluation and the `aemg` CLI."""
