"""The GPT model: a decoder-only transformer, read top to bottom as the articles' seven steps.

    1) token ids -> token embeddings                    wte
    2) + position information                           wpe (learned | sinusoidal | rope)
    3) causal multi-head self-attention                 softmax(Q K^T / sqrt(d_k) + mask) V (attention.py)
    4) position-wise MLP                                Linear -> GELU/ReLU -> Linear
    5) residual connections and layer norms             x + f(LN(x)), pre-norm as in GPT-2
    6) N such blocks stacked                            h[0..n_layer-1]
    7) final norm, linear head, softmax over vocabulary ln_f, lm_head (softmax lives in the loss / sampler)

A note for learners: GPT is not an RNN and does not use Word2Vec. Its embeddings are an ordinary
trained table (step 1), it reads the whole context in parallel, and its only "decoder" is a stack of
blocks whose attention is masked so token t sees tokens <= t. There is no encoder and no
cross-attention, which is why `nn.Transformer` (encoder-decoder) is the wrong building block.

Step 3's kernel choice (fused SDPA or the written-out formula) and masks live beside it in attention.py, in one
function, `attend`. This file is a pure nn.Module: no file I/O, optimizer, sampling or argv. Module names follow GPT-2
(wte, wpe, h, ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj, ln_f, lm_head) so weight
interop is a short rename table.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from pocketgpt.config import ModelConfig
from pocketgpt.model.attention import KERNELS, attend, matmul_attention  # noqa: F401 (matmul_attention: its old home)
from pocketgpt.model.head_loss import linear_cross_entropy
from pocketgpt.model.kv_cache import KVCache
from pocketgpt.model.positional import POSITIONAL, apply_rotary


class ReLU2(nn.Module):
    """Squared ReLU (So et al. 2021, "Primer")."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()


ACTIVATIONS: dict[str, type[nn.Module] | callable] = {
    "gelu": nn.GELU,  # 0.5 x (1 + erf(x / sqrt 2)): the exact GELU
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),  # GPT-2's approximation ("gelu_new" in HF)
    "relu": nn.ReLU,
    "relu2": ReLU2,
}


class CausalSelfAttention(nn.Module):
    """Step 3: every token asks (q) each token up to itself (k) how relevant it is, and mixes their values (v)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.n_head, self.head_dim, self.layer_idx = cfg.n_head, cfg.head_dim, layer_idx
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # q, k, v projections in one matmul
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)  # mixes the heads back together
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.attn_dropout = cfg.dropout
        self.qk_norm = cfg.qk_norm
        self.kernel = "auto"  # sdpa | matmul | auto (attention.py); training sets the one it measured faster

    def forward(
        self,
        x: torch.Tensor,
        rot: tuple[torch.Tensor, torch.Tensor] | None,
        kv_cache: KVCache | None = None,
        mask: torch.Tensor | None = None,
        probs: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        B, T, C = x.shape
        # 3) each token's query, key and value, (B, T, 3C) -> 3 x (B, nh, T, hs): one view of the one matmul's output
        q, k, v = self.c_attn(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.qk_norm:  # unit-RMS q and k per head
            q, k = F.rms_norm(q, (self.head_dim,)), F.rms_norm(k, (self.head_dim,))
        q, k = apply_rotary(q, rot), apply_rotary(k, rot)  # 2) RoPE turns q and k; identity otherwise
        # softmax(Q K^T / sqrt(d_k) + mask) V, the future (and any left padding) masked out: attention.py
        dropout = self.attn_dropout if self.training else 0.0
        y = attend(
            q, k, v, cache=kv_cache, layer=self.layer_idx, mask=mask, dropout=dropout, probs=probs, kernel=self.kernel
        )
        y = self.c_proj(y.transpose(1, 2).reshape(B, T, C))  # (B, T, C): heads side by side, mixed
        return self.resid_dropout(y) if self.training else y  # (a dropout module call costs decoding ~2 µs a layer)


def set_attention_kernel(model: nn.Module, kernel: str) -> None:
    """Every attention layer in `model` (a GPT, or anything holding one: a classifier, LoRA) uses `kernel`."""
    if kernel not in KERNELS:
        raise ValueError(f"attention kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    for m in model.modules():
        if isinstance(m, CausalSelfAttention):
            m.kernel = kernel


class MLP(nn.Module):
    """Step 4: the same two-layer network applied to every position on its own."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, cfg.mlp_width, bias=cfg.bias)
        self.act = ACTIVATIONS[cfg.activation]()
        self.c_proj = nn.Linear(cfg.mlp_width, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c_proj(self.act(self.c_fc(x)))  # (B, T, C) -> (B, T, mlp_width = 4C) -> (B, T, C)
        return self.dropout(y) if self.training else y


class Block(nn.Module):
    """Step 5: pre-norm residual block, x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg, layer_idx)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(
        self,
        x: torch.Tensor,
        rot,
        kv_cache: KVCache | None = None,
        mask: torch.Tensor | None = None,
        probs: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rot, kv_cache, mask, probs)  # 3) attention, 5) residual around a pre-norm
        x = x + self.mlp(self.ln_2(x))  # 4) MLP, 5) residual around a pre-norm
        return x


class GPT(nn.Module):
    """Steps 1-7. What the rest of pocketgpt relies on (generate, train, finetune, interop, explain) is this contract:
    `hidden(idx, kv_cache=None, pos=None, attn_probs=None)` -> (B, T, C) final-normed hidden states;
    `forward(idx, targets=None, kv_cache=None)` -> (logits, loss); `lm_head` (hidden -> logits); `config`; and
    GPT-2's module names: transformer.wte, .wpe, .h[i].ln_1, .attn.c_attn, .attn.c_proj, .ln_2, .mlp.c_fc, .mlp.c_proj,
    transformer.ln_f, lm_head."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.activation_checkpointing = False  # a training choice (TrainConfig), not part of the architecture
        self.fused_loss = False  # training: head + loss chunked, no full logits (model/head_loss.py; TrainConfig)
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),  # 1) token embedding table
                wpe=POSITIONAL[cfg.pos_encoding](cfg),  # 2) positional encoding
                drop=nn.Dropout(cfg.dropout),
                h=nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer)),  # 6) N blocks
                ln_f=nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias),
            )
        )
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)  # 7) scores over the vocabulary
        if cfg.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight  # same matrix reads and writes tokens
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=cfg.init_std / math.sqrt(2 * cfg.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)

    def hidden(
        self,
        idx: torch.Tensor,
        kv_cache: KVCache | None = None,
        pos: torch.Tensor | None = None,
        *,
        attn_probs: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Steps 1-6 and the final norm: token ids (B, T) -> hidden states (B, T, C).

        `pos` gives each token's position, (T,) or per row (B, T) for left-padded batches; by default the
        positions follow the cache. `attn_probs`: a list that gets each layer's attention weights appended,
        (B, nh, T, past + T) per layer, computed by the written-out formula (model/attention.py).
        """
        B, T = idx.shape
        past = kv_cache.pos if kv_cache is not None else 0
        if past + T > self.config.block_size:
            raise ValueError(f"sequence of {past + T} tokens exceeds the context length {self.config.block_size}")
        if pos is None:
            pos = torch.arange(past, past + T, device=idx.device)  # (T,)
        tr = self.transformer
        x = tr.wte(idx)  # 1) token embeddings: (B, T, C)
        x = tr.wpe.add_to_input(x, pos)  # 2) + positions (learned, sinusoidal; RoPE adds nothing): (B, T, C)
        x = tr.drop(x) if self.training else x
        rot = tr.wpe.rotation(pos)  # 2) RoPE's (cos, sin) that attention turns q and k by; None otherwise
        mask = kv_cache.attn_mask(T) if kv_cache is not None else None  # one mask for every layer
        recompute = self.activation_checkpointing and self.training and kv_cache is None and torch.is_grad_enabled()
        for block in tr.h:  # 6) N blocks, each 3) attention and 4) MLP with 5) residuals and layer norms
            if recompute and attn_probs is None:  # keep only each block's input; redo its forward in backward
                x = torch.utils.checkpoint.checkpoint(block, x, rot, use_reentrant=False)
            else:
                x = block(x, rot, kv_cache, mask, attn_probs)  # (B, T, C)
        if kv_cache is not None:
            kv_cache.advance(T)
        return tr.ln_f(x)  # 7) final norm: (B, T, C)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, kv_cache: KVCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) -> logits (B, T, vocab), and the mean next-token cross-entropy if targets are given.

        Targets equal to -1 are ignored (padding, or prompt tokens when fine-tuning on answers only).
        With `fused_loss` set (as training sets it) and targets given, the logits are never formed: the
        loss comes from the head and cross-entropy fused chunk by chunk, and logits is None.
        """
        h = self.hidden(idx, kv_cache)  # 1)-6) + final norm: (B, T, C)
        if targets is not None and self.fused_loss and type(self.lm_head) is nn.Linear:
            return None, linear_cross_entropy(h, self.lm_head.weight, targets)
        logits = self.lm_head(h)  # 7) a score per vocabulary entry: (B, T, V); softmax lives in the loss / sampler
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def resize_vocab(self, n: int) -> None:
        """Grow the vocabulary to n tokens (new special tokens); new rows start at the mean embedding."""
        old = self.transformer.wte.weight
        V, C = old.shape
        if n <= V:
            return
        with torch.no_grad():
            wte = nn.Embedding(n, C).to(old.device, old.dtype)
            wte.weight[:V] = old
            wte.weight[V:] = old.mean(dim=0)
            self.transformer.wte = wte
            head = nn.Linear(C, n, bias=False).to(old.device, old.dtype)
            if self.config.tie_embeddings:
                head.weight = wte.weight
            else:
                head.weight[:V] = self.lm_head.weight
                head.weight[V:] = 0.0
            self.lm_head = head
        self.config = dataclasses.replace(self.config, vocab_size=n)

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wte.weight.numel()
            if isinstance(self.transformer.wpe, nn.Embedding):
                n -= self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward): 6N plus attention's 12 L T d (PaLM appendix B)."""
        cfg, T = self.config, seq_len or self.config.block_size
        n = self.num_params(non_embedding=True) + self.lm_head.weight.numel()  # lookups are free; the head is a matmul
        return 6 * n + 12 * cfg.n_layer * T * cfg.n_embd
