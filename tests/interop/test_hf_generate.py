"""Decoding parity with transformers on the same weights: greedy, beam search, batched prompts."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from pocketgpt.config import SampleConfig  # noqa: E402
from pocketgpt.generate.engine import Engine  # noqa: E402
from pocketgpt.interop import config_from_hf, from_hf_state_dict  # noqa: E402
from pocketgpt.model import GPT  # noqa: E402

V, P = 97, 7


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=128, vocab_size=V, bos_token_id=None, eos_token_id=None)
    ).eval()
    cfg = config_from_hf(hf.config.to_dict())
    ours = GPT(cfg)
    ours.load_state_dict(from_hf_state_dict(hf.state_dict(), cfg))
    return hf, Engine(ours.eval())


def hf_beams(hf, prompt, W, max_new, lp, early, eos):
    out = hf.generate(
        prompt,
        num_beams=W,
        num_return_sequences=W,
        max_new_tokens=max_new,
        do_sample=False,
        length_penalty=lp,
        early_stopping=early,
        eos_token_id=eos,
        pad_token_id=0,
        output_scores=True,
        return_dict_in_generate=True,
    )
    seqs = []
    for s in out.sequences[:, prompt.shape[1] :].tolist():
        if eos is not None and eos in s:
            s = s[: s.index(eos)]
        seqs.append(s)
    return seqs, out.sequences_scores.tolist()


@pytest.mark.parametrize(
    "W,lp,early,eos",
    [(3, 1.0, False, None), (4, 1.0, False, 5), (4, 2.0, True, 5), (2, 0.5, False, 11), (5, 1.0, "never", 3)],
)
def test_beam_search_equals_transformers(pair, W, lp, early, eos):
    hf, eng = pair
    prompt = torch.randint(0, V, (1, P), generator=torch.Generator().manual_seed(1))
    seqs, scores = hf_beams(hf, prompt, W, 20, lp, early, eos)
    ours = eng.generate(
        prompt.tolist(),
        SampleConfig(max_new_tokens=20, num_beams=W, num_samples=W, length_penalty=lp, early_stopping=early),
        stop_ids=[] if eos is None else [eos],
    )[0]
    assert [c.tokens for c in ours] == seqs
    assert [c.score for c in ours] == pytest.approx(scores, abs=1e-4)
    if eos is not None:
        assert any(c.finish_reason == "stop" for c in ours) or all(len(c.tokens) == 20 for c in ours)


def test_greedy_batch_equals_transformers_one_by_one(pair):
    hf, eng = pair
    prompts = [[1, 2, 3, 4, 5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15]]
    ours = eng.generate(prompts, SampleConfig(max_new_tokens=50, temperature=0))
    for p, row in zip(prompts, ours):
        ref = hf.generate(torch.tensor([p]), max_new_tokens=50, min_new_tokens=50, do_sample=False, pad_token_id=0)
        assert row[0].tokens == ref[0, len(p) :].tolist()
