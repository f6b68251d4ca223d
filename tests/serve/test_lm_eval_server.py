"""`lm_eval --model local-completions` against `pocketgpt serve`: the harness scores a local task through the
OpenAI-compatible /v1/completions (token-id prompts, echo, logprobs), and gets the in-process scores."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("transformers")  # local-completions tokenizes with a Hugging Face tokenizer

sys.path.insert(0, str(Path(__file__).parents[1]))
from serve_helpers import MODEL, chat_ckpt, make_app, running  # noqa: E402, F401
from test_harness import QUESTIONS, task_dir  # noqa: E402, F401  (the local task and its fixture)

from pocketgpt.checkpoint import load_checkpoint  # noqa: E402
from pocketgpt.harness import run_tasks  # noqa: E402
from pocketgpt.interop.hf_tokenizer import save_hf_tokenizer  # noqa: E402


def test_local_completions_scores_equal_in_process(chat_ckpt, task_dir, tmp_path):  # noqa: F811
    from lm_eval.tasks import TaskManager

    ck = load_checkpoint(chat_ckpt)
    save_hf_tokenizer(ck.tokenizer, tmp_path / "tok", model_max_length=ck.model.config.block_size)
    with running(make_app(chat_ckpt, bos=False)) as url:  # lm-eval sends ids; it adds no <|endoftext|> itself
        args = (
            f"model={MODEL},base_url={url}/v1/completions,tokenizer={tmp_path / 'tok'},"
            "tokenizer_backend=huggingface,tokenized_requests=True,num_concurrent=1,max_retries=1"
        )
        served = lm_eval.simple_evaluate(
            model="local-completions",
            model_args=args,
            tasks=["pocketgpt_tiny_choice"],
            task_manager=TaskManager(include_path=str(task_dir)),
        )["results"]["pocketgpt_tiny_choice"]
    local = run_tasks(ck, ["pocketgpt_tiny_choice"], include_path=task_dir, bos=False)["results"]
    assert served["acc,none"] == local["pocketgpt_tiny_choice"]["acc,none"]
    assert served["acc_norm,none"] == local["pocketgpt_tiny_choice"]["acc_norm,none"]
