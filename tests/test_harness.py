"""`pocketgpt eval --tasks`: lm-evaluation-harness runs in-process on a small local task that ships with the tests
(written here: no download), and its log-likelihoods are the model's own."""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("lm_eval")

from pocketgpt.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from pocketgpt.config import ModelConfig  # noqa: E402
from pocketgpt.harness import PocketLM  # noqa: E402
from pocketgpt.model import GPT  # noqa: E402

QUESTIONS = [
    ("The capital of France is", [" Paris", " a dog", " blue"], 0),
    ("Two plus two is", [" four", " green", " Tuesday"], 0),
    ("Water is", [" wet", " a number", " loud"], 0),
    ("The sun rises in the", [" east", " spoon", " seven"], 0),
]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tasks")
    data = d / "tiny_choice.jsonl"
    data.write_text("".join(json.dumps({"q": q, "choices": c, "label": a}) + "\n" for q, c, a in QUESTIONS))
    (d / "tiny_choice.yaml").write_text(
        "task: pocketgpt_tiny_choice\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "output_type: multiple_choice\n"
        "test_split: test\n"
        'doc_to_text: "{{q}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{label}}"\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
        "metadata:\n  version: 1.0\n"
    )
    return d


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tiny_tokenizer):
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=tiny_tokenizer.n_vocab))
    return save_checkpoint(tmp_path_factory.mktemp("h") / "run", "ckpt-0000001", model, tiny_tokenizer)


class Req:
    def __init__(self, *args):
        self.args = args


def test_loglikelihood_is_the_models_own(ckpt):
    ck = load_checkpoint(ckpt)
    lm = PocketLM(ck)
    tok = ck.tokenizer
    ((lp, greedy),) = lm.loglikelihood([Req("The capital of France is", " Paris")])
    ctx = [tok.eot_id] + tok.encode("The capital of France is")
    cont = tok.encode("The capital of France is Paris")[len(ctx) - 1 :]
    with torch.no_grad():
        logp = torch.log_softmax(ck.model(torch.tensor([ctx + cont]))[0][0], -1)
    want = sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))
    assert lp == pytest.approx(want, abs=1e-4) and isinstance(greedy, bool)
    (rolling,) = lm.loglikelihood_rolling([Req("The capital of France is Paris.")])
    assert rolling < 0 and math.isfinite(rolling)
    (text,) = lm.generate_until([Req("The capital", {"until": ["\n"], "max_gen_toks": 5})])
    assert isinstance(text, str) and "\n" not in text


def test_eval_tasks_runs_a_local_task(ckpt, task_dir, run_cli):
    code, out, err = run_cli("eval", ckpt, "--tasks", "pocketgpt_tiny_choice", "--include-path", task_dir, "--json")
    assert code == 0, err
    r = json.loads(out.strip().splitlines()[-1])
    acc = r["results"]["pocketgpt_tiny_choice"]["acc,none"]
    assert 0.0 <= acc <= 1.0 and r["n-samples"]["pocketgpt_tiny_choice"]["effective"] == len(QUESTIONS)
    code, _, err = run_cli("eval", ckpt, "--tasks", "no_such_task_xyz")
    assert code == 2 and "unknown lm-eval task" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("eval", ckpt)
    assert code == 2 and "--data" in err and "--tasks" in err
