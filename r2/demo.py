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
    """Procedural videos (split 70/10/20 into train/val/test by video)."""
    val_fraction: float = 0.1
    """Videos whose queries choose the best epoch (validation)."""
    test_fraction: float = 0.2
    """Held-out videos whose queries are scored in the final table; they play no part in
    training or in choosing the epoch."""
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
    """The trained model's metrics on the held-out TEST split."""
    baselines: dict[str, dict[str, float]]
    """The trivial baselines' metrics on the same test split."""
    checkpoint: Path
    plot: Path
    submission: Path
    val_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    """The model's metrics on the validation split (which chose the epoch: optimistic)."""
    split: str = "test"
    """The split of `metrics` and `baselines`."""


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

    Training keeps the epoch that scores best on the validation videos; the table compares
    the model with trivial baselines on the TEST videos, which played no part in training
    or in choosing that epoch.

    Args:
        out_dir: where everything goes (data/, cache.h5, run/, predictions, metrics, plot).
        size: dataset and training size.
        seed: seed of the dataset and of training.
        clip: CLIP id or folder; default: the pretrained default when available, else random.
        device: "auto", "cpu" or "cuda".

    Returns:
        The metrics of the model and of the baselines on the test split, and the paths.
    """
    from r2.demo_data import make_demo_dataset

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ds = make_demo_dataset(
        out / "data",
        n_videos=size.n_videos,
        seed=seed,
        val_fraction=size.val_fraction,
        test_fraction=size.test_fraction,
    )
    model_id, real = choose_clip(clip, out)
    log.warning("%s", _banner(model_id, real))
    cache = out / ("cache.h5" if real else "cache_random_clip.h5")
    run_dir = _extract_and_train(ds, cache, out / "run", model_id, size, seed, device)
    result = _score(ds, cache, run_dir / "best.safetensors", out, (model_id, real), seed)
    print(format_comparison(result.metrics, result.baselines, _split_title(ds, result)))
    log.warning("%s", _banner(model_id, real))
    log.info("outputs in %s: metrics.json, %s, %s, run %s", out, result.plot.name,
             result.submission.name, run_dir)  # fmt: skip
    return result


def _extract_and_train(ds, cache: Path, run_dir: Path, model_id: str, size: DemoSize,
                       seed: int, device: str) -> Path:  # fmt: skip
    """Extract the features of every split, then train (retrained from scratch each time)."""
    from r2.extract import extract
    from r2.train import train

    extract([ds.videos], cache, annotations=[ds.train, ds.val, ds.test], model=model_id,
            k=4, fps=0.5, device=device, strict=True)  # fmt: skip
    if run_dir.exists():  # a demo run is cheap: retrain from scratch, deterministically
        log.info("removing the previous demo run %s", run_dir)
        shutil.rmtree(run_dir)
    train(cache, ds.train, run_dir, val_anno=ds.val, preset="qvhighlights", device=device,
          epochs=size.epochs, batch_size=size.batch_size, lr=size.lr, warmup=size.warmup,
          lr_drop=0, seed=seed, workers=0, preload="ram",
          config={"dropout": size.dropout, "dims": size.dims})  # fmt: skip
    return run_dir


def _score(ds, cache: Path, checkpoint: Path, out: Path, clip: tuple[str, bool],
           seed: int) -> DemoResult:  # fmt: skip
    """Predict the val and test splits; score the test split against its withheld labels."""
    from r2.demo_data import load_jsonl
    from r2.evaluate import evaluate_records
    from r2.evaluate.inference import predict_split
    from r2.files import write_text_atomic
    from r2.train.checkpoint import load_checkpoint

    model, _meta = load_checkpoint(checkpoint, device="cpu")
    val_rows, test_gt = load_jsonl(ds.val), load_jsonl(ds.test_gt)
    val_preds = predict_split(model, cache, val_rows, "qvhighlights")
    _write_jsonl(out / "val_predictions.jsonl", val_preds)
    test_preds = predict_split(model, cache, load_jsonl(ds.test), "qvhighlights")
    submission = out / "test_submission.jsonl"
    _write_jsonl(submission, test_preds)
    metrics = evaluate_records(test_preds, test_gt, "qvhighlights")
    baselines = _baselines(load_jsonl(ds.train), test_gt, seed)
    val_metrics = evaluate_records(val_preds, val_rows, "qvhighlights")
    write_text_atomic(out / "metrics.json", json.dumps(
        {"split": "test", "model": metrics, **baselines, "model on val (chose the epoch)":
         val_metrics}, indent=1))  # fmt: skip
    plot = _plot_one(checkpoint, ds, test_gt[0], out, clip[0])
    return DemoResult(clip[0], clip[1], metrics, baselines, checkpoint, plot, submission,
                      val_metrics=val_metrics)  # fmt: skip


def _split_title(ds, result: DemoResult) -> str:
    videos = len({r["vid"] for r in _load(ds.test)})
    return (f"held-out TEST split: {int(result.metrics.get('n_queries', 0))} queries on {videos} "
            "videos not used for training or for choosing the epoch (chosen on the "
            f"validation split, where the model scores MR-full-mAP "
            f"{result.val_metrics.get('MR-full-mAP', float('nan')):.2f})")  # fmt: skip


def _load(path: Path) -> list[dict]:
    from r2.demo_data import load_jsonl

    return load_jsonl(path)


def _baselines(train_rows: list[dict], test_rows: list[dict], seed: int) -> dict[str, dict]:
    from r2.demo_data import baseline_predictions
    from r2.evaluate import evaluate_records

    rows = baseline_predictions(train_rows, test_rows, seed=seed)
    metrics = evaluate_records(rows, test_rows, "qvhighlights")
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


def format_comparison(
    metrics: dict[str, float], baselines: dict[str, dict[str, float]], title: str = ""
) -> str:
    """A table of the summary metrics: the model next to each baseline (`title` above it
    says which split they were computed on)."""
    names = ["r2 (trained)", *baselines]
    width = max(len(n) for n in names) + 2
    lines = [title] if title else []
    lines.append("metric".ljust(24) + "".join(n.rjust(width) for n in names))
    for key in SUMMARY_METRICS:
        values = [metrics.get(key, float("nan"))] + [
            b.get(key, float("nan")) for b in baselines.values()
        ]
        lines.append(key.ljust(24) + "".join(f"{v:.2f}".rjust(width) for v in values))
    return "\n".join(lines)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    from r2.files import write_text_atomic

    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
