"""The data path: batches read straight into reused buffers equal `collate` of the samples.

Same batches, same order, bit-identical features, whatever the source (cache file, RAM,
a custom source), the number of reading threads, k < K, and whether the caller keeps its
batches (a buffer still referenced is never refilled). Direct file reads give the bytes
HDF5 gives.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from train_fixtures import SETTINGS, make_annotations, make_cache, write_jsonl

import r2.train.data as D
from r2.cache import CacheError, CacheSettings, CacheWriter, FeatureCache, VideoRecord
from r2.train.batch import Batch, collate

FIELDS = ("video", "video_mask", "query", "query_mask", "fps", "duration", "boundary",
          "saliency", "pos_clip")  # fmt: skip


def _same(a: Batch, b: Batch) -> None:
    assert a.qids == b.qids and a.vids == b.vids
    for name in FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and x.shape == y.shape, name
            assert torch.equal(x, y), name


class DictSource:
    """A custom feature source with only `video()` and `query()` (the FeatureSource protocol)."""

    def __init__(self, cache: FeatureCache):
        self.videos = {v: cache.video(v) for v in cache.video_ids()}
        self.queries = {q: cache.query(q) for q in cache.query_ids()}

    def video(self, vid):
        return self.videos[vid]

    def query(self, qid):
        return self.queries[qid]


@pytest.fixture
def setup(tmp_path):
    annos = make_annotations(11, min_clips=3, max_clips=14)
    cache = make_cache(tmp_path / "c.h5", annos)
    path = write_jsonl(tmp_path / "a.jsonl", annos)
    with FeatureCache(cache) as fc:
        items = D.prepare_items(D.read_annotations(path), fc, "qvhighlights", train=True)
        yield fc, items


def _reference(items, features, k: int, batch: int, epoch: int) -> list[Batch]:
    ds = D.GroundingDataset(items, features, 0.5, k, train=True, seed=3, repeat=2)
    sampler = D.EpochBatchSampler(len(ds), batch, seed=3)
    sampler.set_epoch(epoch)
    return [collate([ds[key] for key in keys]) for keys in sampler]


@pytest.mark.parametrize("workers", [0, 1, 3])
@pytest.mark.parametrize("source", ["cache", "ram", "custom"])
@pytest.mark.parametrize("k", [1, 2])
def test_loader_batches_equal_collate(setup, workers, source, k):
    fc, items = setup
    features = {"cache": fc, "ram": D.PreloadedFeatures.load(fc, items, k),
                "custom": DictSource(fc)}[source]  # fmt: skip
    ref = _reference(items, fc, k, batch=4, epoch=1)
    ds = D.GroundingDataset(items, features, 0.5, k, train=True, seed=3, repeat=2)
    sampler = D.EpochBatchSampler(len(ds), 4, seed=3)
    sampler.set_epoch(1)
    got = 0
    for a, b in zip(ref, D.make_loader(ds, sampler, workers), strict=True):
        _same(a, b)  # compared as it arrives: the loader may reuse its buffer afterwards
        got += 1
    assert got == len(ref) == 6  # 22 samples: 5 batches of 4 and one of 2


def test_kept_batches_are_never_overwritten(setup):
    """`list(loader)` keeps every batch: each gets its own memory (checked after the end)."""
    fc, items = setup
    ref = _reference(items, fc, 2, batch=3, epoch=0)
    ds = D.GroundingDataset(items, fc, 0.5, 2, train=True, seed=3, repeat=2)
    for workers in (0, 2):
        kept = list(D.make_loader(ds, D.EpochBatchSampler(len(ds), 3, seed=3), workers))
        for a, b in zip(ref, kept, strict=True):
            _same(a, b)


def test_buffers_are_reused_when_batches_are_dropped(setup):
    fc, items = setup
    ds = D.GroundingDataset(items, fc, 0.5, 2, train=True, seed=3, repeat=4)
    for workers in (0, 2):
        loader = D.make_loader(ds, D.EpochBatchSampler(len(ds), 2, seed=3), workers)
        pointers = set()
        for batch in loader:
            pointers.add(batch.video.data_ptr())
            batch = None  # as the training loop does
        assert len(loader) == 22 and len(loader._slots) <= loader._max_slots
        # a slot's memory is replaced only when a later batch needs more (longer videos);
        # which slot meets which batch depends on thread timing: a few growths, not 22
        assert len(pointers) <= 2 * loader._max_slots < len(loader)


def test_one_sample_batches_and_padding_are_exact(setup):
    """B = 1 (inference) and padding zeroed in a buffer that held longer samples before."""
    fc, items = setup
    for batch_size in (1, 5):
        ds = D.GroundingDataset(items, fc, 0.5, 2, train=False)
        sampler = D.EpochBatchSampler(len(ds), batch_size, seed=0, shuffle=False)
        ref = [collate([ds[key] for key in keys]) for keys in sampler]
        for a, b in zip(ref, D.make_loader(ds, sampler, 0), strict=True):
            _same(a, b)


def test_read_errors_reach_the_caller_and_threads_end(setup, monkeypatch):
    fc, items = setup
    before = threading.active_count()
    ds = D.GroundingDataset(items, fc, 0.5, 2, train=True, seed=3)
    calls = {"n": 0}
    real = FeatureCache.read_video_into

    def failing(self, vid, out):
        calls["n"] += 1
        if calls["n"] == 7:
            raise CacheError(f"{self.path}: cannot read the features of video {vid!r}: boom")
        return real(self, vid, out)

    monkeypatch.setattr(FeatureCache, "read_video_into", failing)
    with pytest.raises(CacheError, match="boom"):
        for _ in D.make_loader(ds, D.EpochBatchSampler(len(ds), 2, seed=3), 2):
            pass
    monkeypatch.setattr(FeatureCache, "read_video_into", real)
    loader = D.make_loader(ds, D.EpochBatchSampler(len(ds), 2, seed=3), 2)
    for _ in loader:
        break  # stopping early ends the background threads too
    del loader, _
    for _ in range(100):
        if threading.active_count() <= before:
            break
        threading.Event().wait(0.02)
    assert threading.active_count() <= before


@pytest.mark.parametrize("settings_k", [(SETTINGS, 1), (SETTINGS, 2), ("big", 1), ("big", 3)])
def test_direct_reads_equal_hdf5_reads(tmp_path, monkeypatch, settings_k):
    """Rows read from the file's byte ranges equal h5py's, for chunks of many rows (tiny
    features) and of one row (ViT-sized rows), any k, any prefix; the fallback too."""
    settings, k = settings_k
    if settings == "big":
        settings = CacheSettings(**{**SETTINGS.__dict__, "k": 3, "tokens_per_frame": 50,
                                    "video_dim": 256})  # fmt: skip
    rng = np.random.default_rng(0)
    path = tmp_path / "d.h5"
    with CacheWriter(path, settings) as w:
        for i, t in enumerate((5, 9, 1, 14)):
            feats = rng.standard_normal((t, settings.k, settings.tokens_per_frame,
                                         settings.video_dim)).astype(np.float16)  # fmt: skip
            w.add_video(VideoRecord(f"v{i}", t / 0.5, t, "x", 1, 0.0, False), feats)
    for direct in (True, False):
        if not direct:
            monkeypatch.setattr("r2.cache.direct.DirectRows.plan", lambda *a: None)
        with FeatureCache(path) as fc:
            for vid in fc.video_ids():
                full = fc.video(vid)
                for n in {1, len(full) // 2 + 1, len(full)}:
                    out = np.full((n, k, *full.shape[2:]), np.nan, np.float16)
                    fc.read_video_into(vid, out)
                    assert np.array_equal(out, full[:n, -k:]), (vid, n, direct)
            with pytest.raises(ValueError, match="cannot read"):
                fc.read_video_into("v0", np.empty((6, k, *full.shape[2:]), np.float16))


def _rss_file() -> int:
    from pathlib import Path

    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024
    return 0


def _big_cache(tmp_path, n: int = 6, t: int = 30):
    """A cache of ViT-sized rows (~2.3 MB per video) and its items."""
    settings = CacheSettings(**{**SETTINGS.__dict__, "k": 2, "tokens_per_frame": 50,
                                "video_dim": 384})  # fmt: skip
    annos = make_annotations(n, min_clips=t, max_clips=t)
    cache = make_cache(tmp_path / "big.h5", annos, settings=settings)
    return cache, write_jsonl(tmp_path / "big.jsonl", annos)


def test_ram_preload_maps_the_file_and_reads_the_feature_bytes_in_once(tmp_path):
    """`--preload ram` serves every id from the mapped file, nothing copied into new
    memory; after loading, the feature bytes are resident in this process (no page faults
    left for the training steps); every row equals the cache's."""
    cache, path = _big_cache(tmp_path)
    k = 2
    with FeatureCache(cache) as fc:
        items = D.prepare_items(D.read_annotations(path), fc, "qvhighlights", train=True)
        before = _rss_file()
        ram = D.PreloadedFeatures.load(fc, items, k)
        resident = _rss_file() - before
        wanted = sum(fc.video(v)[:, -k:].nbytes for v in fc.video_ids())
        wanted += sum(fc.query(q)[:, -k:].nbytes for q in fc.query_ids())
        assert ram.videos == {} and ram.queries == {}
        assert ram.mapped.nbytes == wanted
        assert 0.9 * wanted <= resident <= 1.2 * wanted + 2**20, (resident, wanted)
        for vid in fc.video_ids():
            assert np.array_equal(ram.video(vid), fc.video(vid)[:, -k:])
            out = np.full((7, k, 50, 384), np.nan, np.float16)
            ram.read_video_into(vid, out)
            assert np.array_equal(out, fc.video(vid)[:7, -k:])
        for qid in fc.query_ids():
            assert np.array_equal(ram.query(qid), fc.query(qid)[:, -k:])
        with pytest.raises(ValueError, match="cannot copy"):
            ram.mapped.read_video_into(fc.video_ids()[0], np.empty((99, k, 50, 384), np.float16))


def test_ram_preload_of_fewer_layers_copies_them_into_one_block(tmp_path):
    """k < K: the used layers interleave with unused ones at a few pages each, so a
    mapping would hold all K; they are copied into one block of exactly their bytes."""
    cache, path = _big_cache(tmp_path)
    with FeatureCache(cache) as fc:
        items = D.prepare_items(D.read_annotations(path), fc, "qvhighlights", train=True)
        ram = D.PreloadedFeatures.load(fc, items, 1)
        assert not ram.mapped.videos and not ram.mapped.queries
        block = next(iter(ram.videos.values())).base
        assert len({id(v.base) for v in ram.videos.values()}) == 1
        assert block.nbytes == sum(v.nbytes for v in ram.videos.values())
        for vid, v in ram.videos.items():
            assert np.array_equal(v, fc.video(vid)[:, -1:])


def test_ram_preload_copies_what_the_mapping_cannot_serve(tmp_path, monkeypatch):
    """Ids without a direct layout are read into one block of RAM; the others stay mapped;
    a kernel without MADV_POPULATE_READ gets its pages faulted in by touch. Same bytes."""
    import r2.cache.mapped as M
    from r2.cache.direct import DirectRows

    cache, path = _big_cache(tmp_path)
    plan = DirectRows.plan
    monkeypatch.setattr(DirectRows, "plan", lambda self, start, n, k: None if start % 60 == 0
                        else plan(self, start, n, k))  # fmt: skip
    monkeypatch.setattr(M, "MADV_POPULATE_READ", 0x7FFF)  # EINVAL: the touch fallback
    with FeatureCache(cache) as fc:
        items = D.prepare_items(D.read_annotations(path), fc, "qvhighlights", train=True)
        ram = D.PreloadedFeatures.load(fc, items, 2)
        assert ram.videos and ram.mapped.videos  # some of each
        assert len({id(v.base) for v in ram.videos.values()}) == 1
        for vid in fc.video_ids():
            assert np.array_equal(ram.video(vid), fc.video(vid))
            out = np.empty((30, 1, 50, 384), np.float16)  # fewer layers: the slicing path
            ram.read_video_into(vid, out)
            assert np.array_equal(out, fc.video(vid)[:, -1:])


def test_ram_preload_of_a_file_that_cannot_be_mapped_copies_it_and_says_so(
    tmp_path, monkeypatch, caplog
):
    import mmap

    def refuse(*args, **kwargs):
        raise OSError(19, "No such device")

    cache, path = _big_cache(tmp_path, n=3)
    monkeypatch.setattr(mmap, "mmap", refuse)
    with FeatureCache(cache) as fc, caplog.at_level("WARNING"):
        items = D.prepare_items(D.read_annotations(path), fc, "qvhighlights", train=True)
        ram = D.PreloadedFeatures.load(fc, items, 2)
        assert "cannot map the file" in caplog.text and str(cache) in caplog.text
        assert not ram.mapped.videos and len(ram.videos) == 3
        for vid in fc.video_ids():
            assert np.array_equal(ram.video(vid), fc.video(vid))


def test_chunk_index_read_at_once_equals_per_chunk_lookups(tmp_path):
    """`DirectRows` reads every chunk's offset in one pass (`chunk_iter`); each equals
    HDF5's own lookup of that chunk (ViT-sized rows: many chunks)."""
    import h5py

    from r2.cache.direct import DirectRows

    settings = CacheSettings(**{**SETTINGS.__dict__, "k": 2, "tokens_per_frame": 50,
                                "video_dim": 256})  # fmt: skip
    path = tmp_path / "d.h5"
    with CacheWriter(path, settings) as w:
        for i, t in enumerate((5, 9, 14)):
            feats = np.full((t, 2, 50, 256), i, np.float16)
            w.add_video(VideoRecord(f"v{i}", t / 0.5, t, "x", 1, 0.0, False), feats)
    with h5py.File(path, "r") as f:
        dataset = f["video/frames"]
        rows = DirectRows(dataset)
        offsets = rows._index()
        assert rows.usable and len(offsets) == -(-dataset.shape[0] // dataset.chunks[0]) > 1
        for c, offset in enumerate(offsets):
            coord = (c * dataset.chunks[0],) + (0,) * (dataset.ndim - 1)
            assert offset == dataset.id.get_chunk_info_by_coord(coord).byte_offset
