"""`r2 convert` refuses bad input files with one line (exit 2), never unpickling code, and
never writes weights holding NaN or infinity."""

from __future__ import annotations

import io
import os
import zipfile

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from r2.cli import app
from r2.errors import UsageError
from r2.train.convert import read_state_dict

MARKER = "r2-convert-test-pwned"


class _Exploit:  # unpickling this would run code (create a marker file)
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def _run(*args) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["convert", *(str(a) for a in args)])
    return result.exit_code, result.output


def _bad_files(tmp_path) -> dict[str, tuple]:
    good = io.BytesIO()
    torch.save({"coef": torch.ones(4)}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    not_zip = tmp_path / "text.pth"
    not_zip.write_text("this is not a checkpoint\n")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    folder = tmp_path / "folder.pth"
    folder.mkdir()
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"coef": torch.ones(4)}, "x": _Exploit()}, evil)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b'\x08\x00\x00\x00\x00\x00\x00\x00{"a":1}')
    other_zip = tmp_path / "other.pth"
    with zipfile.ZipFile(other_zip, "w") as z:
        z.writestr("hello.txt", "hi")
    nan = tmp_path / "nan.safetensors"
    save_file({"coef": torch.tensor([1.0, float("nan")]), "x": torch.ones(2)}, str(nan))
    inf = tmp_path / "inf.pth"
    torch.save({"model": {"coef": torch.tensor([float("inf")])}}, inf)
    return {
        "truncated": (truncated, "truncated.pth: cannot read"),
        "not a zip": (not_zip, "text.pth: cannot read"),
        "empty": (empty, "empty.pth: cannot read"),
        "folder": (folder, "folder.pth: is a folder"),
        "pickled code": (evil, "evil.pth: cannot read as a weights-only torch checkpoint"),
        "bad safetensors": (bad_st, "bad.safetensors: cannot read as a safetensors"),
        "another zip": (other_zip, "other.pth: cannot read"),
        "nan": (nan, "nan.safetensors: weights hold NaN or infinity: coef"),
        "inf": (inf, "inf.pth: weights hold NaN or infinity: coef"),
        "missing": (tmp_path / "missing.pth", "missing.pth: checkpoint not found"),
    }


def test_bad_checkpoint_files_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, (path, needle) in _bad_files(tmp_path).items():
        with pytest.raises(UsageError) as err:
            read_state_dict(path)
        assert needle in str(err.value) and "\n" not in str(err.value), (name, str(err.value))
        code, output = _run(path, tmp_path / "out.safetensors")
        assert code == 2, (name, output)
        assert output.startswith("error: ") and output.count("\n") == 1, (name, output)
        assert needle in output, (name, output)
        assert not (tmp_path / "out.safetensors").exists()
    assert not (tmp_path / MARKER).exists()  # the pickled code never ran


def test_output_must_be_a_writable_file_path_checked_first(tmp_path, monkeypatch):
    src = tmp_path / "missing.pth"  # the output is checked before the input is read
    out_dir = tmp_path / "outdir"
    out_dir.mkdir()
    code, output = _run(src, out_dir)
    assert code == 2 and "outdir: is a folder" in output, output

    import r2.files

    def refuse(path):  # tests run as root: a read-only folder is simulated
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(r2.files.Path, "touch", lambda self, *a, **k: refuse(self))
    code, output = _run(src, tmp_path / "ro" / "x.safetensors")
    assert code == 2 and "cannot write the converted checkpoint there" in output, output
