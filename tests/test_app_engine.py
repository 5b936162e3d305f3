"""The web app's engine without a browser: encode once per content, bounded memory, library."""

from __future__ import annotations

import shutil

import pytest
from e2e_fixtures import QUERIES, make_setup

from r2.api import R2Predictor
from r2.app_engine import MAX_QUERIES, AppEngine
from r2.app_render import answer_html
from r2.errors import UsageError
from r2.truth import TruthIndex


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    setup = make_setup(root)
    library = root / "library"
    (library / "sub").mkdir(parents=True)
    shutil.copy(setup["video"], library / "sub" / "vid1.mp4")
    shutil.copy(setup["video"], root / "copy_of_vid1.mp4")
    predictor = R2Predictor.from_pretrained(setup["ckpt"], device="cpu")
    return {**setup, "library": library, "copy": root / "copy_of_vid1.mp4", "predictor": predictor}


def _counting(predictor, monkeypatch):
    calls = []
    original = predictor.encode_video
    monkeypatch.setattr(predictor, "encode_video",
                        lambda *a, **k: calls.append(a) or original(*a, **k))  # fmt: skip
    return calls


def test_a_video_is_encoded_once_per_content(setup, monkeypatch):
    calls = _counting(setup["predictor"], monkeypatch)
    engine = AppEngine(setup["predictor"], videos_dir=setup["library"],
                       truth=TruthIndex([setup["anno"]]))  # fmt: skip
    first = engine.ask(setup["video"], QUERIES, top=3)
    again = engine.ask(setup["copy"], [QUERIES[0]], top=3)  # same bytes, another name
    picked = engine.ask(engine.library_path("sub/vid1.mp4"), [QUERIES[1]])
    assert len(calls) == 1 and first.key == again.key == picked.key
    for a, b in zip(again.predictions[0].moments, first.predictions[0].moments, strict=True):
        assert (a.start, a.end) == (b.start, b.end) and a.score == pytest.approx(b.score)
    assert first.truths[0] is not None and first.truths[0].windows == [(4.0, 10.0)]
    assert again.truths == [None]  # "copy_of_vid1" is not an annotated video
    assert all(len(t) == 3 and all(x is not None for x in t) for t in first.thumbnails)
    html = answer_html(first, 3)
    assert html.count('class="r2-result"') == 2 and html.count('class="r2-seek"') == 6


def test_memory_is_bounded_least_recent_out(setup, monkeypatch):
    calls = _counting(setup["predictor"], monkeypatch)
    engine = AppEngine(setup["predictor"], cache_mb=0.1)  # less than one encoded video
    engine.ask(setup["video"], [QUERIES[0]])
    engine.ask(setup["video"], [QUERIES[0]])
    assert len(calls) == 1  # the last one is always kept
    other = setup["library"].parent / "vid_other.mp4"
    other.write_bytes(setup["video"].read_bytes() + b"\0")  # other content
    engine.ask(other, [QUERIES[0]])
    assert len(engine._features) == 1 and len(calls) == 2


def test_only_library_names_and_bounded_queries(setup):
    engine = AppEngine(setup["predictor"], videos_dir=setup["library"])
    assert engine.library() == ["sub/vid1.mp4"]
    for name in ("../vid1.mp4", str(setup["video"]), "sub/../../val.jsonl"):
        with pytest.raises(UsageError, match="not a video of the library"):
            engine.library_path(name)
    with pytest.raises(UsageError, match=f"at most {MAX_QUERIES}"):
        engine.ask(setup["video"], [f"query {i}" for i in range(MAX_QUERIES + 1)])
    with pytest.raises(ValueError, match="empty"):
        engine.ask(setup["video"], ["  ", ""])


def test_user_text_is_escaped_in_the_page(setup):
    engine = AppEngine(setup["predictor"])
    answer = engine.ask(setup["video"], ['<img src=x onerror="alert(1)">'], top=2)
    html = answer_html(answer, 2)
    assert "<img src=x" not in html and "&lt;img src=x" in html
