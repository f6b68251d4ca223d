"""`pocketgpt` end to end, in seconds: every command's --help, then each command on a tiny corpus.

Commands run in-process through `main(argv)` (no interpreter start-up per call). Everything is written
under tmp_path (each run passes --cache_dir); nothing is read from ../shared.
"""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch
from cli_helpers import ckpt_of, cli, run_copy, train_args, trained  # noqa: F401  (fixtures)
from conftest import TINY_TRAIN_FLAGS

from pocketgpt.config import ModelConfig

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CKPT_FILES = {"model.safetensors", "config.json", "pocketgpt_tokenizer.json", "train_state.pt"}


# ----------------------------------------------------------------------------- --help


@pytest.mark.parametrize(
    "cmd",
    [
        [],
        ["train"],
        ["tokenizer"],
        ["tokenizer", "train"],
        ["tokenizer", "encode"],
        ["tokenizer", "decode"],
        ["prepare"],
        ["generate"],
        ["eval"],
        ["plot"],
        ["convert"],
        ["finetune"],
        ["classify"],
        ["merge"],
        ["chat"],
        ["serve"],
    ],
    ids=lambda c: " ".join(c) or "root",
)
def test_help(cli, cmd):
    code, out, err = cli(*cmd, "--help")
    assert code == 0, err
    assert "usage:" in out
    assert "Traceback" not in err


def _help_default(value) -> str:
    return "null" if value is None else str(value)


def test_train_help_lists_every_model_field_with_its_default(cli):
    code, out, _ = cli("train", "--help")
    assert code == 0
    text = " ".join(out.split())  # undo the help formatter's line wrapping
    for f in dataclasses.fields(ModelConfig):
        flag = f"--model.{f.name} "
        assert flag in text, f.name
        start = text.rfind(flag)  # the options section comes after the usage line
        end = text.find(" --", start + len(flag))
        entry = text[start : end if end > 0 else None]
        assert f"default: {_help_default(f.default)})" in entry, (f.name, entry)


def test_no_arguments_prints_help_and_exits_2(cli):
    code, out, _ = cli()
    assert code == 2 and "usage:" in out


# ----------------------------------------------------------------------------- the pipeline, command by command


def test_tokenizer_train_encode_decode_round_trip(cli, corpus_file, tmp_path):
    tok = tmp_path / "tok"
    code, out, err = cli("tokenizer", "train", "--data", corpus_file, "--out", tok, "--vocab_size", 300)
    assert code == 0, err
    assert (tok / "pocketgpt_tokenizer.json").exists() and "300" in out
    text = "the model reads tokens, Café déjà vu — 中文 🙂"
    code, out, err = cli("tokenizer", "encode", tok, "--text", text)
    assert code == 0, err
    ids = [int(x) for x in out.split()]
    assert ids and max(ids) < 300 and len(ids) < len(text.encode())  # merges were learned
    code, out, err = cli("tokenizer", "decode", tok, "--ids", ",".join(map(str, ids)))
    assert code == 0, err
    assert out == text + "\n"


def test_tokenizer_train_char(cli, corpus_file, tmp_path):
    code, out, err = cli("tokenizer", "train", "--data", corpus_file, "--out", tmp_path / "tok", "--kind", "char")
    assert code == 0, err
    assert "char" in out
    code, out, _ = cli("tokenizer", "encode", tmp_path / "tok", "--text", "tokens")
    assert len(out.split()) == len("tokens")


def test_prepare_caches_and_notices_a_changed_corpus(cli, corpus_file, tmp_path):
    tok, cache = tmp_path / "tok", tmp_path / "cache"
    assert cli("tokenizer", "train", "--data", corpus_file, "--out", tok, "--vocab_size", 300)[0] == 0
    code, out, err = cli("prepare", "--data", corpus_file, "--tokenizer", tok, "--out", cache)
    assert code == 0, err
    (folder,) = cache.glob("data-*")
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["splits"]["train"]["tokens"] > 1000 and meta["splits"]["val"]["tokens"] > 0
    assert all((folder / s).exists() for s in meta["splits"]["train"]["shards"])
    mtime = (folder / "meta.json").stat().st_mtime_ns

    code, out, err = cli("prepare", "--data", corpus_file, "--tokenizer", tok, "--out", cache)
    assert code == 0, err
    assert "using prepared" in out
    assert (folder / "meta.json").stat().st_mtime_ns == mtime
    assert [p.name for p in cache.iterdir()] == [folder.name]

    corpus_file.write_text(corpus_file.read_text() + " One more sentence about attention.", encoding="utf-8")
    st = corpus_file.stat()
    os.utime(corpus_file, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a coarse clock cannot hide the change
    code, out, err = cli("prepare", "--data", corpus_file, "--tokenizer", tok, "--out", cache)
    assert code == 0, err
    assert "using prepared" not in out
    assert len(list(cache.glob("data-*"))) == 2


def test_train_writes_a_complete_run(trained):
    assert (trained / "LATEST").read_text().strip() == "ckpt-0000006"
    assert [p.name for p in trained.glob("ckpt-*")] == ["ckpt-0000006"]  # keep_last=1
    assert {p.name for p in ckpt_of(trained).iterdir()} == CKPT_FILES
    for name in ("metrics.jsonl", "config.yaml", "final.json", "loss.png"):
        assert (trained / name).exists(), name
    assert not [p for p in trained.iterdir() if p.name.startswith(".")]  # no temp leftovers
    assert (trained.parent / "cache").is_dir() and not (trained.parent / ".cache").exists()

    import yaml

    cfg = yaml.safe_load((trained / "config.yaml").read_text())
    flags = dict(zip(TINY_TRAIN_FLAGS[::2], TINY_TRAIN_FLAGS[1::2]))
    for flag, value in flags.items():
        section, key = flag[2:].split(".")
        assert str(cfg[section][key]) == value, flag
    assert cfg["model"]["vocab_size"] == 300  # from the tokenizer
    assert cfg["out"] == str(trained)

    rows = [json.loads(ln) for ln in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    evals = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in evals] == [3, 6]
    assert all(0 < r["val_loss"] < 10 and 0 < r["val_bpb"] < 20 for r in evals)
    final = json.loads((trained / "final.json").read_text())
    assert final["step"] == 6 and final["val_loss"] > 0 and final["val_bpb"] > 0

    meta = json.loads((ckpt_of(trained) / "config.json").read_text())
    assert meta["step"] == 6 and meta["model"]["n_layer"] == 2 and meta["model"]["vocab_size"] == 300


def test_checkpoint_files_follow_the_umask(trained):
    umask = os.umask(0)
    os.umask(umask)
    for p in [trained / "LATEST", trained / "config.yaml", ckpt_of(trained), *ckpt_of(trained).iterdir()]:
        expected = (0o777 if p.is_dir() else 0o666) & ~umask
        assert p.stat().st_mode & 0o777 == expected, p


def test_generate(cli, trained):
    code, out, err = cli("generate", trained, "--prompt", "The model", "--max-new-tokens", 12, "--temperature", 0)
    assert code == 0, err
    assert out.startswith("The model") and len(out) > len("The model\n")
    assert "Traceback" not in err
    again = cli("generate", trained, "--prompt", "The model", "--max-new-tokens", 12, "--temperature", 0)
    assert again[1] == out
    seeded = [cli("generate", trained, "--prompt", "The", "--max-new-tokens", 12, "--seed", 7)[1] for _ in range(2)]
    assert seeded[0] == seeded[1] and seeded[0].startswith("The")
    # a checkpoint folder works as well as its run folder
    assert (
        cli("generate", ckpt_of(trained), "--prompt", "The model", "--max-new-tokens", 12, "--temperature", 0)[1] == out
    )


def test_generate_crops_a_prompt_longer_than_the_context(cli, trained):
    prompt = "the model reads tokens " * 40  # ~160 tokens, context 32
    code, out, err = cli("generate", trained, "--prompt", prompt, "--max-new-tokens", 4, "--temperature", 0)
    assert code == 0, err
    assert out.startswith(prompt)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning:") and "context" in lines[0], err


def test_eval(cli, trained, tmp_path, corpus_text):
    data = tmp_path / "held_out.txt"
    data.write_text(corpus_text[:3000], encoding="utf-8")
    code, out, err = cli("eval", trained, "--data", data)
    assert code == 0, err
    lines = out.strip().splitlines()
    r = json.loads(lines[-1])
    for key in ("loss", "perplexity", "bpb"):
        assert r[key] > 0
    assert abs(r["perplexity"] - torch.tensor(r["loss"]).exp().item()) < 1e-3 * r["perplexity"]
    code, out, err = cli("eval", trained, "--data", data, "--json")
    assert code == 0, err
    (line,) = out.strip().splitlines()
    assert json.loads(line)["loss"] == r["loss"]


def test_plot(cli, run_copy, tmp_path):
    (run_copy / "loss.png").unlink()
    code, out, err = cli("plot", run_copy)
    assert code == 0, err
    assert (run_copy / "loss.png").read_bytes()[:8] == PNG_MAGIC
    code, out, err = cli("plot", run_copy, "--out", tmp_path / "curve.png")
    assert code == 0, err
    assert (tmp_path / "curve.png").read_bytes()[:8] == PNG_MAGIC


def test_train_preset_with_overrides(cli, corpus_file, tmp_path):
    out = tmp_path / "run"
    code, _, err = cli(
        "train",
        "--preset",
        "tiny",
        "--data",
        corpus_file,
        "--out",
        out,
        "--cache_dir",
        tmp_path / "c",
        "--model.n_embd",
        32,
        "--model.block_size",
        32,
        "--tokenizer.vocab_size",
        300,
        "--train.max_steps",
        2,
        "--train.batch_size",
        4,
        "--train.eval_tokens",
        256,
        "--train.samples",
        0,
        "--train.dtype",
        "float32",
    )
    assert code == 0, err
    import yaml

    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["model"]["n_layer"] == 2 and cfg["model"]["n_head"] == 4  # from the preset
    assert cfg["train"]["warmup_steps"] == 20 and cfg["train"]["save_every"] == 100
    assert cfg["model"]["n_embd"] == 32 and cfg["model"]["block_size"] == 32  # from the flags
    assert cfg["train"]["max_steps"] == 2 and cfg["tokenizer"]["vocab_size"] == 300
    assert (out / "LATEST").read_text().strip() == "ckpt-0000002"


def test_train_config_file_then_flags(cli, corpus_file, tmp_path):
    import yaml

    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(
        yaml.safe_dump(
            {
                "model": {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16},
                "tokenizer": {"vocab_size": 280},
                "train": {
                    "max_steps": 50,
                    "batch_size": 2,
                    "warmup_steps": 1,
                    "samples": 0,
                    "dtype": "float32",
                    "eval_tokens": 256,
                    "lr": 0.002,
                },
            }
        )
    )
    out = tmp_path / "run"
    # preset < YAML < flags after it
    code, _, err = cli(
        "train",
        "--preset",
        "tiny",
        "--data",
        corpus_file,
        "--out",
        out,
        "--cache_dir",
        tmp_path / "c",
        "--config",
        cfg_file,
        "--train.max_steps",
        2,
        "--model.n_embd",
        32,
    )
    assert code == 0, err
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["model"]["n_layer"] == 1 and cfg["model"]["block_size"] == 16  # YAML over the preset
    assert cfg["train"]["lr"] == 0.002 and cfg["tokenizer"]["vocab_size"] == 280
    assert cfg["model"]["n_embd"] == 32 and cfg["train"]["max_steps"] == 2  # flags over the YAML
    assert (out / "LATEST").read_text().strip() == "ckpt-0000002"


def test_train_char_tokenizer(cli, corpus_file, corpus_text, tmp_path):
    out = tmp_path / "run"
    code, _, err = cli(
        *train_args(corpus_file, out, tmp_path / "c", "--tokenizer.kind", "char", "--train.max_steps", 2)
    )
    assert code == 0, err
    meta = json.loads((ckpt_of(out) / "config.json").read_text())
    tok = json.loads((ckpt_of(out) / "pocketgpt_tokenizer.json").read_text())
    assert meta["model"]["vocab_size"] < 300  # one id per character + specials
    assert "char" in json.dumps(tok)[:2000]
    code, text, err = cli("generate", out, "--prompt", "The", "--max-new-tokens", 5, "--temperature", 0)
    assert code == 0, err
    assert text.startswith("The")
