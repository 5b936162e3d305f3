"""A damaged HDF5 object header must fail fast with a CacheError naming the file, never hang.

Before: 8 flipped bytes in `/video/frames`'s object header made `CacheWriter` (hence
`r2 extract`) block forever inside HDF5's SWMR retry loop (deaf to Ctrl-C), and so did
`FeatureCache` / `r2 train` on such a file left by a killed writer in a place the reader
cannot write. Each case runs in a subprocess with a timeout, so a regression fails the test
instead of hanging the suite.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import pytest
from test_cache import SETTINGS, query, video

from r2.cache import CacheWriter

TESTS = Path(__file__).resolve().parent
TIMEOUT_S = 60  # a hang is caught by this; the openers fail in well under a second


def _header_address(path: Path, dataset: str = "video/frames") -> int:
    with h5py.File(path, "r", locking=False) as f:
        return h5py.h5o.get_info(f[dataset].id).addr


def _damage_object_header(path: Path, addr: int) -> None:
    """Flip 8 bytes inside the object header at `addr` (its checksum then fails)."""
    with open(path, "r+b") as fh:
        fh.seek(addr + 16)
        data = fh.read(8)
        fh.seek(addr + 16)
        fh.write(bytes(b ^ 0xFF for b in data))


def _cache(path: Path, killed_writer: bool) -> Path:
    with CacheWriter(path, SETTINGS) as w:
        w.add_video(*video("a", 3))
        w.add_queries(*zip(query("1", text="a man cooks"), strict=True))
    addr = _header_address(path)
    if killed_writer:  # leave the superblock flags set, as a SIGKILLed writer does

        def child() -> None:
            writer = CacheWriter(path, SETTINGS)
            writer.add_video(*video("b", 2))
            os.kill(os.getpid(), signal.SIGKILL)

        proc = multiprocessing.get_context("fork").Process(target=child)
        proc.start()
        proc.join(30)
        assert path.read_bytes()[11] != 0
    _damage_object_header(path, addr)
    return path


def _run(code: str, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    """Run `code` in a fresh interpreter (argv[1:] = args); returns (result, seconds)."""
    prelude = f"import sys; sys.path.insert(0, {str(TESTS)!r})\n"
    began = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code), *args],
        capture_output=True, text=True, timeout=TIMEOUT_S,
    )  # fmt: skip
    return result, time.monotonic() - began


OPEN = """
    import os
    from r2.cache import CacheError, CacheWriter, FeatureCache
    from test_cache import SETTINGS
    path, opener, readonly = sys.argv[1:]
    if readonly == "1":  # as if the file and folder were not writable by this user
        os.access = lambda *a, **k: False
    try:
        if opener == "writer":
            CacheWriter(path, SETTINGS)
        else:
            FeatureCache(path).video("a")
    except CacheError as err:
        print("CacheError:", err)
        sys.exit(3)
    print("opened")
"""


@pytest.mark.parametrize(
    ("opener", "killed_writer", "readonly"),
    [("writer", False, False), ("writer", True, False), ("reader", False, False),
     ("reader", True, True)],  # the last one: SWMR-read of a crashed file in a read-only place
)  # fmt: skip
def test_damaged_object_header_fails_fast(tmp_path, opener, killed_writer, readonly):
    path = _cache(tmp_path / "damaged.h5", killed_writer)
    result, seconds = _run(OPEN, str(path), opener, "1" if readonly else "0")
    assert result.returncode == 3, result.stdout + result.stderr
    assert f"CacheError: {path}" in result.stdout and "corrupt" in result.stdout
    assert "Traceback" not in result.stderr
    print(f"{opener} failed in {seconds:.2f} s")


def test_commands_on_a_damaged_cache_exit_promptly_with_one_line(tmp_path):
    from r2.extract.tiny_clip import make_tiny_clip

    clip = make_tiny_clip(tmp_path / "clip")
    path = _cache(tmp_path / "damaged.h5", killed_writer=True)
    anno = tmp_path / "a.jsonl"
    anno.write_text(json.dumps({"qid": 1, "query": "a man cooks", "vid": "a", "duration": 5.7}))
    cli = "from r2.cli import app\napp(sys.argv[1:])\n"
    commands = {
        "extract": ["extract", "--anno", str(anno), "--out", str(path), "--clip", str(clip)],
        "train": ["train", "--cache", str(path), "--train-anno", str(anno), "--out",
                  str(tmp_path / "run"), "--device", "cpu"],
        "check": ["cache", "check", str(path)],
    }  # fmt: skip
    for name, args in commands.items():
        result, seconds = _run(cli, *args)
        assert result.returncode == 2, (name, result.stdout, result.stderr)
        assert f"error: {path}" in result.stderr, (name, result.stderr)
        assert "Traceback" not in result.stderr, name
        print(f"r2 {name}: exit 2 after {seconds:.1f} s")
    assert not list(tmp_path.glob("*.lock"))  # the killed writer's lock file was cleaned up


def test_a_failed_extraction_leaves_no_cache_lock_or_frames_folder(tmp_path):
    from r2.extract import extract
    from r2.extract.tiny_clip import make_tiny_clip

    clip = make_tiny_clip(tmp_path / "clip")
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "broken.mp4").write_bytes(b"not a video at all" * 100)
    out = tmp_path / "out" / "c.h5"
    summary = extract([tmp_path / "videos"], out, model=str(clip), workers=0)
    assert not summary.usable and len(summary.videos_skipped) == 1
    assert os.listdir(out.parent) == []  # before: an empty c.h5 and a 0-byte c.h5.lock


def test_rows_are_read_fresh_under_a_live_writer():
    """A reader opened while a writer commits (SWMR) refreshes each counted dataset after
    reading the commit record: the shape cached when the file was opened may predate it, which
    made `FeatureCache` report "the commit record claims 5 rows ... the dataset holds 4" about
    1 time in 12 under load (tests/test_import_release.py's killed-import test)."""
    from types import SimpleNamespace

    from r2.cache.index import _current_rows

    class Stale:
        shape = (4, 2)

        def __init__(self, swmr: bool):
            self.file = SimpleNamespace(swmr_mode=swmr)

        def refresh(self):
            self.shape = (5, 2)

    assert _current_rows(Stale(swmr=True)) == 5
    assert _current_rows(Stale(swmr=False)) == 4  # no writer: the file cannot change
