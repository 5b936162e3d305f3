"""`r2 extract` when things go wrong: a full disk, outputs that can't be written, damaged
media that raises nothing, and Ctrl-C. Each case: one line, the documented exit code, no
traceback, and a cache that is valid (everything committed before is intact)."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
from videogen import write_video

from r2.cache import FeatureCache
from r2.extract import extract
from r2.extract.tiny_clip import make_tiny_clip

ROOT = Path(__file__).resolve().parents[1]
CORRUPT = ("decord_corrupted.mp4", "libwebm_invalid_fixed_lacing_bad_lace_size.mkv")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("failures")
    videos = root / "videos"
    videos.mkdir()
    for i in range(8):
        write_video(videos / f"v{i}.mp4", 100, fps=10, keyint=10, size=(64, 48))  # 10 s
    return videos, str(make_tiny_clip(root / "tiny"))


def _r2(*args: str, env: dict | None = None, preexec=None, timeout: float = 300):
    return subprocess.run([sys.executable, "-m", "r2", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=ROOT,
                          preexec_fn=preexec)  # fmt: skip


def _one_line_error(result, code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr and "Fatal Python error" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


def _valid(cache: Path, plain_first: bool = True) -> int:
    """The cache opens (r2 and plain h5py) and every video reads; returns how many.

    `plain_first=False`: h5py only after r2 touched the file (its documented recovery).
    """
    if plain_first:
        with h5py.File(cache, "r"):  # no "open for write" flags left behind
            pass
    with FeatureCache(cache) as c:
        for vid in c.video_ids():
            c.video(vid, verify=True)
        n = len(c.video_ids())
    with h5py.File(cache, "r"):
        pass
    assert not cache.with_name(cache.name + ".lock").exists()
    assert not cache.with_name(cache.name + ".frames").exists()
    return n


@contextlib.contextmanager
def _tmpfs(path: Path, options: str):
    """A tmpfs at `path` (needs root); skips the test where mounting is not allowed."""
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_disk_is_one_line_and_exit_1(setup, tmp_path):
    videos, tiny = setup
    with _tmpfs(tmp_path / "disk", "size=5m") as disk:
        out = disk / "c.h5"
        result = _r2("extract", str(videos), "--out", str(out), "--clip", tiny, "--fps", "10",
                     "--workers", "1")  # fmt: skip
        line = _one_line_error(result, 1)
        assert str(out) in line and "disk full" in line and "intact" in line
        assert 0 < _valid(out) < 8  # what fitted is there, whole


def _file_size_limit(limit: int):
    def apply() -> None:  # writes past `limit` bytes fail with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_write_failing_inside_hdf5_leaves_a_valid_cache_and_no_crash(setup, tmp_path):
    """The disk fills up (here: a file size limit) in the middle of an HDF5 write, past the
    free-space check: r2 used to end with a segfault (exit 139) or h5py tracebacks."""
    videos, tiny = setup
    out = tmp_path / "c.h5"
    result = _r2("extract", str(videos), "--out", str(out), "--clip", tiny, "--fps", "10",
                 "--workers", "1", preexec=_file_size_limit(2 * 2**20))  # fmt: skip
    line = _one_line_error(result, 1)
    assert "write failed: File too large" in line and "intact" in line
    # The size limit also forbids the run's own recovery (extending the file to the space
    # HDF5 had allocated): the next r2 command does it, as after a kill.
    assert 0 < _valid(out, plain_first=False) < 8


def test_unwritable_outputs_fail_before_any_work(setup, tmp_path):
    videos, tiny = setup
    (tmp_path / "a_folder.h5").mkdir()
    result = _r2("extract", str(videos), "--out", str(tmp_path / "a_folder.h5"), "--clip", tiny)
    assert "is a folder" in _one_line_error(result, 2)
    anno_dir = tmp_path / "anno"
    anno_dir.mkdir()
    result = _r2("extract", str(videos), "--anno", str(anno_dir), "--out",
                 str(tmp_path / "c.h5"), "--clip", tiny)  # fmt: skip
    assert str(anno_dir) in _one_line_error(result, 2)
    if os.geteuid() == 0:
        context = _tmpfs(tmp_path / "ro", "ro,size=1m")
    else:
        (tmp_path / "ro").mkdir(mode=0o555)
        context = contextlib.nullcontext(tmp_path / "ro")
    with context as ro:
        result = _r2("extract", str(videos), "--out", str(ro / "c.h5"), "--clip", tiny)
        line = _one_line_error(result, 2)
        assert str(ro / "c.h5") in line and "cannot write" in line
        assert "loaded CLIP" not in result.stderr  # found before the model was loaded
    assert not (tmp_path / "c.h5").exists()


def _ebml(buf: bytes, pos: int) -> tuple[int, int, int]:
    """(element id, its size, where its body starts) of the EBML element at `pos`."""
    n = 1
    while not buf[pos] & (0x80 >> (n - 1)):
        n += 1
    eid, pos = int.from_bytes(buf[pos : pos + n], "big"), pos + n
    m = 1
    while not buf[pos] & (0x80 >> (m - 1)):
        m += 1
    size = int.from_bytes(buf[pos : pos + m], "big") & ((1 << (7 * m)) - 1)
    return eid, size, pos + m


def _overrun(data: bytes) -> bytes:
    """A middle cluster's last-but-one block made 10 bytes longer than what is left of it."""
    buf = bytearray(data)
    segment = buf.index(b"\x18\x53\x80\x67")
    _, _, pos = _ebml(buf, segment)
    clusters = []
    while pos < len(buf):
        eid, size, body = _ebml(buf, pos)
        if eid == 0x1F43B675:
            clusters.append((body, body + size))
        pos = body + size
    start, end = clusters[len(clusters) // 2]
    blocks, pos = [], start
    while pos < end:
        eid, size, body = _ebml(buf, pos)
        if eid == 0xA3:
            blocks.append((pos, body))
        pos = body + size
    at, body = blocks[-2]
    width = body - at - 1  # bytes of the size field (the SimpleBlock id is one byte)
    new = end - body + 10
    assert new < (1 << (7 * width)) - 1
    buf[at + 1 : body] = (new | (1 << (7 * width))).to_bytes(width, "big")
    return bytes(buf)


def _damaged(folder: Path) -> dict[str, Path]:
    """Damage that raises nothing: a Matroska file cut short, a block overrunning its
    cluster, a WebM cut short (no error logged at all: caught by its declared duration)."""
    folder.mkdir()
    full = write_video(folder / "full.mkv", 200, fps=10, keyint=10, size=(96, 64),
                       content="texture")  # fmt: skip
    data = full.read_bytes()
    (folder / "cut.mkv").write_bytes(data[: len(data) // 2])
    (folder / "overrun.mkv").write_bytes(_overrun(data))
    webm = write_video(folder / "full.webm", 200, fps=10, keyint=10, size=(96, 64),
                       codec="libvpx", content="texture")  # fmt: skip
    (folder / "cutweb.webm").write_bytes(webm.read_bytes()[: webm.stat().st_size // 2])
    full.unlink()
    webm.unlink()
    return {p.name: p for p in folder.iterdir()}


def test_damaged_media_is_skipped_or_kept_as_partial_never_cached_short(setup, tmp_path, testdata):
    _, tiny = setup
    files = _damaged(tmp_path / "damaged")
    for name in CORRUPT:
        os.symlink(testdata / "videos" / "corrupt" / name, files["cut.mkv"].parent / name)
    folder = files["cut.mkv"].parent
    strict = extract([folder], tmp_path / "s.h5", model=tiny, workers=1)
    reasons = {Path(path).name: reason for path, reason in strict.videos_skipped}
    assert sorted(reasons) == sorted([*files, *CORRUPT]) and not strict.videos_done
    for name in ("cut.mkv", "overrun.mkv", "cutweb.webm"):
        assert "damaged" in reasons[name] and "--allow-partial" in reasons[name], reasons[name]
    assert "--allow-partial" in reasons["decord_corrupted.mp4"]  # fails midway: it helps
    assert "--allow-partial" not in reasons[CORRUPT[1]]  # nothing decodes: it would not
    kept = extract([folder], tmp_path / "p.h5", model=tiny, workers=1, allow_partial=True)
    assert sorted(kept.videos_partial) == sorted(kept.videos_done)
    assert sorted(kept.videos_done) == ["cut", "cutweb", "decord_corrupted", "overrun"]
    with FeatureCache(tmp_path / "p.h5") as cache:
        for vid in kept.videos_done:
            record = cache.video_record(vid)
            assert record.partial and record.n_clips >= 1
            assert record.duration <= record.n_clips * 2 + 2  # the partial length, not 20 s
        assert cache.video_record("overrun").duration < 20 - 2


SLOW_DECODE = """
import os, time
import r2.extract.decode as decode
_original = decode.decode_video
def decode_video(path, *args, **kwargs):  # stands in for a very long video
    if os.path.basename(str(path)).startswith("slow"):
        time.sleep(3600)
    return _original(path, *args, **kwargs)
decode.decode_video = decode_video
"""


def _wait_for_a_commit(proc: subprocess.Popen, out: Path) -> None:
    """Until the running extraction has committed a video (read while it writes)."""
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, "r2 extract ended early"
        assert time.monotonic() < deadline, "no video committed in 120 s"
        with contextlib.suppress(Exception), FeatureCache(out) as cache:
            if cache.video_ids():
                return
        time.sleep(0.2)


def _interrupt(setup, tmp_path: Path, group: bool) -> None:
    videos, tiny = setup
    hooks = tmp_path / "hooks"
    hooks.mkdir(parents=True)
    (hooks / "sitecustomize.py").write_text(SLOW_DECODE)
    folder = tmp_path / "videos"
    folder.mkdir()
    for i, src in enumerate(sorted(videos.iterdir())):
        os.symlink(src, folder / (f"slow{i}.mp4" if i == 5 else src.name))
    out = tmp_path / "c.h5"
    cmd = [sys.executable, "-m", "r2", "extract", str(folder), "--out", str(out), "--clip",
           tiny, "--fps", "10", "--workers", "2", "--batch-frames", "2"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{hooks}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
                            start_new_session=True)  # fmt: skip
    try:
        _wait_for_a_commit(proc, out)  # videos are being encoded; the slow one blocks a worker
        began = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT) if group else proc.send_signal(signal.SIGINT)
        try:
            rest = proc.communicate(timeout=30)[1]  # r2 0.2 never exited here
        except subprocess.TimeoutExpired:
            pytest.fail("r2 extract did not stop within 30 s of Ctrl-C")
        code = proc.returncode
        seconds = time.monotonic() - began
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == 130 and "interrupted" in rest and "Traceback" not in rest, rest[-3000:]
    assert seconds < 15, f"Ctrl-C took {seconds:.1f} s"
    deadline = time.monotonic() + 10
    while subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "decode workers outlived the interrupted run"
        time.sleep(0.1)
    assert 0 < _valid(out) < 8


def test_ctrl_c_stops_promptly_workers_included_and_leaves_a_valid_cache(setup, tmp_path):
    _interrupt(setup, tmp_path / "main", group=False)  # SIGINT to the r2 process only
    _interrupt(setup, tmp_path / "group", group=True)  # as a terminal's Ctrl-C
