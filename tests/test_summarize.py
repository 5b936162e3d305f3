"""`r2 summarize`: KTS segmentation, the TVSum knapsack, and the summary video (PyAV)."""

from __future__ import annotations

import itertools
import json

import av
import numpy as np
import pytest
from e2e_fixtures import make_setup
from typer.testing import CliRunner
from videogen import read_index, write_video

from r2.cli import app
from r2.cut import write_intervals
from r2.errors import UsageError
from r2.summarize import generic_query, knapsack, kts, parse_budget, select_segments

FPS = 10  # frames per second of the generated videos: frame k is shown at k / 10 s


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("summarize")
    setup = make_setup(root)
    video = write_video(root / "talk_with_audio.mp4", 300, fps=FPS, size=(96, 96), keyint=10,
                        content="index", audio="last")  # fmt: skip
    return {**setup, "av_video": video}


def _frames_and_audio(path):
    """Indexes shown by the summary's frames, and its audio length in seconds."""
    with av.open(str(path)) as c:
        indexes = [read_index(f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    with av.open(str(path)) as c:
        samples = sum(f.samples for f in c.decode(audio=0)) if c.streams.audio else 0
        rate = c.streams.audio[0].sample_rate if c.streams.audio else 1
    return indexes, samples / rate


def test_kts_finds_the_changes_of_content():
    rng = np.random.default_rng(0)
    blocks = [(5, 0), (3, 1), (6, 2)]  # (length, direction)
    x = np.concatenate([np.eye(8)[d] + 0.05 * rng.normal(size=(n, 8)) for n, d in blocks])
    assert kts(x, max_len=10) == [(0, 5), (5, 8), (8, 14)]
    assert all(b - a <= 4 for a, b in kts(x, max_len=4))  # the length bound holds


def test_knapsack_is_exact():
    rng = np.random.default_rng(1)
    for _ in range(30):
        n = int(rng.integers(1, 8))
        values, weights = list(rng.random(n)), [int(w) for w in rng.integers(1, 6, n)]
        capacity = int(rng.integers(0, 15))
        best = max((sum(values[i] for i in c), c) for r in range(n + 1)
                   for c in itertools.combinations(range(n), r)
                   if sum(weights[i] for i in c) <= capacity)  # fmt: skip
        chosen = knapsack(values, weights, capacity)
        assert sum(weights[i] for i in chosen) <= capacity
        assert sum(values[i] for i in chosen) == pytest.approx(best[0])


def test_selection_follows_saliency_under_the_budget():
    x = np.repeat(np.eye(6), 3, axis=0)  # 6 segments of 3 clips
    saliency = np.repeat([0.1, 0.9, 0.2, 0.8, 0.3, 0.0], 3)
    segs = select_segments(saliency, x, fps=0.5, budget_s=12.0)  # 6 clips: two segments
    assert [(s.first, s.stop) for s in segs if s.selected] == [(3, 6), (9, 12)]
    segs = select_segments(saliency, x, fps=0.5, budget_s=2.0)  # shorter than any segment
    assert [(s.first, s.stop) for s in segs if s.selected] == [(3, 4)]
    with pytest.raises(UsageError, match="shorter than one clip"):
        select_segments(saliency, x, fps=0.5, budget_s=1.0)


def test_budgets_and_generic_queries(tmp_path):
    assert parse_budget("15%", 200.0) == 30.0 and parse_budget("30s", 200.0) == 30.0
    assert parse_budget("300", 200.0) == 200.0
    for bad in ("0%", "150%", "abc", "-5s"):
        with pytest.raises(UsageError):
            parse_budget(bad, 100.0)
    video = tmp_path / "dog_show_2019-final.mp4"
    assert generic_query({"generic_query": "dog show"}, video) == "dog show"
    assert generic_query({"preset": {"grounding": False}}, video) == "dog show 2019 final"
    assert generic_query({"preset": {"grounding": True}}, video) is None


def test_write_intervals_keeps_exactly_those_frames_and_the_audio(setup, tmp_path):
    out = tmp_path / "cut.mp4"
    write_intervals(setup["av_video"], [(1.0, 2.5), (4.0, 5.0)], out)
    indexes, audio_s = _frames_and_audio(out)
    assert indexes == list(range(10, 25)) + list(range(40, 50))  # in time order, nothing else
    assert audio_s == pytest.approx(2.5, abs=0.03)
    assert [p.name for p in tmp_path.iterdir()] == ["cut.mp4"]  # no temporary debris


def test_cli_writes_the_summary_and_prints_the_segments(setup, tmp_path):
    out, js = tmp_path / "summary.mp4", tmp_path / "s.json"
    result = CliRunner().invoke(app, ["summarize", str(setup["av_video"]), "--query", "a talk",
                                      "-c", str(setup["run"]), "--budget", "20%", "--out",
                                      str(out), "--json", str(js)])  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(js.read_text())
    chosen = [s for s in data["segments"] if s["selected"]]
    assert chosen and all(f"{s['start']:>8.1f} {s['end']:>8.1f}" in result.output for s in chosen)
    total = sum(e - s for s, e in data["summary"])
    assert 0 < total <= 0.2 * data["duration"] + 1e-6
    want = [k for k in range(300) for s, e in data["summary"] if s <= k / FPS < e]
    indexes, audio_s = _frames_and_audio(out)
    assert indexes == want
    assert audio_s == pytest.approx(total, abs=0.05)


def test_cli_errors_before_decoding(setup, tmp_path):
    def run(*args):
        return CliRunner().invoke(app, ["summarize", *map(str, args)])

    result = run(setup["av_video"], "-c", setup["run"], "--out", tmp_path / "s.mp4")
    assert result.exit_code == 2 and "--query is needed" in result.output
    result = run(setup["av_video"], "-q", "x", "-c", setup["run"], "--out", tmp_path / "s.avi")
    assert result.exit_code == 2 and "MP4" in result.output
    result = run(setup["av_video"], "-q", "x", "-c", setup["run"], "--out", tmp_path / "s.mp4",
                 "--budget", "lots")  # fmt: skip
    assert result.exit_code == 2 and "--budget" in result.output
