"""The README's Python examples run as written, in order, in one temp folder (later ones use earlier outputs)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_python_examples_run_in_order(tmp_path, monkeypatch, capsys):
    assert len(BLOCKS) >= 3
    monkeypatch.chdir(tmp_path)
    for i, block in enumerate(BLOCKS):
        exec(compile(block, f"README.md[python block {i}]", "exec"), {"__name__": "__readme__"})
        assert capsys.readouterr().out.strip(), f"block {i} printed nothing"
