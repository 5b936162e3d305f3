"""Per-domain training (YouTube Highlights, TVSum): one model per domain, as the paper.

`r2 train --preset youtube|tvsum --domain NAME|all --out OUT` runs :func:`train_domains`:
for each domain an ordinary single run (`r2.train.train`, untouched) in `OUT/NAME/`, on
that domain's rows, then the table of Table 3 / Table 4 (each domain's best validation
value, the mean, the paper's numbers beside), printed and written to `OUT/table.json`.

- **Splits.** By default (`splits="lists"`) a domain's training and validation videos are
  the released lists of `domain_splits.json` (shipped with r2; `split_lists=` another such
  file): the rows of the given files (train and val pooled) whose video is listed.
  `splits="jsonl"`: the files' own split, rows chosen by their `domain` field. The rows a
  domain gets are written to `OUT/NAME/train.jsonl` and `val.jsonl` (its run is
  self-contained; `r2 eval --checkpoint OUT` scores them again).
- **Domains** are named as in the lists (`dog`, `gymnastics`, ... / `BK`, `BT`, ...); case
  and unique prefixes (`gym`, `ska`, the released configs' names) are accepted.
- **Resume.** `OUT/domains.json` records the dataset, the split rule and the domains. A run
  that was stopped (killed, Ctrl-C, `max_steps`) continues with `resume=True`: domains whose
  last epoch is done are not trained again (their recorded results go into the table), the
  interrupted one resumes exactly (r2.train's resume), the rest start. Without `resume` an
  existing per-domain run is refused, like a single run.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from r2.errors import UsageError
from r2.evaluate.domains import (
    KEY,
    MANIFEST,
    MANIFEST_FORMAT,
    TABLE_NAME,
    domain_table,
    read_manifest,
    write_table,
)

from .run import RunExistsError, train

log = logging.getLogger(__name__)

SPLITS_KEYS = {"youtube": "youtube_highlights", "tvsum": "tvsum"}  # in domain_splits.json
SPLIT_RULES = ("lists", "jsonl")
ALL = "all"
MIN_PREFIX = 2  # shortest accepted abbreviation of a domain name
ROWS_WAIT_S = 600  # distributed: how long other ranks wait for rank 0's rows of a domain


def resolve_domain(name: str, known: list[str]) -> str:
    """A domain by exact name (any case) or unique prefix; UsageError listing the known."""
    exact = [d for d in known if d.lower() == name.strip().lower()]
    if exact:
        return exact[0]
    prefix = [d for d in known if d.lower().startswith(name.strip().lower())]
    if len(name.strip()) >= MIN_PREFIX and len(prefix) == 1:
        return prefix[0]
    raise UsageError(f"unknown domain {name!r}; known: {', '.join(known)} (or 'all')")


def _read_rows(path: Path | None, what: str) -> list[dict[str, Any]]:
    from r2.data.check import read_annotations

    if path is None:
        return []
    return [r.data for r in read_annotations(path, what=what).rows]


def _by_lists(rows: list[dict], lists: dict, domain: str, split: str) -> list[dict]:
    """Rows whose video is in the domain's list of `split` (domain field set to the list's)."""
    listed = set(lists[domain].get(split, []))
    chosen = [r for r in rows if str(r.get("vid")) in listed]
    moved = [r["qid"] for r in chosen if r.get("domain") not in (None, domain)]
    if moved:
        log.warning("%d rows name another domain than the lists' %s (lists win): qids %s",
                    len(moved), domain, ", ".join(map(str, moved[:5])))  # fmt: skip
    found = {str(r.get("vid")) for r in chosen}
    if len(found) < len(listed):
        log.info("%s %s: %d of %d listed videos have rows (the others are missing from the "
                 "annotations)", domain, split, len(found), len(listed))  # fmt: skip
    return [{**r, "domain": domain} for r in chosen]


def plan(
    dataset: str, train_anno: Path, val_anno: Path | None, splits: str, split_lists, domain: str
) -> dict[str, dict[str, list[dict]]]:
    """domain -> {"train": rows, "val": rows} for the requested domain(s)."""
    if splits not in SPLIT_RULES:
        raise UsageError(f"splits must be one of {', '.join(SPLIT_RULES)}, got {splits!r}")
    train_rows = _read_rows(train_anno, "training annotations")
    val_rows = _read_rows(val_anno, "validation annotations")
    if splits == "lists":
        from r2.data.youtube import load_splits

        lists = load_splits(split_lists, SPLITS_KEYS[dataset])
        known, pool = list(lists), train_rows + val_rows
        pick = lambda d, s: _by_lists(pool, lists, d, s)  # noqa: E731
    else:
        known = sorted({str(r["domain"]) for r in train_rows if r.get("domain")})
        pick = lambda d, s: [r for r in (train_rows if s == "train" else val_rows)  # noqa: E731
                             if r.get("domain") == d]  # fmt: skip
    chosen = known if domain.strip().lower() == ALL else [resolve_domain(domain, known)]
    out = {d: {"train": pick(d, "train"), "val": pick(d, "val")} for d in chosen}
    empty = [d for d, rows in out.items() if not rows["train"]]
    if empty:
        files = f"{train_anno}" + (f" + {val_anno}" if splits == "lists" and val_anno else "")
        raise UsageError(f"no training rows for domain(s) {', '.join(empty)} in {files}")
    return out


def _write_rows(path: Path, rows: list[dict]) -> Path | None:
    """The domain's rows as jsonl (rewritten only when they changed); None when empty."""
    from r2.files import write_text_atomic

    if not rows:
        return None
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if not _is_main_process():  # rank 0 writes the same rows: wait until they are there
        deadline = time.monotonic() + ROWS_WAIT_S
        while not (path.is_file() and path.read_text(encoding="utf-8") == text):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{path}: rank 0 did not write this domain's rows within "
                                   f"{ROWS_WAIT_S} s")  # fmt: skip
            time.sleep(0.05)
    elif not (path.is_file() and path.read_text(encoding="utf-8") == text):
        write_text_atomic(path, text)
    return path


def _manifest(out: Path, dataset: str, splits: str, split_lists, domains: list[str],
              resume: bool) -> dict:  # fmt: skip
    """Create or (resuming) extend OUT/domains.json; refuse a run of other settings."""
    from r2.files import write_text_atomic

    path = out / MANIFEST
    lists = "shipped domain_splits.json" if split_lists is None else str(split_lists)
    if path.exists():
        if not resume:
            raise RunExistsError(f"{out} already holds a per-domain run ({MANIFEST}); pass "
                                 "--resume to continue it or choose another --out")  # fmt: skip
        old = read_manifest(out)
        diffs = [f"{k}: {old.get(k)!r} (saved) vs {v!r} (now)" for k, v in
                 (("dataset", dataset), ("splits", splits), ("split_lists", lists))
                 if old.get(k) != v]  # fmt: skip
        if diffs:
            raise ValueError(f"cannot resume {out}: " + "; ".join(diffs))
        domains = list(old["domains"]) + [d for d in domains if d not in old["domains"]]
    manifest = {"format": MANIFEST_FORMAT, "version": 1, "dataset": dataset, "splits": splits,
                "split_lists": lists, "domains": domains}  # fmt: skip
    write_text_atomic(path, json.dumps(manifest, indent=1) + "\n")
    return manifest


def finished_result(run: Path, epochs: int) -> dict | None:
    """The recorded result of a domain run whose last epoch is done, else None."""
    try:
        meta = json.loads((run / "last.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if int(meta.get("epoch") or 0) < epochs:
        return None
    return {KEY: meta.get("best"), "best_epoch": meta.get("best_epoch"),
            "epoch": meta.get("epoch"), "finished": True}  # fmt: skip


def train_domains(
    cache: str | os.PathLike,
    train_anno: str | os.PathLike,
    out: str | os.PathLike,
    *,
    val_anno: str | os.PathLike | None = None,
    preset: str = "youtube",
    domain: str = ALL,
    splits: str = "lists",
    split_lists: str | os.PathLike | None = None,
    resume: bool = False,
    **train_kwargs: Any,
) -> dict:
    """Train one model per domain and return the per-domain table (module docstring).

    Args:
        cache, train_anno, val_anno: as `r2.train.train` (rows of every domain).
        out: folder of the per-domain run (OUT/NAME/ per domain, OUT/table.json).
        preset: "youtube" or "tvsum".
        domain: a domain name (or prefix), or "all".
        splits: "lists" (the per-domain lists) or "jsonl" (the files' own split).
        split_lists: a domain_splits.json-style file (default: the shipped one).
        resume: continue a stopped per-domain run (finished domains are kept).
        train_kwargs: passed to every `r2.train.train` (epochs, seed, device, ...).

    Returns:
        The table (`r2.evaluate.domains.domain_table`), also in OUT/table.json.
    """
    from .config import get_preset

    name = get_preset(preset).name
    if name not in SPLITS_KEYS:
        raise UsageError(f"--domain is for the per-domain datasets ({', '.join(SPLITS_KEYS)}), "
                         f"not {name}")  # fmt: skip
    out = Path(out)
    rows = plan(name, Path(train_anno), val_anno and Path(val_anno), splits, split_lists, domain)
    main = _is_main_process()  # torchrun/srun: rank 0 alone writes the per-domain files
    epochs = train_kwargs.get("epochs") or get_preset(name).epochs
    results = {}
    if main:
        manifest = _manifest(out, name, splits, split_lists, list(rows), resume)
        results = _previous(out, manifest["domains"], rows, epochs)
    for d, data in rows.items():
        results[d] = _train_one(cache, out / d, name, data, d, epochs, resume, train_kwargs)
        if main:
            write_table(out / TABLE_NAME, domain_table(name, results))
    table = domain_table(name, results)
    if main:
        write_table(out / TABLE_NAME, table)
        log.info("per-domain table written to %s", out / TABLE_NAME)
    return table


def _is_main_process() -> bool:
    """False in the processes of a distributed launch other than rank 0."""
    from .distributed import from_env

    found = from_env()
    return found is None or found[0] == 0


def _previous(out: Path, domains: list[str], rows: dict, epochs: int) -> dict:
    """Results of domains of this folder not trained now (an earlier --domain NAME)."""
    found = {}
    for d in domains:
        if d not in rows and (res := finished_result(out / d, epochs)) is not None:
            found[d] = {**res, "run": str(out / d)}
    return found


def _train_one(cache, run: Path, dataset: str, data: dict, domain: str, epochs: int,
               resume: bool, kwargs: dict) -> dict:  # fmt: skip
    facts = {"n_train": len(data["train"]), "n_val": len(data["val"]), "run": str(run)}
    done = finished_result(run, epochs) if resume else None
    if done is not None:
        log.info("%s: finished earlier (best %s %s at epoch %s): not trained again", domain,
                 KEY, done[KEY], done["best_epoch"])  # fmt: skip
        return {**done, **facts}
    train_path = _write_rows(run / "train.jsonl", data["train"])
    val_path = _write_rows(run / "val.jsonl", data["val"])
    log.info("domain %s: %d training and %d validation rows -> %s", domain,
             facts["n_train"], facts["n_val"], run)  # fmt: skip
    summary = train(cache, train_path, run, val_anno=val_path, preset=dataset, resume=resume,
                    **kwargs)  # fmt: skip
    return {
        KEY: summary.get("best"),
        "best_epoch": summary.get("best_epoch"),
        "epoch": summary.get("epoch"),
        "finished": summary.get("finished"),
        **facts,
    }
