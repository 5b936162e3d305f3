"""GPU checks, ready for a machine that has one (marked `cuda`; skipped with the reason
where CUDA is not available, e.g. on the CPU-only development machine).

- extraction in fp16 on CUDA gives the fp32 CPU features within fp16 precision;
- one training step with fp16 autocast and a GradScaler is finite and close to fp32;
- `--preload gpu` batches equal the CPU batches bit for bit, and a preload that does not
  fit is refused with the numbers;
- the predictor on CUDA gives the CPU predictions;
- two processes with NCCL (two GPUs) train like one process.

Tolerances are set from fp16's precision (10-bit mantissa: relative steps of ~1e-3 per
operation; a forward of a few layers accumulates a few of them); they were not yet
observed on a GPU (none on the development machine): a failure here is a finding to
investigate, not a tolerance to widen.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.cuda  # skipped without CUDA by conftest.py

FP16_ATOL, FP16_RTOL = 2e-2, 2e-2  # fp16 features / losses against fp32


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from r2.extract.tiny_clip import make_tiny_clip

    return make_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny", seed=0)


def test_fp16_extraction_on_cuda_matches_fp32_on_cpu(tiny_clip):
    from r2.extract.encode import ClipEncoder

    frames = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    cpu = ClipEncoder.load(str(tiny_clip), k=4, device="cpu", dtype="fp32")
    gpu = ClipEncoder.load(str(tiny_clip), k=4, device="cuda", dtype="fp16")
    a, b = cpu.encode_frames(frames), gpu.encode_frames(frames)
    assert a.shape == b.shape and b.dtype == np.float16 and np.isfinite(b).all()
    np.testing.assert_allclose(b.astype(np.float32), a.astype(np.float32), rtol=FP16_RTOL,
                               atol=FP16_ATOL * float(np.abs(a).max()))  # fmt: skip
    text = ["a man opens the fridge"]
    ta, tb = cpu.encode_texts(text)[0].features, gpu.encode_texts(text)[0].features
    atol = FP16_ATOL * float(np.abs(ta).max())
    np.testing.assert_allclose(tb.astype(np.float32), ta.astype(np.float32), FP16_RTOL, atol)


def test_one_fp16_autocast_step_with_grad_scaler_is_finite_and_close_to_fp32():
    from model_fixtures import batch_of, perturbed, tiny_config

    from r2.train.model import R2Model

    cfg = tiny_config(dropout=0.0, droppath=0.0)
    batch = batch_of([(9, 4), (12, 3), (6, 5)], cfg).to("cuda")
    base = perturbed(R2Model(cfg)).cuda()
    results = {}
    for amp in (False, True):
        model = R2Model(cfg).cuda()
        model.load_state_dict(base.state_dict())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        scaler = torch.amp.GradScaler("cuda", enabled=amp)
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            loss = sum(model.losses(model(batch), batch).values())
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        scaler.step(opt)
        scaler.update()
        assert torch.isfinite(loss) and torch.isfinite(grads).all()
        results[amp] = (float(loss), grads.float())
    assert results[True][0] == pytest.approx(results[False][0], rel=FP16_RTOL, abs=FP16_ATOL)
    cos = torch.nn.functional.cosine_similarity(results[True][1], results[False][1], dim=0)
    assert float(cos) > 0.99  # the same gradient direction


def test_gpu_preload_batches_equal_cpu_batches_and_refuses_what_does_not_fit(tmp_path):
    from train_fixtures import make_annotations, make_cache, write_jsonl

    import r2.train.data as D
    from r2.cache import FeatureCache

    annos = make_annotations(9, min_clips=3, max_clips=14)
    path = write_jsonl(tmp_path / "a.jsonl", annos)
    with FeatureCache(make_cache(tmp_path / "c.h5", annos)) as fc:
        items = D.prepare_items(D.read_annotations(path), fc, "qvhighlights", train=True)
        gpu = D.PreloadedFeatures.load(fc, items, 2, device="cuda")
        assert gpu.device.type == "cuda"
        batches = {}
        for key, mode, features, device in (("cpu", "none", fc, "cpu"),
                                            ("pinned", "none", fc, "cuda"),
                                            ("gpu", "gpu", gpu, "cuda")):  # fmt: skip
            ds = D.GroundingDataset(items, features, 0.5, 2, train=True, seed=3)
            sampler = D.EpochBatchSampler(len(ds), 4, seed=3)
            loader = D.make_loader(ds, sampler, 2, 0, mode, device)  # cuda: pinned buffers
            batches[key] = [b.to("cpu") for b in loader]
        for a, b, c in zip(batches["cpu"], batches["pinned"], batches["gpu"], strict=True):
            assert torch.equal(a.video, c.video) and torch.equal(a.query, c.query)
            assert torch.equal(a.video, b.video) and torch.equal(a.query, b.query)
            assert torch.equal(a.video_mask, b.video_mask) and a.qids == b.qids
        free, _ = torch.cuda.mem_get_info()
        with pytest.raises(D.PreloadError, match=r"need .* GiB but .* GiB free"):
            D.resolve_preload("gpu", 10 * free, torch.device("cuda"))


def test_predictor_on_cuda_gives_the_cpu_predictions(tmp_path):
    from e2e_fixtures import QUERIES, make_setup

    from r2.api import R2Predictor

    setup = make_setup(tmp_path)
    out = {}
    for device in ("cpu", "cuda"):
        predictor = R2Predictor.from_pretrained(setup["ckpt"], device=device)
        video = predictor.encode_video(setup["video"])
        out[device] = predictor.predict_many(video, QUERIES)
    for a, b in zip(out["cpu"], out["cuda"], strict=True):
        np.testing.assert_allclose(b.saliency, a.saliency, rtol=FP16_RTOL, atol=FP16_ATOL)
        assert len(a.moments) == len(b.moments)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs for a 2-process NCCL run")
def test_two_processes_with_nccl_train_like_one(tmp_path):
    from test_distributed import NO_DROPOUT, _args, _child, _records
    from train_fixtures import tiny_run

    from r2.train import train

    data = tiny_run(tmp_path, n_train=9, n_val=3)
    one, two = tmp_path / "one", tmp_path / "two"
    train(**{**_args(data, one, NO_DROPOUT), "device": "cuda"})
    proc = _child(tmp_path, {**_args(data, two, NO_DROPOUT), "device": "cuda"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _records(one, "train"), _records(two, "train")
    assert [r["backend"] for r in b] == ["nccl"] * len(b)
    for x, y in zip(a, b, strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-4), y["step"]
