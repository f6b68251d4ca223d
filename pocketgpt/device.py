"""The one place that decides device, precision and CPU threads; training and generation ask it.

Rules: bf16 only where the hardware does it natively (CUDA with bf16 support; CPUs with AMX or
AVX512-BF16). On other CPUs bf16 matmuls fall back to a reference kernel that is many times
slower than float32, so `auto` keeps float32 there. The user can always override.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from pocketgpt.errors import UserError
from pocketgpt.fileio import atomic_write


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict:
    """CPU model name, thread count and whether bf16 matrix units are native."""
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("unknown", platform.processor()):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                if flags and model != "unknown":
                    break
    except OSError:
        pass
    units = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    mkldnn_ok = bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())
    return {
        "model": model,
        "cpus": os.cpu_count(),
        "bf16_units": units,
        "native_bf16": bool(units) and mkldnn_ok,
        "avx512": "avx512f" in flags,
        "avx2": "avx2" in flags,
    }


def describe_cpu() -> str:
    info = cpu_info()
    bf16 = "+".join(info["bf16_units"]) if info["native_bf16"] else "no native bf16"
    return f"{info['model']} ({info['cpus']} CPUs, {bf16})"


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("device 'cuda' requested but no CUDA GPU is available")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("device 'mps' requested but MPS is not available")
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_info()["native_bf16"]
    return False


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """Compute precision: 'auto' -> bf16 where native and, on a CPU, measured to pay off (bf16_pays_off); else
    float32."""
    if name == "auto":
        return torch.bfloat16 if native_bf16(device) and bf16_pays_off(device) else torch.float32
    if name not in ("float32", "bfloat16"):
        raise UserError(f"dtype must be auto, float32 or bfloat16, got {name!r}")
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


# bf16 matmuls must beat float32 by this much on this CPU for `auto` to pick bf16 (its rounding is not free)
BF16_MIN_SPEEDUP = 1.5


def bf16_pays_off(device: torch.device) -> bool:
    """Whether bf16 matmuls are measurably faster than float32 here: capability alone has misled (an AMX Xeon VM ran
    bf16 GEMMs at only 2.9x float32, an AVX512-BF16 one at 4x). Measured once per CPU model, torch version and thread
    count (a 1024^3 product in each precision, well under a second) and cached; always True on a GPU."""
    if device.type != "cpu":
        return True
    key = f"bf16-speedup|{cpu_info()['model']}|torch {torch.__version__}|threads {torch.get_num_threads()}"
    speedup = cached_measurement(key, lambda: peak_flops(device, torch.bfloat16) / peak_flops(device, torch.float32))
    return speedup >= BF16_MIN_SPEEDUP


def measurement_cache() -> Path:
    """Where measured choices are kept (bf16 speed-up here, matmul kernels in generate/kernels.py)."""
    root = os.environ.get("POCKETGPT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "pocketgpt")
    return Path(root)


def read_cache(name: str) -> dict:
    try:
        data = json.loads((measurement_cache() / name).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def write_cache(name: str, data: dict) -> None:
    try:
        measurement_cache().mkdir(parents=True, exist_ok=True)
        atomic_write(measurement_cache() / name, json.dumps(data, indent=1, sort_keys=True))
    except OSError:  # a read-only home: measure again next time
        pass


def cached_measurement(key: str, measure) -> float:
    data = read_cache("measurements.json")
    if isinstance(data.get(key), (int, float)):
        return float(data[key])
    value = float(measure())
    data[key] = value
    write_cache("measurements.json", data)
    return value


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """bf16 autocast for matmuls when dtype is bf16; a no-op for float32."""
    if dtype == torch.float32:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (hyper-threads share a core's matrix units,
    so a second thread per core only adds synchronisation to matmul-bound work)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS / Windows
        return max(1, (os.cpu_count() or 2) // 2) if platform.machine() in ("x86_64", "AMD64") else os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        topo = f"/sys/devices/system/cpu/cpu{cpu}/topology"
        try:
            with open(f"{topo}/core_id") as a, open(f"{topo}/physical_package_id") as b:
                cores.add((a.read().strip(), b.read().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))
    return max(1, len(cores))


def set_threads(n: int = 0) -> int:
    """Set PyTorch's intra-op threads: n, or with 0 one per physical core this process may use (respecting
    taskset/cgroup affinity, and OMP_NUM_THREADS when the user set it). Returns the count."""
    if n <= 0:
        env = os.environ.get("OMP_NUM_THREADS", "")
        n = int(env) if env.isdigit() and int(env) > 0 else physical_cores()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def setup_runtime(runtime, verbose: bool = True) -> tuple[torch.device, torch.dtype]:
    """Device, precision and threads from a RuntimeConfig (or TrainConfig / ServeConfig, which extend it), set up and
    printed in one line: the one way every command turns --device / --dtype / --threads into torch objects."""
    device = pick_device(runtime.device)
    dtype = pick_dtype(runtime.dtype, device)
    threads = set_threads(runtime.threads)
    if dtype == torch.bfloat16 and not native_bf16(device):
        warnings.warn(
            f"this {device.type} has no native bf16 units: bfloat16 will be slower than float32", stacklevel=2
        )
    if verbose:
        print(f"device: {describe_device(device)} · {threads} threads · {str(dtype).replace('torch.', '')}")
    return device, dtype


def describe_device(device: torch.device) -> str:
    if device.type == "cpu":
        return f"cpu · {describe_cpu()}"
    if device.type == "cuda":
        return f"cuda · {torch.cuda.get_device_name(device)}"
    return device.type


def peak_flops(
    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, n: int = 1024, reps: int = 5
) -> float:
    """Measured matmul throughput (FLOP/s, best of `reps`) of an n x n x n product on this device and precision:
    MFU's denominator, and the peak every benchmark prints."""
    device = torch.device(device)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best
