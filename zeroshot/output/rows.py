"""What a command outputs, row by row: classification predictions and plain records.

Every writer in :mod:`zeroshot.output.writers` takes rows through the :class:`Record` protocol:
``flat()`` gives the cells for CSV/TSV/Parquet/tables (in ``columns`` order) and ``as_dict()``
the JSON object.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class Record(Protocol):
    def flat(self) -> list[Any]: ...

    def as_dict(self) -> dict[str, Any]: ...


def round_score(score: float) -> float:
    """Six significant digits: enough for any probability, short enough to read."""
    return float(f"{score:.6g}")


@dataclass(frozen=True)
class Prediction:
    """The result for one input: the best labels with their scores (the model's true ranking,
    best first) and the decision ``label``, or an error (``code: detail``).

    ``label`` is the best label, or the unknown label when a ``--min-score`` threshold was not
    reached (then ``top_label`` still names the model's best label). Error rows have neither."""

    path: str
    labels: tuple[str, ...] = ()
    scores: tuple[float, ...] = ()
    error: str | None = None
    label: str | None = None  # the decision; defaults to the best label

    def __post_init__(self) -> None:
        if self.label is None and self.labels:
            object.__setattr__(self, "label", self.labels[0])

    @property
    def top_label(self) -> str | None:
        """The model's best label, whatever the threshold."""
        return self.labels[0] if self.labels else None

    @property
    def score(self) -> float | None:
        """The best probability (also when ``label`` is the unknown label)."""
        return self.scores[0] if self.scores else None

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape: ``{"path", "label", "predictions": [{"label", "score"}...], "error"}``;
        ``label`` is the decision, ``predictions`` the true ranking."""
        return {
            "path": self.path,
            "label": self.label,
            "predictions": [
                {"label": label, "score": round_score(score)}
                for label, score in zip(self.labels, self.scores)
            ],
            "error": self.error,
        }


def columns(top_k: int, thresholded: bool = False) -> list[str]:
    """CSV/TSV/DataFrame columns: ``path,label,score[,top_label][,label_2,score_2...],error``.

    ``label`` is the decision and ``score`` the best probability; with a threshold
    (``thresholded``: ``--min-score`` given) ``top_label`` holds the model's best label, and
    ``label_N``/``score_N`` are always ranks 2..k of the true ranking."""
    cols = ["path", "label", "score"]
    if thresholded:
        cols.append("top_label")
    for rank in range(2, top_k + 1):
        cols += [f"label_{rank}", f"score_{rank}"]
    return cols + ["error"]


def flat_row(pred: Prediction, top_k: int, thresholded: bool = False) -> list[Any]:
    best = pred.score
    row: list[Any] = [pred.path, pred.label, None if best is None else round_score(best)]
    if thresholded:
        row.append(pred.top_label)
    for rank in range(1, top_k):
        if rank < len(pred.labels):
            row += [pred.labels[rank], round_score(pred.scores[rank])]
        else:
            row += [None, None]
    return row + [pred.error]


@dataclass(frozen=True)
class PredictionRecord:
    """A prediction laid out for ``top_k`` label/score column pairs (and ``top_label`` when
    ``thresholded``)."""

    prediction: Prediction
    top_k: int
    thresholded: bool = False

    def flat(self) -> list[Any]:
        return flat_row(self.prediction, self.top_k, self.thresholded)

    def as_dict(self) -> dict[str, Any]:
        return self.prediction.as_dict()


@dataclass(frozen=True)
class DictRecord:
    """A plain row (e.g. one of ``eval --predictions``): the same keys in the same order in
    every row; floats rounded to six significant digits."""

    row: dict[str, Any]

    def flat(self) -> list[Any]:
        return [round_score(v) if isinstance(v, float) else v for v in self.row.values()]

    def as_dict(self) -> dict[str, Any]:
        return {k: round_score(v) if isinstance(v, float) else v for k, v in self.row.items()}


def dict_records(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[DictRecord]]:
    """Columns and records for a list of same-keyed dicts."""
    return (list(rows[0]) if rows else []), [DictRecord(r) for r in rows]


def to_dataframe(predictions: Iterable[Prediction], top_k: int = 1, thresholded: bool = False):
    """The CSV columns as a pandas DataFrame (``thresholded``: add ``top_label``)."""
    import pandas as pd

    rows = [flat_row(p, top_k, thresholded) for p in predictions]
    return pd.DataFrame(rows, columns=columns(top_k, thresholded))
