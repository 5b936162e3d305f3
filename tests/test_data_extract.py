"""`r2 extract` counts what it left out: folder-scan skips and queries whose video is absent."""

from __future__ import annotations

import json

from videogen import write_video

from r2.extract import extract
from r2.extract.inputs import scan_inputs
from r2.extract.tiny_clip import make_tiny_clip


def _folder(tmp_path):
    folder = tmp_path / "videos"
    (folder / ".git").mkdir(parents=True)
    (folder / ".git" / "HEAD").write_text("ref")
    write_video(folder / "good.mp4", 30, fps=15)
    (folder / ".hidden.mp4").write_bytes(b"")
    (folder / "notes.txt").write_text("not a video")
    return folder


def test_scan_counts_hidden_and_unknown_entries(tmp_path):
    folder = _folder(tmp_path)
    scan = scan_inputs([folder])
    assert [v.vid for v in scan.videos] == ["good"]
    assert sorted(p.name for p in scan.hidden) == [".git", ".hidden.mp4"]
    assert [p.name for p in scan.unknown] == ["notes.txt"]
    assert scan.skipped_counts() == {"hidden": 2, "unknown extension": 1}


def test_extraction_summary_counts_skips_and_queries_without_video(tmp_path):
    folder = _folder(tmp_path)
    anno = tmp_path / "a.jsonl"
    rows = [{"qid": 1, "vid": "good", "query": "a thing"},
            {"qid": 2, "vid": "gone", "query": "another"},
            {"qid": 3, "vid": "s13-d21", "query": "tacos id"},
            {"qid": 4, "query": "no video named"}]  # fmt: skip
    anno.write_text("\n".join(json.dumps(r) for r in rows))
    (folder / "s13-d21-cam-002.mp4").write_bytes((folder / "good.mp4").read_bytes())
    tiny = str(make_tiny_clip(tmp_path / "clip"))
    summary = extract([folder], tmp_path / "c.h5", [anno], model=tiny, workers=0)
    assert summary.files_ignored == {"hidden": 2, "unknown extension": 1}
    assert summary.queries_without_video == ["2 (gone)"]
    report = summary.report()
    assert "files ignored by the folder scan: 2 hidden, 1 unknown extension" in report
    assert "queries whose video was never found (not in the inputs nor the cache): 1" in report
    # a later run with queries only: the cached videos count as found
    again = extract([], tmp_path / "c.h5", [anno], model=tiny, workers=0)
    assert again.queries_without_video == ["2 (gone)"] and again.files_ignored == {}
