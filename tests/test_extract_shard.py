"""Sharded extraction: which shard (flag / torchrun / slurm), balanced by duration, and the
merge of all shards holding exactly what one unsharded run writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from videogen import write_video

from r2.cache import FeatureCache
from r2.cache.rebuild import merge
from r2.errors import UsageError
from r2.extract import extract
from r2.extract.shard import Shard, balance, cuda_device, parse_shard, query_shard, resolve_shard
from r2.extract.tiny_clip import make_tiny_clip

SECONDS = (2, 3, 4, 5, 6, 8, 11, 14, 20)  # video lengths: the balancing has work to do
NO_ENV: dict[str, str] = {}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    videos = root / "videos"
    videos.mkdir()
    for i, seconds in enumerate(SECONDS):
        write_video(videos / f"v{i}.mp4", seconds * 5, fps=5, keyint=5, size=(48, 32))
    write_video(videos / "s13-d21-cam-002.mp4", 15, fps=5, keyint=5, size=(48, 32))
    (videos / "broken.mp4").write_bytes(b"not a video" * 50)
    rows = [{"qid": q, "query": f"what happens in video {q % 9} ({q})", "vid": f"v{q % 9}"}
            for q in range(18)]  # fmt: skip
    rows += [{"qid": "free", "query": "a query without video"},
             {"qid": "gone", "query": "its video is elsewhere", "vid": "v99"},
             {"qid": "tacos", "query": "a person cuts a cucumber", "vid": "s13-d21"}]  # fmt: skip
    anno = root / "anno.jsonl"
    anno.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return videos, anno, str(make_tiny_clip(root / "tiny"))


def _contents(path) -> tuple[dict, dict]:
    with FeatureCache(path) as cache:
        videos = {v: (cache.video(v), cache.video_record(v)) for v in cache.video_ids()}
        queries = {q: (cache.query(q), cache.query_record(q)) for q in cache.query_ids()}
    return videos, queries


def test_merged_shards_equal_one_unsharded_run(dataset, tmp_path):
    videos, anno, tiny = dataset
    single = extract([videos], tmp_path / "one.h5", [anno], model=tiny, workers=0, shard="0/1")
    assert single.cache == tmp_path / "one.h5"
    shards = [extract([videos], tmp_path / "all.h5", [anno], model=tiny, workers=1,
                      shard=f"{i}/3") for i in range(3)]  # fmt: skip
    paths = [tmp_path / f"all.shard-{i}-of-3.h5" for i in range(3)]
    assert [s.cache for s in shards] == paths and not (tmp_path / "all.h5").exists()
    for s in shards:  # disjoint, and all of it: every video and query in exactly one shard
        assert s.videos_other_shards + len(s.videos_done) + len(s.videos_skipped) == 11
        assert s.queries_done + s.queries_other_shards == 21
    assert sorted(v for s in shards for v in s.videos_done) == sorted(single.videos_done)
    assert sum(s.queries_done for s in shards) == single.queries_done == 21
    merge(paths, tmp_path / "merged.h5")
    got, want = _contents(tmp_path / "merged.h5"), _contents(tmp_path / "one.h5")
    for mine, theirs in zip(got, want, strict=True):
        assert mine.keys() == theirs.keys()
        for key, (feats, record) in mine.items():
            assert np.array_equal(feats, theirs[key][0]) and record == theirs[key][1], key
    by_shard = [set(_contents(p)[1]) for p in paths]
    assert {"free", "gone"} <= by_shard[0]  # no video among the inputs: shard 0
    owner = next(i for i, p in enumerate(paths) if "s13-d21-cam-002" in _contents(p)[0])
    assert "tacos" in by_shard[owner]  # a TACoS query goes with its "-cam-002" file


def test_balance_is_by_duration_not_count():
    vids = ["long", *(f"short{i}" for i in range(10))]
    owner = balance(vids, [100.0, *([10.0] * 10)], 2)
    loads = [sum(100 if v == "long" else 10 for v in vids if owner[v] == s) for s in (0, 1)]
    assert sorted(loads) == [100, 100]
    assert sum(owner[v] == owner["long"] for v in vids) == 1  # the long one alone
    again = balance(list(reversed(vids)), [*([10.0] * 10), 100.0], 2)
    assert again == owner  # the input order does not matter
    unknown = balance(["a", "b", "c"], [None, 30.0, 10.0], 2)  # unknown counts as the median
    assert unknown["b"] != unknown["c"] and len(set(unknown.values())) == 2


def test_queries_follow_their_video():
    owner = {"v1": 2, "s13-d21-cam-002": 1}
    assert query_shard("v1", owner) == 2 and query_shard("s13-d21", owner) == 1
    assert query_shard(None, owner) == 0 and query_shard("elsewhere", owner) == 0


def test_the_shard_comes_from_the_flag_then_the_environment():
    assert parse_shard("2/8") == Shard(2, 8) and str(parse_shard(" 0 / 4 ")) == "0/4"
    for bad in ("8/8", "-1/4", "1", "a/b", "1/0"):
        with pytest.raises(UsageError, match="shard"):
            parse_shard(bad)
    assert resolve_shard(None, NO_ENV) is None and resolve_shard("0/1", NO_ENV) is None
    torchrun = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}
    assert resolve_shard(None, torchrun) == Shard(3, 4, "torchrun (RANK/WORLD_SIZE)")
    array = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "1",
             "SLURM_ARRAY_TASK_STEP": "2", "SLURM_ARRAY_TASK_COUNT": "5"}  # fmt: skip
    assert resolve_shard(None, array) == Shard(3, 5, "slurm array")  # tasks 1, 3, 5, 7, 9
    assert resolve_shard("1/2", {**torchrun, **array}) == Shard(1, 2)  # the flag wins
    assert resolve_shard(None, {**torchrun, "SLURM_ARRAY_TASK_ID": "0",
                                "SLURM_ARRAY_TASK_COUNT": "1"}).count == 4  # fmt: skip
    refused = [{**torchrun, **array}, {"RANK": "1"}, {"WORLD_SIZE": "2"},
               {"RANK": "2", "WORLD_SIZE": "2"}, {"RANK": "x", "WORLD_SIZE": "2"},
               {"SLURM_ARRAY_TASK_ID": "2"}, {**array, "SLURM_ARRAY_TASK_ID": "4"}]  # fmt: skip
    for env in refused:
        with pytest.raises(UsageError):
            resolve_shard(None, env)


def test_an_environment_shard_names_its_own_cache(dataset, tmp_path, monkeypatch):
    videos, anno, tiny = dataset
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    summary = extract([videos], tmp_path / "c.h5", [anno], model=tiny, workers=0)
    assert summary.cache == tmp_path / "c.shard-1-of-2.h5" and summary.shard == Shard(
        1, 2, "torchrun (RANK/WORLD_SIZE)")  # fmt: skip
    assert "shard 1/2 (torchrun" in summary.report() and summary.usable


def test_each_torchrun_process_gets_its_own_gpu(monkeypatch):
    import torch

    env = {"LOCAL_RANK": "1"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cuda_device("auto", env) == "auto"  # no CUDA: unchanged (CPU)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert cuda_device("auto", env) == cuda_device("cuda", env) == "cuda:1"
    assert cuda_device("cuda:0", env) == "cuda:0" and cuda_device("cpu", env) == "cpu"
    assert cuda_device("auto", {}) == "auto"
    with pytest.raises(UsageError, match="LOCAL_RANK=3"):
        cuda_device("auto", {"LOCAL_RANK": "3"})


def test_cli_refuses_a_bad_shard(dataset, tmp_path):
    from typer.testing import CliRunner

    from r2.cli import app

    videos, _, tiny = dataset
    result = CliRunner().invoke(app, ["extract", str(videos), "--out", str(tmp_path / "c.h5"),
                                      "--clip", tiny, "--shard", "4/4"])  # fmt: skip
    assert result.exit_code == 2 and "0-based" in result.output
    assert not list(tmp_path.iterdir())
