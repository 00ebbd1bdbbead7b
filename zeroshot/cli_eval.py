"""``zeroshot eval``: zero-shot accuracy on labelled datasets (registered on the main app)."""

from __future__ import annotations
