# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Markdown of the MRI study, rendered from its results JSON only: per-arm tables, the primary (Holm) and secondary
comparisons, and the README's "when mixed effects help" decision table (:func:`decision_table`).

Run ``python -m benchmarks.mri_study_report [FILE]`` to print the markdown of a results file (default
``benchmarks/results/mri_study.json``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import DEFAULT_OUT

__all__ = ["render", "decision_table", "arm_table", "main"]

_COLUMNS = (
    ("unseen_within_auroc", "unseen within-site AUROC (z=0)"),
    ("unseen_pooled_auroc", "unseen pooled AUROC"),
    ("seen_within_auroc", "seen within-site AUROC (mixed)"),
    ("seen_within_auroc_z0", "seen within-site AUROC (z=0)"),
    ("seen_ece", "seen ECE"),
    ("site_probe", "site probe"),
    ("probe_excess", "probe - label-only floor"),
)
_PREVALENCE_COLUMNS = tuple(
    (f"unseen_{m}_{t}", f"{label} @{t[1:]}%")
    for m, label in (("ece", "ECE"), ("log_loss", "log loss"), ("balanced_accuracy", "bal. acc."))
    for t in ("p20", "p50", "p80")
)


def _cell(entry: Mapping[str, Any], key: str) -> str:
    if key == "unseen_within_auroc":
        s = entry.get("unseen")
    elif key == "seen_within_auroc":
        s = entry.get("seen")
    else:
        extra = entry.get("extra", {})
        s = {"mean": extra[key], "ci95": extra[f"{key}_ci95"]} if key in extra else None
    if s is None:
        return "-"
    return f"{s['mean']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]"


def arm_table(results: Mapping[str, Any], arm: str, columns: Sequence[tuple[str, str]] = _COLUMNS) -> list[str]:
    """One arm's table: a row per model (``arm/model`` keys of ``results["models"]``), ``mean [95% CI]`` cells."""
    lines = ["| model | " + " | ".join(label for _, label in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, entry in results["models"].items():
        if name.split("/", 1)[0] == arm:
            cells = [_cell(entry, key) for key, _ in columns]
            lines.append(f"| {name.split('/', 1)[1]} | " + " | ".join(cells) + " |")
    return lines


def _diff(d: Mapping[str, Any]) -> str:
    return f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"


def decision_table(results: Mapping[str, Any]) -> str:
    """The "when mixed effects help" table: per arm, ``me - conventional`` on seen sites (within-site AUROC of the
    mixed prediction) and unseen sites (within-site AUROC at z = 0), paired 95% intervals over cohorts, the test,
    its Holm-adjusted p and the conclusion of the plan's rule."""
    primary = results["analysis"]["primary"]
    n = results["repeats"]
    lines = [
        "| arm | ME - conventional, seen (within-site AUROC) | ME - conventional, unseen (within-site AUROC, z = 0) "
        "| test | Holm p | conclusion |",
        "|---|---|---|---|---|---|",
    ]
    for arm, d in primary.items():
        test = d["test"]
        if "tost" in d:
            lo, hi = d["tost"]["ci90"]
            test += f" (90% CI [{lo:+.3f}, {hi:+.3f}])"
        lines.append(f"| {arm} | {_diff(d['seen'])} | {_diff(d)} | {test} | {d['p_holm']:.3g} | {d['conclusion']} |")
    run = "quick run" if results["quick"] else "full run"
    lines.append("")
    lines.append(
        f"{n} cohorts per arm ({run}, commit {results['env']['commit']}); mean paired difference [95% t-interval] "
        "over cohorts; Holm over the arms' primary comparisons."
    )
    return "\n".join(lines) + "\n"


def _comparison_rows(comparisons: Mapping[str, Mapping[str, Any]], label: str) -> list[str]:
    lines = [f"| {label} | mean difference [95% CI] | wins/n | p (unadjusted) |", "|---|---|---|---|"]
    for key, d in comparisons.items():
        lines.append(f"| {key} - {d['reference']} | {_diff(d)} | {d['wins']}/{d['n']} | {d['p']:.3g} |")
    return lines


def render(results: Mapping[str, Any]) -> str:
    """The study's markdown: run line, plan, the decision table, per-arm tables and the comparisons."""
    env, plan = results["env"], results.get("plan", {})
    lines = [
        f"## {results['benchmark']} ({'quick' if results['quick'] else 'full'} run, {results['repeats']} cohorts "
        "per arm)",
        "",
        f"Run: `{env['command']}` at commit {env['commit']} (load {env['load_average_1_5_15min']}, wall "
        f"{results['config'].get('wall_seconds', '?')} s).",
        "",
        "Plan (written before the first fit):",
        "",
        *[f"* **{k}**: {json.dumps(v) if not isinstance(v, str) else v}" for k, v in plan.items()],
        "",
        "### When mixed effects help (primary comparisons)",
        "",
        decision_table(results),
    ]
    arms = list(results["analysis"]["primary"])
    for arm in arms:
        lines += [f"### Arm `{arm}`", "", *arm_table(results, arm), "", *arm_table(results, arm, _PREVALENCE_COLUMNS)]
        lines.append("")
    lines += ["### Secondary: ECE me - conventional at unseen prevalence 0.2 / 0.8 (lower wins)", ""]
    lines += _comparison_rows(results["analysis"]["secondary"], "arm/comparison")
    lines += ["", "### Every model - conventional, unseen within-site AUROC (z = 0)", ""]
    lines += _comparison_rows(results["analysis"]["against_conventional"], "arm/model")
    lines += [
        "",
        "`prevalence_only`: each seen subject scored by its site's training prevalence, every unseen subject by the "
        "pooled one (no image); its within-site AUROC is 0.5 by construction. `label_only_floor`: the site probe on "
        "the true label alone (what a representation carrying only the disease gives).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    path = Path(args[0]) if args else DEFAULT_OUT / "mri_study.json"
    print(render(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
