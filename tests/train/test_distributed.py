"""torchrun with gloo on CPU, 2 processes: DDP and FSDP2 give one process's results, checkpoints move between world
sizes, a killed rank is survived, two "nodes" on one machine train together, and bad launches fail in one line.

Each test launches real `torchrun ... -m pocketgpt` processes (a few seconds each) against the 127.0.0.1 loopback only.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import make_text
from safetensors.torch import load_file

from pocketgpt.evaluate import add_in_order
from pocketgpt.train.distributed import Dist, shard_groups

pytestmark = pytest.mark.dist
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
TIMEOUT = 240

MODEL = ["--model.n_layer", "2", "--model.n_head", "2", "--model.n_embd", "32", "--model.block_size", "32"]
TRAIN = [
    "--tokenizer.vocab_size", "300", "--train.batch_size", "4", "--train.max_steps", "12",
    "--train.eval_every", "6", "--train.save_every", "6", "--train.eval_tokens", "1024", "--train.samples", "0",
    "--train.dtype", "float32", "--train.warmup_steps", "0", "--train.schedule", "constant", "--train.threads", "1",
    "--train.dist_timeout_s", "60",
]  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("dist") / "corpus.txt"
    p.write_text(make_text(600, seed=3), encoding="utf-8")
    return p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def single_node() -> list[str]:
    """What --standalone does (a c10d rendezvous of one node), on a free 127.0.0.1 port."""
    return ["--nnodes", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}"]


def env() -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_", "MASTER_"))}
    e["OMP_NUM_THREADS"] = "1"
    return e


def pocketgpt(*args, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pocketgpt", *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=TIMEOUT)


def torchrun(*args, cwd: Path, nproc: int = 2, extra: tuple = ()) -> subprocess.CompletedProcess:
    cmd = [*TORCHRUN, *single_node(), "--nproc-per-node", str(nproc), *extra, "-m", "pocketgpt", *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=TIMEOUT)


def train(corpus: Path, out: Path, *extra, world: int = 1, **kw) -> subprocess.CompletedProcess:
    args = ("train", "--data", corpus, "--out", out, "--cache_dir", corpus.parent / "cache", *MODEL, *TRAIN, *extra)
    r = torchrun(*args, cwd=corpus.parent, nproc=world, **kw) if world > 1 else pocketgpt(*args, cwd=corpus.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def communicate(p: subprocess.Popen) -> tuple[str, str]:
    try:
        return p.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        p.kill()
        raise


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / (run / "LATEST").read_text().strip() / "model.safetensors"))


def max_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max((a[k] - b[k]).abs().max().item() for k in a)


def final(run: Path) -> dict:
    return json.loads((run / "final.json").read_text())


@pytest.fixture(scope="module")
def one_process(corpus) -> Path:
    """The reference: one process, grad_accum 2 (the same tokens per step as 2 processes x grad_accum 1)."""
    out = corpus.parent / "one"
    train(corpus, out, "--train.grad_accum", "2")
    return out


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_match_one(corpus, one_process, parallel):
    out = corpus.parent / f"two-{parallel}"
    r = train(corpus, out, "--train.parallel", parallel, world=2)
    assert max_diff(weights(out), weights(one_process)) <= 1e-5
    if parallel == "ddp":  # the same weights to the bit here, and validation sums added in one order: the same value
        assert final(out)["val_loss"] == final(one_process)["val_loss"]
    assert final(out)["val_loss"] == pytest.approx(final(one_process)["val_loss"], rel=1e-6)
    assert "global batch 8 sequences (2 processes x 4 x 1)" in r.stdout  # the split, printed at start
    assert "1 threads each" in r.stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "val_loss" in row] == [6, 12]  # rank 0 alone logs: no duplicate lines
    cfg = json.loads((out / "LATEST").parent.joinpath((out / "LATEST").read_text().strip(), "config.json").read_text())
    assert cfg["step"] == 12  # the usual checkpoint folder


def test_muon_under_ddp_matches_one_process(corpus):
    muon = ("--train.optimizer", "muon")
    ref, out = corpus.parent / "muon-one", corpus.parent / "muon-two"
    train(corpus, ref, "--train.grad_accum", "2", *muon)
    train(corpus, out, *muon, world=2)
    assert max_diff(weights(out), weights(ref)) <= 1e-5


@pytest.mark.slow  # ~40 s: three torchrun launches (make test-all)
def test_fsdp_checkpoint_resumes_at_world_1_and_2(corpus, one_process, tmp_path):
    """Train 6 of 12 steps with FSDP on 2 processes, then resume to 12: at world 2 (FSDP) bit for bit like the
    uninterrupted FSDP run; at world 1 and under DDP within float32 reduction order of the one-process run."""
    half = tmp_path / "half"
    train(corpus, half, "--train.parallel", "fsdp", "--train.max_steps", "6", world=2)
    straight = corpus.parent / "two-fsdp"
    if not (straight / "LATEST").exists():
        train(corpus, straight, "--train.parallel", "fsdp", world=2)
    for name, world, extra in (("fsdp2", 2, ("--train.parallel", "fsdp")), ("ddp2", 2, ()), ("one", 1, ())):
        run = tmp_path / name
        subprocess.run(["cp", "-r", str(half), str(run)], check=True)
        if world == 1:
            extra = ("--train.grad_accum", "2")
        train(corpus, run, "--resume", "--train.max_steps", "12", *extra, world=world)
        if name == "fsdp2":
            assert max_diff(weights(run), weights(straight)) == 0.0
        else:
            assert max_diff(weights(run), weights(one_process)) <= 1e-5
    # the FSDP checkpoint is the usual folder: generate and eval load it in one process
    r = pocketgpt("generate", half, "--prompt", "The", "--max-new-tokens", "5", "--seed", "0", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("The"), r.stderr
    r = pocketgpt("eval", half, "--data", corpus, "--json", cwd=tmp_path)
    assert r.returncode == 0 and "bpb" in r.stdout, r.stderr


def _children(pid: int) -> list[int]:
    try:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        return [int(c) for t in tasks for c in (t / "children").read_text().split()]
    except OSError:
        return []


def _worker(agent: int, local_rank: str) -> int | None:
    for pid in _children(agent):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"LOCAL_RANK={local_rank}".encode() in environ:
            return pid
    return None


@pytest.mark.slow  # ~35 s: waits out the collective timeout (make test-all)
def test_a_killed_rank_is_survived(corpus, tmp_path):
    """SIGKILL rank 1 after the first checkpoint: torchrun restarts the group, which resumes on its own (no --resume)
    and ends with the weights of an uninterrupted 2-process run."""
    steps = ("--train.max_steps", "400", "--train.save_every", "10", "--train.eval_every", "0")
    straight, out = tmp_path / "straight", tmp_path / "killed"
    train(corpus, straight, *steps, world=2)
    args = ("train", "--data", corpus, "--out", out, "--cache_dir", corpus.parent / "cache", *MODEL, *TRAIN, *steps)
    cmd = [*TORCHRUN, *single_node(), "--nproc-per-node", "2", "--max-restarts", "2", "-m", "pocketgpt",
           *map(str, args)]  # fmt: skip
    p = subprocess.Popen(cmd, cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (out / "LATEST").exists():
            assert p.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
            time.sleep(0.05)
        victim = _worker(p.pid, "1")
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        stdout, stderr = p.communicate(timeout=TIMEOUT)
    finally:  # never leave torchrun or its workers behind, whatever failed
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
    assert p.returncode == 0, stderr[-3000:]
    assert "torchrun restart 1: resuming" in stdout
    assert (out / "LATEST").read_text().strip() == "ckpt-0000400"
    assert max_diff(weights(out), weights(straight)) == 0.0
    assert not list(out.glob(".*.tmp")) and not list(out.glob(".*.old"))  # nothing half-written left behind


def test_two_nodes_on_one_machine(corpus, one_process, tmp_path):
    """Two torchrun invocations (--nnodes 2, node ranks 0 and 1, one process each) meet through a c10d rendezvous
    on 127.0.0.1 and train together like one process with grad_accum 2."""
    out, port = tmp_path / "nodes", free_port()
    args = ("train", "--data", corpus, "--out", out, "--cache_dir", corpus.parent / "cache", *MODEL, *TRAIN)
    procs = [
        subprocess.Popen(
            [
                *TORCHRUN,
                "--nnodes",
                "2",
                "--node-rank",
                str(rank),
                "--nproc-per-node",
                "1",
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                f"127.0.0.1:{port}",
                "--rdzv-id",
                "nodes-test",
                "-m",
                "pocketgpt",
                *map(str, args),
            ],
            cwd=tmp_path,
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    results = [communicate(p) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results[0][1][-2000:] + results[1][1][-2000:]
    assert max_diff(weights(out), weights(one_process)) <= 1e-5


@pytest.mark.parametrize(
    "task,extra",
    [
        # plain chat is chat-lora's path without the adapter: slow-marked to keep `make test` under 10 minutes
        pytest.param("chat", (), marks=pytest.mark.slow),
        ("classify", ()),
        ("chat", ("--lora.rank", "4", "--lora.dropout", "0")),
    ],
    ids=["chat", "classify", "chat-lora"],
)
def test_finetune_under_ddp_matches_one_process(corpus, one_process, tmp_path, task, extra):
    if task == "chat":
        rows = [{"messages": [{"role": "user", "content": f"say {i}"}, {"role": "assistant", "content": f"ok {i}"}]}
                for i in range(40)]  # fmt: skip
        data = tmp_path / "chats.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        data = tmp_path / "labels.csv"
        data.write_text("text,label\n" + "".join(f"{'good fine' if i % 2 else 'bad awful'} {i},{i % 2}\n"
                                                  for i in range(40)))  # fmt: skip
    common = ("finetune", one_process, "--task", task, "--data", data, "--train.max_steps", "6",
              "--train.batch_size", "4", "--train.eval_every", "0", "--train.save_every", "6", "--train.dtype",
              "float32", "--train.threads", "1", "--train.warmup_steps", "0", "--train.schedule", "constant", *extra)  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "two"
    r = pocketgpt(*common, "--out", one, "--train.grad_accum", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    r = torchrun(*common, "--out", two, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    name = "adapter.safetensors" if extra else "model.safetensors"
    a = load_file(str(one / (one / "LATEST").read_text().strip() / name))
    b = load_file(str(two / (two / "LATEST").read_text().strip() / name))
    assert max_diff(a, b) <= 1e-5
    assert json.loads((one / "final.json").read_text()).keys() == json.loads((two / "final.json").read_text()).keys()


def _one_error_line(r: subprocess.CompletedProcess, needle: str) -> None:
    """Each rank says what went wrong in one line naming itself; no traceback comes from pocketgpt's code (torchrun
    prints its own summary of the failed workers after them)."""
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("pocketgpt (rank ")]
    assert r.returncode != 0 and lines and all(needle in ln for ln in lines), r.stderr[-2000:]
    assert not [ln for ln in r.stderr.splitlines() if "File " in ln and "/pocketgpt/" in ln], r.stderr[-2000:]


@pytest.mark.parametrize(
    "extra,needle",
    [
        (("--train.dist_backend", "nccl"), "needs a CUDA GPU"),
        (("--train.parallel", "fsdp", "--train.optimizer", "muon"), "muon with train.parallel=fsdp"),
    ],
    ids=["nccl-without-gpu", "fsdp-muon"],
)
def test_bad_launches_fail_in_one_line_and_write_nothing(corpus, tmp_path, extra, needle):
    out = tmp_path / "run"
    args = ("train", "--data", corpus, "--out", out, "--cache_dir", tmp_path / "cache", *MODEL, *TRAIN, *extra)
    r = torchrun(*args, cwd=tmp_path)
    _one_error_line(r, needle)
    assert "rank" in r.stderr
    assert not out.exists()


def test_fsdp_refuses_lora_and_writes_nothing(corpus, one_process, tmp_path):
    data = tmp_path / "chats.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
                    + "\n")  # fmt: skip
    out = tmp_path / "run"
    r = torchrun("finetune", one_process, "--task", "chat", "--data", data, "--out", out, "--lora.rank", "4",
                 "--train.parallel", "fsdp", cwd=tmp_path)  # fmt: skip
    _one_error_line(r, "frozen parameters")
    assert not out.exists()


def test_ranks_with_different_configs_are_refused(corpus, tmp_path):
    out, port = tmp_path / "mixed", free_port()
    procs = []
    for rank, lr in ((0, "0.001"), (1, "0.002")):
        args = ("train", "--data", corpus, "--out", out, "--cache_dir", tmp_path / "cache", *MODEL, *TRAIN,
                "--train.lr", lr)  # fmt: skip
        procs.append(subprocess.Popen(
            [*TORCHRUN, "--nnodes", "2", "--node-rank", str(rank), "--nproc-per-node", "1", "--rdzv-backend", "c10d",
             "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "mixed", "-m", "pocketgpt", *map(str, args)],
            cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))  # fmt: skip
    errs = [communicate(p)[1] for p in procs]
    assert all(p.returncode != 0 for p in procs)
    assert all("different configs" in e for e in errs), errs
    assert not (out / "LATEST").exists() and not (out / "config.yaml").exists()


# --- the pieces, in one process ----------------------------------------------------------------------------------


def test_each_rank_draws_its_own_micro_batches():
    """world x grad_accum micro-batches per step, each drawn by exactly one rank: the same set as one process."""
    for world, accum in ((1, 4), (2, 2), (4, 1)):
        drawn = [Dist(rank=r, world=world).micro_index(m, accum) for r in range(world) for m in range(accum)]
        assert sorted(drawn) == list(range(4))


def test_evaluation_windows_split_without_overlap():
    groups = [[i] for i in range(7)]
    shares = [shard_groups(Dist(rank=r, world=2), groups) for r in range(2)]
    real = [i for share in shares for i, _ in share if i >= 0]
    assert sorted(real) == list(range(7))  # every window once
    assert len(shares[0]) == len(shares[1]) == 4  # equal rounds (FSDP's forward is a collective)
    assert [i for i, _ in shares[1]] == [1, 3, 5, -1]


def test_sums_added_in_group_order_do_not_depend_on_the_split():
    """Float64 sums in a different order differ in the last bit; rows added in group order never do."""
    torch.manual_seed(0)
    rows = (torch.rand(301, 4, dtype=torch.float64) * 10) ** 3
    whole = add_in_order(rows)
    split = torch.zeros_like(rows)
    split[0::2], split[1::2] = rows[0::2], rows[1::2]  # what two ranks contribute to the all-reduce
    assert add_in_order(split) == whole
