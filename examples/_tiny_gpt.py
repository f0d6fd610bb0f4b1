"""A tiny GPT-style model and a synthetic next-token task shared by the examples."""

from __future__ import annotations

import torch


class TinyGPT(torch.nn.Module):
    """Token + position embedding, causal transformer blocks, tied-free LM head."""

    def __init__(
        self, vocab: int = 64, d_model: int = 64, layers: int = 2, heads: int = 4, seq: int = 32
    ):
        super().__init__()
        self.tok = torch.nn.Embedding(vocab, d_model)
        self.pos = torch.nn.Embedding(seq, d_model)
        block = torch.nn.TransformerEncoderLayer(
            d_model,
            heads,
            dim_feedforward=4 * d_model,
            dropout=0.0,
            batch_first=True,
            norm_first=True,
        )
        self.blocks = torch.nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(d_model)
        self.head = torch.nn.Linear(d_model, vocab)
        self.register_buffer(
            "mask", torch.nn.Transformer.generate_square_subsequent_mask(seq), persistent=False
        )

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        h = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        h = self.blocks(h, mask=self.mask[:t, :t], is_causal=True)
        return self.head(self.norm(h))


def batch(
    gen: torch.Generator, size: int = 16, seq: int = 32, vocab: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences of a random arithmetic progression mod ``vocab``: learnable, cheap."""
    start = torch.randint(vocab, (size, 1), generator=gen)
    stride = torch.randint(1, 5, (size, 1), generator=gen)
    seqs = (start + stride * torch.arange(seq + 1)) % vocab
    return seqs[:, :-1], seqs[:, 1:]
