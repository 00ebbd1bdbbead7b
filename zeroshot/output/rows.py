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
    """The result for one input: best labels with scores, or an error (``code: detail``)."""

    path: str
    labels: tuple[str, ...] = ()
    scores: tuple[float, ...] = ()
    error: str | None = None

    @property
    def label(self) -> str | None:
        return self.labels[0] if self.labels else None

    @property
    def score(self) -> float | None:
        return self.scores[0] if self.scores else None

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape: ``{"path", "predictions": [{"label", "score"}...], "error"}``."""
        return {
            "path": self.path,
            "predictions": [
                {"label": label, "score": round_score(score)}
                for label, score in zip(self.labels, self.scores)
            ],
            "error": self.error,
        }


def columns(top_k: int) -> list[str]:
    """CSV/TSV/DataFrame columns: path,label,score[,label_2,score_2...],error."""
    cols = ["path", "label", "score"]
    for rank in range(2, top_k + 1):
        cols += [f"label_{rank}", f"score_{rank}"]
    return cols + ["error"]


def flat_row(pred: Prediction, top_k: int) -> list[Any]:
    row: list[Any] = [pred.path]
    for rank in range(top_k):
        if rank < len(pred.labels):
            row += [pred.labels[rank], round_score(pred.scores[rank])]
        else:
            row += [None, None]
    return row + [pred.error]


@dataclass(frozen=True)
class PredictionRecord:
    """A prediction laid out for ``top_k`` label/score column pairs."""

    prediction: Prediction
    top_k: int

    def flat(self) -> list[Any]:
        return flat_row(self.prediction, self.top_k)

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


def to_dataframe(predictions: Iterable[Prediction], top_k: int = 1):
    import pandas as pd

    return pd.DataFrame([flat_row(p, top_k) for p in predictions], columns=columns(top_k))
