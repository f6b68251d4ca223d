"""The README's Python examples run as written, in order, in one temp folder (later ones use earlier outputs).

The client examples for a running `pocketgpt serve` are only compiled: tests/serve runs that API with the openai
client against real servers.
"""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
SERVER = "http://127.0.0.1:8000"  # blocks that talk to a running `pocketgpt serve` (tests/serve drives the API)


def test_readme_python_examples_run_in_order(tmp_path, monkeypatch, capsys):
    assert len(BLOCKS) >= 3
    monkeypatch.chdir(tmp_path)
    for i, block in enumerate(BLOCKS):
        code = compile(block, f"README.md[python block {i}]", "exec")
        if SERVER in block:  # needs a server on port 8000: only checked to compile
            continue
        exec(code, {"__name__": "__readme__"})
        assert capsys.readouterr().out.strip(), f"block {i} printed nothing"
