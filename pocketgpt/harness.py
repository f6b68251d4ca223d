"""lm-evaluation-harness on a pocketgpt checkpoint, in-process: `pocketgpt eval CKPT --tasks hellaswag,arc_easy`.

`PocketLM` is an `lm_eval.api.model.LM` over the model itself (no server):
- loglikelihood(context, continuation): the log-probability of the continuation's tokens after the context's,
  and whether each was the model's greedy choice. The pair is encoded as one text and split where the context's
  own tokens end, so a continuation that starts with a space tokenizes as it would in running text;
- loglikelihood_rolling(text): the whole text's log-likelihood, window by window as `pocketgpt eval` computes it
  (the same numbers: evaluate.evaluate_tokens);
- generate_until(context, {until, max_gen_toks, do_sample, temperature}): text from the engine, cut at the stops.
Prompts start with <|endoftext|> when the checkpoint says so (checkpoint.prompt_bos, or --bos / --no-bos).

Tasks come from lm-eval's registry, plus any YAML task in `include_path` (a folder): tests ship a small local task,
so nothing is downloaded. Standard tasks (HellaSwag, ARC-easy, PIQA) fetch their datasets from the Hugging Face
Hub on first use: on a machine that reaches it they run the same way. Needs the `lm-eval` package (`[eval]` extra).
The same model can be scored through `pocketgpt serve` with `lm_eval --model local-completions` (echo + logprobs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pocketgpt.checkpoint import Checkpoint, prompt_bos
from pocketgpt.config import SampleConfig
from pocketgpt.errors import UserError
from pocketgpt.evaluate import evaluate_tokens
from pocketgpt.generate.text import TextGenerator

try:
    from lm_eval.api.model import LM
except ImportError:  # lm-eval missing: run_tasks says how to get it
    LM = object


class PocketLM(LM):
    def __init__(self, ckpt: Checkpoint, *, bos: bool | None = None, batch_size: int = 8):
        if LM is object:
            raise UserError("--tasks needs lm-evaluation-harness: pip install 'pocketgpt[eval]'")
        super().__init__()
        self.ckpt, self.tok, self.model = ckpt, ckpt.tokenizer, ckpt.model.eval()
        self.bos = prompt_bos(ckpt) if bos is None else bos
        self.block = self.model.config.block_size
        self.batch_size = batch_size
        self._device = next(self.model.parameters()).device
        self._gen: TextGenerator | None = None

    def _head(self) -> list[int]:
        return [self.tok.eot_id] if self.bos else []

    @torch.inference_mode()
    def _score(self, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
        ids = (ctx + cont)[-(self.block + 1) :]  # keep the end: the continuation, and as much context as fits
        x = torch.tensor([ids[:-1]], dtype=torch.long, device=self._device)
        logp = torch.log_softmax(self.model(x)[0][0].float(), dim=-1)  # (T, V)
        n = len(cont)
        rows, want = logp[-n:], torch.tensor(ids[-n:], device=logp.device)
        lp = float(rows.gather(1, want[:, None]).sum())
        return lp, bool((rows.argmax(-1) == want).all())

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        out = []
        for req in requests:
            context, continuation = req.args
            ctx = self._head() + self.tok.encode(context)
            whole = self._head() + self.tok.encode(context + continuation)
            cont = whole[len(ctx) :] if whole[: len(ctx)] == ctx else self.tok.encode(continuation)
            if not cont:
                raise UserError(f"an empty continuation cannot be scored (context {context[-40:]!r})")
            if not ctx:  # --no-bos and an empty context: the first continuation token has nothing before it
                ctx, cont = cont[:1], cont[1:]
            out.append(self._score(ctx, cont) if cont else (0.0, True))
        return out

    def loglikelihood_rolling(self, requests) -> list[float]:
        out = []
        for req in requests:
            (text,) = req.args
            ids = np.array(self._head() + self.tok.encode(text), dtype=np.int64)
            if len(ids) < 2:
                out.append(0.0)
                continue
            r = evaluate_tokens(self.model, ids, self.tok.token_byte_lengths(), batch_size=self.batch_size)
            out.append(-r["loss"] * r["tokens"])
        return out

    def generate_until(self, requests) -> list[str]:
        if self._gen is None:
            self._gen = TextGenerator(self.model, self.tok, device=self._device, bos=self.bos)
        out = []
        for req in requests:
            context, kw = req.args
            until = kw.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            sample = SampleConfig(
                max_new_tokens=int(kw.get("max_gen_toks", 256)),
                temperature=float(kw.get("temperature", 0.0)) if kw.get("do_sample") else 0.0,
                stop=tuple(s for s in until if s),
            )
            out.append(self._gen.complete([context], sample)[0][0].text)
        return out


def run_tasks(
    ckpt: Checkpoint,
    tasks: list[str],
    *,
    include_path: str | Path | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    bos: bool | None = None,
    batch_size: int = 8,
) -> dict:
    """lm_eval.simple_evaluate on the checkpoint; returns {"results": {task: {metric: value}}, "versions": ...}."""
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UserError("--tasks needs lm-evaluation-harness: pip install 'pocketgpt[eval]'") from None
    manager = TaskManager(include_path=str(include_path) if include_path else None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        where = f" or in {include_path}" if include_path else " (--include-path DIR adds YAML tasks)"
        raise UserError(f"unknown lm-eval task(s) {', '.join(unknown)}: not in lm-eval's registry{where}")
    res = lm_eval.simple_evaluate(
        model=PocketLM(ckpt, bos=bos, batch_size=batch_size),
        tasks=tasks,
        task_manager=manager,
        limit=limit,
        num_fewshot=num_fewshot,
        log_samples=False,
    )
    return {"results": res["results"], "versions": res.get("versions", {}), "n-samples": res.get("n-samples", {})}
