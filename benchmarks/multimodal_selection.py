# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Choose the multimodal network's fusion and modality dropout on training-site validation data only.

Candidates (simplest first): early fusion; late fusion by concatenation; late fusion by attention; early fusion
with FLAIR dropped at random in training (p 0.25, T1 required); the same dropout only after a 60% warm-up. For each
selection seed (fresh cohorts, disjoint from the headline seeds of ``benchmarks.multimodal``) one of the six
training sites is held out as a pseudo-unseen site (:func:`benchmarks.selection.pseudo_unseen_cluster`); each
candidate is trained on the training split of the other five sites and scored on the held-out site's training and
validation subjects with the population prediction (``z = 0``), once with both contrasts and once with FLAIR
withheld. The score is the mean of the two AUROCs (the bundle serves both complete and T1-only subjects); the
choice follows the one-standard-error rule (:mod:`benchmarks.selection`). No test split and no unseen site of any
cohort is read.

Run ``python -m benchmarks.multimodal_selection [--quick] [--out DIR]``; ``benchmarks.multimodal`` and the
multimodal bundle take the chosen settings from ``benchmarks/results/multimodal_selection.json``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from benchmarks import multimodal as mm
from benchmarks._common import benchmark_parser
from benchmarks.selection import (
    pseudo_unseen_cluster,
    pseudo_unseen_plan,
    run_selection,
    selection_seeds,
)
from monai_medl.transforms import SiteVocabulary

__all__ = ["CANDIDATES", "PLAN", "evaluate_candidate", "main"]

NAME = "multimodal_selection"
DROPOUT = {"modality_dropout": 0.25, "required": ["t1"]}
CANDIDATES: dict[str, dict[str, Any]] = {
    "early": {"fusion": "early"},
    "concat": {"fusion": "concat"},
    "attention": {"fusion": "attention"},
    "early_dropout": {"fusion": "early", "options": DROPOUT},
    "early_dropout_warmup": {"fusion": "early", "options": DROPOUT, "dropout_warmup": 0.6},
}
SEEDS = (100, 101, 102, 103, 104)
PLAN = pseudo_unseen_plan(
    SEEDS,
    "0..19",
    "sites",
    "train on the training split of the other five; score on the held-out site's training + validation "
    "subjects; no test split, no unseen site",
    list(CANDIDATES),
    "mean of pseudo-unseen AUROC with both contrasts and with FLAIR withheld (population prediction)",
)


def evaluate_candidate(cfg: dict[str, Any], cache_dir: str, settings: Mapping[str, Any], seed: int) -> dict[str, float]:
    """Train one candidate on five training sites of cohort ``seed`` and score it on the sixth."""
    data = mm.load_cohort(cfg, seed, cache_dir)
    held = pseudo_unseen_cluster(data["seen_sites"].tolist(), seed)
    vocab = SiteVocabulary([s for s in data["seen_sites"].tolist() if s != held])
    site, split = data["site"], data["split"]
    flair = np.ones(len(site), bool)
    train_idx = np.flatnonzero((split == "training") & np.isin(site, vocab.sites))
    val_idx = np.flatnonzero((split == "validation") & np.isin(site, vocab.sites))
    held_idx = np.flatnonzero((split != "test") & (site == held))
    spec = mm.multimodal_spec(settings)
    train_items = mm.items_of(data, train_idx, spec["inputs"], flair, vocab)
    net, _ = mm.train_model(spec, cfg, train_items, vocab.num_sites, seed)
    held_items = mm.items_of(data, held_idx, spec["inputs"], flair, vocab)  # unknown site -> population (z = 0)
    y_held = data["label"][held_idx]
    both = mm.auroc(y_held, mm.predict(net, spec, held_items, vocab.num_sites))
    t1_only = mm.auroc(y_held, mm.predict(net, spec, mm.withhold_flair(held_items, spec["inputs"]), vocab.num_sites))
    val_items = mm.items_of(data, val_idx, spec["inputs"], flair, vocab)
    val_seen = mm.auroc(data["label"][val_idx], mm.predict(net, spec, val_items, vocab.num_sites))
    return {
        "score": (both + t1_only) / 2,
        "pseudo_unseen_auroc": both,
        "pseudo_unseen_t1_only_auroc": t1_only,
        "seen_validation_auroc": val_seen,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument("--cache", default=None, help="folder for the generated cohorts (default: a temp folder)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cfg = mm.default_config(args.quick)
    seeds = selection_seeds(SEEDS, args.quick)
    cache_dir = mm.cohort_cache(args.cache)
    config = {k: v for k, v in cfg.items() if k != "seeds"}
    return run_selection(
        NAME,
        PLAN,
        CANDIDATES,
        lambda name, settings, seed: evaluate_candidate(cfg, cache_dir, settings, seed),
        "score",
        seeds,
        args.quick,
        config,
        out_dir=args.out,
    )


if __name__ == "__main__":
    main()
