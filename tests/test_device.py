"""Device, precision and threads: explicit choices are kept, `auto` picks bf16 only where native, clear refusals."""

from __future__ import annotations

import os

import pytest
import torch

from pocketgpt import device as D
from pocketgpt.errors import UserError

CPU = torch.device("cpu")


@pytest.fixture
def threads():
    """Restore PyTorch's intra-op thread count after the test."""
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


@pytest.mark.parametrize("name, want", [("float32", torch.float32), ("bfloat16", torch.bfloat16)])
@pytest.mark.parametrize("native", [False, True])
def test_an_explicit_dtype_is_kept_whatever_the_hardware(monkeypatch, name, want, native):
    monkeypatch.setattr(D, "native_bf16", lambda device: native)
    assert D.pick_dtype(name, CPU) is want


@pytest.mark.parametrize("native, want", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_is_bf16_exactly_where_it_is_native(monkeypatch, native, want):
    monkeypatch.setattr(D, "native_bf16", lambda device: native)
    monkeypatch.setattr(D, "bf16_pays_off", lambda device: True)
    assert D.pick_dtype("auto", CPU) is want


def test_auto_on_this_cpu_follows_native_bf16_and_its_measured_speed():
    want = torch.bfloat16 if D.native_bf16(CPU) and D.bf16_pays_off(CPU) else torch.float32
    assert D.pick_dtype("auto", CPU) is want
    assert isinstance(D.native_bf16(CPU), bool)


@pytest.mark.parametrize("speedup, want", [(1.2, torch.float32), (2.9, torch.bfloat16)])
def test_native_bf16_that_measures_slow_is_not_picked(monkeypatch, tmp_path, speedup, want):
    """Capability alone has misled: auto also needs bf16 matmuls measured faster than float32 by BF16_MIN_SPEEDUP."""
    monkeypatch.setenv("POCKETGPT_CACHE", str(tmp_path))
    monkeypatch.setattr(D, "native_bf16", lambda device: True)
    calls = []
    monkeypatch.setattr(
        D, "peak_flops", lambda device, dtype: calls.append(dtype) or (speedup if dtype == torch.bfloat16 else 1.0)
    )
    assert D.pick_dtype("auto", CPU) is want
    assert D.pick_dtype("auto", CPU) is want
    assert calls == [torch.bfloat16, torch.float32]  # measured once, then read from the cache
    assert (tmp_path / "measurements.json").exists()


def test_an_unknown_dtype_is_a_user_error():
    with pytest.raises(UserError, match="float16"):
        D.pick_dtype("float16", CPU)


@pytest.mark.parametrize("native", [True, False])
def test_native_bf16_on_cpu_reads_cpu_info(monkeypatch, native):
    info = {**D.cpu_info(), "native_bf16": native, "bf16_units": ["amx_bf16"] if native else []}
    monkeypatch.setattr(D, "cpu_info", lambda: info)
    assert D.native_bf16(CPU) is native
    monkeypatch.setattr(D, "bf16_pays_off", lambda device: True)  # the measurement is this machine's: fixed here
    assert D.pick_dtype("auto", CPU) is (torch.bfloat16 if native else torch.float32)
    monkeypatch.setattr(D, "bf16_pays_off", lambda device: False)  # native units that measured no faster
    assert D.pick_dtype("auto", CPU) is torch.float32


def test_native_bf16_on_cuda_asks_cuda_and_elsewhere_is_false(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert D.native_bf16(torch.device("cuda")) is True
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert D.native_bf16(torch.device("cuda")) is False
    assert D.native_bf16(torch.device("meta")) is False


def test_cpu_info_describes_this_machine():
    info = D.cpu_info()
    assert info["cpus"] == os.cpu_count() and isinstance(info["model"], str) and info["model"]
    assert set(info["bf16_units"]) <= {"amx_bf16", "avx512_bf16"}
    assert not info["native_bf16"] or info["bf16_units"]  # native needs a bf16 unit


def no_accelerators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if getattr(torch.backends, "mps", None) is not None:
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_pick_device_without_cuda(monkeypatch):
    no_accelerators(monkeypatch)
    assert D.pick_device("auto") == CPU and D.pick_device() == CPU
    assert D.pick_device("cpu") == CPU
    with pytest.raises(UserError, match="'cuda' requested but no CUDA GPU is available"):
        D.pick_device("cuda")
    with pytest.raises(UserError, match="'mps' requested but MPS is not available"):
        D.pick_device("mps")


def test_pick_device_auto_prefers_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert D.pick_device("auto") == torch.device("cuda")
    assert D.pick_device("cuda") == torch.device("cuda")


def test_set_threads_sets_and_returns_the_count(threads):
    assert D.set_threads(1) == 1 and torch.get_num_threads() == 1
    n = max(2, threads)
    assert D.set_threads(n) == n and torch.get_num_threads() == n


def test_set_threads_zero_means_omp_num_threads_else_physical_cores(threads, monkeypatch):
    monkeypatch.setattr(D, "physical_cores", lambda: 1)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert D.set_threads(0) == 2 and torch.get_num_threads() == 2
    for ignored in ("", "0", "two"):
        monkeypatch.setenv("OMP_NUM_THREADS", ignored)
        assert D.set_threads(0) == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    torch.set_num_threads(2)
    assert D.set_threads() == 1 and torch.get_num_threads() == 1


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux affinity")
def test_physical_cores_counts_the_cpus_this_process_may_use(monkeypatch):
    n = D.physical_cores()
    assert isinstance(n, int) and 1 <= n <= len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert D.physical_cores() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {100_000, 100_001})  # no topology in /sys
    assert D.physical_cores() == 2  # each unknown CPU counts as its own core
