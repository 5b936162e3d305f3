"""`r2 demo`: the whole pipeline on an embedded procedural dataset, offline, in minutes.

extract (CLIP features of generated videos and their queries) -> train (R² model) ->
eval (held-out videos, next to trivial baselines) -> predict (one video, one query, a plot).

CLIP weights: the default model when it is in the local HuggingFace cache (or reachable on
the hub), otherwise a small randomly initialised CLIP written next to the outputs. Which one
was used is printed in a banner at the start and the end: a random CLIP's features are NOT
meaningful for real videos; it only proves that the pipeline runs and learns.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger("r2.demo")

DEFAULT_OUT = Path("demo_out")
DEFAULT_CLIP = "openai/clip-vit-base-patch32"
SUMMARY_METRICS = ("MR-full-R1@0.5", "MR-full-R1@0.7", "MR-full-mAP", "HL-min-VeryGood-mAP",
                   "HL-min-VeryGood-Hit1")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class DemoSize:
    """How big the demo is (the test runs a smaller one)."""

    n_videos: int = 90
    """Procedural videos (split 70/20/10 into train/val/test by video)."""
    epochs: int = 12
    """Training epochs (each iterates the training set `dataset_repeat` = 4 times)."""
    batch_size: int = 16
    """Training batch size."""
    lr: float = 5e-4
    """Peak learning rate."""
    warmup: int = 30
    """Warm-up iterations."""
    dropout: float = 0.1
    """Dropout of the R² block maps (the released 0.5 is for 7k QVHighlights queries; the
    demo's ~150 training queries learn faster with less)."""
    dims: int = 64
    """Hidden size of the R² model (released: 256). 64 trains ~8x faster on a CPU and is plenty
    for the demo's shapes; pass DemoSize(dims=256) for the released size."""


@dataclasses.dataclass
class DemoResult:
    """What the demo produced and measured."""

    clip_model: str
    real_clip: bool
    metrics: dict[str, float]
    baselines: dict[str, dict[str, float]]
    checkpoint: Path
    plot: Path
    submission: Path


def choose_clip(requested: str | None, out_dir: Path) -> tuple[str, bool]:
    """The CLIP to extract with: `requested`, else the default if available locally/hub, else
    a tiny random CLIP written to `out_dir/tiny_clip` (returned with real=False)."""
    from r2.extract.encode import ClipEncoder, ModelLoadError
    from r2.extract.tiny_clip import make_tiny_clip

    if requested:
        return requested, True
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    for local_only in (True,) if offline else (True, False):
        try:
            ClipEncoder.load(DEFAULT_CLIP, k=4, towers=("text",), local_files_only=local_only)
            return DEFAULT_CLIP, True
        except ModelLoadError as err:
            log.debug("default CLIP unavailable (local_only=%s): %s", local_only, err)
    return str(make_tiny_clip(out_dir / "tiny_clip", seed=0)), False


def _banner(model: str, real: bool) -> str:
    if real:
        return f"CLIP weights: {model} (pretrained)"
    line = "!" * 78
    return (
        f"\n{line}\n!! CLIP weights: a SMALL RANDOMLY INITIALISED CLIP ({model})\n"
        f"!! because {DEFAULT_CLIP} is not in the local HuggingFace cache and the hub is\n"
        "!! unreachable. The demo still shows that r2 runs end to end and learns; for real\n"
        "!! videos use the pretrained model (r2 demo --clip PATH_OR_ID).\n"
        f"{line}"
    )


def run_demo(out_dir: str | Path = DEFAULT_OUT, *, size: DemoSize = DemoSize(), seed: int = 0,
             clip: str | None = None, device: str = "auto") -> DemoResult:  # fmt: skip
    """Run extract -> train -> eval -> predict on the procedural demo dataset.

    Args:
        out_dir: where everything goes (data/, cache.h5, run/, val_predictions.jsonl, plot).
        size: dataset and training size.
        seed: seed of the dataset and of training.
        clip: CLIP id or folder; default: the pretrained default when available, else random.
        device: "auto", "cpu" or "cuda".

    Returns:
        The metrics of the model and of the baselines, and the paths written.
    """
    from r2.demo_data import load_jsonl, make_demo_dataset
    from r2.evaluate import evaluate_records
    from r2.evaluate.inference import predict_split
    from r2.extract import extract
    from r2.train import train
    from r2.train.checkpoint import load_checkpoint

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ds = make_demo_dataset(out / "data", n_videos=size.n_videos, seed=seed)
    model_id, real = choose_clip(clip, out)
    log.warning("%s", _banner(model_id, real))

    cache = out / ("cache.h5" if real else "cache_random_clip.h5")
    extract([ds.videos], cache, annotations=[ds.train, ds.val, ds.test], model=model_id,
            k=4, fps=0.5, device=device, strict=True)  # fmt: skip
    run_dir = out / "run"
    if run_dir.exists():  # a demo run is cheap: retrain from scratch, deterministically
        log.info("removing the previous demo run %s", run_dir)
        shutil.rmtree(run_dir)
    train(cache, ds.train, run_dir, val_anno=ds.val, preset="qvhighlights", device=device,
          epochs=size.epochs, batch_size=size.batch_size, lr=size.lr, warmup=size.warmup,
          lr_drop=0, seed=seed, workers=0, preload="ram",
          config={"dropout": size.dropout, "dims": size.dims})  # fmt: skip

    checkpoint = run_dir / "best.safetensors"
    model, _meta = load_checkpoint(checkpoint, device="cpu")
    val_rows, train_rows = load_jsonl(ds.val), load_jsonl(ds.train)
    preds = predict_split(model, cache, val_rows, "qvhighlights")
    _write_jsonl(out / "val_predictions.jsonl", preds)
    metrics = evaluate_records(preds, val_rows, "qvhighlights")
    baselines = _baselines(train_rows, val_rows, seed)
    submission = out / "test_submission.jsonl"
    _write_jsonl(submission, predict_split(model, cache, load_jsonl(ds.test), "qvhighlights"))
    plot = _plot_one(checkpoint, ds, val_rows[0], out, model_id)
    (out / "metrics.json").write_text(json.dumps({"model": metrics, **baselines}, indent=1))
    print(format_comparison(metrics, baselines))
    log.warning("%s", _banner(model_id, real))
    log.info(
        "outputs in %s: metrics.json, %s, %s, run %s", out, plot.name, submission.name, run_dir
    )
    return DemoResult(model_id, real, metrics, baselines, checkpoint, plot, submission)


def _baselines(train_rows: list[dict], val_rows: list[dict], seed: int) -> dict[str, dict]:
    from r2.demo_data import baseline_predictions
    from r2.evaluate import evaluate_records

    rows = baseline_predictions(train_rows, val_rows, seed=seed)
    metrics = evaluate_records(rows, val_rows, "qvhighlights")
    return {"fixed window + random saliency": metrics}


def _plot_one(checkpoint: Path, ds, row: dict, out: Path, clip_model: str) -> Path:
    from r2.api import R2Predictor
    from r2.plot import plot_prediction

    predictor = R2Predictor.from_pretrained(checkpoint, device="cpu", clip_model=clip_model)
    video = predictor.encode_video(ds.videos / f"{row['vid']}.mp4")
    prediction = predictor.predict(video, row["query"], top=5)
    path = plot_prediction(prediction, out / "prediction.png")
    best = prediction.moments[0] if prediction.moments else None
    log.info("predict %s %r: best moment %s (ground truth %s); plot %s", row["vid"],
             row["query"], best, row["relevant_windows"], path)  # fmt: skip
    return path


def format_comparison(metrics: dict[str, float], baselines: dict[str, dict[str, float]]) -> str:
    """A table of the summary metrics: the model next to each baseline."""
    names = ["r2 (trained)", *baselines]
    width = max(len(n) for n in names) + 2
    lines = ["metric".ljust(24) + "".join(n.rjust(width) for n in names)]
    for key in SUMMARY_METRICS:
        values = [metrics.get(key, float("nan"))] + [
            b.get(key, float("nan")) for b in baselines.values()
        ]
        lines.append(key.ljust(24) + "".join(f"{v:.2f}".rjust(width) for v in values))
    return "\n".join(lines)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)
