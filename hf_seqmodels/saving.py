"""Writing a model folder without losing anything: the rule every command that writes a model follows.

A command never writes into one of its input folders, never replaces an existing folder unless told to
(``--overwrite``), and writes into a temporary folder beside the destination that is moved into place only once
everything succeeded: an interrupted or failed run leaves the destination as it was and no half-written folder.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_output_folder_is_safe(out: str | os.PathLike, *, inputs=(), overwrite: bool = False,
                                flag: str = "--out") -> None:
    """Raise ``ValueError`` (naming ``flag``) if writing a model to ``out`` would touch an input (an input folder and
    ``out`` the same or one inside the other, an input file inside ``out``; symlinks resolved) or replace an existing
    non-empty folder without ``overwrite``.
    Inputs that are not local paths (Hub ids) are ignored. Nothing is created."""
    target = Path(out).expanduser().resolve()
    for source in inputs:
        if source is None or not os.path.exists(source):
            continue
        src = Path(source).expanduser().resolve()
        # a folder input: neither inside the other; a file input (a text): not inside the output folder
        if _within(src, target) or (src.is_dir() and _within(target, src)):
            raise ValueError(f"{flag} {os.fspath(out)!r} would write into the input {os.fspath(source)!r}: "
                             "choose another output folder (the input is never overwritten)")
    if target.exists():
        if not target.is_dir():
            raise ValueError(f"{flag} {os.fspath(out)!r} exists and is not a folder")
        if any(target.iterdir()) and not overwrite:
            what = "a saved model" if (target / "config.json").is_file() else "files"
            raise ValueError(f"{flag} {os.fspath(out)!r} already holds {what}: choose a new folder, or pass "
                             "--overwrite to replace it (it is replaced only once the new model is complete)")


@contextlib.contextmanager
def safe_output_folder(out: str | os.PathLike, *, inputs=(), overwrite: bool = False, flag: str = "--out"):
    """Yield a temporary folder beside ``out`` to write the model into; on success it becomes ``out`` (an existing
    ``out``, allowed by ``overwrite``, is replaced only then); on any exception it is removed and ``out`` is left
    untouched. The checks of :func:`check_output_folder_is_safe` run first."""
    check_output_folder_is_safe(out, inputs=inputs, overwrite=overwrite, flag=flag)
    target = Path(out).expanduser().resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield str(tmp)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / target.name)  # kept until the new folder is in place
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(old / target.name, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
