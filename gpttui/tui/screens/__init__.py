"""The app's screens, one module each: dataset, train, generate, checkpoints."""
