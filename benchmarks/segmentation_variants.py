# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Choose the ME-UNet's cluster scale/bias placement on the segmentation benchmark's validation scans.

Candidates, cheapest training step first (``benchmarks.overhead``'s UNet cases): ``me_intercept_only``
(``cluster_scale_bias=False``: the per-class random intercepts only, one decoder pass serves both predictions),
``me_last_stage`` (``"last"``: cluster scale/bias on the last decoder stage with a norm, the decoder before it shared)
and ``me`` (``True``: every decoder norm). Each is the segmentation benchmark's ``me`` model (adversary on, the same
cohorts, seeds, splits, epochs and settings: :func:`benchmarks.segmentation.default_config`, trained and scored by
:func:`benchmarks.segmentation.run_seed`) with only its placement changed.

Selection score: ``validation_dice``, the mean Dice of the mixed prediction (true site) on the seen sites'
validation subjects. The rule (fixed in :data:`PLAN` before the first fit): the best candidate has the highest mean
validation Dice over seeds; the choice is the cheapest candidate whose paired per-seed difference to the best has a
95% t-interval that reaches 0 (not shown worse than the best); the best itself qualifies. Seen-site test Dice
(``seen``) and unseen-site Dice (``unseen``, the population prediction ``z = 0``) are reported beside it and play no
part in the choice.

Run ``python -m benchmarks.segmentation_variants [--quick] [--out DIR]``; writes ``segmentation_variants.json`` /
``.md`` (the choice in ``analysis``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from benchmarks import segmentation as seg
from benchmarks._common import Comparison, benchmark_parser, paired_difference

__all__ = ["NAME", "CANDIDATES", "PLAN", "COMPARISONS", "choose_variant", "run", "main"]

NAME = "segmentation_variants"
CANDIDATES = ("me_intercept_only", "me_last_stage", "me")
"""The placements, cheapest training step first; each one's ``cluster_scale_bias`` is ``seg.ME_KINDS[name]``."""
SCORE = "validation_dice"

PLAN = {
    "seeds": "0..4 (0, 1 in quick mode), the segmentation benchmark's seeds: seed s generates its cohort (generator "
    "seed 100 + s) and seeds every model's initialisation, batch order and flips with 1000 * s",
    "splits": "the segmentation benchmark's: train on the 4 seen sites' training subjects; validation = the seen "
    "sites' validation subjects (the selection score); seen = the seen sites' test subjects, unseen = every scan of "
    "the 2 unseen sites (reported only)",
    "candidates": "cheapest training step first: me_intercept_only (cluster_scale_bias=False), me_last_stage "
    "('last'), me (True, every decoder norm); all with the per-class random intercepts and the adversary",
    "primary_comparisons": [
        "each pair of candidates, validation mean Dice (mixed prediction, true site), paired per seed",
        "the same pairs on seen-site test Dice and unseen-site Dice (reported, not used for the choice)",
    ],
    "decision_rule": "best = the candidate with the highest mean validation Dice; chosen = the cheapest candidate "
    "whose paired per-seed validation Dice difference to the best has a 95% t-interval with upper bound >= 0 (not "
    "shown worse than the best; the best qualifies); test and unseen scans play no part in it",
}

COMPARISONS = tuple(
    Comparison(model, metric, reference, key=f"paired_{metric}_minus_{reference}")
    for metric in (SCORE, "seen_dice", "unseen_dice")
    for model, reference in (
        ("me_last_stage", "me"),
        ("me_intercept_only", "me"),
        ("me_intercept_only", "me_last_stage"),
    )
)
"""The plan's comparisons (paired per seed; stored in the first model's ``extra``)."""

NOTES = """
How to read: `validation_dice` (the selection score) = mean Dice over CSF, grey and white matter of the mixed
prediction (true site) on the seen sites' validation subjects; `seen`/`unseen` = the same on the seen sites' test
subjects and on the unseen sites (population prediction, z = 0); mean [t-based 95% CI] over seeds. Candidates,
cheapest first: `me_intercept_only` (no cluster scale/bias), `me_last_stage` (last decoder stage), `me` (every
decoder norm); everything else is the segmentation benchmark's `me`. The choice and the rule are in `analysis`.
"""


def choose_variant(scores: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    """The plan's rule on per-seed validation scores of the candidates, listed cheapest first.

    Returns ``{"chosen", "best", "means", "differences_to_best"}`` (each difference a paired
    :func:`~benchmarks._common.paired_difference` record).

    Example::

        >>> choose_variant({"cheap": [0.70, 0.72, 0.71], "dear": [0.71, 0.72, 0.72]})["chosen"]
        'cheap'
        >>> choose_variant({"cheap": [0.60, 0.62, 0.61], "dear": [0.71, 0.72, 0.72]})["chosen"]
        'dear'
    """
    if not scores:
        raise ValueError("segmentation_variants.choose_variant needs at least one candidate's scores.")
    means = {name: sum(v) / len(v) for name, v in scores.items()}
    best = max(means, key=means.__getitem__)
    diffs = {name: paired_difference(v, scores[best]) for name, v in scores.items()}
    chosen = next(name for name in scores if name == best or diffs[name]["ci95"][1] >= 0)
    return {"chosen": chosen, "best": best, "means": means, "differences_to_best": diffs}


def _decision_notes(models: dict[str, Any]) -> str:
    """:data:`NOTES` and the rule's outcome, from the results (the markdown shows what ``analysis`` holds)."""
    d = choose_variant({name: models[name]["extra"][f"{SCORE}_values"] for name in CANDIDATES})
    lines = ["| candidate | validation Dice minus the best's [95% t-interval] | chosen |", "|---|---|---|"]
    for name in CANDIDATES:
        diff = d["differences_to_best"][name]
        lo, hi = diff["ci95"]
        mark = "yes" if name == d["chosen"] else ""
        lines.append(f"| {name} | {diff['mean']:+.4f} [{lo:+.4f}, {hi:+.4f}] | {mark} |")
    head = f"### Choice (best by mean validation Dice: `{d['best']}`; chosen: `{d['chosen']}`)"
    return "\n".join([NOTES.strip(), "", head, "", *lines, "", f"Rule: {PLAN['decision_rule']}."])


def _analysis(models: dict[str, Any], rows: list) -> dict[str, Any]:
    scores = {name: models[name]["extra"][f"{SCORE}_values"] for name in CANDIDATES}
    decision = choose_variant(scores)
    decision["cluster_scale_bias"] = seg.ME_KINDS[decision["chosen"]]
    decision["rule"] = PLAN["decision_rule"]
    return decision


def run(
    quick: bool = False, out_dir=None, config: dict[str, Any] | None = None, cohort_root: str | None = None, log=print
) -> dict[str, Any]:
    """Train and score every candidate on every seed; writes ``segmentation_variants.json`` / ``.md``."""
    cfg = config or seg.default_config(quick)
    cfg = {**cfg, "candidates": {name: seg.ME_KINDS[name] for name in CANDIDATES}}
    return seg.run_on_cohorts(
        NAME,
        quick,
        PLAN,
        cfg,
        CANDIDATES,
        cohort_root,
        out_dir,
        log,
        comparisons=COMPARISONS,
        order=list(CANDIDATES),
        analysis=_analysis,
        notes=_decision_notes,
        extra_tables=[("", [SCORE, "seen_hd95", "unseen_hd95", "seen_population_dice", "intercept_vs_protocol_r"])],
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument("--cohort-root", default=None, help="keep the generated cohorts here (default: a temp folder)")
    args = parser.parse_args(argv)
    run(quick=args.quick, out_dir=args.out, cohort_root=args.cohort_root)


if __name__ == "__main__":
    main()
