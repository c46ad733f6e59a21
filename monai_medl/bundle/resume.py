# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The training state a checkpoint needs beyond weights and optimizers, so that a resumed run continues exactly.

MONAI's ``CheckpointSaver``/``CheckpointLoader`` save and restore any object with ``state_dict`` and
``load_state_dict``. Networks, optimizers and the trainer (epoch, iteration) already have them; what a resumed run
also needs is the random number generators (global torch/NumPy/Python and each random transform's own), the
validator's best metric, the early-stopping counter and the best-model saver's record of the best score.
:class:`TrainingProgress` gathers those into one checkpoint entry.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose, Randomizable

__all__ = ["TrainingProgress"]


def _random_transforms(transforms: Iterable[Any]) -> list[Randomizable]:
    """Every ``Randomizable`` transform in ``transforms`` (Compose pipelines are searched recursively)."""
    found: list[Randomizable] = []
    for t in transforms:
        if isinstance(t, Compose):
            found.extend(_random_transforms(t.transforms))
        elif isinstance(t, Randomizable):
            found.append(t)
    return found


def _plain_numpy_state(state: tuple) -> tuple:
    """A NumPy RandomState state with its key array as a tensor: checkpoints load with ``weights_only=True``."""
    name, keys, pos, has_gauss, cached = state
    return name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)


def _numpy_state(plain: tuple) -> tuple:
    name, keys, pos, has_gauss, cached = plain
    return name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached


def _plain(value: Any) -> Any:
    """NumPy scalars as Python numbers, recursively (metric values end up in the checkpoint)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list | tuple):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class TrainingProgress:
    """A checkpoint entry holding RNG states, the validator's best metric, early stopping and best-model tracking.

    Add it to the ``save_dict`` of the training ``CheckpointSaver`` and the ``load_dict`` of the resuming
    ``CheckpointLoader``; the states are captured when the checkpoint is written (end of an epoch), so a run
    resumed from it draws the same random numbers as an uninterrupted one.

    Args:
        evaluator: the validation engine (its ``state.best_metric`` and ``best_metric_epoch``).
        early_stop: MONAI ``EarlyStopHandler`` of the evaluator.
        best_model_saver: the evaluator's key-metric ``CheckpointSaver``.
        transforms: pipelines whose random transforms carry their own generator (e.g. the training
            preprocessing).

    Example (bundle config)::

        "progress": {"_target_": "monai_medl.bundle.TrainingProgress", "evaluator": "@validate#evaluator",
                     "early_stop": "@validate#handlers#0", "best_model_saver": "@validate#handlers#3",
                     "transforms": ["@train#preprocessing"]}
    """

    def __init__(
        self,
        evaluator: Any = None,
        early_stop: Any = None,
        best_model_saver: Any = None,
        transforms: Sequence[Any] = (),
    ) -> None:
        self.evaluator = evaluator
        self.early_stop = early_stop
        self.best_model_saver = best_model_saver
        self.random_transforms = _random_transforms(transforms)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "torch_rng": torch.get_rng_state(),
            # the ignores: numpy's stub types get_state() as the dict form; by default it returns the legacy tuple
            "numpy_rng": _plain_numpy_state(np.random.get_state()),  # type: ignore[arg-type]
            "python_rng": random.getstate(),
            "transform_rngs": [
                _plain_numpy_state(t.R.get_state())  # type: ignore[arg-type]
                for t in self.random_transforms
            ],
        }
        if self.evaluator is not None:
            state["best_metric"] = float(self.evaluator.state.best_metric)
            state["best_metric_epoch"] = int(self.evaluator.state.best_metric_epoch)
        stopper = getattr(self.early_stop, "_handler", None)
        if stopper is not None:
            state["early_stop"] = _plain(dict(stopper.state_dict()))
        tracker = getattr(self.best_model_saver, "_key_metric_checkpoint", None)
        if tracker is not None:
            state["best_model_saver"] = _plain(dict(tracker.state_dict()))
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(_numpy_state(state["numpy_rng"]))
        random.setstate(state["python_rng"])
        saved = state.get("transform_rngs", [])
        if len(saved) != len(self.random_transforms):
            raise ValueError(
                f"the checkpoint holds {len(saved)} random transform state(s), this pipeline has "
                f"{len(self.random_transforms)}: it was written by a run with other training transforms."
            )
        for t, s in zip(self.random_transforms, saved):
            t.R.set_state(_numpy_state(s))
        if self.evaluator is not None and "best_metric" in state:
            self.evaluator.state.best_metric = state["best_metric"]
            self.evaluator.state.best_metric_epoch = state["best_metric_epoch"]
        stopper = getattr(self.early_stop, "_handler", None)
        if stopper is not None and "early_stop" in state:
            stopper.load_state_dict(state["early_stop"])
        if self.best_model_saver is not None and "best_model_saver" in state:
            self.best_model_saver.load_state_dict(state["best_model_saver"])
