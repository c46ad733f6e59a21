# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Choose the live-cell autoencoders' normalisation on training-batch validation data only.

Candidates (simplest first): batch norm; batch norm with reversible instance normalisation (RevIN) around both
branches; instance norm; instance norm with RevIN. These settings decide how well a decoder reconstructs tiles of an
imaging batch it never saw, so each selection seed (fresh generated data, disjoint from the headline seeds of
``benchmarks.livecell``) holds one of the six *training* batches out as a pseudo-unseen batch
(:func:`benchmarks.selection.pseudo_unseen_cluster`); the real unseen batches and every test split are dropped
before training. ``conventional`` and ``me_no_adversary`` (the models without an adversary, so the adversary's own
settings do not interfere) are trained on the other five batches' training tiles and scored on the held-out batch's
training and validation tiles: the score is the population-level reconstruction MSE (x 1000), averaged over the two
models, lower is better; the seen batches' validation AUROC is reported beside it. The choice follows the
one-standard-error rule (:mod:`benchmarks.selection`).

Run ``python -m benchmarks.livecell_selection [--quick] [--out DIR]``; ``benchmarks.livecell`` and the live-cell
bundle take the chosen settings from ``benchmarks/results/livecell_selection.json``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from benchmarks import livecell as lc
from benchmarks._common import benchmark_parser
from benchmarks.selection import (
    pseudo_unseen_cluster,
    pseudo_unseen_plan,
    run_selection,
    selection_seeds,
)
from monai_medl.data.synthetic.livecell import LiveCellData, make_livecell

__all__ = ["CANDIDATES", "PLAN", "holdout_training_batch", "evaluate_candidate", "main"]

NAME = "livecell_selection"
CANDIDATES: dict[str, dict[str, Any]] = {
    "batch_norm": {"norm": "batch", "reversible_norm": False},
    "batch_norm_revin": {"norm": "batch", "reversible_norm": True},
    "instance_norm": {"norm": "instance", "reversible_norm": False},
    "instance_norm_revin": {"norm": "instance", "reversible_norm": True},
}
MODELS = ("conventional", "me_no_adversary")
SEEDS = (100, 101, 102, 103, 104)
PLAN = pseudo_unseen_plan(
    SEEDS,
    "0..9",
    "batches",
    "the real unseen batches and all test tiles dropped; train on the other five batches' training tiles; score "
    "on the held-out batch's training + validation tiles",
    list(CANDIDATES),
    f"population reconstruction MSE x 1000 on the held-out batch, mean of {list(MODELS)} (lower is better)",
)


def holdout_training_batch(data: LiveCellData, held: int) -> LiveCellData:
    """The seen batches of ``data`` with training batch ``held`` turned into the (only) unseen batch.

    Unseen batches and test tiles are removed; the held-out batch's training and validation tiles become
    ``test_unseen`` and it moves to the last batch index, so the benchmark's helpers treat it as unseen.
    """
    num_seen = len(data.effects) - data.config["num_unseen"]
    if not 0 <= held < num_seen:
        raise ValueError(f"held must be a training batch index in 0..{num_seen - 1}, got {held}.")
    keep = (data.batch < num_seen) & np.isin(data.split, ("training", "validation"))
    order = [b for b in range(num_seen) if b != held] + [held]
    new_index = np.empty(num_seen, np.int64)
    new_index[order] = np.arange(num_seen)
    split = np.where(data.batch == held, "test_unseen", data.split)
    return dataclasses.replace(
        data,
        image=data.image[keep],
        clean=data.clean[keep],
        mask=data.mask[keep],
        label=data.label[keep],
        elongation=data.elongation[keep],
        batch=new_index[data.batch[keep]],
        split=split[keep],
        effects=[data.effects[b] for b in order],
        prevalence=np.asarray(data.prevalence)[order],
        config={**data.config, "num_unseen": 1, "num_batches": num_seen},
    )


def evaluate_candidate(settings: Mapping[str, Any], seed: int, epochs: int, tiles: int) -> dict[str, float]:
    """Train the two adversary-free models with ``settings`` on five training batches; score on the sixth."""
    data = make_livecell(tiles_per_batch=tiles, seed=seed)
    num_seen = len(data.effects) - data.config["num_unseen"]
    held = int(pseudo_unseen_cluster([f"{b:02d}" for b in range(num_seen)], seed))
    sub = holdout_training_batch(data, held)
    out: dict[str, float] = {}
    for model in MODELS:
        net, _ = lc.train_model(sub, epochs=epochs, seed=seed, **lc.MODELS[model], **settings)
        out[f"{model}_mse_x1000"] = 1000 * lc.evaluate_model(net, sub, sub.select("test_unseen"))["mse"]
        out[f"{model}_seen_validation_auroc"] = lc.evaluate_model(net, sub, sub.select("validation"))["auroc"]
    return {"score": float(np.mean([out[f"{m}_mse_x1000"] for m in MODELS])), **out}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = benchmark_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds = selection_seeds(SEEDS, args.quick)
    epochs, tiles = (8, 60) if args.quick else (25, 100)  # as benchmarks.livecell
    config = {"epochs": epochs, "tiles_per_batch": tiles, "models": list(MODELS), "defaults": dict(lc.DEFAULTS)}
    return run_selection(
        NAME,
        PLAN,
        CANDIDATES,
        lambda name, settings, seed: evaluate_candidate(settings, seed, epochs, tiles),
        "score",
        seeds,
        args.quick,
        config,
        higher_is_better=False,
        out_dir=args.out,
    )


if __name__ == "__main__":
    main()
