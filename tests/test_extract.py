"""extract(): real files, skips with reasons, incremental runs, mismatches, CLI exit codes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from r2.cache import CacheMismatchError, FeatureCache, read_settings
from r2.extract import ExtractSummary, InputError, default_out, extract
from r2.extract.cli import extract_command
from r2.extract.decode import decode_video
from r2.extract.encode import ClipEncoder
from r2.extract.pipeline import SkipError
from r2.extract.tiny_clip import make_tiny_clip

BAD = {"corrupt", "no_video"}  # testdata folders whose every file must be skipped


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return str(make_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny"))


@pytest.fixture(scope="module")
def encoder(tiny) -> ClipEncoder:
    return ClipEncoder.load(tiny, device="cpu")


@pytest.fixture(scope="module")
def videos(testdata) -> Path:
    return testdata / "videos"


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory, videos, tiny) -> tuple[Path, ExtractSummary]:
    """One run over the whole shared video folder (shared by the tests below)."""
    out = tmp_path_factory.mktemp("run") / "all.h5"
    return out, extract([videos], out, model=tiny, workers=1)


def _anno(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _media(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix != ".jsonl")


def test_whole_folder_caches_good_files_and_skips_bad_ones(whole_run, videos):
    out, summary = whole_run
    files = _media(videos)
    bad = {str(p) for p in files if p.parent.name in BAD}
    assert {path for path, _ in summary.videos_skipped} == bad
    for path, reason in summary.videos_skipped:
        assert "\n" not in reason and path in reason and len(reason) > len(path) + 5
    good = {p.stem for p in files if p.parent.name not in BAD}
    assert set(summary.videos_done) == good and not summary.videos_cached
    assert summary.usable and summary.frames > 0
    report = summary.report()
    assert f"{len(good)} extracted, 0 already cached, {len(bad)} skipped" in report
    with FeatureCache(out) as cache:
        assert set(cache.video_ids()) == good
        assert sum(cache.video_record(v).n_clips for v in good) == summary.frames


def test_cached_features_are_the_encoders(whole_run, videos, encoder):
    out, _ = whole_run
    path = videos / "decodable" / "univtg_examples_charades.mp4"
    decoded = decode_video(path, 0.5, 32)
    with FeatureCache(out) as cache:
        record = cache.video_record(path.stem)
        assert record.n_clips == len(decoded.frames) == 15
        assert record.source == str(path) and record.size == path.stat().st_size
        assert not record.partial and abs(record.duration - decoded.duration) < 1e-9
        assert np.array_equal(cache.video(path.stem), encoder.encode_frames(decoded.frames))
        s = cache.settings
    assert (s.fps, s.frame_at, s.k, s.image_size, s.dtype) == (0.5, "middle", 4, 32, "fp32")


def test_incremental_runs_skip_current_items_and_redo_changed_ones(tmp_path, videos, tiny):
    src = tmp_path / "v"
    src.mkdir()
    for name in ("mmaction2_test.avi", "mmaction2_demo.mp4"):
        shutil.copy(videos / "decodable" / name, src / name)
    anno = _anno(tmp_path / "a.jsonl", [{"qid": 1, "query": "a man"}, {"qid": "x", "query": "b"}])
    out = tmp_path / "c.h5"
    first = extract([src], out, [anno], model=tiny, workers=0)
    assert sorted(first.videos_done) == ["mmaction2_demo", "mmaction2_test"]
    assert first.queries_done == 2
    again = extract([src], out, [anno], model=tiny, workers=0)
    assert not again.videos_done and sorted(again.videos_cached) == sorted(first.videos_done)
    assert again.queries_done == 0 and again.queries_cached == 2 and again.usable
    os.utime(src / "mmaction2_test.avi", (1e9, 1e9))  # a changed source is re-extracted
    rows = [{"qid": 1, "query": "a woman"}, {"qid": "x", "query": "b"}, {"qid": 3, "query": "c"}]
    _anno(anno, rows)
    third = extract([src], out, [anno], model=tiny, workers=0)
    assert third.videos_done == ["mmaction2_test"] and third.videos_cached == ["mmaction2_demo"]
    assert (third.queries_done, third.queries_cached) == (2, 1)
    with FeatureCache(out) as cache:
        assert sorted(cache.video_ids()) == ["mmaction2_demo", "mmaction2_test"]
        assert cache.video_record("mmaction2_test").mtime == 1e9
        assert sorted(cache.query_ids()) == ["1", "3", "x"]
        assert cache.query_record("1").text == "a woman"


def test_queries_are_encoded_like_the_encoder(tmp_path, tiny, encoder):
    long = " ".join(["word"] * 100)
    anno = _anno(tmp_path / "a.jsonl", [{"qid": 7, "query": "the cat &amp; dog"},
                                         {"qid": 8, "query": long, "vid": "v"}])  # fmt: skip
    summary = extract([], tmp_path / "q.h5", anno, model=tiny)  # one path is fine too
    assert summary.queries_done == 2 and summary.queries_truncated == ["8"] and summary.usable
    expected = encoder.encode_texts(["the cat &amp; dog", long])
    with FeatureCache(tmp_path / "q.h5") as cache:
        assert np.array_equal(cache.query("7"), expected[0].features)
        assert np.array_equal(cache.query("8"), expected[1].features)
        record = cache.query_record("8")
        assert record.truncated and record.n_tokens == 77 and record.text == long


def test_settings_mismatch_changes_nothing(tmp_path, videos, tiny):
    src = videos / "decodable" / "mmaction2_test.avi"
    out = tmp_path / "c.h5"
    extract([src], out, model=tiny, workers=0)
    before = (out.read_bytes(), out.stat().st_mtime_ns)
    with pytest.raises(CacheMismatchError) as err:
        extract([src], out, model=tiny, fps=1.0, frame_at="start", k=3, workers=0)
    message = str(err.value)
    assert "fps: 0.5 vs 1.0" in message and "frame_at" in message and "k: 4 vs 3" in message
    assert (out.read_bytes(), out.stat().st_mtime_ns) == before
    assert read_settings(out).fps == 0.5


def test_duplicate_ids_and_bad_annotations_fail_before_any_work(tmp_path, videos, tiny):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        shutil.copy(videos / "decodable" / "mmaction2_test.avi", folder / "clip.avi")
    out = tmp_path / "c.h5"
    with pytest.raises(InputError, match="clip") as err:
        extract([a, b], out, model=tiny)
    assert str(a / "clip.avi") in str(err.value) and str(b / "clip.avi") in str(err.value)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"qid": 1, "query": "ok"}\n\n{"qid": 2}\n')
    with pytest.raises(InputError, match=rf"{bad}:3: field 'query'"):
        extract([a], out, [bad], model=tiny)
    bad.write_text('{"qid": 1, "query": "ok"}\n{"qid": 1, "query": "other"}\n')
    with pytest.raises(InputError, match=rf"{bad}:2: field 'qid'"):
        extract([a], out, [bad], model=tiny)
    bad.write_text("{not json\n")
    with pytest.raises(InputError, match=rf"{bad}:1: invalid JSON"):
        extract([a], out, [bad], model=tiny)
    with pytest.raises(InputError, match="no such file"):
        extract([tmp_path / "missing.mp4"], out, model=tiny)
    assert not out.exists()


def test_strict_stops_and_allow_partial_keeps_the_decodable_part(tmp_path, videos, tiny):
    broken = videos / "corrupt" / "decord_corrupted.mp4"
    with pytest.raises(SkipError, match="decord_corrupted"):
        extract([broken], tmp_path / "s.h5", model=tiny, strict=True, workers=0)
    summary = extract([broken], tmp_path / "p.h5", model=tiny, allow_partial=True, workers=0)
    assert summary.videos_done == summary.videos_partial == ["decord_corrupted"]
    with FeatureCache(tmp_path / "p.h5") as cache:
        record = cache.video_record("decord_corrupted")
        assert record.partial and record.n_clips >= 1 and record.duration < 5.0


def test_default_output_path():
    assert default_out(["some/dir/video.mp4"], []) == Path("cache/video.h5")
    assert default_out([], ["anno/val.jsonl"]) == Path("cache/val.h5")


def _cli(*args: str):
    app = typer.Typer()
    app.command()(extract_command)
    return CliRunner().invoke(app, list(args))


def test_cli_exit_codes(tmp_path, videos, tiny):
    out = str(tmp_path / "c.h5")
    bad = _cli(str(videos / "corrupt"), str(videos / "no_video"), "--out", out, "--model", tiny)
    assert bad.exit_code == 1 and "nothing usable" in bad.output
    ok = _cli(str(videos / "corrupt"), str(videos / "very_short"), "--out", out, "--model", tiny,
              "--workers", "0")  # fmt: skip
    assert ok.exit_code == 0, ok.output
    strict = _cli(str(videos / "corrupt"), "--out", out, "--model", tiny, "--strict")
    assert strict.exit_code == 2 and "--strict" in strict.output
    mismatch = _cli(str(videos / "very_short"), "--out", out, "--model", tiny, "--fps", "1")
    assert mismatch.exit_code == 2 and "fps: 0.5 vs 1.0" in mismatch.output
    missing = _cli(str(videos / "very_short"), "--out", out, "--model", str(tmp_path / "nope"))
    assert missing.exit_code == 2 and "never substitutes a random model" in missing.output
    assert _cli("--out", out).exit_code == 2  # nothing to extract
