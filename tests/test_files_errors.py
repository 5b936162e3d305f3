"""r2.errors (exit codes, one-line errors) and r2.files (atomic writes, umask, writability
checks, stale temporary files).

The tests run as root, for whom chmod does not make a folder read-only: `ensure_writable` is
tested on a read-only tmpfs mounted in a private mount namespace (`unshare -m`; skipped where
not permitted) and, everywhere, with file creation made to raise EROFS.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import typer

import r2.files
from r2.errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    RunFailureError,
    UsageError,
    cli_errors,
    exit_code_for,
    os_error_message,
)
from r2.files import (
    TEMP_MARK,
    atomic_path,
    atomic_write,
    ensure_writable,
    ensure_writable_dir,
    remove_stale_temps,
    temp_path,
    write_text_atomic,
)

# ---------------------------------------------------------------- r2.errors


def test_exit_codes_follow_the_convention():
    assert exit_code_for(UsageError("x")) == EXIT_USAGE == 2
    assert exit_code_for(RunFailureError("x")) == EXIT_FAILURE == 1
    assert exit_code_for(KeyboardInterrupt()) == EXIT_INTERRUPTED == 130
    assert exit_code_for(FileNotFoundError(errno.ENOENT, "No such file", "a")) == 2
    assert exit_code_for(IsADirectoryError(errno.EISDIR, "Is a directory", "a")) == 2
    assert exit_code_for(OSError(errno.ENOSPC, "No space left on device", "a")) == 1
    assert exit_code_for(PermissionError(errno.EACCES, "Permission denied", "a")) == 1
    assert os_error_message(OSError(errno.ENOSPC, "No space left on device", "/x")) == (
        "/x: No space left on device")  # fmt: skip


def _exit(raised: BaseException, capsys, **kwargs) -> tuple[int, str]:
    with pytest.raises(typer.Exit) as info, cli_errors(**kwargs):
        raise raised
    return info.value.exit_code, capsys.readouterr().err


def test_cli_errors_prints_one_line_and_the_exit_code(capsys):
    assert _exit(UsageError("bad --x"), capsys) == (2, "error: bad --x\n")
    assert _exit(RunFailureError("it broke"), capsys) == (1, "error: it broke\n")
    assert _exit(OSError(errno.ENOSPC, "No space left on device", "/o/f"), capsys) == (
        1, "error: /o/f: No space left on device\n")  # fmt: skip
    assert _exit(KeyboardInterrupt(), capsys, interrupted_hint="resume with --resume") == (
        130, "interrupted; resume with --resume\n")  # fmt: skip
    assert _exit(KeyError("k"), capsys, usage=(KeyError,)) == (2, "error: 'k'\n")


def test_cli_errors_keeps_the_traceback_of_bugs():
    with pytest.raises(ZeroDivisionError), cli_errors():
        1 / 0  # noqa: B018
    with pytest.raises(ValueError), cli_errors():  # no catch-all for ValueError
        raise ValueError("a bug")


# ---------------------------------------------------------------- r2.files


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "out.json"
    write_text_atomic(target, "old\n")
    with pytest.raises(RuntimeError), atomic_write(target) as fh:
        fh.write("half of the new")
        raise RuntimeError("killed half-way")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # no temporary left
    with atomic_write(target, "wb") as fh:
        fh.write(b"new\n")
    assert target.read_bytes() == b"new\n"
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_text("other")
        raise KeyboardInterrupt
    assert target.read_bytes() == b"new\n" and len(list(tmp_path.iterdir())) == 1


def test_temporary_files_sit_beside_the_target(tmp_path):
    tmp = temp_path(tmp_path / "a.safetensors")
    assert tmp.parent == tmp_path and tmp.name.startswith(".a.safetensors" + TEMP_MARK)
    assert f"{TEMP_MARK}{os.getpid()}-" in tmp.name


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077, 0o002])
def test_files_get_the_umask_permissions(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = write_text_atomic(tmp_path / "sub" / "f.txt", "x")
        assert r2.files.current_umask() == umask
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_stale_temporary_files_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead_pid = int(dead.stdout)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {
            f".best.safetensors{TEMP_MARK}{dead_pid}-00ff": False,  # dead writer: removed
            f".log.jsonl{TEMP_MARK}{alive.pid}-0a0b": True,  # another live process: kept
            f".mine{TEMP_MARK}{os.getpid()}-1234": True,  # this process: kept
            f".odd{TEMP_MARK}notapid-1": True,  # not our pattern: kept
            "best.safetensors": True,
        }
        for name in names:
            (tmp_path / name).write_text("x")
        assert remove_stale_temps(tmp_path) == 1
        assert {p.name for p in tmp_path.iterdir()} == {n for n, keep in names.items() if keep}
        assert remove_stale_temps(tmp_path / "missing") == 0
    finally:
        alive.kill()
        alive.wait()


def test_a_kill_during_a_write_leaves_the_old_file_and_debris_that_is_cleaned(tmp_path):
    target = tmp_path / "state.bin"
    target.write_bytes(b"old")
    child = textwrap.dedent(f"""
        import os, signal
        from r2.files import atomic_write
        with atomic_write({str(target)!r}, "wb") as fh:
            fh.write(b"new" * 1000)
            fh.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", child], timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert target.read_bytes() == b"old"
    assert len(list(tmp_path.glob(f".state.bin{TEMP_MARK}*"))) == 1
    assert remove_stale_temps(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["state.bin"]


def test_ensure_writable_names_folders_and_files_mixed_up(tmp_path):
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="dir: is a folder; the metrics file must be a file"):
        ensure_writable(tmp_path / "dir", "metrics file")
    with pytest.raises(UsageError, match="file: is a file; the run folder must be a folder"):
        ensure_writable_dir(tmp_path / "file", "run folder")
    with pytest.raises(UsageError, match="cannot write the output there"):
        ensure_writable(tmp_path / "file" / "below.json")  # a file used as a folder
    assert ensure_writable_dir(tmp_path / "new" / "run") == tmp_path / "new" / "run"
    assert (tmp_path / "new" / "run").is_dir() and not list((tmp_path / "new" / "run").iterdir())


def test_ensure_writable_refuses_a_read_only_folder_simulated(tmp_path, monkeypatch):
    def refuse(self, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(r2.files.Path, "touch", refuse)
    with pytest.raises(UsageError, match=r"cannot write the run folder there \(Read-only file"):
        ensure_writable_dir(tmp_path / "run", "run folder")


def test_ensure_writable_refuses_a_read_only_mount(tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) to mount a read-only tmpfs")
    ro = tmp_path / "ro"
    ro.mkdir()
    check = ("from r2.files import ensure_writable_dir\n"
             f"ensure_writable_dir({str(ro / 'run')!r}, 'run folder')")  # fmt: skip
    script = 'mount -t tmpfs -o ro,size=64k tmpfs "$RO" || exit 99; exec "$@"'
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", sys.executable, "-c", check],
                          env={**os.environ, "RO": str(ro)}, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    if proc.returncode == 99 or "unshare:" in proc.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 1
    assert "UsageError" in proc.stderr and "Read-only file system" in proc.stderr
