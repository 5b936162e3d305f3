"""The released R²-Tuning checkpoints by name: `official:qvhighlights` wherever a checkpoint goes.

    r2 predict video.mp4 "a man opens the fridge" --checkpoint official:qvhighlights
    R2Predictor.from_pretrained("official:qvhighlights")

The original authors publish 20 checkpoints on the Hugging Face hub (repo
`yeliudev/R2-Tuning`, table below, copied from the R2-Tuning README's model zoo). The first
use of a name:

1. finds the original `.pth` in the Hugging Face cache (`HF_HUB_CACHE`, `HF_HOME`, honoured
   as huggingface_hub does) or in the drop folder `<r2 cache>/official/downloads/`, else
   downloads it with `huggingface_hub` (nothing is downloaded when `HF_HUB_OFFLINE=1`);
2. converts it with `r2.train.convert` (read with `torch.load(weights_only=True)`: nothing
   is unpickled) into `<r2 cache>/official/<name>.safetensors`, recording the source repo,
   file, commit and SHA-256 in the checkpoint's metadata (`source`).

Later uses load the converted file without touching the network. `<r2 cache>` is
`$R2_CACHE_DIR`, else `$XDG_CACHE_HOME/r2`, else `~/.cache/r2`.

The 8 hex digits in each file name (`r2_tuning_qvhighlights-ed516355.pth`) look like
torch.hub's convention (a prefix of the file's SHA-256), but that has not been confirmed
for these files, so r2 records whether the prefix matches and warns when it does not, and
does not refuse the file (`ENFORCE_NAME_HASH`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from r2.errors import UsageError

log = logging.getLogger(__name__)

PREFIX = "official:"  # checkpoint names that mean "the released checkpoint NAME"
REPO_ID = "yeliudev/R2-Tuning"
CACHE_ENV = "R2_CACHE_DIR"  # overrides where r2 keeps converted checkpoints
ENFORCE_NAME_HASH = False  # the name's hash prefix is unconfirmed: recorded, warned about
DOWNLOAD_TIMEOUT_S = 5.0  # one quick attempt to reach the hub before saying what to do
HASH_CHUNK_BYTES = 1 << 20

# Released highlight checkpoints answer a query per video; without one, this text is asked.
TVSUM_DOMAINS = {
    "bk": "beekeeping",
    "bt": "attempting bike tricks",
    "ds": "dog show",
    "fm": "flash mob gathering",
    "ga": "grooming an animal",
    "ms": "making a sandwich",
    "pk": "parkour",
    "pr": "parade",
    "vt": "changing a vehicle tire",
    "vu": "getting a vehicle unstuck",
}
YOUTUBE_DOMAINS = {
    "dog": "dog",
    "gym": "gymnastics",
    "par": "parkour",
    "ska": "skating",
    "ski": "skiing",
    "sur": "surfing",
}
_FILE_HASHES = {  # name -> the 8 hex digits of its file name (the README's model zoo)
    "charades": "1de02112",
    "ego4d": "6a6f5754",
    "qvhighlights": "ed516355",
    "tacos": "81759b55",
    "tvsum_bk": "45b59440",
    "tvsum_bt": "13683fdf",
    "tvsum_ds": "d11b33d3",
    "tvsum_fm": "2c8c119d",
    "tvsum_ga": "58e79858",
    "tvsum_ms": "d9b4f8fa",
    "tvsum_pk": "1830ce03",
    "tvsum_pr": "51d78fc9",
    "tvsum_vt": "0069d8d3",
    "tvsum_vu": "6f8ebb4b",
    "youtube_dog": "702bd293",
    "youtube_gym": "ff68b1b3",
    "youtube_par": "27442af0",
    "youtube_ska": "dad28398",
    "youtube_ski": "df2edc4c",
    "youtube_sur": "d384d8b2",
}
_SNAPSHOT_RE = re.compile(r"snapshots/([0-9a-f]{40})/")


class ZooError(UsageError):
    """An official checkpoint is unknown or cannot be had; the message says what to do."""


@dataclass(frozen=True)
class ZooEntry:
    """One released checkpoint."""

    name: str  # e.g. "qvhighlights", "tvsum_bk"
    repo_id: str  # Hugging Face model repo
    filename: str  # path of the .pth inside the repo
    log: str  # its training log inside the repo
    preset: str  # r2 dataset preset (post-processing, clip rate)
    generic_query: str | None  # highlight checkpoints: the query asked when none is given

    @property
    def name_hash(self) -> str:
        """The 8 hex digits of the file name (a SHA-256 prefix by torch.hub's convention)."""
        return self.filename.rsplit("-", 1)[1].removesuffix(".pth")

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo_id}/resolve/main/{self.filename}"


def _entry(name: str, digits: str) -> ZooEntry:
    preset, _, domain = name.partition("_")
    generic = {"tvsum": TVSUM_DOMAINS, "youtube": YOUTUBE_DOMAINS}.get(preset, {}).get(domain)
    return ZooEntry(
        name,
        REPO_ID,
        f"checkpoints/r2_tuning_{name}-{digits}.pth",
        f"checkpoints/r2_tuning_{name}.log",
        preset,
        generic,
    )


ZOO: dict[str, ZooEntry] = {name: _entry(name, h) for name, h in _FILE_HASHES.items()}


def is_official(spec: object) -> bool:
    """True for `official:NAME` checkpoint specs."""
    return str(spec).startswith(PREFIX)


def get_entry(name: str) -> ZooEntry:
    """The zoo entry of `NAME` or `official:NAME` (case-insensitive)."""
    key = str(name).removeprefix(PREFIX).strip().lower()
    if key not in ZOO:
        raise ZooError(f"unknown official checkpoint {name!r}; known: {', '.join(ZOO)}")
    return ZOO[key]


def cache_dir() -> Path:
    """Where r2 keeps converted checkpoints: $R2_CACHE_DIR, $XDG_CACHE_HOME/r2 or ~/.cache/r2."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "r2"


def converted_path(entry: ZooEntry) -> Path:
    """The r2 checkpoint converted from `entry`."""
    return cache_dir() / "official" / f"{entry.name}.safetensors"


def drop_path(entry: ZooEntry) -> Path:
    """Where a user may put a downloaded original file by hand."""
    return cache_dir() / "official" / "downloads" / Path(entry.filename).name


def hub_cache_dir() -> Path:
    """huggingface_hub's cache folder, read from the environment now (not at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it (1/true/yes/on)."""
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.strip().lower() in {"1", "true", "yes", "on"}


def find_source(entry: ZooEntry) -> Path | None:
    """The original file if it is on disk (Hugging Face cache, then the drop folder)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(entry.repo_id, entry.filename, cache_dir=hub_cache_dir())
    if isinstance(found, str) and Path(found).is_file():
        return Path(found)
    drop = drop_path(entry)
    return drop if drop.is_file() else None


def _missing_message(entry: ZooEntry, why: str) -> str:
    return (
        f"official:{entry.name} is not cached and {why}. Download {entry.url} and put it at "
        f"{drop_path(entry)} (or into the Hugging Face cache {hub_cache_dir()} with "
        f"`hf download {entry.repo_id} {entry.filename}`), then run again"
    )


def download_source(entry: ZooEntry) -> Path:
    """Download the original file with huggingface_hub (its cache, its offline mode)."""
    if hub_offline():
        raise ZooError(_missing_message(entry, "HF_HUB_OFFLINE is set"))
    from huggingface_hub import hf_hub_download

    log.info("downloading %s from %s", entry.filename, entry.repo_id)
    try:
        path = hf_hub_download(
            entry.repo_id,
            entry.filename,
            cache_dir=hub_cache_dir(),
            etag_timeout=DOWNLOAD_TIMEOUT_S,
        )
    except Exception as err:  # network, HTTP, disk: one message saying what to do
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ZooError(_missing_message(entry, f"the download failed ({reason})")) from None
    return Path(path)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _source_record(entry: ZooEntry, src: Path) -> dict:
    """What the converted checkpoint records about its source file."""
    sha = sha256_file(src)
    matches = sha.startswith(entry.name_hash)
    if not matches:
        message = (
            f"{src.name}: SHA-256 {sha[:16]}... does not start with the name's "
            f"{entry.name_hash} (torch.hub's convention, unconfirmed for these files)"
        )
        if ENFORCE_NAME_HASH:
            raise ZooError(message)
        log.warning("%s; using it", message)
    commit = _SNAPSHOT_RE.search(src.absolute().as_posix())
    return {
        "repo_id": entry.repo_id,
        "filename": entry.filename,
        "commit": commit.group(1) if commit else None,
        "sha256": sha,
        "bytes": src.stat().st_size,
        "name_hash_matches": matches,
    }


def convert(entry: ZooEntry, src: Path) -> Path:
    """Convert the original file `src` of `entry` into r2's cache; returns the checkpoint."""
    from r2.train.convert import convert_checkpoint

    dst = converted_path(entry)
    extra = {"source": _source_record(entry, src), "official_name": entry.name}
    if entry.generic_query:
        extra["generic_query"] = entry.generic_query
    try:
        convert_checkpoint(src, dst, preset=entry.preset, extra_meta=extra)
    except ValueError as err:  # not an original checkpoint, unpickling refused, keys
        raise ZooError(f"{src}: cannot convert official:{entry.name}: {err}") from None
    log.info("converted official:%s (%s) -> %s", entry.name, src, dst)
    return dst


def _converted_ok(entry: ZooEntry, path: Path) -> bool:
    """The converted file exists and was made from this entry's file."""
    if not path.is_file():
        return False
    from r2.train.checkpoint import CheckpointError, read_meta

    try:
        source = read_meta(path).get("source") or {}
    except CheckpointError:
        return False
    return source.get("filename") == entry.filename and bool(source.get("sha256"))


def fetch(name: str, *, download: bool = True) -> Path:
    """The r2 checkpoint of an official name, converted once and kept in the r2 cache.

    Args:
        name: "qvhighlights" or "official:qvhighlights" (see `ZOO`).
        download: allow a download when the original file is not on disk.

    Raises:
        ZooError: unknown name, or the file is neither cached nor downloadable (the message
            says what to download and where to put it).
    """
    entry = get_entry(name)
    dst = converted_path(entry)
    if _converted_ok(entry, dst):
        return dst
    src = find_source(entry)
    if src is None:
        if not download:
            raise ZooError(_missing_message(entry, "downloading was not allowed"))
        src = download_source(entry)
    return convert(entry, src)


def status(entry: ZooEntry) -> tuple[str, Path | None]:
    """("converted" | "downloaded" | "not cached", path) for `r2 models`."""
    dst = converted_path(entry)
    if _converted_ok(entry, dst):
        return "converted", dst
    src = find_source(entry)
    return ("downloaded", src) if src is not None else ("not cached", None)
