"""LoRA: base weights stay put, only adapters learn, merge equals unmerged, adapters are small and reload
exactly, mismatches and bad ranks are UserErrors, and a merged checkpoint loads like any other."""

import copy
import json

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

from pocketgpt.checkpoint import load_adapter, load_checkpoint, save_adapter, save_checkpoint
from pocketgpt.config import LoRAConfig, ModelConfig
from pocketgpt.errors import UserError
from pocketgpt.finetune.merge import merge_checkpoint
from pocketgpt.model import GPT
from pocketgpt.model.classifier import GPTClassifier
from pocketgpt.model.lora import LoRALinear, apply_lora, lora_state_dict, merge_lora

LORA = LoRAConfig(rank=2, alpha=8.0, dropout=0.1)


def train_steps(model, cfg, steps=5, seed=0):
    """A few AdamW steps of next-token loss on random tokens; returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    model.train()
    for _ in range(steps):
        x = torch.randint(0, cfg.vocab_size, (4, 16), generator=g)
        _, loss = model(x, torch.roll(x, -1, 1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model.eval()


@pytest.fixture
def adapted(tiny_model, tiny_cfg):
    """(base copy, LoRA model after 5 training steps)."""
    base = copy.deepcopy(tiny_model)
    model = copy.deepcopy(tiny_model)
    apply_lora(model, LORA)
    torch.manual_seed(1)
    return base, train_steps(model, tiny_cfg)


def test_apply_lora_wraps_targets_and_keeps_parameters(tiny_model):
    c_attn = tiny_model.transformer.h[0].attn.c_attn
    w, b = c_attn.weight, c_attn.bias
    keys = set(tiny_model.state_dict())
    names = apply_lora(tiny_model, LORA)
    assert names == [
        f"transformer.h.{i}.{s}" for i in range(2) for s in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    ]
    wrapped = tiny_model.transformer.h[0].attn.c_attn
    assert isinstance(wrapped, LoRALinear) and isinstance(wrapped, nn.Linear)
    assert wrapped.weight is w and wrapped.bias is b  # the same Parameter objects
    assert set(tiny_model.state_dict()) - keys == set(lora_state_dict(tiny_model))
    assert torch.count_nonzero(wrapped.lora_B) == 0 and wrapped.lora_A.shape == (2, 32)
    trainable = {n for n, p in tiny_model.named_parameters() if p.requires_grad}
    assert trainable == set(lora_state_dict(tiny_model))
    only_mlp = apply_lora(copy.deepcopy(GPT(tiny_model.config)), LoRAConfig(rank=2, targets="mlp"))
    assert only_mlp == [
        "transformer.h.0.mlp.c_fc",
        "transformer.h.0.mlp.c_proj",
        "transformer.h.1.mlp.c_fc",
        "transformer.h.1.mlp.c_proj",
    ]


def test_fresh_adapter_changes_nothing(tiny_model, tiny_cfg):
    x = torch.randint(0, tiny_cfg.vocab_size, (2, 10))
    before = tiny_model(x)[0]
    apply_lora(tiny_model, LORA)
    torch.testing.assert_close(tiny_model(x)[0], before, rtol=0, atol=0)  # B = 0


def test_training_changes_only_the_adapters(tiny_model, tiny_cfg):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    apply_lora(tiny_model, LORA)
    x = torch.randint(0, tiny_cfg.vocab_size, (4, 16))
    tiny_model.train()
    _, loss = tiny_model(x, torch.roll(x, -1, 1))
    loss.backward()
    with_grad = {n for n, p in tiny_model.named_parameters() if p.grad is not None}
    assert with_grad and with_grad <= set(lora_state_dict(tiny_model))
    tiny_model.zero_grad(set_to_none=True)
    train_steps(tiny_model, tiny_cfg, steps=5)
    after = tiny_model.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    assert any(torch.count_nonzero(v) for k, v in lora_state_dict(tiny_model).items() if k.endswith("lora_B"))


def test_merged_equals_unmerged(adapted, tiny_cfg):
    _, model = adapted
    x = torch.randint(0, tiny_cfg.vocab_size, (3, 20))
    want = model(x)[0]
    layer = model.transformer.h[1].mlp.c_fc
    layer.merge()
    torch.testing.assert_close(model(x)[0], want, rtol=0, atol=1e-5)
    layer.unmerge()
    torch.testing.assert_close(model(x)[0], want, rtol=0, atol=1e-5)
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert lora_state_dict(model) == {} and type(model.transformer.h[1].mlp.c_fc) is nn.Linear
    torch.testing.assert_close(model(x)[0], want, rtol=0, atol=1e-5)


def test_adapter_is_small_and_reloads_exactly(adapted, tiny_cfg, tmp_path):
    base, model = adapted
    save_adapter(tmp_path / "ad", model, LORA, meta={"base": "somewhere"})
    size = (tmp_path / "ad" / "adapter.safetensors").stat().st_size
    model_bytes = sum(p.numel() * p.element_size() for p in base.parameters())
    assert size < model_bytes / 10, (size, model_bytes)
    assert sorted(p.name for p in (tmp_path / "ad").iterdir()) == ["adapter.safetensors", "adapter_config.json"]
    fresh = copy.deepcopy(base)
    cfg = load_adapter(fresh, tmp_path / "ad")
    assert cfg == LORA
    x = torch.randint(0, tiny_cfg.vocab_size, (2, 12))
    assert torch.equal(fresh.eval()(x)[0], model(x)[0])


def test_adapter_with_classifier_head(tiny_model, tiny_cfg, tmp_path):
    clf = GPTClassifier.from_gpt(tiny_model, 3)
    apply_lora(clf, LORA)
    clf.score.weight.requires_grad_(True)  # the caller re-enables the head
    nn.init.normal_(clf.score.weight, std=0.3)
    for layer in clf.modules():
        if isinstance(layer, LoRALinear):
            nn.init.normal_(layer.lora_B, std=0.1)
    save_adapter(
        tmp_path / "ad",
        clf,
        LORA,
        extra_tensors={"score.weight": clf.score.weight},
        meta={"task": "classify", "labels": ["a", "b", "c"]},
    )
    other = GPTClassifier.from_gpt(tiny_model, 3)
    load_adapter(other, tmp_path / "ad")
    x = torch.randint(0, tiny_cfg.vocab_size, (2, 7))
    assert torch.equal(other.eval()(x)[0], clf.eval()(x)[0])


def test_mismatched_adapter_is_a_user_error(adapted, tiny_cfg, tmp_path):
    base, model = adapted
    save_adapter(tmp_path / "ad", model, LORA)
    other_rank = copy.deepcopy(base)
    apply_lora(other_rank, LoRAConfig(rank=4))
    with pytest.raises(UserError, match="adapter does not match this checkpoint.*lora_A has shape"):
        load_adapter(other_rank, tmp_path / "ad")
    wider = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=tiny_cfg.vocab_size))
    with pytest.raises(UserError, match="adapter does not match this checkpoint"):
        load_adapter(wider, tmp_path / "ad")
    deeper = GPT(ModelConfig(n_layer=3, n_head=2, n_embd=32, block_size=64, vocab_size=tiny_cfg.vocab_size))
    with pytest.raises(UserError, match="adapter does not match this checkpoint.*missing"):
        load_adapter(deeper, tmp_path / "ad")
    with pytest.raises(UserError, match="no adapter_config.json"):
        load_adapter(copy.deepcopy(base), tmp_path / "nowhere")
    (tmp_path / "ad" / "adapter.safetensors").unlink()
    with pytest.raises(UserError, match="no adapter.safetensors"):
        load_adapter(copy.deepcopy(base), tmp_path / "ad")


def test_bad_ranks_are_user_errors(tiny_model):
    zero = LoRAConfig(rank=0)
    with pytest.raises(UserError, match="lora.rank must be a positive integer .* got 0"):
        apply_lora(tiny_model, zero)
    with pytest.raises(
        UserError,
        match=r"lora.rank=33 exceeds layer transformer.h.0.attn.c_attn of shape "
        r"\(out, in\) = \(96, 32\); use rank <= 32",
    ):
        apply_lora(tiny_model, LoRAConfig(rank=33))
    assert not any(isinstance(m, LoRALinear) for m in tiny_model.modules())  # nothing half-wrapped
    apply_lora(tiny_model, LORA)
    with pytest.raises(UserError, match="already applied"):
        apply_lora(tiny_model, LORA)
    with pytest.raises(UserError, match="no LoRA layers"):
        save_adapter("unused", GPT(tiny_model.config), LORA)


def test_merge_checkpoint_loads_and_matches(adapted, tiny_tokenizer, tiny_cfg, tmp_path):
    base, model = adapted
    save_checkpoint(tmp_path / "base", "ckpt-0000010", base, tiny_tokenizer, step=10)
    save_adapter(tmp_path / "ad", model, LORA)
    x = torch.randint(0, tiny_cfg.vocab_size, (2, 12))
    want = model(x)[0]
    (tmp_path / "merged").mkdir()  # empty is fine
    out = merge_checkpoint(tmp_path / "base", tmp_path / "ad", tmp_path / "merged")
    assert out == tmp_path / "merged"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left
    ckpt = load_checkpoint(out)
    assert type(ckpt.model) is GPT and ckpt.meta["step"] == 0
    assert ckpt.meta["merged_from"]["lora"]["rank"] == 2
    torch.testing.assert_close(ckpt.model(x)[0], want, rtol=0, atol=1e-5)
    assert ckpt.tokenizer == tiny_tokenizer
    with pytest.raises(UserError, match="output folder is not empty"):
        merge_checkpoint(tmp_path / "base", tmp_path / "ad", tmp_path / "merged")


def test_merge_checkpoint_keeps_a_classifier_head(tiny_model, tiny_tokenizer, tiny_cfg, tmp_path):
    save_checkpoint(tmp_path / "base", "ckpt-0000001", tiny_model, tiny_tokenizer, step=1)
    clf = GPTClassifier.from_gpt(tiny_model, 2)
    apply_lora(clf, LORA)
    nn.init.normal_(clf.score.weight, std=0.3)
    for layer in clf.modules():
        if isinstance(layer, LoRALinear):
            nn.init.normal_(layer.lora_B, std=0.1)
    save_adapter(
        tmp_path / "ad",
        clf,
        LORA,
        extra_tensors={"score.weight": clf.score.weight},
        meta={"task": "classify", "labels": ["neg", "pos"]},
    )
    out = merge_checkpoint(tmp_path / "base", tmp_path / "ad", tmp_path / "merged")
    meta = json.loads((out / "ckpt-0000000" / "config.json").read_text())
    assert meta["task"] == "classify" and meta["labels"] == ["neg", "pos"]
    state = load_file(str(out / "ckpt-0000000" / "model.safetensors"))
    assert "score.weight" in state and not any("lora" in k for k in state)
    merged = load_checkpoint(out).model
    assert isinstance(merged, GPTClassifier) and merged.n_classes == 2
    x = torch.randint(0, tiny_cfg.vocab_size, (2, 9))
    torch.testing.assert_close(merged(x)[0], clf.eval()(x)[0], rtol=0, atol=1e-5)


def test_merge_checkpoint_from_a_lora_run_with_grown_vocabulary(tiny_model, tiny_tokenizer, tmp_path):
    """A LoRA fine-tuning run folder (adapter + its own tokenizer, chat tokens added) merges onto its base."""
    save_checkpoint(tmp_path / "base", "ckpt-0000001", tiny_model, tiny_tokenizer, step=1)
    tok = tiny_tokenizer.with_chat_specials()  # (the tiny one has them already)
    model = copy.deepcopy(tiny_model)
    model.resize_vocab(tiny_model.config.vocab_size + 8)  # as chat fine-tuning of GPT-2 does
    apply_lora(model, LORA)
    model.transformer.wte.weight.requires_grad_(True)
    train_steps(model, model.config)
    wte = {"transformer.wte.weight": model.transformer.wte.weight}
    save_checkpoint(
        tmp_path / "run",
        "ckpt-0000005",
        model,
        tok,
        step=5,
        extra={"task": "chat", "base_checkpoint": str(tmp_path / "base"), "adapter": True},
        write_weights=lambda d: save_adapter(
            d, model, LORA, extra_tensors=wte, meta={"task": "chat", "base_checkpoint": "x"}
        ),
    )
    x = torch.randint(0, model.config.vocab_size, (2, 12))
    want = model(x)[0]
    torch.testing.assert_close(load_checkpoint(tmp_path / "run").model(x)[0], want, rtol=0, atol=1e-6)
    out = merge_checkpoint(tmp_path / "base", tmp_path / "run", tmp_path / "merged")  # the run folder
    ckpt = load_checkpoint(out)
    assert ckpt.tokenizer == tok and ckpt.model.config.vocab_size == tiny_model.config.vocab_size + 8
    assert ckpt.meta["task"] == "chat" and "adapter" not in ckpt.meta and "base_checkpoint" not in ckpt.meta
    torch.testing.assert_close(ckpt.model(x)[0], want, rtol=0, atol=1e-5)
