# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Model-card performance tables and ``eval_metrics`` generated from an evaluation of the shipped model.

A card's numbers must be those of the weights it ships. :func:`record_evaluation` stores the evaluation outputs
(``evaluate.json``'s ``metrics.json``, or the live-cell bundle's ``metrics.csv`` files) together with the SHA-256 of
the evaluated ``models/model.pt`` in ``docs/evaluation.json``; :func:`render_tables` turns that file into the
markdown between ``<!-- evaluation:begin -->`` and ``<!-- evaluation:end -->`` of ``docs/README.md`` and
:func:`eval_metrics` into the metadata's ``eval_metrics``. A test re-renders both and checks that the recorded
model hash is the shipped one, so a retrained model with a stale card fails.

Command line (from the repository root, after running ``evaluate.json`` on the shipped model)::

    python -m monai_medl.bundle.model_card bundles/mri_me_cnn_classification both=eval/metrics.json
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from monai_medl.bundle.artifacts import file_sha256, read_manifest

__all__ = ["record_evaluation", "render_tables", "eval_metrics", "update_card", "BEGIN", "END"]

BEGIN, END = "<!-- evaluation:begin -->", "<!-- evaluation:end -->"
_CLASSIFICATION_GROUPS = ("seen", "unseen")


def _load_rows(path: str) -> list[dict[str, Any]]:
    """``metrics.json`` of :func:`~monai_medl.bundle.write_evaluation` or a MONAI ``MetricsSaver`` ``metrics.csv``."""
    if path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    with open(path, encoding="utf-8") as f:
        return [{"metric": name, "value": float(value)} for name, value in csv.reader(f, delimiter=",")]


def _copy_figures(root: str, metrics_file: str) -> list[dict[str, str]]:
    """Copy the figures listed in ``figures.json`` next to ``metrics_file`` into ``docs/figures/``; their records."""
    listing = os.path.join(os.path.dirname(metrics_file), "figures.json")
    if not os.path.isfile(listing):
        return []
    with open(listing, encoding="utf-8") as f:
        figures = json.load(f)["figures"]
    os.makedirs(os.path.join(root, "docs", "figures"), exist_ok=True)
    out = []
    for fig in figures:
        target = os.path.join(root, "docs", "figures", fig["file"])
        shutil.copyfile(os.path.join(os.path.dirname(metrics_file), fig["file"]), target)
        out.append({"file": f"figures/{fig['file']}", "caption": fig["caption"], "sha256": file_sha256(target)})
    return out


def record_evaluation(bundle_root: str | os.PathLike, evaluations: Mapping[str, str]) -> dict[str, Any]:
    """Store evaluation outputs of the bundle's shipped model in ``docs/evaluation.json``; return the record.

    The figures of the first scenario's evaluation (``figures.json`` next to its metrics file, written by
    :func:`~monai_medl.visualize.evaluation_figures.write_evaluation_figures`) are copied into ``docs/figures/``
    and recorded with their SHA-256, so that the card embeds them.

    Args:
        bundle_root: the bundle folder.
        evaluations: scenario name -> metrics file (paths relative to ``bundle_root`` or absolute), e.g.
            ``{"both": "eval/metrics.json", "flair_withheld": "eval/t1_only/metrics.json"}``.
    """
    root = os.fspath(bundle_root)
    manifest = read_manifest(os.path.join(root, "models"))
    figures = _copy_figures(root, os.path.join(root, next(iter(evaluations.values()))))
    record: dict[str, Any] = {
        "model_sha256": file_sha256(os.path.join(root, "models", "model.pt")),
        "training": {
            k: manifest.get(k)
            for k in ("epochs", "best_val_auroc", "best_val_mean_dice", "last_val_auc", "seed", "sites")
            if k in manifest
        },
        "evaluations": {name: _load_rows(os.path.join(root, path)) for name, path in evaluations.items()},
    }
    if figures:
        record["figures"] = figures
    with open(os.path.join(root, "docs", "evaluation.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    return record


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 0.1 else f"{value:.3f}"  # reconstruction MSEs are ~1e-3
    return str(value)


def _classification_tables(evaluations: Mapping[str, list[dict]]) -> list[str]:
    lines = [
        "| scenario | z mode | group | scans (diseased) | AUROC | balanced accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for scenario, rows in evaluations.items():
        for r in rows:
            if r["group"] in _CLASSIFICATION_GROUPS:
                lines.append(
                    f"| {scenario} | {r['mode']} | {r['group']} | {r['n']} ({r['n_positive']}) | {_fmt(r['auroc'])} "
                    f"| {_fmt(r['balanced_accuracy'])} |"
                )
    first = next(iter(evaluations.values()))
    modes = list(dict.fromkeys(r["mode"] for r in first))
    per_site = ["", f"Per site ({next(iter(evaluations))}), AUROC by z mode:", ""]
    per_site += ["| site | scans (diseased) | " + " | ".join(modes) + " |", "|---|---|" + "---|" * len(modes)]
    sites = list(dict.fromkeys(r["site"] for r in first if r["group"] == "site"))
    for site in sites:
        cells = {r["mode"]: r for r in first if r["group"] == "site" and r["site"] == site}
        any_row = next(iter(cells.values()))
        values = " | ".join(_fmt(cells[m]["auroc"]) if m in cells else "" for m in modes)
        per_site.append(f"| {site} | {any_row['n']} ({any_row['n_positive']}) | {values} |")
    return lines + per_site


def _segmentation_tables(evaluations: Mapping[str, list[dict]]) -> list[str]:
    """Mean Dice per foreground class (``dice_<class>`` columns) by z mode and seen/unseen group, then per site."""
    first = next(iter(evaluations.values()))
    classes = [k for k in first[0] if k.startswith("dice_")]
    heads = [c.removeprefix("dice_").replace("_", " ") for c in classes]
    lines = [
        "| scenario | z mode | group | scans | " + " | ".join(heads) + " |",
        "|---|---|---|---|" + "---|" * len(heads),
    ]
    for scenario, rows in evaluations.items():
        for r in rows:
            if r["group"] in _CLASSIFICATION_GROUPS:
                cells = " | ".join(_fmt(r.get(c)) for c in classes)
                lines.append(f"| {scenario} | {r['mode']} | {r['group']} | {r['n']} | {cells} |")
    modes = list(dict.fromkeys(r["mode"] for r in first))
    per_site = ["", f"Per site ({next(iter(evaluations))}), mean Dice by z mode:", ""]
    per_site += ["| site | scans | " + " | ".join(modes) + " |", "|---|---|" + "---|" * len(modes)]
    for site in dict.fromkeys(r["site"] for r in first if r["group"] == "site"):
        site_rows = {r["mode"]: r for r in first if r["group"] == "site" and r["site"] == site}
        values = " | ".join(_fmt(site_rows[m].get("dice_mean")) if m in site_rows else "" for m in modes)
        per_site.append(f"| {site} | {next(iter(site_rows.values()))['n']} | {values} |")
    return lines + per_site


def _autoencoder_tables(evaluations: Mapping[str, list[dict]]) -> list[str]:
    metrics = list(dict.fromkeys(r["metric"] for rows in evaluations.values() for r in rows))
    lines = ["| split | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for split, rows in evaluations.items():
        values = {r["metric"]: r["value"] for r in rows}
        lines.append(f"| {split} | " + " | ".join(_fmt(values.get(m)) for m in metrics) + " |")
    return lines


def _figure_lines(record: Mapping[str, Any]) -> list[str]:
    """Markdown of the recorded figures (image, then its caption in italics), or nothing."""
    if not record.get("figures"):
        return []
    scenario = next(iter(record["evaluations"]))
    lines = ["", f"Figures of the same evaluation ({scenario}; `evaluate.json` writes them next to its CSV):"]
    for fig in record["figures"]:
        lines += ["", f"![{fig['caption']}]({fig['file']})", "", f"*{fig['caption']}.*"]
    return lines


def render_tables(record: Mapping[str, Any]) -> str:
    """The markdown of the card's evaluation block, from a :func:`record_evaluation` record."""
    evaluations = record["evaluations"]
    first = next(iter(evaluations.values()))
    if first and "dice_mean" in first[0]:
        table = _segmentation_tables(evaluations)
    elif first and "group" in first[0]:
        table = _classification_tables(evaluations)
    else:
        table = _autoencoder_tables(evaluations)
    training = ", ".join(f"{k} {_fmt(v)}" for k, v in record.get("training", {}).items() if k != "sites")
    sha = record["model_sha256"][:12]
    head = f"Generated from `docs/evaluation.json` (shipped `models/model.pt`, SHA-256 {sha}...; {training})."
    return "\n".join([head, "", *table, *_figure_lines(record)])


def eval_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """The metadata's ``eval_metrics``: seen/unseen AUROC (or mean Dice) per scenario and mode, or each autoencoder
    metric."""
    out: dict[str, float] = {}
    for scenario, rows in record["evaluations"].items():
        for r in rows:
            if "dice_mean" in r:
                if r["group"] in _CLASSIFICATION_GROUPS and r["dice_mean"] is not None:
                    out[f"{scenario}_{r['mode']}_{r['group']}_mean_dice"] = round(float(r["dice_mean"]), 4)
            elif "group" in r and r["group"] in _CLASSIFICATION_GROUPS and r["auroc"] is not None:
                out[f"{scenario}_{r['mode']}_{r['group']}_auroc"] = round(float(r["auroc"]), 4)
            elif "metric" in r:
                out[f"{scenario}_{r['metric']}"] = round(float(r["value"]), 5)
    return out


def update_card(bundle_root: str | os.PathLike, record: Mapping[str, Any] | None = None) -> None:
    """Rewrite the card's evaluation block and the metadata's ``eval_metrics`` from ``docs/evaluation.json``."""
    root = os.fspath(bundle_root)
    if record is None:
        with open(os.path.join(root, "docs", "evaluation.json"), encoding="utf-8") as f:
            record = json.load(f)
    card_path = os.path.join(root, "docs", "README.md")
    with open(card_path, encoding="utf-8") as f:
        card = f.read()
    if BEGIN not in card or END not in card:
        raise ValueError(f"{card_path} has no {BEGIN} ... {END} block to fill.")
    block = f"{BEGIN}\n{render_tables(record)}\n{END}"
    card = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, card, flags=re.S)
    with open(card_path, "w", encoding="utf-8") as f:
        f.write(card)
    meta_path = os.path.join(root, "configs", "metadata.json")
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    meta["eval_metrics"] = eval_metrics(record)
    with open(meta_path, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=4)
        f.write("\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or not all("=" in a for a in args[1:]):
        print("usage: python -m monai_medl.bundle.model_card BUNDLE_ROOT NAME=METRICS_FILE [NAME=METRICS_FILE ...]")
        return 2
    record = record_evaluation(args[0], dict(a.split("=", 1) for a in args[1:]))
    update_card(args[0], record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
