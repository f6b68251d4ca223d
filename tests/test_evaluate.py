"""Bits per byte: tokenizer-independent, and exact for a byte-level vocabulary."""

import math

import numpy as np
import pytest
import torch

from pocketgpt.config import ModelConfig
from pocketgpt.evaluate import evaluate_tokens


class Uniform(torch.nn.Module):
    """Predicts every token with probability 1/V."""

    def __init__(self, V, T):
        super().__init__()
        self.config = ModelConfig(n_layer=1, n_head=1, n_embd=8, block_size=T, vocab_size=V)

    def forward(self, idx, targets=None):
        return torch.zeros(*idx.shape, self.config.vocab_size), None


def test_uniform_model_scores_log2_vocab_bits_per_byte_on_bytes():
    V = 256
    tokens = np.random.default_rng(0).integers(0, V, size=1000)
    r = evaluate_tokens(Uniform(V, 64), tokens, np.ones(V, dtype=np.int32), batch_size=4)
    assert r["tokens"] == 999  # every target once, non-overlapping windows + a partial one
    assert r["loss"] == pytest.approx(math.log(V))
    assert r["bpb"] == pytest.approx(8.0)  # log2(256) bits for each one-byte token
    assert r["perplexity"] == pytest.approx(V)


def test_multi_byte_tokens_and_specials_in_bpb():
    V = 10
    lengths = np.array([3] * 9 + [0], dtype=np.int32)  # id 9 is a special token: no bytes, left out of bpb
    tokens = np.array([1, 2, 9, 3, 4, 5, 9, 6])
    r = evaluate_tokens(Uniform(V, 4), tokens, lengths)
    n_text_targets = sum(1 for t in tokens[1:] if t != 9)
    assert r["bytes"] == 3 * n_text_targets
    assert r["bpb"] == pytest.approx(n_text_targets * math.log(V) / (math.log(2) * 3 * n_text_targets))


def test_window_evaluation_matches_model_loss(tiny_model):
    tokens = np.random.default_rng(1).integers(0, tiny_model.config.vocab_size, size=64 * 3 + 1)
    r = evaluate_tokens(tiny_model, tokens, np.ones(tiny_model.config.vocab_size), batch_size=2)
    x = torch.from_numpy(tokens[:-1].reshape(3, 64)).long()
    y = torch.from_numpy(tokens[1:].reshape(3, 64)).long()
    with torch.no_grad():
        _, loss = tiny_model(x, y)
    assert r["loss"] == pytest.approx(loss.item(), rel=1e-5)
