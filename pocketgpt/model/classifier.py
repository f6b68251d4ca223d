"""The classification head: a GPT trunk read at its last real token, as Hugging Face's
GPT2ForSequenceClassification. A model piece: reading labelled files and batching live in finetune/classify.py."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pocketgpt.config import ModelConfig
from pocketgpt.errors import UserError
from pocketgpt.model.gpt import GPT


class GPTClassifier(GPT):
    """GPT trunk + `score` head (nn.Linear(n_embd, n_classes, bias=False), as HF GPT2ForSequenceClassification)
    on the LAST NON-PADDING token.

    The trunk keeps GPT's module names (lm_head included, unused here), so a GPT state dict loads with
    strict=False and only `score.weight` missing. The head starts at zero: every class starts equally
    likely (loss exactly ln(n_classes), whatever the seed), and its gradient (p - y) h^T is not zero, so
    it learns from the first step; a random head would add a seed-dependent bias to the first predictions.
    """

    def __init__(self, cfg: ModelConfig, n_classes: int):
        if not isinstance(n_classes, int) or n_classes < 2:
            raise UserError(f"a classifier needs at least 2 classes, got n_classes={n_classes!r}")
        super().__init__(cfg)
        self.n_classes = n_classes
        self.score = nn.Linear(cfg.n_embd, n_classes, bias=False)  # hidden state -> class logits
        nn.init.zeros_(self.score.weight)

    @classmethod
    def from_gpt(cls, gpt: GPT, n_classes: int) -> GPTClassifier:
        """A classifier whose trunk is a copy of `gpt`'s weights (apply LoRA after this, not before)."""
        model = cls(gpt.config, n_classes)
        missing, unexpected = model.load_state_dict(gpt.state_dict(), strict=False)
        if unexpected or [k for k in missing if not k.startswith("score.")]:
            raise ValueError(
                f"GPT weights do not fit the classifier trunk: missing {missing[:3]}, "
                f"unexpected {unexpected[:3]} (apply LoRA after from_gpt, or merge it first)"
            )
        p = next(gpt.parameters())
        return model.to(device=p.device, dtype=p.dtype).train(gpt.training)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) right-padded, lengths (B,) real lengths (None = all T) -> logits (B, n_classes) float32,
        and the mean cross-entropy against targets (B,) int64 if given."""
        B, T = idx.shape
        h = self.hidden(idx)  # (B, T, C)
        if lengths is None:
            last = h[:, -1]  # (B, C)
        else:
            if lengths.shape != (B,) or int(lengths.min()) < 1 or int(lengths.max()) > T:
                raise ValueError(f"lengths must be (B,)=({B},) with values in [1, {T}], got {lengths.tolist()}")
            last = h[torch.arange(B, device=h.device), lengths.to(h.device) - 1]  # (B, C): last real token
        logits = self.score(last).float()  # (B, n_classes)
        loss = F.cross_entropy(logits, targets) if targets is not None else None
        return logits, loss
