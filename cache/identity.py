"""Identity of the CLIP model and tokenizer behind features: pure comparisons, no file access.

A model is what its files are, not the string that named it:

- When both sides record a `model_fingerprint` (a content hash of config.json and the weight
  files, computed by `r2.extract.identity`), the fingerprints decide: equal fingerprints are
  the same model whatever the names say (a moved folder, a relative vs an absolute path, a
  trailing slash, another working directory, a hub snapshot copied to a folder); different
  fingerprints are different models even under the same name.
- Otherwise (caches and checkpoints written before r2 recorded fingerprints) the names are
  compared: the hub id or path with trailing separators removed (a path that names an
  existing folder is resolved), plus the revision when both sides know it. Callers warn that
  the identity could only be compared by name (`compared_by_name`).

- Features imported from a published feature release (`r2 data import-release`) were made
  by someone else's copy of the model, whose files r2 never saw: their `model_fingerprint`
  is a release marker (`RELEASE_PREFIX`, e.g. "release:R2-Tuning/clip_b32"), not a content
  hash. Two markers compare exactly (the same release is the same model); a marker against
  a content hash (or nothing) falls back to the names, with a warning that says so: a
  checkpoint trained on the release's features matches a real local
  `openai/clip-vit-base-patch32` by id (+ revision when both sides know it).

The tokenizer is identified by `tokenizer_fingerprint` ("clean<N>:sha256:<hex>": the version
of the text-cleaning rule and a hash of the tokenizer files); unknown on either side means
"not compared".
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .records import CacheSettings

# CacheSettings fields compared here rather than by plain equality
IDENTITY_FIELDS = ("model_id", "revision", "model_fingerprint", "tokenizer_fingerprint")
RELEASE_PREFIX = "release:"  # model_fingerprint of imported release features (not a file hash)


def name_key(name: str) -> str:
    """A model name normalised for comparison by name (see the module docstring)."""
    stripped = name.rstrip("/" + os.sep) or name
    expanded = os.path.expanduser(stripped)
    if os.path.isdir(expanded):
        return os.path.realpath(expanded)
    return stripped


def is_release(fingerprint: str | None) -> bool:
    """True for the marker of features imported from a published release (not a file hash)."""
    return bool(fingerprint) and str(fingerprint).startswith(RELEASE_PREFIX)


def compared_by_name(a: CacheSettings, b: CacheSettings) -> bool:
    """True when the model identity rests on names: a side lacks a fingerprint, or one side
    is a release marker and the other a content hash (they cannot be compared)."""
    fa, fb = a.model_fingerprint, b.model_fingerprint
    return not (fa and fb and is_release(fa) == is_release(fb))


def model_difference(a: CacheSettings, b: CacheSettings) -> str | None:
    """Why `a` and `b` name different CLIP models ("field: a vs b"), or None if the same."""
    if not compared_by_name(a, b):
        if a.model_fingerprint == b.model_fingerprint:
            return None
        what = "releases" if is_release(a.model_fingerprint) else "CLIP model files"
        return (
            f"model_fingerprint: {a.model_fingerprint!r} vs {b.model_fingerprint!r} (different "
            f"{what}: {a.model_id!r} vs {b.model_id!r})"
        )
    if name_key(a.model_id) != name_key(b.model_id):
        return f"model_id: {a.model_id!r} vs {b.model_id!r}"
    if a.revision and b.revision and a.revision != b.revision:
        return f"revision: {a.revision!r} vs {b.revision!r}"
    return None


def tokenizer_difference(a: CacheSettings, b: CacheSettings) -> str | None:
    """Why the query tokenization of `a` and `b` differs, or None (same, or unknown)."""
    ta, tb = a.tokenizer_fingerprint, b.tokenizer_fingerprint
    if ta and tb and ta != tb:
        return f"tokenizer_fingerprint: {ta!r} vs {tb!r}"
    return None


def by_name_warning(a: CacheSettings, b: CacheSettings, what: tuple[str, str]) -> str | None:
    """The warning to give when the model identity of `a` and `b` rests on names only."""
    if not compared_by_name(a, b):
        return None
    sides = list(zip(what, (a, b), strict=True))
    lacking = [w for w, s in sides if not s.model_fingerprint]
    released = [(w, s.model_fingerprint) for w, s in sides if is_release(s.model_fingerprint)]
    reasons = []
    if lacking:
        verb = "record" if len(lacking) > 1 else "records"
        reasons.append(f"the {' and the '.join(lacking)} {verb} no CLIP model fingerprint "
                       "(made before r2 recorded one)")  # fmt: skip
    for side, marker in released:
        reasons.append(f"the {side} holds features imported from a published feature release "
                       f"({marker}), whose model files r2 never saw")  # fmt: skip
    return (
        f"{'; '.join(reasons)}: the CLIP model can only be compared by name "
        f"({a.model_id!r} vs {b.model_id!r}), not by its files"
    )
