"""Supervised fine-tuning data: chat / instruction / prompt-completion JSONL -> (ids, targets with -1).

Lives here: reading the three JSONL record formats into conversations, rendering them with the chat
template (tokenizer.chat) and fitting them to the context, deterministic padded batches whose targets are
-1 everywhere the model must not learn (prompts, role tokens, padding), and the answer-only validation loss.
Not here: the template itself (tokenizer.chat), the model, the training loop (train/loop.py).

Record formats, one JSON object per line (blank lines skipped):
    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}   OpenAI fine-tuning
    {"instruction": "...", "input": "..." (optional), "output": "..."}               Alpaca
    {"prompt": "...", "completion": "..."}                                          prompt-completion
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pocketgpt.errors import UserError
from pocketgpt.tokenizer.chat import render_conversation, validate_messages

Example = tuple[list[int], list[int]]  # (ids, mask): mask[i] == 1 iff ids[i] is an answer token to learn


# ---- reading ----------------------------------------------------------------------------------


def _str_field(rec: dict, key: str, where: str) -> str:
    v = rec.get(key)
    if not isinstance(v, str):
        raise UserError(f"{where}: field {key!r} must be a string, got {type(v).__name__}")
    return v


def record_to_messages(rec, where: str) -> list[dict]:
    """One parsed JSONL record (any of the three formats) as a validated list of messages."""
    if not isinstance(rec, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    if "messages" in rec:
        return validate_messages(rec["messages"], where=where, need_assistant=True)
    if "instruction" in rec and "output" in rec:
        user = _str_field(rec, "instruction", where)
        extra = rec.get("input")
        if extra is not None:
            extra = _str_field(rec, "input", where)
            if extra:
                user += "\n\n" + extra
        return [{"role": "user", "content": user}, {"role": "assistant", "content": _str_field(rec, "output", where)}]
    if "prompt" in rec and "completion" in rec:
        return [
            {"role": "user", "content": _str_field(rec, "prompt", where)},
            {"role": "assistant", "content": _str_field(rec, "completion", where)},
        ]
    raise UserError(
        f'{where}: unrecognised record with keys {sorted(rec)[:6]}; expected "messages", '
        '"instruction"+"output" or "prompt"+"completion"'
    )


def load_chat_records(path) -> list[list[dict]]:
    """Conversations from a JSONL file; errors name the file and the line number."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"chat data file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{p} is not UTF-8 text (byte {e.start})") from None
    convs = []
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{p} line {n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        convs.append(record_to_messages(rec, where))
    if not convs:
        raise UserError(f"{p} holds no records (one JSON object per line expected)")
    return convs


# ---- encoding ---------------------------------------------------------------------------------


def encode_chats(convs, tokenizer, block_size: int, overlong: str = "crop") -> tuple[list[Example], dict]:
    """Render each conversation and fit it to block_size + 1 tokens (inputs + the last target).

    overlong="crop" keeps the first block_size + 1 tokens, "drop" skips the conversation. A conversation left
    with no answer token is dropped too. Stats: examples, cropped (kept after cropping), dropped, answer_tokens.
    """
    if overlong not in ("crop", "drop"):
        raise UserError(f"overlong must be 'crop' or 'drop', got {overlong!r}")
    if not isinstance(block_size, int) or block_size < 1:
        raise UserError(f"block_size must be an int >= 1, got {block_size!r}")
    limit = block_size + 1
    examples: list[Example] = []
    stats = {"examples": 0, "cropped": 0, "dropped": 0, "answer_tokens": 0}
    for conv in convs:
        ids, mask = render_conversation(conv, tokenizer)
        cropped = len(ids) > limit
        if cropped:
            if overlong == "drop":
                stats["dropped"] += 1
                continue
            ids, mask = ids[:limit], mask[:limit]
        answer = sum(mask[1:])  # mask[0] (the leading EOT) is never a target
        if answer == 0:
            stats["dropped"] += 1
            continue
        stats["cropped"] += cropped
        stats["answer_tokens"] += answer
        examples.append((ids, mask))
    stats["examples"] = len(examples)
    if not examples:
        raise UserError(
            f"no example is left to train on: {stats['dropped']} of {len(convs)} conversations were "
            f"dropped (overlong={overlong!r}, block_size={block_size}); "
            "use overlong='crop' or a longer context"
        )
    return examples, stats


def collate(examples: list[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, T) int64 right-padded with pad_id, y (B, T) int64: next ids, -1 where not an answer token or padding."""
    T = max(len(ids) for ids, _ in examples) - 1
    x = np.full((len(examples), T), pad_id, dtype=np.int64)
    y = np.full((len(examples), T), -1, dtype=np.int64)
    for b, (ids, mask) in enumerate(examples):
        a, m = np.asarray(ids, dtype=np.int64), np.asarray(mask, dtype=bool)
        n = len(a) - 1
        x[b, :n] = a[:-1]
        y[b, :n] = np.where(m[1:], a[1:], -1)  # target i is ids[i + 1], learned only where mask[i + 1]
    return torch.from_numpy(x), torch.from_numpy(y)


class SFTBatches:
    """Batch `step` (micro-batch `micro`) is a pure function of (seed, rank, step, micro), like TokenBatches.

    `pad_id` fills the right padding; default: the first id of the first example (the <|endoftext|> the
    template starts every conversation with). Its value never matters: padded positions have target -1 and
    come after every real token, which causal attention never lets them influence.
    """

    def __init__(
        self,
        examples: list[Example],
        batch_size: int,
        block_size: int,
        seed: int = 0,
        rank: int = 0,
        device: torch.device | str = "cpu",
        pad_id: int | None = None,
    ):
        if not examples:
            raise UserError("SFTBatches needs at least one example, got none")
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        for k, (ids, mask) in enumerate(examples):
            if len(ids) != len(mask) or not 2 <= len(ids) <= block_size + 1:
                raise UserError(
                    f"example {k} has {len(ids)} ids and {len(mask)} mask entries; both must be "
                    f"equal and in 2..block_size + 1 = {block_size + 1} (fit them with encode_chats)"
                )
        self.examples = examples
        self.batch_size, self.block_size, self.seed, self.rank = batch_size, block_size, seed, rank
        self.pad_id = int(examples[0][0][0]) if pad_id is None else int(pad_id)
        self.device = torch.device(device)

    def get(self, step: int, micro: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), each (batch_size, T) int64 with T = the longest input in this batch (<= block_size)."""
        rng = np.random.default_rng([self.seed, self.rank, step, micro])
        n = len(self.examples)
        pick = rng.choice(n, size=self.batch_size, replace=n < self.batch_size)
        x, y = collate([self.examples[i] for i in pick], self.pad_id)
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)

    def state_dict(self) -> dict:
        return {
            "seed": self.seed,
            "rank": self.rank,
            "block_size": self.block_size,
            "batch_size": self.batch_size,
            "examples": len(self.examples),
        }


# ---- evaluation -------------------------------------------------------------------------------


def answer_loss(
    model,
    examples: list[Example],
    *,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict:
    """Mean cross-entropy (nats) over the answer tokens of `examples`, each token weighted equally."""
    if not examples:
        raise UserError("answer_loss needs at least one example, got none")
    device = torch.device(device)
    pad_id = int(examples[0][0][0])
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for i in range(0, len(examples), batch_size):
                x, y = collate(examples[i : i + batch_size], pad_id)
                x, y = x.to(device), y.to(device)
                with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    logits, _ = model(x)  # (B, T, V)
                nll = F.cross_entropy(
                    logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1), reduction="none", ignore_index=-1
                )  # (B*T,), 0 where ignored
                total += float(nll.sum())
                count += int((y != -1).sum())
    finally:
        model.train(was_training)
    if count == 0:
        raise UserError(f"the {len(examples)} examples hold no answer tokens to score")
    return {"val_answer_loss": total / count, "val_answer_tokens": count}
