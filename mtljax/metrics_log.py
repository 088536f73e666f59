"""A JSON-lines metrics log: one JSON object per logged step.

Values may be Python scalars, NumPy or JAX arrays (written as nested lists) and dicts of those.
Non-finite floats are written as ``null`` so that every line is strict JSON (readable by any
JSON parser, not only Python's); :func:`read_jsonl` reads them back as ``None``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np


def to_json(value: Any) -> Any:
    """Converts arrays and NumPy scalars to JSON values; NaN and ±Inf become ``None``."""
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, str | bool) or value is None:
        return value
    array = np.asarray(value)
    if array.dtype == bool:
        return array.tolist()
    if array.ndim:
        return [to_json(v) for v in array]
    scalar = array.item()
    if isinstance(scalar, float) and not math.isfinite(scalar):
        return None
    return scalar


class JsonlWriter:
    """Appends one JSON object per :meth:`write` to a file, flushed line by line.

    Example:
      >>> import tempfile, os
      >>> path = os.path.join(tempfile.mkdtemp(), "metrics.jsonl")
      >>> with JsonlWriter(path) as log:
      ...     log.write({"step": 1, "loss": np.float32(0.5)})
      >>> read_jsonl(path)
      [{'step': 1, 'loss': 0.5}]
    """

    def __init__(self, path: str | os.PathLike, *, append: bool = False):
        self.path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._file = open(self.path, "a" if append else "w", encoding="utf-8")  # noqa: SIM115

    def write(self, record: Mapping[str, Any]) -> None:
        self._file.write(json.dumps(to_json(record), allow_nan=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Reads every record of a JSON-lines file (blank lines skipped)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
