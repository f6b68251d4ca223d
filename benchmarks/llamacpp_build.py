"""Build llama.cpp once, from the source inside the llama-cpp-python package on PyPI, into a cache folder.

    python benchmarks/llamacpp_build.py            # -> ~/.cache/pocketgpt/llama.cpp/ (or $POCKETGPT_LLAMACPP)

Downloads the sdist (`pip download --no-binary :all: --no-deps llama-cpp-python==VERSION`), runs CMake on its
`vendor/llama.cpp` (Release, GGML_NATIVE: the instructions of this CPU, shared libraries) and builds llama-bench,
llama-server, llama-cli and llama-tokenize; then installs the llama-cpp-python bindings into this Python
without compiling llama.cpp a second time (CMAKE_ARGS=-DLLAMA_BUILD=OFF; they find the shared library through
LLAMA_CPP_LIB_PATH). Takes minutes on 2 cores, once: a second run finds the build and returns at once.
The slow parity tests (tests/interop/test_llamacpp.py) and benchmarks/llamacpp.py use what it leaves.
Nothing here is part of `make test`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
from pathlib import Path

VERSION = "0.3.36"
TOOLS = ("llama-bench", "llama-server", "llama-cli", "llama-tokenize")


def cache_dir() -> Path:
    return Path(os.environ.get("POCKETGPT_LLAMACPP") or Path.home() / ".cache" / "pocketgpt" / "llama.cpp")


def bin_dir() -> Path:
    return cache_dir() / "build" / "bin"


def built() -> bool:
    return all((bin_dir() / t).is_file() for t in TOOLS) and any(bin_dir().glob("libllama.so*"))


def run(cmd: list[str], **kw) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)


def build(jobs: int = 2) -> Path:
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    if not built():
        src = root / "src"
        tgz = next(src.glob(f"llama_cpp_python-{VERSION}.tar.gz"), None) if src.is_dir() else None
        if tgz is None:
            run(
                [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps"]
                + [f"llama-cpp-python=={VERSION}", "-d", str(src)]
            )
            tgz = next(src.glob("llama_cpp_python-*.tar.gz"))
        tree = root / f"llama_cpp_python-{VERSION}"
        if not tree.is_dir():
            with tarfile.open(tgz) as t:
                t.extractall(root, filter="data")
        flags = ["-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DBUILD_SHARED_LIBS=ON", "-DLLAMA_CURL=OFF"]
        flags += ["-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON"]
        run(["cmake", "-S", str(tree / "vendor" / "llama.cpp"), "-B", str(root / "build"), *flags])
        run(["cmake", "--build", str(root / "build"), "-j", str(jobs), "--target", *TOOLS])
    try:
        import llama_cpp  # noqa: F401
    except (ImportError, OSError, RuntimeError):
        env = {**os.environ, "CMAKE_ARGS": "-DLLAMA_BUILD=OFF"}
        run([sys.executable, "-m", "pip", "install", "--no-deps", f"llama-cpp-python=={VERSION}"], env=env)
        run([sys.executable, "-m", "pip", "install", "diskcache>=5.6", "jinja2>=2.11"])
    print(f"llama.cpp {VERSION} (from llama-cpp-python's vendor/) built in {bin_dir()}")
    return bin_dir()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    build(ap.parse_args().jobs)
