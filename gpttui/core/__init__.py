"""The engine: config, tokenizer, data, model, training, checkpoints. No UI imports here."""
