"""gpttui: train GPT language models from scratch and talk to them, in your terminal."""

__version__ = "0.1.0"
