"""Deterministic, rank-aware training batches from token shards.

Batch number `step` (micro-batch `micro`) is a pure function of (seed, rank, step, micro): random windows of
block_size + 1 tokens. Resuming therefore needs no loader state beyond the step counter, and a run stopped
and resumed sees exactly the batches of a run that never stopped. What does not live here: tokenizing (prepare.py).
"""

from __future__ import annotations

import numpy as np
import torch


class TokenBatches:
    def __init__(
        self,
        shards: list[np.ndarray],
        block_size: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        device: torch.device | str = "cpu",
    ):
        self.shards = [s for s in shards if len(s) > block_size]
        if not self.shards:
            raise ValueError(f"no shard holds more than block_size={block_size} tokens")
        lengths = np.array([len(s) - block_size for s in self.shards], dtype=np.float64)
        self.weights = lengths / lengths.sum()  # sample shards by how many windows they hold
        self.block_size, self.batch_size, self.seed, self.rank = block_size, batch_size, seed, rank
        self.device = torch.device(device)

    def get(self, step: int, micro: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), each (batch_size, block_size) int64; y is x shifted left by one token."""
        rng = np.random.default_rng([self.seed, self.rank, step, micro])
        which = (
            rng.choice(len(self.shards), size=self.batch_size, p=self.weights)
            if len(self.shards) > 1
            else np.zeros(self.batch_size, dtype=np.int64)
        )
        T = self.block_size
        rows = []
        for s in which:
            shard = self.shards[s]
            i = int(rng.integers(0, len(shard) - T))
            rows.append(shard[i : i + T + 1])
        buf = torch.from_numpy(np.stack(rows).astype(np.int64))  # (B, T+1)
        x, y = buf[:, :-1], buf[:, 1:]
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "rank": self.rank, "block_size": self.block_size, "batch_size": self.batch_size}
