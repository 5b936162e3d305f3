"""ClipEncoder on a tiny random CLIP: features equal HuggingFace's; preprocessing; loading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from transformers import CLIPModel, CLIPTokenizer

from r2.extract.encode import ClipEncoder, ModelLoadError, clean_text
from r2.extract.tiny_clip import TINY_MEAN, TINY_STD, make_tiny_clip

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny", seed=0)


@pytest.fixture(scope="module")
def encoder(tiny) -> ClipEncoder:
    return ClipEncoder.load(str(tiny), k=4, device="cpu")


@pytest.fixture(scope="module")
def reference(tiny) -> CLIPModel:
    return CLIPModel.from_pretrained(tiny).eval()


def _frames(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_tiny_clip_is_deterministic_per_seed(tmp_path, tiny):
    again = load_file(make_tiny_clip(tmp_path / "a", seed=0) / "model.safetensors")
    other = load_file(make_tiny_clip(tmp_path / "b", seed=1) / "model.safetensors")
    first = load_file(tiny / "model.safetensors")
    assert first.keys() == again.keys()
    assert all(np.array_equal(first[key], again[key]) for key in first)
    assert not all(np.array_equal(first[key], other[key]) for key in first)


def test_settings_come_from_the_model_folder(encoder):
    s = encoder.settings
    assert (s.image_size, s.tokens_per_frame, s.video_dim, s.text_dim) == (32, 17, 48, 32)
    assert s.mean == TINY_MEAN and s.std == TINY_STD  # the folder's, not CLIP's
    assert (s.k, s.dtype, s.revision) == (4, "fp32", None)


def test_normalisation_matches_the_processor_config(encoder):
    frames = _frames(3)
    ours = encoder.normalize(frames).numpy()  # (N, 3, S, S)
    expected = (frames / 255.0 - np.array(TINY_MEAN)) / np.array(TINY_STD)
    np.testing.assert_allclose(ours, expected.transpose(0, 3, 1, 2), rtol=0, atol=1e-6)


def _reference_pixels(frames: np.ndarray) -> torch.Tensor:
    """torchvision's ToTensor + Normalize in float32 (the original extractor's arithmetic)."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(255)
    return (x - torch.tensor(TINY_MEAN)[:, None, None]) / torch.tensor(TINY_STD)[:, None, None]


def test_video_features_equal_huggingface_hidden_states(encoder, reference):
    frames = _frames(5)
    with torch.no_grad():
        out = reference.vision_model(
            pixel_values=_reference_pixels(frames), output_hidden_states=True
        )
    assert len(out.hidden_states) == 6  # input of block 1 + 5 blocks
    expected = torch.stack(out.hidden_states[-4:], dim=1)  # blocks 2..5, shallowest first
    assert torch.equal(encoder.frame_hidden_states(frames), expected)  # fp32: bit for bit
    ours = encoder.encode_frames(frames)
    assert ours.shape == (5, 4, 17, 48) and ours.dtype == np.float16
    assert np.array_equal(ours, expected.numpy().astype(np.float16))  # storage rounding only
    # before post_layernorm: the last kept layer is the raw block output, not the normalised one
    post = reference.vision_model.post_layernorm(expected[:, -1])
    assert not torch.allclose(expected[:, -1], post, atol=1e-2)


def test_video_features_do_not_depend_on_batching(encoder):
    frames = _frames(9, seed=1)
    whole = encoder.encode_frames(frames)
    parts = np.concatenate([encoder.encode_frames(frames[:2]), encoder.encode_frames(frames[2:])])
    assert np.array_equal(whole, parts)


def test_text_features_equal_huggingface_hidden_states(encoder, reference, tiny):
    texts = ["the cat and the dog", "a person is cooking", "x", "running in the rain again"]
    ours = encoder.encode_texts(texts)
    tokenizer = CLIPTokenizer.from_pretrained(tiny)
    for text, got in zip(texts, ours, strict=True):
        ids = tokenizer(text, return_tensors="pt")["input_ids"]  # (1, L), no padding
        with torch.no_grad():
            hidden = reference.text_model(input_ids=ids, output_hidden_states=True).hidden_states
        expected = torch.stack(hidden[-4:], dim=2)[0]  # (L, K, Dq)
        assert torch.equal(encoder.token_hidden_states(ids)[0], expected)  # fp32: bit for bit
        expected = expected.numpy()
        assert got.features.shape == expected.shape == (ids.shape[1], 4, 32)
        assert got.n_tokens == ids.shape[1] and not got.truncated
        assert np.array_equal(got.features, expected.astype(np.float16))


def test_tokens_run_from_start_to_end_of_text(encoder, tiny):
    tokenizer = CLIPTokenizer.from_pretrained(tiny)
    for text in ["The THE the", "Ünïcode ✓ 中文 test", "a b c"]:
        ids, truncated = encoder.tokenize([text])[0]
        assert ids == tokenizer(text)["input_ids"] and not truncated
        assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id


def test_truncation_keeps_start_75_tokens_and_end(encoder, reference):
    words = " ".join(f"w{i}" for i in range(100))  # ~200 tokens
    (ids, truncated), (exact_ids, exact_trunc) = encoder.tokenize([words, "a " * 75])
    assert truncated and len(ids) == 77
    full = encoder.tokenizer(words, add_special_tokens=False)["input_ids"]
    assert ids == [encoder.tokenizer.bos_token_id, *full[:75], encoder.tokenizer.eos_token_id]
    assert len(exact_ids) == 77 and not exact_trunc  # exactly 75 tokens fit
    got = encoder.encode_texts([words])[0]
    assert got.truncated and got.n_tokens == 77 and got.features.shape == (77, 4, 32)
    with torch.no_grad():
        out = reference.text_model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    expected = torch.stack(out.hidden_states[-4:], dim=2)[0].numpy()
    assert np.array_equal(got.features, expected.astype(np.float16))


def test_text_cleaning_like_clip():
    assert clean_text("  a\t\tb \n c  ") == "a b c"
    assert clean_text("rock &amp;amp; roll") == "rock & roll"  # unescaped twice
    assert clean_text("schÃ¶n") == "schön"  # mojibake fixed by ftfy
    assert clean_text("“quoted”") == '"quoted"'


def test_bf16_and_fp16_storage(tiny, encoder):
    frames = _frames(4, seed=2)
    fp32 = encoder.encode_frames(frames).astype(np.float32)
    bf16 = ClipEncoder.load(str(tiny), device="cpu", dtype="bf16", towers=("vision",))
    assert bf16.settings.dtype == "bf16"
    got = bf16.encode_frames(frames)
    assert got.dtype == np.float16
    assert np.abs(got.astype(np.float32) - fp32).max() < 0.1 * np.abs(fp32).max()


def test_towers_are_loaded_only_when_asked(tiny):
    vision_only = ClipEncoder.load(str(tiny), device="cpu", towers=("vision",))
    assert vision_only.text is None and vision_only.tokenizer is None
    with pytest.raises(RuntimeError, match="without the text tower"):
        vision_only.encode_texts(["a"])
    with pytest.raises(ValueError, match="uint8"):
        vision_only.encode_frames(np.zeros((1, 32, 32, 3), np.float32))


def test_loading_errors_are_clear_and_never_random(tmp_path, tiny):
    with pytest.raises(ModelLoadError, match="never substitutes a random model") as err:
        ClipEncoder.load(str(tmp_path / "missing"), device="cpu")
    assert "HF_HUB_OFFLINE" in str(err.value) and "--clip" in str(err.value)
    with pytest.raises(ModelLoadError, match="r2test/absent"):
        ClipEncoder.load("r2test/absent", cache_dir=str(tmp_path), local_files_only=True)
    broken = tmp_path / "broken"
    shutil.copytree(tiny, broken)
    weights = load_file(broken / "model.safetensors")
    del weights["vision_model.encoder.layers.4.mlp.fc2.weight"]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="missing"):
        ClipEncoder.load(str(broken), device="cpu", towers=("vision",))
    (broken / "preprocessor_config.json").unlink()
    with pytest.raises(ModelLoadError, match="never substitutes"):
        ClipEncoder.load(str(broken), device="cpu", towers=())
    with pytest.raises(ValueError, match=r"k must be in 1\.\.5"):
        ClipEncoder.load(str(tiny), k=6, device="cpu", towers=())


def test_hub_revision_is_resolved_to_the_commit(tmp_path, tiny):
    repo = tmp_path / "models--r2test--tiny"  # the HuggingFace cache layout:
    snapshot = repo / "snapshots" / COMMIT  # snapshots/<commit>/<file> -> ../../blobs/<hash>
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, file in enumerate(sorted(tiny.iterdir())):
        shutil.copy(file, repo / "blobs" / f"blob{i}")
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", f"blob{i}"))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    for revision in (None, "main"):
        enc = ClipEncoder.load(
            "r2test/tiny", revision=revision, cache_dir=str(tmp_path), local_files_only=True,
            device="cpu", towers=("vision",),
        )  # fmt: skip
        assert enc.settings.model_id == "r2test/tiny" and enc.settings.revision == COMMIT
    folder = ClipEncoder.load(str(repo / "snapshots" / COMMIT), device="cpu", towers=())
    assert folder.settings.revision == COMMIT  # a snapshot folder knows its commit


def test_preprocessor_config_is_validated(tmp_path, tiny):
    odd = tmp_path / "odd"
    shutil.copytree(tiny, odd)
    cfg = json.loads((odd / "preprocessor_config.json").read_text())
    cfg["crop_size"] = {"height": 24, "width": 24}
    (odd / "preprocessor_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="crop size 24"):
        ClipEncoder.load(str(odd), device="cpu", towers=())
