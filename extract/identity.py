"""What a CLIP model and its tokenizer ARE: content fingerprints, and hub access without hangs.

- `model_fingerprint(files)`: "sha256:<hex>" over config.json and the weight files
  transformers loads (model.safetensors, its shards, or pytorch_model.bin), each as
  (name, size, sha256 of the bytes), read streaming (a 600 MB ViT-B/32 takes ~0.3 s at
  ~2 GB/s; results are memoised per process by path, size, mtime and inode). Equal
  fingerprints mean the same config and weights whatever the folder is called.
- `tokenizer_fingerprint(files)`: "clean<N>:sha256:<hex>" over the tokenizer files present
  (vocab, merges, tokenizer.json, configs), N being `CLEAN_TEXT_VERSION`, the version of
  `encode.clean_text` (bump it whenever that rule changes).
- `hub_access(model, ...)`: decides ONCE, in at most `PROBE_TIMEOUT_S`, whether the hub can
  be reached; if not, a hub id is resolved from the local HuggingFace cache
  (`local_files_only`) or refused with one message, instead of transformers' ~24 s of
  retries per file.

The comparison rules (fingerprints first, names as a fallback) are in `r2.cache.identity`.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import threading
import urllib.error
import urllib.request
from pathlib import Path

from r2.errors import UsageError

CLEAN_TEXT_VERSION = 1  # version of encode.clean_text (ftfy, html.unescape x2, whitespace)
PROBE_TIMEOUT_S = 3.0  # the one attempt to reach the hub
HASH_BLOCK = 8 * 2**20  # bytes read at once while hashing
CONFIG_FILE = "config.json"
# weight files in transformers' order of preference; an index lists its shards
WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors",
                "pytorch_model.bin.index.json", "pytorch_model.bin")  # fmt: skip
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json")  # fmt: skip

log = logging.getLogger(__name__)


class HubUnreachableError(UsageError):
    """The hub cannot be reached and the model is not in the local HuggingFace cache."""


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int, inode: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (memoised while the file is unchanged)."""
    real = os.path.realpath(path)  # hub snapshots are symlinks into blobs/
    st = os.stat(real)
    return _file_sha256(real, st.st_size, st.st_mtime_ns, st.st_ino)


def fingerprint(files: list[str | os.PathLike], prefix: str = "") -> str:
    """prefix + "sha256:<hex>" over (name, size, sha256) of each file, sorted by name."""
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: Path(p).name):
        size = os.path.getsize(path)
        digest.update(f"{Path(path).name}\t{size}\t{file_sha256(path)}\n".encode())
    return f"{prefix}sha256:{digest.hexdigest()}"


def _shards(index_file: str) -> list[str]:
    import json

    with open(index_file, encoding="utf-8") as fh:
        return sorted(set(json.load(fh).get("weight_map", {}).values()))


def model_files(find) -> list[str]:
    """config.json and the weight files of a model; `find(name)` returns a path or None."""
    config = find(CONFIG_FILE)
    if config is None:
        raise FileNotFoundError(CONFIG_FILE)
    for name in WEIGHT_FILES:
        path = find(name)
        if path is None:
            continue
        if name.endswith(".index.json"):
            shards = [find(shard) for shard in _shards(path)]
            if any(s is None for s in shards):
                raise FileNotFoundError(f"a shard listed in {name}")
            return [config, path, *shards]
        return [config, path]
    raise FileNotFoundError(f"no weight file ({', '.join(WEIGHT_FILES)})")


def tokenizer_files(find) -> list[str]:
    """The tokenizer files present (`find(name)` returns a path or None)."""
    found = [p for p in (find(name) for name in TOKENIZER_FILES) if p is not None]
    if not found:
        raise FileNotFoundError(f"no tokenizer file ({', '.join(TOKENIZER_FILES)})")
    return found


def model_fingerprint(find) -> str:
    """The content fingerprint of a model (see the module docstring)."""
    return fingerprint(model_files(find))


def tokenizer_fingerprint(find) -> str:
    """The tokenizer's identity: cleaning-rule version + hash of its files."""
    return fingerprint(tokenizer_files(find), prefix=f"clean{CLEAN_TEXT_VERSION}:")


def is_local(model: str) -> bool:
    """True when `model` names a local folder (as transformers decides: an existing dir)."""
    return os.path.isdir(os.path.expanduser(str(model)))


def _probe(endpoint: str) -> str | None:
    request = urllib.request.Request(endpoint.rstrip("/") + "/api/models?limit=1", method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S):
            return None
    except urllib.error.HTTPError:
        return None  # it answered
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return str(getattr(exc, "reason", exc))


@functools.lru_cache(maxsize=4)
def _hub_reachable(endpoint: str) -> str | None:
    """None if the hub answers (any HTTP status) within PROBE_TIMEOUT_S, else the reason.

    The request runs in a daemon thread so that a slow name lookup, which socket timeouts do
    not cover, cannot hold the caller longer either.
    """
    result: list[str | None] = []
    thread = threading.Thread(target=lambda: result.append(_probe(endpoint)), daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT_S + 0.5)
    return result[0] if result else f"no answer within {PROBE_TIMEOUT_S:g} s"


def looks_like_path(model: str) -> bool:
    """True when `model` can only be meant as a path (hub ids are "name" or "org/name")."""
    return (
        model.startswith(("/", "./", "../", "~"))
        or model.count("/") > 1
        or (os.sep != "/" and os.sep in model)
        or os.path.exists(os.path.expanduser(model))
    )


def hub_access(model: str, revision: str | None, cache_dir: str | None, local_only: bool) -> bool:
    """Whether to load `model` with `local_files_only`, deciding after ONE quick probe.

    Local folders and HF_HUB_OFFLINE / `local_only` need no probe. Otherwise, if the hub
    does not answer within PROBE_TIMEOUT_S, a model present in the local HuggingFace cache
    is loaded from there (True) and an absent one is refused.

    Raises:
        HubUnreachableError: the hub cannot be reached and the model is not cached.
    """
    import huggingface_hub.constants as hub

    if local_only or is_local(model) or hub.HF_HUB_OFFLINE:
        return local_only
    reason = _hub_reachable(hub.ENDPOINT)
    if reason is None:
        return False
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(model, CONFIG_FILE, cache_dir=cache_dir, revision=revision)
    except ValueError:  # not a valid hub id
        cached = None
    if isinstance(cached, str):
        log.warning("the HuggingFace hub (%s) cannot be reached (%s): using the cached copy of "
                    "%s", hub.ENDPOINT, reason, model)  # fmt: skip
        return True
    raise HubUnreachableError(
        f"cannot load the CLIP model {model!r}: the HuggingFace hub ({hub.ENDPOINT}) cannot be "
        f"reached ({reason}) and the model is not in the local HuggingFace cache "
        f"({cache_dir or hub.HF_HUB_CACHE}). Run once with network access, or pass --clip "
        "/path/to/a/local/folder. r2 never substitutes a random model."
    )
