"""Text generation. ``generate_greedy`` is the book's ``generate_text_simple`` (crop to the context,
argmax), used for the samples the trainer prints."""

from __future__ import annotations

import torch

from gpttui.core.tokenizer import Tokenizer


@torch.no_grad()
def generate_greedy(model: torch.nn.Module, idx: torch.Tensor, max_new_tokens: int, context_size: int,
                    eos_id: int | None = None) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            logits = model(idx[:, -context_size:])[:, -1, :]
            idx_next = torch.argmax(logits, dim=-1, keepdim=True)
            if eos_id is not None and int(idx_next) == eos_id:
                break
            idx = torch.cat((idx, idx_next), dim=1)
    finally:
        model.train(was_training)
    return idx


def sample_text(model: torch.nn.Module, tokenizer: Tokenizer, prompt: str, max_new_tokens: int,
                context_size: int, device: torch.device | str = "cpu") -> str:
    """The book's ``generate_and_print_sample``: greedy continuation of ``prompt``, prompt included."""
    ids = tokenizer.encode(prompt) or [tokenizer.eot_id]
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    out = generate_greedy(model, idx, max_new_tokens, context_size)
    return tokenizer.decode(out[0].tolist())
