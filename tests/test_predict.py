"""`r2 predict`: strict inputs, outputs checked before decoding, exports (JSON, WebVTT, PNG),
and batch prediction over folders (resumable, damaged files skipped and counted)."""

from __future__ import annotations

import json
import re

import pytest
from e2e_fixtures import N_CLIPS, QUERIES, make_setup
from typer.testing import CliRunner
from videogen import write_video

from r2.api import R2Predictor
from r2.cli import app

ROW_KEYS = {"qid", "query", "vid", "pred_relevant_windows", "pred_saliency_scores", "duration",
            "fps", "truncated", "timing"}  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    setup = make_setup(root)
    folder = root / "videos"
    folder.mkdir()
    (folder / "vid1.mp4").symlink_to(setup["video"])
    write_video(folder / "vid2.mp4", 14 * 10, fps=10,
                size=(64, 48), keyint=10, content="texture")  # fmt: skip
    (folder / "broken.mp4").write_bytes(b"this is not a video file at all" * 40)
    (folder / "notes.txt").write_text("ignored: not a media file")
    return {**setup, "folder": folder}


def _run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def encodes(monkeypatch):
    """Counts CLIP forward passes over frames (decoding + encoding work)."""
    calls = []
    from r2.extract.encode import ClipEncoder

    original = ClipEncoder.encode_frames

    def counted(self, frames, *args, **kwargs):
        calls.append(len(frames))
        return original(self, frames, *args, **kwargs)

    monkeypatch.setattr(ClipEncoder, "encode_frames", counted)
    return calls


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------- one video: strict inputs


@pytest.mark.parametrize("queries", [[], [""], ["a dog", "   "]])
def test_rejects_missing_empty_or_blank_queries_in_one_line(setup, queries):
    result = _run("predict", setup["video"], *queries, "-c", setup["run"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and result.output.startswith("error: ")
    assert "query" in result.output


def test_predict_many_needs_a_query(setup):
    predictor = R2Predictor.from_pretrained(setup["ckpt"], device="cpu")
    with pytest.raises(ValueError, match="at least one query"):
        predictor.predict_many(setup["video"], [])
    with pytest.raises(ValueError, match="empty or blank"):
        predictor.predict_many(setup["video"], ["ok", " \t"])


def test_reports_a_truncated_query(setup):
    long = " ".join(["word"] * 120)
    result = _run("predict", setup["video"], long, "-c", setup["run"], "--json",
                  setup["folder"].parent / "long.json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "cut to CLIP's 77-token context" in result.output
    assert json.loads((setup["folder"].parent / "long.json").read_text())[0]["truncated"]


@pytest.mark.parametrize(
    "option, name",
    [("--json", "x.json"), ("--plot", "x.png"), ("--chapters", "x.vtt"), ("--plot", "x.gif")],
)
def test_outputs_are_checked_before_decoding(setup, tmp_path, encodes, option, name):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    dest = tmp_path / name if name.endswith(".gif") else blocker / name  # under a file
    result = _run("predict", setup["video"], QUERIES[0], "-c", setup["run"], option, dest)
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and str(dest) in result.output
    assert ("unsupported plot format" if name.endswith(".gif") else "cannot write") in (
        result.output
    )
    assert encodes == []  # refused before any decoding


def test_folder_or_missing_paths_say_so_in_one_line(setup, tmp_path):
    result = _run("predict", tmp_path, QUERIES[0], "-c", setup["run"])
    assert result.exit_code == 2 and "is a folder" in result.output
    result = _run("predict", tmp_path / "nope.mp4", QUERIES[0], "-c", setup["run"])
    assert result.exit_code == 2 and "not found" in result.output
    result = _run("predict", setup["video"], QUERIES[0], "-c", setup["run"], "--clip",
                  "/nonexistent")  # fmt: skip
    assert result.exit_code == 2 and result.output == "error: /nonexistent: CLIP model folder " \
        "not found\n"  # fmt: skip
    result = _run("predict", setup["video"], QUERIES[0], "-c", setup["run"], "--device", "gpu")
    assert result.exit_code == 2 and result.output.count("\n") == 1


# ---------------------------------------------------------------- one video: exports


def test_json_chapters_and_plot_with_ground_truth(setup, tmp_path):
    out, vtt, png = tmp_path / "r.json", tmp_path / "c.vtt", tmp_path / "p.png"
    result = _run("predict", setup["video"], *QUERIES, "-c", setup["run"], "--top", 3, "--json",
                  out, "--chapters", vtt, "--plot", png, "--anno", setup["anno"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.count("(with ground truth)") == 2
    for i in (1, 2):
        assert (tmp_path / f"p-{i}.png").read_bytes()[:4] == b"\x89PNG"
    rows = json.loads(out.read_text())
    for row in rows:
        assert len(row["saliency"]) == N_CLIPS and row["truncated"] is False
        for value in [row["duration"]] + [x for m in row["moments"] for x in m[:2]]:
            assert round(value, 3) == value  # milliseconds
    text = vtt.read_text()
    assert text.startswith("WEBVTT\n\n")
    cues = re.findall(
        r"(\d\d):(\d\d):(\d\d)\.(\d{3}) --> (\d\d):(\d\d):(\d\d)\.(\d{3})\n(.+)", text
    )
    assert len(cues) == 6  # 3 moments × 2 queries
    starts = [int(c[0]) * 3600 + int(c[1]) * 60 + int(c[2]) + int(c[3]) / 1000 for c in cues]
    assert starts == sorted(starts)  # players want cues in time order
    assert {c[8].split(" (")[0].split(" ", 1)[1] for c in cues} == set(QUERIES)
    want = sorted((m[0], m[1]) for r in rows for m in r["moments"])
    ends = [int(c[4]) * 3600 + int(c[5]) * 60 + int(c[6]) + int(c[7]) / 1000 for c in cues]
    assert sorted((round(s, 3), round(e, 3)) for s, e in zip(starts, ends, strict=True)) == want


# ---------------------------------------------------------------- batch


def test_batch_over_a_folder_is_resumable_and_counts_damaged_files(setup, tmp_path, encodes):
    queries = tmp_path / "q.txt"
    queries.write_text(f"{QUERIES[0]}\n\n{QUERIES[1]}\n")
    out = tmp_path / "res" / "results.jsonl"
    args = ("predict", setup["folder"], "--queries", queries, "--out", out, "-c", setup["run"],
            "--workers", 0, "--device", "cpu")  # fmt: skip
    result = _run(*args)
    assert result.exit_code == 0, result.output
    assert "2 predicted, 0 already done, 1 skipped" in result.output
    assert "broken.mp4" in result.output  # the reason, as r2 extract gives it
    rows = _rows(out)
    assert {(r["vid"], r["qid"]) for r in rows} == {(v, q) for v in ("vid1", "vid2")
                                                    for q in (1, 3)}  # fmt: skip
    for r in rows:
        assert set(r) == ROW_KEYS and r["timing"]["encode"] > 0 and r["timing"]["predict"] > 0
        assert len(r["pred_saliency_scores"]) == (N_CLIPS if r["vid"] == "vid1" else 7)
    encodes.clear()
    result = _run(*args)  # all done: nothing decoded
    assert result.exit_code == 0 and "0 rows written, 4 already there" in result.output
    assert encodes == []
    lines = out.read_text().splitlines(keepends=True)  # lose vid2's rows, tear a line
    kept = [line for line in lines if '"vid": "vid2"' not in line]
    out.write_text("".join(kept) + lines[-1][:25])
    result = _run(*args)
    assert result.exit_code == 0, result.output
    assert "2 rows written, 2 already there" in result.output
    assert "removed 1 incomplete line" in result.output
    assert sum(encodes) == 7  # only vid2 was encoded again
    again = _rows(out)
    assert sorted(map(json.dumps, again)) != [] and len(again) == 4
    assert {json.dumps(r, sort_keys=True) for r in again if r["vid"] == "vid1"} == {
        json.dumps(r, sort_keys=True) for r in rows if r["vid"] == "vid1"
    }


def test_batch_jsonl_asks_each_video_its_own_queries(setup, tmp_path):
    queries = tmp_path / "q.jsonl"
    lines = [{"qid": 7, "query": QUERIES[0], "vid": "vid2"},
             {"qid": 8, "query": QUERIES[1], "vid": "vid1"},
             {"qid": 9, "query": "a cat", "vid": "not_given"}]  # fmt: skip
    queries.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "r.jsonl"
    videos = (setup["folder"] / "vid1.mp4", setup["folder"] / "vid2.mp4")
    result = _run("predict", *videos, "--queries", queries, "--out", out, "-c", setup["run"],
                  "--workers", 1)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "1 name videos that were not given" in result.output
    assert sorted((r["vid"], r["qid"]) for r in _rows(out)) == [("vid1", 8), ("vid2", 7)]
    single = _run("predict", setup["video"], QUERIES[1], "-c", setup["run"], "--top", 10,
                  "--json", tmp_path / "one.json")  # fmt: skip
    one = json.loads((tmp_path / "one.json").read_text())[0]
    row = next(r for r in _rows(out) if r["vid"] == "vid1")
    assert row["pred_relevant_windows"] == one["moments"]  # workers: the same numbers
    assert row["pred_saliency_scores"] == one["saliency"]
    assert single.exit_code == 0


def test_batch_refuses_changed_queries_and_other_checkpoints(setup, tmp_path):
    queries, out = tmp_path / "q.txt", tmp_path / "r.jsonl"
    queries.write_text(QUERIES[0] + "\n")
    base = ("predict", setup["folder"] / "vid2.mp4", "--queries", queries, "--out", out,
            "--workers", 0)  # fmt: skip
    assert _run(*base, "-c", setup["run"]).exit_code == 0
    queries.write_text("something else entirely\n")
    result = _run(*base, "-c", setup["run"])
    assert result.exit_code == 2 and "choose another --out" in result.output
    other = tmp_path / "other"
    other.mkdir()
    (other / "best.safetensors").write_bytes(setup["ckpt"].read_bytes()[:-4] + b"    ")
    queries.write_text(QUERIES[0] + "\n")
    result = _run(*base, "-c", other / "best.safetensors")
    assert result.exit_code == 2 and "another run" in result.output


def test_batch_usage_errors(setup, tmp_path):
    result = _run("predict", setup["folder"], "--queries", tmp_path / "none.txt", "--out",
                  tmp_path / "r.jsonl", "-c", setup["run"])  # fmt: skip
    assert result.exit_code == 2 and "not found" in result.output
    (tmp_path / "q.txt").write_text("a query\n")
    result = _run("predict", setup["folder"], "--queries", tmp_path / "q.txt", "-c", setup["run"])
    assert result.exit_code == 2 and "--out" in result.output
