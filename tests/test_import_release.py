"""`r2 data import-release`: the R²-Tuning feature release into one cache + unified jsonl.

Releases are generated in the documented layout (tests/release_fixtures.py): the cache must
hold every file bit for bit with the release's settings, refuse contradicting files naming
them (never unpickling anything), resume after a SIGKILL of a real import, and agree with
the jsonl it writes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from release_fixtures import make_release
from typer.testing import CliRunner

from r2.cache import FeatureCache
from r2.cache.identity import by_name_warning, model_difference
from r2.cli import app
from r2.data import AnnotationError, ReleaseError
from r2.errors import UsageError

runner = CliRunner()
RELEASE_MODEL, RELEASE_FINGERPRINT = "openai/clip-vit-base-patch32", "release:R2-Tuning/clip_b32"


def import_release(*args, **kwargs):
    """`r2.data.release.import_release`, imported when called (the tests run on old code too)."""
    from r2.data.release import import_release as run

    return run(*args, **kwargs)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.uint16), b.view(np.uint16))


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.mark.parametrize("dataset", ["qvhighlights", "tacos"])
def test_the_cache_holds_every_file_bit_for_bit_with_the_release_settings(tmp_path, dataset):
    rel = make_release(tmp_path, dataset)
    result = import_release(rel.folder, dataset, tmp_path / "out" / f"{dataset}.h5")
    with FeatureCache(result.cache) as c:
        s = c.settings
        assert (s.model_id, s.revision, s.model_fingerprint) == (RELEASE_MODEL, None,
                                                                 RELEASE_FINGERPRINT)  # fmt: skip
        assert (s.k, s.tokens_per_frame, s.video_dim, s.text_dim, s.frame_at, s.fps) == (
            4, 50, 768, 512, "middle", 0.5)  # fmt: skip
        assert sorted(c.video_ids()) == sorted(rel.videos)  # TACoS: the files' -cam-002 ids
        for vid, feats in rel.videos.items():
            assert _same_bits(c.video(vid, verify=True), feats)
        for qid, feats in rel.queries.items():
            assert _same_bits(c.query(qid, verify=True), feats)
            assert c.query_record(qid).text == rel.texts[qid]
    for split, path in result.files.items():  # the unified jsonl: the release's rows verbatim
        source = rel.folder / (
            f"{split}.jsonl" if dataset == "tacos" else f"{dataset}_{split}.jsonl"
        )
        assert _rows(path) == _rows(source)
    check = runner.invoke(app, ["data", "check", str(result.files["train"]), "--cache",
                                str(result.cache)])  # fmt: skip
    assert check.exit_code == 0, check.output
    assert "0 errors, 0 warnings" in check.output


def test_youtube_rows_get_the_per_video_fps_and_the_cache_records_it(tmp_path):
    rel = make_release(tmp_path, "youtube")
    result = import_release(rel.folder, "youtube", tmp_path / "yt.h5", splits=rel.splits)
    anno = json.loads((rel.folder / "youtube_anno.json").read_text())
    rows = _rows(result.files["train"]) + _rows(result.files["val"])
    assert len(rows) == len(anno)
    with FeatureCache(result.cache) as c:
        for row in rows:
            entry = anno[row["vid"]]
            duration = entry["frames"] / entry["fps"]  # the original's rule
            assert row["fps"] == pytest.approx(len(entry["match"]) / duration, rel=1e-12)
            assert c.video_fps(row["vid"]) == pytest.approx(row["fps"], rel=1e-12)
            assert c.video_record(row["vid"]).n_clips == len(entry["match"])
            assert row["query"] == entry["info"][5] == c.query_record(row["qid"]).text
            assert row["domain"] in ("dog", "gymnastics")
            assert row["label"] == [[int(m > 0)] for m in entry["match"]]


class Evil:
    """Unpickling this object would create a file: it must never happen."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_contradicting_files_are_refused_by_name_and_nothing_is_unpickled(tmp_path, caplog):
    rel = make_release(tmp_path, "charades", n_videos=8)
    vids = sorted(rel.videos)
    vdir, qdir = rel.folder / "clip_b32_vid_k4", rel.folder / "clip_b32_txt_k4"
    np.save(vdir / f"{vids[0]}.npy", rel.videos[vids[0]].astype(np.float32))  # dtype
    np.save(vdir / f"{vids[1]}.npy", np.zeros((5, 4, 197, 768), np.float16))  # ViT-B/16 shape
    data = (vdir / f"{vids[2]}.npy").read_bytes()
    (vdir / f"{vids[2]}.npy").write_bytes(data[: len(data) // 2])  # truncated
    sentinel = tmp_path / "unpickled"
    np.save(qdir / "8.npy", np.array([Evil(sentinel)], dtype=object), allow_pickle=True)  # vid004
    bad = rel.videos[vids[3]].copy()
    bad[1, 0, 0, 0] = np.inf
    np.save(vdir / f"{vids[3]}.npy", bad)
    result = import_release(rel.folder, "charades", tmp_path / "out" / "ch.h5")
    assert not sentinel.exists()
    refused = {p.name: why for p, why in result.refused}
    assert "float32" in refused[f"{vids[0]}.npy"] and "float16" in refused[f"{vids[0]}.npy"]
    assert "(5, 4, 197, 768)" in refused[f"{vids[1]}.npy"]
    assert "not a readable .npy" in refused[f"{vids[2]}.npy"]
    assert "pickle" in refused["8.npy"].lower()
    assert "NaN or infinity" in refused[f"{vids[3]}.npy"]
    assert result.imported == {"video": 4, "query": len(rel.queries) - 1}
    assert any("refused 5 feature files" in x for x in result.summary_lines)
    kept = _rows(result.files["train"]) + _rows(result.files["test"])
    assert {r["vid"] for r in kept} <= set(vids[4:]) and "8" not in {str(r["qid"]) for r in kept}
    report = json.loads(result.report.read_text())
    dropped = {r["defect"]: r["count"] for r in report["repairs"] if r["action"] == "dropped"}
    assert dropped["no video features in the release"] == 8  # 4 videos x 2 queries
    assert dropped["no query features in the release"] == 1


def test_a_folder_of_other_features_stops_at_once(tmp_path):
    rel = make_release(tmp_path, "tacos", n_videos=7)
    for vid in rel.videos:  # every file has ViT-B/16's 197 tokens
        np.save(rel.folder / "clip_b32_vid_k4" / f"{vid}.npy", np.zeros((3, 4, 197, 768), "<f2"))
    with pytest.raises(ReleaseError, match=r"first 5 feature files were all refused.*197"):
        import_release(rel.folder, "tacos", tmp_path / "t.h5")


def test_annotation_errors_stop_before_any_feature_is_read(tmp_path):
    rel = make_release(tmp_path, "qvhighlights")
    path = rel.folder / "qvhighlights_val.jsonl"
    rows = _rows(path)
    rows[1]["relevant_windows"] = [[5, "x"]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(AnnotationError, match=r"qvhighlights_val.jsonl:2.*relevant_windows"):
        import_release(rel.folder, "qvhighlights", tmp_path / "q.h5")
    assert not (tmp_path / "q.h5").exists()
    rows[1]["relevant_windows"] = [[5, 9]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UsageError, match="would overwrite the release's own annotation file"):
        import_release(rel.folder, "qvhighlights", rel.folder / "q.h5")  # jsonl beside it
    out = runner.invoke(app, ["data", "import-release", str(tmp_path / "nowhere"), "-d", "tvsum"])
    assert out.exit_code == 2 and "not a feature release folder" in out.output


def test_a_disagreeing_duration_is_cached_as_t_over_fps_and_reported(tmp_path):
    rel = make_release(tmp_path, "ego4d", n_videos=4)
    path = rel.folder / "nlq_train.jsonl"
    rows = _rows(path)
    rows[0]["duration"] += 30.0  # 15 clips more than the features have
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = import_release(rel.folder, "ego4d", tmp_path / "e.h5")
    with FeatureCache(result.cache) as c:
        t = len(rel.videos[rows[0]["vid"]])
        assert c.video_record(rows[0]["vid"]).duration == t / 0.5
        assert c.video_record(rows[2]["vid"]).duration == rows[2]["duration"]
    assert "cached duration = T / fps" in "\n".join(result.summary_lines)
    assert _rows(result.files["train"])[0]["duration"] == rows[0]["duration"]  # rows unchanged


def test_a_killed_import_resumes_and_skips_what_it_committed(tmp_path):
    rel = make_release(tmp_path, "qvhighlights", n_videos=24, queries_per_video=1)
    out = tmp_path / "qv.h5"
    script = (
        "import sys, time\nimport r2.data.release as R\nopen_features = R.open_features\n"
        "def slow(*a, **k):\n    time.sleep(0.1)\n    return open_features(*a, **k)\n"
        "R.open_features = slow\n"
        f"R.import_release({str(rel.folder)!r}, 'qvhighlights', {str(out)!r})\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if out.exists():
                with FeatureCache(out) as c:
                    if len(c.video_ids()) >= 5:
                        break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    with FeatureCache(out) as c:
        done = len(c.video_ids())
    assert 5 <= done < 24 and proc.returncode == -signal.SIGKILL
    result = import_release(rel.folder, "qvhighlights", out)
    assert result.skipped["video"] == done and result.imported["video"] == 24 - done
    assert result.imported["query"] + result.skipped["query"] == 24
    with FeatureCache(out) as c:
        assert sorted(c.video_ids()) == sorted(rel.videos)
        assert all(_same_bits(c.video(v, verify=True), f) for v, f in rel.videos.items())
    check = runner.invoke(app, ["cache", "check", str(out)])
    assert check.exit_code == 0, check.output


def test_the_release_identity_matches_the_real_model_by_name_and_itself_exactly(tmp_path):
    from r2.data.release import release_settings
    from r2.data.release_anno import LAYOUTS

    ours = release_settings(LAYOUTS["tvsum"])
    real = ours.__class__(**{**ours.__dict__, "model_fingerprint": "sha256:" + "a" * 64})
    assert model_difference(ours, ours) is None and model_difference(ours, real) is None
    warning = by_name_warning(real, ours, ("cache", "checkpoint"))
    assert "checkpoint holds features imported from a published feature release" in warning
    other = ours.__class__(**{**ours.__dict__, "model_id": "openai/clip-vit-large-patch14",
                              "model_fingerprint": "sha256:" + "a" * 64})  # fmt: skip
    assert "model_id" in model_difference(ours, other)
    another = ours.__class__(**{**ours.__dict__, "model_fingerprint": "release:other/b16"})
    assert "different releases" in model_difference(ours, another)


def _vit_b32_folder(root: Path) -> Path:
    """A folder whose config and preprocessing say ViT-B/32 (weights are not read)."""
    from transformers import CLIPConfig

    from r2.extract.tiny_clip import CLIP_MEAN, CLIP_STD, make_tiny_clip

    folder = make_tiny_clip(root / "b32")
    CLIPConfig(
        text_config={"hidden_size": 512, "num_hidden_layers": 12},
        vision_config={"hidden_size": 768, "patch_size": 32, "image_size": 224},
    ).save_pretrained(folder)
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    pre.update(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
               image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))  # fmt: skip
    (folder / "preprocessor_config.json").write_text(json.dumps(pre))
    return folder


def test_clip_records_a_local_vit_b32_by_its_files_and_refuses_another(tmp_path):
    from r2.data.release import release_settings
    from r2.data.release_anno import LAYOUTS
    from r2.extract.identity import model_fingerprint
    from r2.extract.tiny_clip import make_tiny_clip

    folder = _vit_b32_folder(tmp_path)
    s = release_settings(LAYOUTS["charades"], clip=str(folder))
    assert s.model_id == str(folder.resolve()) and s.fps == 1.0
    assert s.model_fingerprint == model_fingerprint(
        lambda n: str(folder / n) if (folder / n).exists() else None
    )
    assert s.tokenizer_fingerprint.startswith("clean1:sha256:")
    tiny = make_tiny_clip(tmp_path / "tiny")
    with pytest.raises(ReleaseError, match=r"not the ViT-B/32 CLIP.*vision width 48"):
        release_settings(LAYOUTS["charades"], clip=str(tiny))


def test_cli_prints_speed_counts_and_the_written_files(tmp_path):
    rel = make_release(tmp_path, "tvsum")
    args = ["data", "import-release", str(rel.folder), "--dataset", "TVSum", "--out",
            str(tmp_path / "c" / "tvsum.h5"), "--splits", str(rel.splits)]  # fmt: skip
    out = runner.invoke(app, args)
    assert out.exit_code == 0, out.output
    assert "imported 8 videos and 8 queries" in out.output and "files/s" in out.output
    assert "MiB/s" in out.output and f"{tmp_path / 'c' / 'tvsum_val.jsonl'}" in out.output
    again = runner.invoke(app, args)
    assert "already there: 8 videos, 8 queries" in again.output
    rows = _rows(tmp_path / "c" / "tvsum_train.jsonl")
    assert {r["domain"] for r in rows} == {"BK", "VT"}
    assert all(r["duration"] == 2 * len(r["label"]) for r in rows)  # no length: T clips of 2 s


def test_checkpoints_of_release_features_accept_the_real_model_by_name_only(tmp_path, caplog):
    from r2.data.release import release_settings
    from r2.data.release_anno import LAYOUTS
    from r2.train.checkpoint import CheckpointMismatchError, build_meta, check_cache_compatible
    from r2.train.config import TVSUM

    ours = release_settings(LAYOUTS["tvsum"])
    meta = build_meta(TVSUM.model_config(), TVSUM, ours)
    assert check_cache_compatible(meta, ours) == []  # the same release: no warning
    real = {"model_fingerprint": "sha256:" + "b" * 64, "tokenizer_fingerprint": "clean1:x"}
    extracted = ours.__class__(**{**ours.__dict__, **real})
    (warning,) = check_cache_compatible(meta, extracted)
    assert "published feature release" in warning and "compared by name" in warning
    elsewhere = ours.__class__(**{**extracted.__dict__, "model_id": "/models/other-clip"})
    with pytest.raises(CheckpointMismatchError, match="model_id"):
        check_cache_compatible(meta, elsewhere)
