"""Ground truth for the videos a user looks at: QVHighlights-schema annotation files.

`r2 predict --anno FILE` and `r2 app --anno FILE` draw a query's annotated windows (and its
per-clip saliency labels, if the file has them) when the video's file stem is an annotated
`vid` and the query text equals the annotated one (case and spacing ignored).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from r2.train.annotations import read_annotations

MAX_SALIENCY_LABEL = 4.0  # QVHighlights scores clips 0..4


@dataclass
class Truth:
    """One annotated query of one video."""

    query: str
    windows: list[tuple[float, float]]  # seconds
    clip_saliency: dict[int, float] = field(default_factory=dict)  # clip id -> [0, 1]
    where: str = ""  # file:line


def normalize_query(text: str) -> str:
    return " ".join(text.lower().split())


class TruthIndex:
    """Annotated queries by (video id, normalised query)."""

    def __init__(self, files: Sequence[str | os.PathLike] = ()):
        self._by: dict[tuple[str, str], Truth] = {}
        self._queries: dict[str, list[str]] = {}
        for file in files:
            for anno in read_annotations(file):
                data = anno.data
                windows = [(float(s), float(e)) for s, e in data.get("relevant_windows") or []]
                sal = {}
                for cid, scores in zip(
                    data.get("relevant_clip_ids") or [],
                    data.get("saliency_scores") or [],
                    strict=False,
                ):
                    values = scores if isinstance(scores, list) else [scores]
                    if values:
                        sal[int(cid)] = sum(map(float, values)) / len(values) / MAX_SALIENCY_LABEL
                text = str(data.get("query", ""))
                self._by[(anno.vid, normalize_query(text))] = Truth(text, windows, sal, anno.where)
                self._queries.setdefault(anno.vid, []).append(text)

    def __len__(self) -> int:
        return len(self._by)

    def lookup(self, vid: str, query: str) -> Truth | None:
        """The annotation of `query` about video `vid`, if any."""
        return self._by.get((vid, normalize_query(query)))

    def queries(self, vid: str) -> list[str]:
        """The annotated queries of a video (suggestions in the app)."""
        return list(self._queries.get(vid, []))
