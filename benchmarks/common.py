"""Shared by the benchmark scripts: the header line (the machine, from pocketgpt.device), timing and process helpers.

Matmul peaks and native-bf16 detection come from pocketgpt.device (peak_flops, native_bf16), not from here."""

from __future__ import annotations

import platform
import statistics
import time

import torch

from pocketgpt.device import describe_cpu


def header(title: str) -> None:
    print(f"# {title}")
    print(
        f"CPU: {describe_cpu()} | torch {torch.__version__} threads={torch.get_num_threads()} | "
        f"python {platform.python_version()} | {time.strftime('%Y-%m-%d %H:%M %Z')}"
    )


def read_bandwidth(mb: int = 1024, reps: int = 10) -> float:
    """Bytes/s of a streaming read (sum over a tensor 30x the last-level cache) on all threads: best of `reps`."""
    a = torch.ones(mb * 1024 * 1024 // 4)
    a.sum()
    best = min(_timed(a.sum) for _ in range(reps))
    return a.numel() * 4 / best


def _timed(f) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def median_times(fs: dict, runs: int = 3, warmup: int = 1) -> dict:
    """The median seconds of `runs` calls of each callable, run interleaved (one call of each in turn, `warmup`
    rounds first), so drift in the machine's speed (other VMs on the host) falls on all of them alike, not on
    whichever ran in a slow minute. name -> median seconds."""
    for _ in range(warmup):
        for f in fs.values():
            f()
    times: dict = {k: [] for k in fs}
    for _ in range(runs):
        for k, f in fs.items():
            times[k].append(_timed(f))
    return {k: statistics.median(v) for k, v in times.items()}


def run_process(cmd: list[str], *, cwd=None, env=None, timeout: float = 3600) -> dict:
    """Run a command to completion: wall seconds, return code, stdout+stderr text, and the peak resident
    memory of that one process (os.wait4's ru_maxrss, in bytes; Linux reports KiB)."""
    import os
    import subprocess
    import tempfile

    with tempfile.TemporaryFile("w+") as out:
        t0, t0_unix = time.perf_counter(), time.time()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        deadline = t0 + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        return {
            "wall": wall,
            "rc": proc.returncode,
            "out": out.read(),
            "maxrss": usage.ru_maxrss * 1024,
            "start_unix": t0_unix,
        }


def load_line() -> str:
    import os

    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
