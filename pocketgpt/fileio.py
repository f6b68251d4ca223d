"""Publishing files and folders atomically: the only way anything pocketgpt writes appears on disk.

- `atomic_write(path, data)`: a temp file beside the target, flushed and fsynced, then renamed over it.
- `atomic_file(path)`: the same for writers that want a file name: a temp path to write, renamed at the end.
- `atomic_dir(target)`: a temp folder beside the target that the caller fills; on a clean exit every file in
  it is fsynced and the folder is renamed into place (on an exception it is removed).
A kill at any moment leaves either the old file/folder or the new one, never half of one. Files and folders
get the usual umask permissions, not mkstemp's 0600/0700. Needs no torch.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal


@functools.lru_cache(maxsize=1)
def umask() -> int:
    """The process umask (read once: os.umask can only be read by setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(path: Path | str) -> None:
    """Make a rename inside `path` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def atomic_write(path: Path | str, data: bytes | str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_file(path: Path | str) -> Iterator[Path]:
    """Yield a temp path beside `path` for a writer that wants a file name (e.g. gguf.GGUFWriter); when the
    block ends cleanly it is fsynced and renamed over `path`; on an exception it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask())
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _finish_tree(folder: Path) -> None:
    """Give every file the umask's permissions (some writers, e.g. safetensors, make 0600) and fsync it."""
    for sub, _dirs, files in os.walk(folder):
        for name in files:
            path = os.path.join(sub, name)
            os.chmod(path, 0o666 & ~umask())
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(sub)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_leftovers(folder: Path | str, pattern: str) -> None:
    """Delete what killed writers left in `folder` (`.NAME.XXXX.tmp` temp folders, parked `.NAME.old` ones).
    One writer per folder is assumed."""
    for p in Path(folder).glob(pattern):
        _remove(p)


@contextlib.contextmanager
def atomic_dir(
    target: Path | str,
    *,
    if_exists: Literal["error", "replace", "keep", "park"] = "error",
    park_as: Path | str | None = None,
) -> Iterator[Path]:
    """Yield an empty temp folder beside `target`; when the block ends cleanly, publish it as `target`.

    An empty folder at `target` (one the user made) is always replaced. Otherwise `if_exists` says what to do
    with a folder already there when the block ends:
      error    FileExistsError (check earlier with a UserError for a friendlier message);
      replace  delete it, then rename ours into place (a reader of the old folder may see it vanish);
      keep     keep theirs and discard ours (another process published the same thing meanwhile);
      park     rename it to `park_as` first, so something always sits at one of the two names; the caller
               removes the parked copy once it no longer needs it (see checkpoint.save_checkpoint).
    On an exception inside the block (or a kill) nothing at `target` changes and the temp folder goes.
    """
    target = Path(target)
    if if_exists == "park" and park_as is None:
        raise ValueError("atomic_dir(if_exists='park') needs park_as")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes 0700; give the usual permissions
        yield tmp
        _finish_tree(tmp)
        # 1) clear the way  # 2) rename into place  # 3) make the rename durable
        if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
            target.rmdir()
        elif target.exists():
            if if_exists == "keep":
                shutil.rmtree(tmp, ignore_errors=True)
                return
            if if_exists == "error":
                raise FileExistsError(f"{target} already exists")
            if if_exists == "park":
                _remove(Path(park_as))
                os.replace(target, park_as)
            else:
                _remove(target)
        try:
            os.replace(tmp, target)
        except OSError:
            if if_exists == "keep" and target.exists():  # lost a race to a writer of the same thing
                shutil.rmtree(tmp, ignore_errors=True)
                return
            raise
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
