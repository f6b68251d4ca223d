"""The loss curve: metrics.jsonl -> a PNG drawn with Agg (no display), its lines the logged values; clear errors."""

from __future__ import annotations

import json
import struct

import pytest

from pocketgpt.errors import UserError
from pocketgpt.plot import plot_run

pytest.importorskip("matplotlib")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ROWS = [
    {"step": 1, "loss": 5.5, "lr": 1e-4},
    {"step": 2, "loss": 5.0, "lr": 2e-4},
    {"step": 3, "loss": 4.25, "lr": 3e-4},
    {"step": 3, "val_loss": 4.5, "val_bpb": 2.0},
    {"step": 4, "loss": 4.0, "lr": 3e-4},
    {"step": 6, "val_loss": 4.0, "val_bpb": 1.75},
]


def run_folder(tmp_path, rows, name="run"):
    run = tmp_path / name
    run.mkdir()
    text = "\n".join(json.dumps(r) for r in rows)
    (run / "metrics.jsonl").write_text(text + "\n\n" if rows else "")
    return run


@pytest.fixture
def drawn(monkeypatch):
    """The figures plot_run saves, kept for inspection."""
    from matplotlib.figure import Figure

    figures = []
    real = Figure.savefig

    def keep(self, *args, **kwargs):
        figures.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return figures


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_a_run_folder_gives_a_png_of_its_losses_drawn_without_a_display(tmp_path, monkeypatch, drawn):
    import matplotlib

    monkeypatch.delenv("DISPLAY", raising=False)
    run = run_folder(tmp_path, ROWS)
    out = plot_run(run)
    assert out == run / "loss.png"
    data = out.read_bytes()
    assert len(data) > 1000 and png_size(data) == (880, 495)  # figsize 8 x 4.5 inches at 110 dpi
    assert matplotlib.get_backend().lower() == "agg"
    assert sorted(p.name for p in run.iterdir()) == ["loss.png", "metrics.jsonl"]  # no temp image left
    (fig,) = drawn
    ax, ax2 = fig.axes
    train, val = ax.get_lines()
    assert train.get_label() == "train loss" and val.get_label() == "validation loss"
    assert train.get_xydata().tolist() == [[1, 5.5], [2, 5.0], [3, 4.25], [4, 4.0]]
    assert val.get_xydata().tolist() == [[3, 4.5], [6, 4.0]]
    (bpb,) = ax2.get_lines()
    assert bpb.get_xydata().tolist() == [[3, 2.0], [6, 1.75]] and ax2.get_ylabel() == "bits per byte"
    assert ax.get_title() == "pocketgpt: run"


def test_train_loss_only_and_an_out_path(tmp_path, drawn):
    run = run_folder(tmp_path, [r for r in ROWS if "loss" in r])
    out = plot_run(str(run), tmp_path / "curve.png")
    assert out == tmp_path / "curve.png" and out.read_bytes()[:8] == PNG_SIGNATURE
    assert not (run / "loss.png").exists()
    (fig,) = drawn
    assert len(fig.axes) == 1 and [ln.get_label() for ln in fig.axes[0].get_lines()] == ["train loss"]


def test_replotting_replaces_the_old_png(tmp_path):
    run = run_folder(tmp_path, ROWS[:2])
    (run / "loss.png").write_bytes(b"stale")
    assert plot_run(run).read_bytes()[:8] == PNG_SIGNATURE


def test_a_folder_without_metrics_is_a_user_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no metrics.jsonl in .*empty: not a training run folder"):
        plot_run(tmp_path / "empty")
    with pytest.raises(UserError, match="no metrics.jsonl"):
        plot_run(tmp_path / "missing")
    assert not (tmp_path / "empty" / "loss.png").exists()


def test_empty_metrics_are_a_user_error(tmp_path):
    run = run_folder(tmp_path, [])
    (run / "metrics.jsonl").write_text("\n  \n")
    with pytest.raises(UserError, match="metrics.jsonl is empty: nothing to plot yet"):
        plot_run(run)
    assert not (run / "loss.png").exists()
