# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Predictions written to the CSV as they are made, so that a crashed inference keeps what it predicted and a rerun
continues where it stopped."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from ignite.engine import Engine, Events

from monai_medl.bundle.site_evaluation import PREDICTION_FIELDS, raise_for_invalid_scans

__all__ = ["PredictionStream"]

logger = logging.getLogger(__name__)


class PredictionStream:
    """Ignite handler appending a collector's new rows to a CSV after every iteration (flushed and synced).

    Attach it after the collector (``val_handlers``: ``[..., "@collector", "@stream"]``). The CSV belongs to one
    model and one input: ``identity`` (e.g. the manifest's file hashes and the input path) is stored beside it
    (``<csv>.identity``); a rerun with the same identity keeps the rows and :meth:`remaining` drops the scans
    already predicted, a different identity starts the CSV afresh. A crash loses at most the batch in progress (a
    partly written last line is cut off on the next run). :meth:`finish` appends the error rows of the scans that
    could not be predicted and raises as :func:`~monai_medl.bundle.write_predictions` does.

    Args:
        collector: the run's :class:`~monai_medl.bundle.SitePredictionCollector` (its ``rows``).
        path: the predictions CSV.
        identity: what the rows depend on (JSON-serialisable); None: always continue.
        fields: CSV columns. Defaults to the collector's ``fields`` (a
            :class:`~monai_medl.bundle.SiteDiceCollector`'s Dice columns, a
            :class:`~monai_medl.bundle.SitePredictionCollector`'s probability), else the predictions file's.
        image_key: the entries' image key (the ``image`` column holds its file).

    Example (inference.json)::

        "stream": {"_target_": "monai_medl.bundle.PredictionStream", "collector": "@collector",
                   "path": "$@output_dir + '/inference_predictions.csv'",
                   "identity": "$[@manifest['files'], os.path.abspath(@input)]"},
        "to_predict": "$@stream.remaining(@inputs.entries)",
        "run": ["$@evaluator.run() if @to_predict else None", "$@stream.finish(@inputs.errors)"]
    """

    def __init__(
        self,
        collector: Any,
        path: str | os.PathLike,
        identity: Any = None,
        fields: Sequence[str] | None = None,
        image_key: str = "image",
    ) -> None:
        if fields is None:
            fields = getattr(collector, "fields", PREDICTION_FIELDS)
        self.collector, self.path, self.fields, self.image_key = collector, os.fspath(path), list(fields), image_key
        self._written = 0
        self._start(
            None if identity is None else hashlib.sha256(json.dumps(identity, default=str).encode()).hexdigest()
        )

    def _start(self, identity: str | None) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        marker = self.path + ".identity"
        previous = open(marker, encoding="utf-8").read().strip() if os.path.isfile(marker) else None
        if os.path.isfile(self.path) and identity is not None and previous != identity:
            logger.info(f"{self.path} was written for another model or input: starting it afresh")
            os.remove(self.path)
        if identity is not None:
            with open(marker, "w", encoding="utf-8") as f:
                f.write(identity + "\n")
        if os.path.isfile(self.path):
            with open(self.path, "rb+") as f:  # cut a line left half written by a crash
                data = f.read()
                f.truncate(data.rfind(b"\n") + 1)

    def _rows(self) -> list[dict[str, str]]:
        if not os.path.isfile(self.path) or os.path.getsize(self.path) == 0:
            return []
        with open(self.path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    def remaining(self, entries: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """The entries without a prediction row in the CSV yet (all of them on a first run)."""
        done = {r["image"] for r in self._rows() if not r.get("error")}
        todo = [e for e in entries if str(e.get(self.image_key)) not in done]
        if len(todo) < len(entries):
            logger.info(
                f"{len(entries) - len(todo)} of {len(entries)} scans already predicted in {self.path}; "
                f"continuing with the {len(todo)} others"
            )
        return todo

    def _append(self, rows: Sequence[Mapping[str, Any]]) -> None:
        new_file = not os.path.isfile(self.path) or os.path.getsize(self.path) == 0
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new_file:
                writer.writeheader()
            for row in rows:
                writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in self.fields})
            f.flush()
            os.fsync(f.fileno())

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        rows = self.collector.rows[self._written :]
        if rows:
            self._append(rows)
        self._written = len(self.collector.rows)

    def finish(self, errors: Sequence[Mapping[str, Any]] = ()) -> str:
        """Replace earlier error rows by ``errors`` (atomically), then raise if there are any; return the path."""
        rows = [r for r in self._rows() if not r.get("error")]
        tmp = self.path + ".tmp"
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            writer.writeheader()
            for row in [*rows, *errors]:
                writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in self.fields})
        os.replace(tmp, self.path)
        raise_for_invalid_scans(errors, self.path, len({r.get("image") for r in rows}))
        return self.path
