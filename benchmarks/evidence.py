# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The README's evidence table, rendered from the committed results files.

Each row is one paired comparison of a benchmark (mixed effects minus its reference, per seed or per cohort, the
same data and splits): the mean difference with its 95% t-interval and wins, on seen and unseen clusters, every
number a link to the value it quotes (:mod:`benchmarks.citations`), and a conclusion that follows from the interval.
``python -m benchmarks.evidence`` rewrites the block between ``<!-- evidence:begin -->`` and
``<!-- evidence:end -->`` of README.md; ``--check`` fails if the README's block differs from a fresh rendering.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.citations import cite, resolve

__all__ = ["Row", "ROWS", "render_table", "render_row", "update_readme"]

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
BEGIN, END = "<!-- evidence:begin -->", "<!-- evidence:end -->"


@dataclass(frozen=True)
class Row:
    """One comparison: ``models/<model>/extra/<key>`` (with ``_ci95``, ``_wins``, ``_values``) of ``results``.

    ``seen``/``unseen`` are the keys of the two paired differences (``None``: not measured); ``higher_is_better``
    says which sign favours the mixed-effects model; ``scale`` and ``unit`` describe how the metric is quoted.
    """

    benchmark: str
    comparison: str
    metric: str
    model: str
    seen: str | None
    unseen: str | None
    higher_is_better: bool = True
    results: str = ""

    @property
    def file(self) -> Path:
        return RESULTS / (self.results or f"{self.benchmark}.json")


ROWS: tuple[Row, ...] = (
    Row("spirals", "`me` - `conventional`", "accuracy", "me", "paired_seen_accuracy_minus_conventional",
        "paired_unseen_accuracy_minus_conventional"),
    Row("mri", "`me` - `conventional` (pooled AUROC, one cohort)", "AUROC", "me", None,
        "paired_unseen_minus_conventional"),
    Row("multimodal", "`me_multimodal` - best single contrast", "AUROC", "me_multimodal", None,
        "paired_unseen_auroc_minus_me_best_single_unseen_auroc"),
    Row("livecell", "`me` - `conventional`", "phenotype AUROC", "me", "paired_seen_auroc_minus_conventional",
        "paired_unseen_auroc_minus_conventional"),
    Row("livecell", "`me` - `conventional`", "MSE x 1e3", "me", "paired_mse_seen_x1000_minus_conventional",
        "paired_mse_unseen_x1000_minus_conventional", higher_is_better=False),
    Row("segmentation", "`me` - `conventional`", "Dice", "me", "paired_seen_dice_minus_conventional",
        "paired_unseen_dice_minus_conventional"),
    Row("grouped_regression", "`me` - `conventional` (boosting)", "RMSE", "me", "paired_rmse_seen_minus_conventional",
        "paired_rmse_unseen_minus_conventional", higher_is_better=False),
    Row("grouped_regression", "`me` - GPBoost", "RMSE", "me", "paired_rmse_seen_minus_gpboost",
        "paired_rmse_unseen_minus_gpboost", higher_is_better=False),
)  # fmt: skip


def _cell(row: Row, key: str | None, doc_dir: Path) -> tuple[str, str]:
    """The quoted difference ``+0.016 [-0.009, +0.041] (7/10)`` and what its interval says."""
    if key is None:
        return "-", "-"
    base = f"/models/{row.model}/extra/{key}"
    mean, low, high = (resolve(row.file, p) for p in (base, f"{base}_ci95/0", f"{base}_ci95/1"))
    quoted = [cite(row.file, p, doc_dir, signed=True) for p in (base, f"{base}_ci95/0", f"{base}_ci95/1")]
    wins = int(resolve(row.file, f"{base}_wins"))
    n = _count(row.file, f"{base}_values")
    text = f"{quoted[0]} [{quoted[1]}, {quoted[2]}] ({wins}/{n})"
    if low <= 0.0 <= high:
        return text, "not shown"
    return text, "ME better" if (mean > 0) == row.higher_is_better else "ME worse"


def _count(results_file: Path, pointer: str) -> int:
    n = 0
    while True:
        try:
            resolve(results_file, f"{pointer}/{n}")
        except KeyError:
            return n
        n += 1


def render_row(row: Row, doc_dir: Path = REPO) -> str:
    """One markdown table row for ``row``."""
    seen, seen_says = _cell(row, row.seen, doc_dir)
    unseen, unseen_says = _cell(row, row.unseen, doc_dir)
    name = f"[{row.benchmark}]({row.file.with_suffix('.md').relative_to(doc_dir)})"
    return f"| {name} | {row.comparison} | {row.metric} | {seen} ({seen_says}) | {unseen} ({unseen_says}) |"


def render_table(rows: Sequence[Row] = ROWS, doc_dir: Path = REPO) -> str:
    """The evidence table: paired difference [95% t-interval] (wins/n) and what it says, seen and unseen."""
    header = [
        "| benchmark | comparison | metric | seen clusters | unseen clusters |",
        "|---|---|---|---|---|",
    ]
    return "\n".join(header + [render_row(row, doc_dir) for row in rows])


def update_readme(readme: Path = REPO / "README.md", check: bool = False) -> bool:
    """Rewrite (or, with ``check``, compare) the README's evidence block; returns whether it was up to date."""
    text = readme.read_text()
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise ValueError(f"{readme}: no {BEGIN} ... {END} block to render the evidence table into")
    block = f"{BEGIN}\n{render_table(doc_dir=readme.parent)}\n{END}"
    current = pattern.search(text).group(0) == block
    if not check and not current:
        readme.write_text(pattern.sub(lambda _: block, text))
    return current


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if README.md's table differs from the results")
    args = parser.parse_args(argv)
    current = update_readme(check=args.check)
    if args.check and not current:
        print("README.md's evidence table is not the rendering of the results files: run python -m benchmarks.evidence")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
