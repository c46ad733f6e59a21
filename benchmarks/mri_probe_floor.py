# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""How low can the site probe go? The probe accuracy that the disease label alone gives, on the selection cohorts.

``benchmarks.mri_selection`` asks for fixed-effects features ``h`` whose site probe is <= 0.30 (chance 1/6). The
six seen sites confound disease with site (prevalence 20%..80%), and ``h`` must carry the disease to be useful, so a
probe can read some site information from the disease signal alone, however site-invariant ``h`` is otherwise.
This script measures that floor with the selection's own probes and cohorts: the features are the true label (one
column, 0/1), i.e. a representation that knows the disease perfectly and nothing else.

* ``site_probe`` - :func:`benchmarks.mri_selection.validation_probe` (5-fold CV logistic regression on the
  validation subjects), the quantity of the selection's decision rule;
* ``site_probe_from_training`` - :func:`benchmarks.mri.site_probe_accuracy` (fitted on the training subjects,
  scored on the validation subjects), the headline's probe;
* ``bayes_label_only`` - the best any rule from the label to the site can do on the validation subjects
  (sum over labels of the largest site count, over the number of subjects): an upper bound of the label-only floor.

Only the cohorts' subject tables are needed (site, label, split), and they do not depend on the image grid, so the
cohorts are generated on a 8^3 grid (``tests/benchmarks/test_mri_probe_floor.py`` checks that the table is the same on
another grid). Seeds and cohort settings are the selection's (``mri_selection.SEEDS``, ``selection_config``).

Run: ``python -m benchmarks.mri_probe_floor`` (seconds) -> ``results/mri_probe_floor.json/.md``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks import mri
from benchmarks._common import announce_plan, benchmark_parser, read_cohort, summarize, write_results
from benchmarks.mri_selection import PROBE_TARGET, SEEDS, selection_config, validation_probe
from monai_medl.data.synthetic.mri_cohort import generate_mri_cohort

__all__ = ["subject_table", "label_only_floor", "main"]

NAME = "mri_probe_floor"
TABLE_GRID = {"spatial_size": [8, 8, 8], "spacing": [24.0, 24.0, 24.0]}
PLAN = {
    "seeds": f"the selection seeds {list(SEEDS)} (1 in quick mode), with the selection's cohort settings",
    "features": "the true disease label (0/1), standing for features that carry the disease and nothing else",
    "scores": "site_probe (validation 5-fold CV, the selection's rule), site_probe_from_training (the headline's "
    "probe), bayes_label_only (best label -> site rule on the validation subjects)",
    "question": f"is the selection's probe target ({PROBE_TARGET}) above what the label alone gives?",
}


def subject_table(cohort_dir: str, cohort: dict[str, Any]) -> dict[str, np.ndarray]:
    """``site`` (index into the seen sites), ``label`` and ``split`` of every subject of a generated cohort."""
    entries, _ = read_cohort(generate_mri_cohort(cohort_dir, **cohort))
    sites = sorted({e["site"] for _, e in entries})
    return {
        "site": np.array([sites.index(e["site"]) for _, e in entries]),
        "label": np.array([int(e["label"]) for _, e in entries]),
        "split": np.array([key for key, _ in entries]),
    }


def label_only_floor(table: dict[str, np.ndarray]) -> dict[str, float]:
    """The three label-only site-probe scores of one cohort (see the module docstring)."""
    tr, va = table["split"] == "training", table["split"] == "validation"
    feats = table["label"][:, None].astype(float)
    site, label = table["site"], table["label"]
    counts = np.zeros((site.max() + 1, 2))
    np.add.at(counts, (site[va], label[va]), 1)
    return {
        "site_probe": validation_probe(feats[va], site[va]),
        "site_probe_from_training": mri.site_probe_accuracy(feats[tr], site[tr], feats[va], site[va]),
        "bayes_label_only": float(counts.max(0).sum() / va.sum()),
        "chance": 1.0 / (site.max() + 1),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument("--cache", default=None, help="folder for the generated cohort tables (default: a temp folder)")
    args = parser.parse_args(argv)
    seeds = list(SEEDS[:1] if args.quick else SEEDS)
    cohort = {**selection_config(args.quick)["cohort"], **TABLE_GRID}
    announce_plan(NAME, args.quick, PLAN, seeds, out_dir=args.out)
    cache = args.cache or os.path.join(tempfile.gettempdir(), "monai_medl_benchmarks", NAME)
    rows = []
    for seed in seeds:
        folder = os.path.join(cache, f"cohort_{seed}_{cohort['num_subjects']}")
        rows.append(label_only_floor(subject_table(folder, {**cohort, "seed": seed})))
        print(f"seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in rows[-1].items()), flush=True)
    extra: dict[str, Any] = {}
    for key in rows[0]:
        s = summarize([r[key] for r in rows])
        extra.update({key: s["mean"], f"{key}_ci95": s["ci95"], f"{key}_values": s["values"]})
    models = {"label_only": {"seen": None, "unseen": None, "extra": extra}}
    notes = (
        f"Features = the true label only: a representation that carries the disease and nothing else about the site. "
        f"Compare `site_probe` (mean over the seeds, 95% CI) with the selection's target site_probe <= {PROBE_TARGET}. "
        "Cohort settings as `benchmarks.mri_selection` on an 8^3 grid (the subject table does not depend on the grid)."
    )
    config = {"cohort": cohort, "seeds": seeds, "probe_target": PROBE_TARGET}
    return write_results(
        NAME, args.quick, "site_probe", len(seeds), models, config, seeds, out_dir=args.out, notes=notes, plan=PLAN
    )


if __name__ == "__main__":
    main()
