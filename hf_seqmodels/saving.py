"""Writing a model folder safely: never into the folders being read, never over someone's folder by accident, never a
half-written folder left behind.

Every command that writes a model writes it through :func:`safe_output_folder`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path


def _resolved(path) -> Path:
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path)))).resolve()


def _overlap(out: Path, source: Path) -> str | None:
    if out == source:
        return "is"
    if source in out.parents:
        return "is inside"
    if out in source.parents:
        return "contains"
    return None


def check_output_target(out, *, inputs=(), overwrite: bool = False, flag: str = "--out") -> Path:
    """The checks of :func:`safe_output_folder`, before any work: returns ``out`` resolved (symlinks followed), or
    raises ``ValueError`` naming ``flag`` when ``out`` is, holds or lies inside one of ``inputs`` (paths that do not
    exist, such as Hub ids, are skipped), is an existing file, or is an existing non-empty folder without
    ``overwrite``."""
    if out is None or not os.fspath(out):
        raise ValueError(f"{flag} must be a folder path, got {out!r}")
    target = _resolved(out)
    for source in inputs:
        if source is None or not os.path.exists(os.fspath(source)):
            continue
        how = _overlap(target, _resolved(source))
        if how is not None:
            raise ValueError(
                f"{flag} {os.fspath(out)!r} {how} the input {os.fspath(source)!r}: write the output to a "
                "folder apart from the inputs"
            )
    if target.exists() and not target.is_dir():
        raise ValueError(f"{flag} {os.fspath(out)!r} exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        option = "--overwrite" if flag.startswith("--") else "overwrite=True"
        raise ValueError(
            f"{flag} {os.fspath(out)!r} exists and is not empty: choose a new folder, or pass {option} "
            "(the folder is replaced only once the new one is complete)"
        )
    return target


@contextlib.contextmanager
def safe_output_folder(out, *, inputs=(), overwrite: bool = False, flag: str = "--out"):
    """Context manager giving a fresh temporary folder to write ``out`` into; the folder becomes ``out`` only when the
    block finishes without an exception.

    Refuses (``ValueError`` naming ``flag``) an ``out`` that is, holds or lies inside one of ``inputs`` (after
    resolving symlinks), an existing file, or an existing non-empty folder unless ``overwrite``. The temporary folder
    is created next to ``out`` (same file system, so the final move is a rename); missing parent folders are created.
    On success it is moved into place; an existing ``out`` (with ``overwrite``) is replaced only then. On any exception
    (Ctrl-C included) the temporary folder and any parent folders created for it are removed and ``out`` is left as it
    was.

    Yields the temporary folder as a :class:`~pathlib.Path`.
    """
    target = check_output_target(out, inputs=inputs, overwrite=overwrite, flag=flag)
    created = []
    parent = target.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    for folder in reversed(created):
        folder.mkdir()
    tag = uuid.uuid4().hex[:8]
    tmp = target.parent / f".{target.name}.partial-{tag}"
    tmp.mkdir()  # mode from the umask, like any new folder (mkdtemp would make it private)
    try:
        yield tmp
        _move_into_place(tmp, target, tag)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in created:  # innermost first; only if still empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _move_into_place(tmp: Path, target: Path, tag: str) -> None:
    if not target.exists():
        os.replace(tmp, target)
        return
    if not any(target.iterdir()):  # an empty folder: renaming over it is atomic
        os.replace(tmp, target)
        return
    old = target.parent / f".{target.name}.old-{tag}"
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old, target)  # put the old folder back
        raise
    shutil.rmtree(old, ignore_errors=True)
