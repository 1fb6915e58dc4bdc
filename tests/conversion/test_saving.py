"""safe_output_folder: refuses to write into the inputs or over a folder by accident, and never leaves a half-written
folder (the temporary one is removed and the old folder kept when the writer fails or is interrupted)."""

from __future__ import annotations

import os

import pytest

from hf_seqmodels.saving import safe_output_folder


def write(folder, name="model.safetensors", text="new"):
    (folder / name).write_text(text)


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_writes_a_new_folder_next_to_itself(tmp_path):
    out = tmp_path / "a" / "b" / "out"  # missing parents are created
    with safe_output_folder(out, flag="--out") as tmp:
        assert tmp.parent == out.parent and tmp.is_dir() and not out.exists()
        assert oct(tmp.stat().st_mode & 0o777) == oct(0o777 & ~_umask())  # an ordinary folder, not a private one
        write(tmp)
    assert listing(out) == ["model.safetensors"]
    assert listing(out.parent) == ["out"]  # no temporary folder left


def test_an_existing_empty_folder_is_filled(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with safe_output_folder(out) as tmp:
        write(tmp)
    assert listing(out) == ["model.safetensors"] and listing(tmp_path) == ["out"]


@pytest.mark.parametrize("where", ["same", "inside", "contains", "symlink"])
def test_refuses_to_write_into_an_input(tmp_path, where):
    src = tmp_path / "src"
    src.mkdir()
    write(src, text="input")
    out = {"same": src, "inside": src / "sub" / "out", "contains": tmp_path, "symlink": tmp_path / "link"}[where]
    if where == "symlink":
        os.symlink(src, out)
    with pytest.raises(ValueError, match="DST") as err:
        with safe_output_folder(out, inputs=("not/a/local/path", src), overwrite=True, flag="DST"):
            pytest.fail("the block must not run")
    assert "input" in str(err.value)
    assert listing(src) == ["model.safetensors"] and (src / "model.safetensors").read_text() == "input"
    assert not (src / "sub").exists()


def test_an_input_file_inside_out_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    write(out, "model.gguf", "input")
    with pytest.raises(ValueError, match="--out .* contains the input"):
        with safe_output_folder(out, inputs=(out / "model.gguf",), overwrite=True):
            pass


def test_refuses_a_non_empty_folder_or_a_file_without_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    write(out, text="old")
    with pytest.raises(ValueError, match="--save-to .*not empty"):
        with safe_output_folder(out, flag="--save-to"):
            pass
    with pytest.raises(ValueError, match="--out .*not a folder"):
        with safe_output_folder(out / "model.safetensors", overwrite=True):
            pass
    with pytest.raises(ValueError, match="--out"):
        with safe_output_folder(""):
            pass
    assert listing(out) == ["model.safetensors"] and listing(tmp_path) == ["out"]


def test_overwrite_replaces_the_old_folder_only_on_success(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    write(out, "old.txt", "old")
    with safe_output_folder(out, overwrite=True) as tmp:
        write(tmp)
        assert listing(out) == ["old.txt"]  # still the old folder while writing
    assert listing(out) == ["model.safetensors"] and listing(tmp_path) == ["out"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_interrupted_write_leaves_no_half_folder_and_the_old_one_intact(tmp_path, error):
    out = tmp_path / "out"
    out.mkdir()
    write(out, "old.txt", "old")
    with pytest.raises(error):
        with safe_output_folder(out, overwrite=True) as tmp:
            write(tmp, "model-00001.safetensors", "half")
            raise error("stopped halfway")
    assert listing(out) == ["old.txt"] and (out / "old.txt").read_text() == "old"
    assert listing(tmp_path) == ["out"]


def test_an_interrupted_new_folder_leaves_nothing(tmp_path):
    out = tmp_path / "new" / "out"
    with pytest.raises(KeyboardInterrupt):
        with safe_output_folder(out) as tmp:
            write(tmp)
            raise KeyboardInterrupt
    assert listing(tmp_path) == []  # the parent created for it is gone too


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_failed_final_move_puts_the_old_folder_back(tmp_path, monkeypatch):
    import hf_seqmodels.saving as saving

    out = tmp_path / "out"
    out.mkdir()
    write(out, "old.txt", "old")
    real = os.replace

    def replace(src, dst):
        if ".partial-" in os.fspath(src):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(saving.os, "replace", replace)
    with pytest.raises(OSError, match="No space"):
        with safe_output_folder(out, overwrite=True) as tmp:
            write(tmp)
    assert listing(out) == ["old.txt"] and listing(tmp_path) == ["out"]
