"""Atomic publishing: atomic_write and atomic_dir replace all or nothing, leave no temp files, follow the umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pocketgpt import fileio
from pocketgpt.fileio import atomic_dir, atomic_write, remove_leftovers

UMASK = 0o027


@pytest.fixture
def umask_027():
    """Run with umask 027 (files 0640, folders 0750); fileio caches the umask, so its cache is cleared too."""
    old = os.umask(UMASK)
    fileio.umask.cache_clear()
    try:
        yield UMASK
    finally:
        os.umask(old)
        fileio.umask.cache_clear()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- atomic_write ---------------------------------------------------------------------------------


def test_atomic_write_replaces_the_old_content_with_bytes_and_with_str(tmp_path):
    p = tmp_path / "out.json"
    atomic_write(p, b"\x00old\xff")
    assert p.read_bytes() == b"\x00old\xff"
    atomic_write(p, "new · café ✓")
    assert p.read_bytes() == "new · café ✓".encode()
    atomic_write(str(p), b"")  # a str path works too
    assert p.read_bytes() == b""
    assert entries(tmp_path) == ["out.json"]  # no temp file beside it


def test_atomic_write_gives_the_umask_permissions_not_mkstemps_0600(tmp_path, umask_027):
    p = tmp_path / "f.txt"
    atomic_write(p, "x")
    assert mode(p) == 0o666 & ~UMASK == 0o640
    p.chmod(0o600)
    atomic_write(p, "y")  # a replacement is a new file: umask permissions again
    assert mode(p) == 0o640 and p.read_text() == "y"


def test_a_failed_rename_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    p = tmp_path / "f.txt"
    p.write_text("old")

    def broken_replace(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk on fire"):
        atomic_write(p, "new")
    assert p.read_text() == "old" and entries(tmp_path) == ["f.txt"]


def test_a_write_that_raises_midway_leaves_the_old_file_and_no_temp_file(tmp_path):
    p = tmp_path / "f.txt"
    p.write_text("old")
    with pytest.raises(TypeError):
        atomic_write(p, 12345)  # neither bytes nor str: the write itself raises
    assert p.read_text() == "old" and entries(tmp_path) == ["f.txt"]
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "missing" / "f.txt", "x")  # no parent folder: refused, nothing made
    assert entries(tmp_path) == ["f.txt"]


# --- atomic_dir -----------------------------------------------------------------------------------


def fill(folder: Path, tag: str) -> None:
    (folder / "a.txt").write_text(f"a-{tag}")
    (folder / "sub").mkdir()
    (folder / "sub" / "b.bin").write_bytes(tag.encode() * 3)


def published(tag: str) -> dict[str, bytes]:
    return {"a.txt": f"a-{tag}".encode(), "sub/b.bin": tag.encode() * 3}


def test_atomic_dir_publishes_the_filled_folder_and_makes_its_parents(tmp_path):
    target = tmp_path / "runs" / "ckpt"
    with atomic_dir(target) as d:
        assert d.parent == target.parent and d.is_dir() and entries(d) == []
        assert d.name.startswith(".ckpt.") and d.name.endswith(".tmp") and not target.exists()
        fill(d, "new")
    assert not d.exists()
    assert tree(target) == published("new")
    assert entries(target.parent) == ["ckpt"]


@pytest.mark.parametrize("if_exists", ["error", "replace", "keep", "park"])
def test_an_empty_folder_at_the_target_is_always_replaced(tmp_path, if_exists):
    target = tmp_path / "ckpt"
    target.mkdir()
    with atomic_dir(target, if_exists=if_exists, park_as=tmp_path / "parked") as d:
        fill(d, "new")
    assert tree(target) == published("new")
    assert entries(tmp_path) == ["ckpt"]  # nothing parked, nothing left over


@pytest.mark.parametrize("exists", [False, True])
def test_an_exception_inside_the_block_changes_nothing_and_removes_the_temp_folder(tmp_path, exists):
    target = tmp_path / "ckpt"
    if exists:
        target.mkdir()
        fill(target, "old")
    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_dir(target, if_exists="replace") as d:
            fill(d, "new")
            raise RuntimeError("writer failed")
    assert not d.exists()
    if exists:
        assert tree(target) == published("old") and entries(tmp_path) == ["ckpt"]
    else:
        assert entries(tmp_path) == []


def test_error_refuses_an_existing_folder_and_leaves_it(tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    fill(target, "old")
    with pytest.raises(FileExistsError):
        with atomic_dir(target) as d:  # "error" is the default
            fill(d, "new")
    assert tree(target) == published("old") and entries(tmp_path) == ["ckpt"]


def test_replace_puts_ours_in_place_of_theirs(tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    fill(target, "old")
    (target / "only-old.txt").write_text("gone after")
    with atomic_dir(target, if_exists="replace") as d:
        fill(d, "new")
    assert tree(target) == published("new") and entries(tmp_path) == ["ckpt"]


def test_replace_also_replaces_a_file_at_the_target(tmp_path):
    target = tmp_path / "ckpt"
    target.write_text("a file, not a folder")
    with atomic_dir(target, if_exists="replace") as d:
        fill(d, "new")
    assert tree(target) == published("new")


def test_keep_keeps_theirs_and_discards_ours(tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    fill(target, "old")
    with atomic_dir(target, if_exists="keep") as d:
        fill(d, "new")
    assert not d.exists()
    assert tree(target) == published("old") and entries(tmp_path) == ["ckpt"]


def test_keep_also_wins_a_race_to_publish(tmp_path, monkeypatch):
    """Another writer publishes the same folder between our check and our rename: theirs stays, ours goes."""
    target = tmp_path / "ckpt"
    real_replace = os.replace

    def racing_replace(src, dst):
        Path(dst).mkdir()
        fill(Path(dst), "theirs")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", racing_replace)
    with atomic_dir(target, if_exists="keep") as d:
        fill(d, "ours")
    assert tree(target) == published("theirs") and entries(tmp_path) == ["ckpt"]


def test_park_moves_the_old_folder_to_park_as(tmp_path):
    target, parked = tmp_path / "ckpt", tmp_path / ".ckpt.old"
    target.mkdir()
    fill(target, "v1")
    parked.mkdir()
    (parked / "stale.txt").write_text("an older parked copy is replaced")
    with atomic_dir(target, if_exists="park", park_as=parked) as d:
        fill(d, "v2")
    assert tree(target) == published("v2")
    assert tree(parked) == published("v1")
    assert entries(tmp_path) == [".ckpt.old", "ckpt"]


def test_park_needs_park_as_and_makes_nothing_without_it(tmp_path):
    with pytest.raises(ValueError, match="park_as"):
        with atomic_dir(tmp_path / "ckpt", if_exists="park"):
            pass
    assert entries(tmp_path) == []


def test_atomic_dir_gives_files_and_folders_the_umask_permissions(tmp_path, umask_027):
    target = tmp_path / "ckpt"
    with atomic_dir(target) as d:
        assert mode(d) == 0o777 & ~UMASK  # not mkdtemp's 0700
        fd = os.open(d / "model.safetensors", os.O_WRONLY | os.O_CREAT, 0o600)  # as safetensors does
        os.write(fd, b"weights")
        os.close(fd)
        assert mode(d / "model.safetensors") == 0o600
        (d / "sub").mkdir()
        (d / "sub" / "c.json").write_text("{}")
    assert mode(target) == 0o750 and mode(target / "sub") == 0o750
    assert mode(target / "model.safetensors") == 0o666 & ~UMASK == 0o640
    assert mode(target / "sub" / "c.json") == 0o640


# --- remove_leftovers -----------------------------------------------------------------------------


def test_remove_leftovers_deletes_temp_files_and_folders_matching_the_pattern_only(tmp_path):
    (tmp_path / ".ckpt-1.abc123.tmp").mkdir()
    (tmp_path / ".ckpt-1.abc123.tmp" / "half.bin").write_bytes(b"half")
    (tmp_path / ".meta.json.x1y2.tmp").write_text("half")
    (tmp_path / ".ckpt-0.old").mkdir()
    (tmp_path / "ckpt-2").mkdir()
    (tmp_path / "notes.tmp.txt").write_text("keep")
    remove_leftovers(tmp_path, ".*.tmp")
    assert entries(tmp_path) == [".ckpt-0.old", "ckpt-2", "notes.tmp.txt"]
    remove_leftovers(str(tmp_path), ".*.old")
    assert entries(tmp_path) == ["ckpt-2", "notes.tmp.txt"]
    remove_leftovers(tmp_path / "missing", ".*.tmp")  # a folder that is not there: nothing to do
