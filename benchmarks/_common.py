# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""What every benchmark shares: the command line, the summary statistics and the results files.

The results follow the benchmark contract of the design brief (section 6)::

    {"benchmark": name, "quick": bool, "metric": "auroc", "repeats": n,
     "models": {model: {"seen": {"mean", "ci95", "values"} | None, "unseen": {...} | None, "extra": {...}}},
     "config": {...}, "env": {"python", "torch", "monai", ..., "seeds": [...]}}

``extra`` holds scalars (means of secondary metrics) and, by convention, ``<metric>_ci95`` pairs next to them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

__all__ = [
    "CONTRACT_MODELS",
    "DEFAULT_OUT",
    "benchmark_parser",
    "read_cohort",
    "summarize",
    "paired_difference",
    "environment",
    "markdown_table",
    "write_results",
    "announce_plan",
    "Comparison",
    "run_seeds",
    "saved_rows",
    "resume_key",
    "git_commit",
    "summarize_rows",
    "per_seed_values",
    "paired_comparisons",
    "site_scores",
    "run_benchmark",
]

DEFAULT_OUT = Path(__file__).resolve().parent / "results"

# the model keys of the benchmark contract (DESIGN.md section 6), in the order tables list them
CONTRACT_MODELS = (
    "conventional",
    "cluster_input",
    "domain_adversarial",
    "me_no_adversary",
    "me",
    "me_randomized_z",
    "me_inferred_z",
    "traditional",
    "shuffled_label",
)


def benchmark_parser(description: str, device: bool = False) -> argparse.ArgumentParser:
    """Argument parser with the contract's ``--quick`` and ``--out DIR``; benchmarks may add their own options.

    ``device=True`` adds ``--device`` (a torch device string, default ``cpu``) for benchmarks that place their
    models on it; a benchmark that does not cannot be given one."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="reduced run (minutes on 2 CPU cores), every model")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    if device:
        parser.add_argument("--device", default="cpu", help="torch device of the models: cpu, cuda, cuda:1, ...")
    return parser


COHORT_SECTIONS = ("training", "validation", "test")


def read_cohort(datalist_path: str | os.PathLike) -> tuple[list[tuple[str, dict]], dict[str, Any]]:
    """``(section, entry)`` of every subject of a generated cohort's datalist (training, validation, then test) and
    the cohort's ``ground_truth.json`` (written beside the datalist by the generators)."""
    with open(datalist_path, encoding="utf-8") as f:
        datalist = json.load(f)
    with open(os.path.join(os.path.dirname(datalist_path), "ground_truth.json"), encoding="utf-8") as f:
        truth = json.load(f)
    return [(key, e) for key in COHORT_SECTIONS for e in datalist[key]], truth


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """Mean, 95% confidence interval and the values themselves.

    The interval is Student-t based: ``mean +- t_{0.975, n-1} * sd / sqrt(n)`` with the sample s.d. (``ddof=1``),
    which is wider than the normal ``1.96`` for few repeats; with one value the interval collapses to the mean.
    """
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("summarize needs at least one value.")
    if not all(math.isfinite(v) for v in vals):
        raise ValueError(f"summarize got non-finite values: {vals}.")
    mean = float(np.mean(vals))
    if len(vals) < 2:
        return {"mean": mean, "ci95": [mean, mean], "values": vals}
    half = float(stats.t.ppf(0.975, len(vals) - 1) * np.std(vals, ddof=1) / math.sqrt(len(vals)))
    return {"mean": mean, "ci95": [mean - half, mean + half], "values": vals}


def paired_difference(a: Sequence[float], b: Sequence[float], higher_is_better: bool = True) -> dict[str, Any]:
    """Per-seed (paired) comparison of two models: :func:`summarize` of the differences ``a - b``, plus ``wins``.

    ``wins`` counts the pairs where ``a`` is better than ``b`` (``a > b``, or ``a < b`` with ``higher_is_better=False``,
    e.g. for an error); ``n`` is the number of pairs. The 95% interval is the paired Student-t interval.

    Example::

        >>> d = paired_difference([0.8, 0.9, 0.7], [0.7, 0.8, 0.75])
        >>> round(d["mean"], 3), d["wins"], d["n"]
        (0.05, 2, 3)
    """
    if len(a) != len(b):
        raise ValueError(f"paired values must have equal lengths, got {len(a)} and {len(b)}.")
    diff = [float(x) - float(y) for x, y in zip(a, b)]
    wins = sum(d > 0 for d in diff) if higher_is_better else sum(d < 0 for d in diff)
    return {**summarize(diff), "wins": int(wins), "n": len(diff)}


@dataclass(frozen=True)
class Comparison:
    """A pre-registered paired comparison: ``model``'s ``metric`` minus ``reference``'s ``reference_metric``, seed by
    seed (same data and splits), and which side wins.

    ``metric`` is ``"seen"``/``"unseen"`` (the benchmark's primary metric on that split; the benchmark's own name
    for it, e.g. ``"seen_auroc"``, also works inside :func:`run_benchmark`) or an ``extra`` metric with per-seed
    ``<metric>_values``. The result is stored in ``model``'s ``extra`` under :attr:`name` (with ``_ci95``,
    ``_values`` and ``_wins``).

    Example::

        >>> Comparison("me", "unseen", "conventional").name
        'paired_unseen_minus_conventional'
    """

    model: str
    metric: str
    reference: str
    reference_metric: str | None = None  # defaults to metric
    higher_is_better: bool = True
    key: str | None = None  # the extra key; defaults to paired_<metric>_minus_<reference>[_<reference_metric>]

    @property
    def ref_metric(self) -> str:
        return self.metric if self.reference_metric is None else self.reference_metric

    @property
    def name(self) -> str:
        if self.key is not None:
            return self.key
        tail = "" if self.reference_metric is None else f"_{self.reference_metric}"
        return f"paired_{self.metric}_minus_{self.reference}{tail}"

    @property
    def label(self) -> str:
        side = "higher" if self.higher_is_better else "lower"
        if self.reference_metric is None:
            return f"{self.model} - {self.reference}: {self.metric} ({side} wins)"
        return f"{self.model} {self.metric} - {self.reference} {self.ref_metric} ({side} wins)"


Row = Mapping[str, Mapping[str, float]]  # one seed's results: {model: {metric: value}}


def run_seeds(
    seeds: Sequence[int],
    run_seed: Callable[[int], Row],
    log: Callable[[str], Any] = print,
    checkpoint: str | Path | None = None,
    run_key: str | None = None,
) -> list[Row]:
    """Call ``run_seed(seed)`` for every seed, in order, with a progress line after each; return the per-seed rows.

    With ``checkpoint`` (a JSON-lines file) each finished seed's row is appended to it under ``run_key``, and seeds
    already recorded there under the same key are reused instead of rerun, so a long run that is cut off resumes
    where it stopped. The key must identify the code and the plan (see :func:`run_benchmark`); rows recorded under
    any other key are ignored.
    """
    path = Path(checkpoint) if checkpoint is not None else None
    done = saved_rows(path, run_key) if path is not None else {}
    rows, start = [], time.perf_counter()
    for i, seed in enumerate(seeds):
        t0 = time.perf_counter()
        if seed in done:
            rows.append(done[seed])
            log(f"seed {seed} reused from {path} ({i + 1}/{len(seeds)})")
            continue
        rows.append(run_seed(seed))
        if path is not None and run_key is not None:
            with path.open("a") as f:
                f.write(json.dumps({"key": run_key, "seed": int(seed), "row": rows[-1]}) + "\n")
        now = time.perf_counter()
        log(f"seed {seed} done ({i + 1}/{len(seeds)}) in {now - t0:.0f} s, {now - start:.0f} s in all")
    return rows


def saved_rows(checkpoint: str | Path, run_key: str | None) -> dict[int, Row]:
    """The rows a checkpoint holds for ``run_key``, by seed (none for a missing file or a ``None`` key)."""
    path = Path(checkpoint)
    if run_key is None or not path.exists():
        return {}
    records = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return {int(r["seed"]): r["row"] for r in records if r.get("key") == run_key}


def resume_key(
    name: str, quick: bool, plan: Mapping[str, Any], seeds: Sequence[int], config: Mapping[str, Any] | None
) -> str | None:
    """Commit + mode + plan + seeds + config of a run, or ``None`` when saved rows could come from other code or
    settings: a dirty or non-git checkout, or a config only known after the run (a callable)."""
    commit = git_commit()
    if config is None or not re.fullmatch(r"[0-9a-f]{40}", commit):
        return None
    blob = json.dumps([name, bool(quick), plan, [int(s) for s in seeds], config], sort_keys=True, default=str)
    return f"{commit}:{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def summarize_rows(
    rows: Sequence[Row], seen: str | None, unseen: str | None, order: Sequence[str] | None = None
) -> dict[str, dict[str, Any]]:
    """The ``models`` of the results from per-seed rows: ``seen``/``unseen`` summaries of the ``seen``/``unseen``
    metrics (None when the key is None or a model lacks it) and, in ``extra``, every other metric's mean with its
    ``_ci95`` and per-seed ``_values`` (for paired comparisons). ``order``: the models and their order (default:
    those of the first row). A metric that is not a number in every row (a list of predictions, a record) is not
    summarised: :func:`run_benchmark`'s ``derive`` and ``analysis`` read it from the rows."""
    if not rows:
        raise ValueError("summarize_rows needs at least one seed's rows.")
    models = {}
    for model in order if order is not None else list(rows[0]):
        missing = [i for i, r in enumerate(rows) if model not in r]
        if missing:
            raise KeyError(f"model {model!r} is missing from the rows of seed positions {missing}.")
        names = dict.fromkeys(k for r in rows for k in r[model])
        metrics = [m for m in names if _numeric(r[model][m] for r in rows if m in r[model])]
        extra: dict[str, Any] = {}
        for metric in metrics:
            if metric in (seen, unseen):
                continue
            s = summarize([r[model][metric] for r in rows])
            extra.update({metric: s["mean"], f"{metric}_ci95": s["ci95"], f"{metric}_values": s["values"]})
        split = {
            name: summarize([r[model][key] for r in rows]) if key is not None and key in metrics else None
            for name, key in (("seen", seen), ("unseen", unseen))
        }
        models[model] = {**split, "extra": extra}
    return models


def _numeric(values: Iterable[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def per_seed_values(
    models: Mapping[str, Any], model: str, metric: str, splits: Mapping[str, str] | None = None
) -> list[float]:
    """Per-seed values of ``metric`` of ``model``: ``"seen"``/``"unseen"`` (or a metric that ``splits`` maps to one
    of them, e.g. ``{"seen_auroc": "seen"}``) read the split's summary, any other metric its ``extra`` values."""
    if model not in models:
        raise KeyError(f"no model {model!r} in the results; models: {list(models)}.")
    entry = models[model]
    metric = (splits or {}).get(metric, metric)
    if metric in ("seen", "unseen"):
        if entry[metric] is None:
            raise KeyError(f"model {model!r} has no {metric!r} summary.")
        return list(entry[metric]["values"])
    key = f"{metric}_values"
    if key not in entry["extra"]:
        raise KeyError(f"model {model!r} has no per-seed {key!r}; extra keys: {sorted(entry['extra'])}.")
    return list(entry["extra"][key])


def paired_comparisons(
    models: dict[str, Any],
    comparisons: Sequence[Comparison],
    positions: Sequence[int] | None = None,
    title: str = "Paired comparisons (per-seed differences, same data and splits)",
    splits: Mapping[str, str] | None = None,
) -> list[str]:
    """Compute ``comparisons`` (:func:`paired_difference` of per-seed values) and return their markdown section.

    Over all seeds (``positions=None``) each result is also stored in its model's ``extra`` under
    :attr:`Comparison.name` (with ``_ci95``, ``_values``, ``_wins``); with ``positions`` (indices into the per-seed
    values) only those seeds are compared and nothing is stored. A comparison whose models are absent is skipped.
    ``splits`` names the metrics held in the ``seen``/``unseen`` summaries (see :func:`per_seed_values`).
    """
    lines = [f"### {title}", "", "| comparison | mean difference [95% t-interval] | wins/n |", "|---|---|---|"]
    for c in comparisons:
        if c.model not in models or c.reference not in models:
            continue
        a = per_seed_values(models, c.model, c.metric, splits)
        b = per_seed_values(models, c.reference, c.ref_metric, splits)
        if positions is not None:
            a, b = [a[i] for i in positions], [b[i] for i in positions]
        d = paired_difference(a, b, c.higher_is_better)
        if positions is None:
            key = c.name
            models[c.model]["extra"].update(
                {key: d["mean"], f"{key}_ci95": d["ci95"], f"{key}_values": d["values"], f"{key}_wins": d["wins"]}
            )
        lo, hi = d["ci95"]
        lines.append(f"| {c.label} | {d['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}] | {d['wins']}/{d['n']} |")
    return lines


def site_scores(
    labels: Sequence[float],
    prob: Sequence[float],
    sites: Sequence[Any],
    train_labels: Sequence[float],
    train_prob: Sequence[float],
) -> dict[str, float]:
    """AUROC and balanced accuracy on seen- and unseen-site items (``site`` index ``-1`` = unseen) by
    :func:`monai_medl.metrics.compute_site_metrics`, at the Youden threshold of the training predictions:
    ``{"seen_auroc", "unseen_auroc", "seen_balanced_accuracy", "unseen_balanced_accuracy"}``."""
    from monai_medl.metrics.site_metrics import compute_site_metrics, youden_threshold

    threshold = youden_threshold(np.asarray(train_labels), np.asarray(train_prob))
    m = compute_site_metrics(np.asarray(labels), np.asarray(prob), list(sites), threshold=threshold)
    names = ("auroc", "balanced_accuracy")
    return {f"{split}_{name}": float(m[split][name]) for split in ("seen", "unseen") for name in names}


def environment(seeds: Sequence[int]) -> dict[str, Any]:
    """Versions of python, torch, monai, numpy, scikit-learn and monai_medl, the platform, the machine's load and the
    seeds used."""
    import monai
    import sklearn
    import torch

    import monai_medl

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": np.__version__,
        "sklearn": sklearn.__version__,
        "monai_medl": monai_medl.__version__,
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1_5_15min": [round(v, 2) for v in os.getloadavg()],  # other jobs inflate the timings
        "seeds": [int(s) for s in seeds],
        "commit": git_commit(),
        "command": " ".join([os.path.basename(sys.executable), "-m", *_module_argv()]),
    }


def git_commit() -> str:
    """HEAD of the checkout the benchmark runs from, with ``+dirty`` when it has uncommitted changes (results files
    excepted: a run rewrites its own ``benchmarks/results/<name>.json`` before it ends)."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results"],
            cwd=root,
            capture_output=True,
            text=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _module_argv() -> list[str]:
    """``benchmarks.<name> [args]`` as the run was started (``python -m``), or the script path and its arguments."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return [spec.name if spec is not None else sys.argv[0], *sys.argv[1:]]


def announce_plan(
    name: str, quick: bool, plan: Mapping[str, Any], seeds: Sequence[int], out_dir: str | Path = DEFAULT_OUT
) -> None:
    """Write the run's plan to ``out_dir/<name>.json`` before anything is measured (``"status": "running"``); the
    results replace the file when the run ends. The plan (seeds, splits, primary comparisons, decision rule) is
    fixed in the benchmark's code; this file and the recorded commit show it predates the results."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": name,
        "quick": bool(quick),
        "status": "running",
        "plan": dict(plan),
        "env": environment(seeds),
    }
    (out / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, Mapping) and "mean" in value:
        lo, hi = value["ci95"]
        return f"{value['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        return f"[{value[0]:.{digits}f}, {value[1]:.{digits}f}]"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _rows(models: Mapping[str, Any], header: list[str], keys: Sequence[str], with_splits: bool, digits: int):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, entry in models.items():
        extra = entry.get("extra", {})
        cells = [model]
        if with_splits:
            cells += [_fmt(entry.get("seen"), digits), _fmt(entry.get("unseen"), digits)]
        for key in keys:
            value = extra.get(key)
            ci = extra.get(f"{key}_ci95")
            if isinstance(value, (int, float)) and ci is not None:
                cells.append(f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]")
            else:
                cells.append(_fmt(value, digits))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _plan_text(value: Any) -> str:
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {_plan_text(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(_plan_text(v) for v in value)
    return str(value)


def markdown_table(
    results: Mapping[str, Any], digits: int = 3, extra_tables: Sequence[tuple[str, Sequence[str]]] | None = None
) -> str:
    """Human-readable table: one row per model, seen and unseen ``mean [95% CI]``, then the ``extra`` columns.

    An extra ``<metric>`` with a ``<metric>_ci95`` companion is shown as one ``mean [lo, hi]`` cell. With
    ``extra_tables`` (``[(title, [extra keys]), ...]``) the main table shows only the extras of the first group
    and every further group gets its own table, which keeps wide results readable. By default the columns are
    every extra metric but the per-seed ``_values``/``_wins`` companions and the ``paired_*`` comparisons (those
    have their own section, see :func:`paired_comparisons`).
    """
    models = results["models"]
    extra_keys: list[str] = []
    for entry in models.values():
        extra = entry.get("extra", {})
        for key in extra:
            companion = any(key.endswith(t) and key[: -len(t)] in extra for t in ("_ci95", "_values", "_wins"))
            if key not in extra_keys and not companion and not key.startswith("paired_"):
                extra_keys.append(key)
    groups = list(extra_tables) if extra_tables else [("", extra_keys)]
    metric = results["metric"]
    lines = [
        f"## {results['benchmark']} ({'quick' if results['quick'] else 'full'} run, {results['repeats']} repeats)",
        "",
        f"Mean [95% CI] over repeats. Seeds: {results['env']['seeds']}.",
        "",
    ]
    if "commit" in results["env"]:
        lines += [f"Run: `{results['env']['command']}` at commit {results['env']['commit']}.", ""]
    if results.get("plan"):
        lines += ["Plan (fixed in the benchmark's code before the run):", ""]
        lines += [f"* **{key}**: {_plan_text(value)}" for key, value in results["plan"].items()] + [""]
    if groups[0][0]:
        lines += [f"### {groups[0][0]}", ""]
    main_keys = list(groups[0][1])
    lines += _rows(models, ["model", f"seen {metric}", f"unseen {metric}", *main_keys], main_keys, True, digits)
    for title, keys in groups[1:]:
        lines += ["", f"### {title}", ""]
        lines += _rows(models, ["model", *keys], list(keys), False, digits)
    return "\n".join(lines) + "\n"


def write_results(
    name: str,
    quick: bool,
    metric: str,
    repeats: int,
    models: Mapping[str, Mapping[str, Any]],
    config: Mapping[str, Any],
    seeds: Sequence[int],
    out_dir: str | Path = DEFAULT_OUT,
    notes: str = "",
    extra_tables: Sequence[tuple[str, Sequence[str]]] | None = None,
    plan: Mapping[str, Any] | None = None,
    comparisons: Sequence[Comparison] = (),
    splits: Mapping[str, str] | None = None,
    analysis: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``out_dir/<name>.json`` (contract shape) and ``out_dir/<name>.md``, print the table, return the dict.

    Args:
        name: benchmark name (the module name).
        quick: whether this was a ``--quick`` run.
        metric: the primary metric of ``seen``/``unseen``.
        repeats: number of repeats (seeds) behind each summary.
        models: ``{model: {"seen": summarize(...) | None, "unseen": ... | None, "extra": {...}}}``.
        config: everything needed to reproduce the run.
        seeds: the seeds of the repeats.
        out_dir: output directory (created). Defaults to ``benchmarks/results``.
        notes: free text appended to the markdown file (e.g. how to read the table).
        extra_tables: optional grouping of the ``extra`` columns into several markdown tables
            (see :func:`markdown_table`); the JSON is unaffected.
        plan: the benchmark's pre-registered plan (see :func:`announce_plan`), stored as ``plan``.
        comparisons: the plan's paired comparisons; computed by :func:`paired_comparisons` (stored in the models'
            ``extra``) and rendered as a section between the table and ``notes``.
        splits: the metric names of ``seen``/``unseen`` used in ``comparisons`` (e.g. ``{"seen_auroc": "seen"}``).
        analysis: what a benchmark derives from all its rows beyond the per-model summaries (a design choice, a
            decision), stored as ``analysis``.
    """
    models = {m: {**e, "extra": dict(e.get("extra", {}))} for m, e in models.items()}
    section = paired_comparisons(models, comparisons, splits=splits) if comparisons else []
    for model, entry in models.items():
        missing = {"seen", "unseen"} - set(entry)
        if missing:
            raise ValueError(f"model {model!r} lacks {sorted(missing)} (use None when a split does not apply).")
    results = {
        "benchmark": name,
        "quick": bool(quick),
        "metric": metric,
        "repeats": int(repeats),
        "models": {
            m: {"seen": e["seen"], "unseen": e["unseen"], "extra": dict(e.get("extra", {}))} for m, e in models.items()
        },
        "config": dict(config),
        "env": environment(seeds),
    }
    if plan is not None:
        results["plan"] = dict(plan)
    if analysis is not None:
        results["analysis"] = dict(analysis)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")
    table = markdown_table(results, extra_tables=extra_tables)
    text = "\n\n".join(part for part in ("\n".join(section), notes.strip()) if part)
    (out / f"{name}.md").write_text(table + ("\n" + text + "\n" if text else ""))
    print(table)
    return results


def run_benchmark(
    name: str,
    quick: bool,
    plan: Mapping[str, Any],
    seeds: Sequence[int],
    run_seed: Callable[[int], Row],
    *,
    metric: str,
    seen: str | None,
    unseen: str | None,
    config: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
    comparisons: Sequence[Comparison] = (),
    order: Sequence[str] | None = None,
    derive: Callable[[dict[str, Any], list[Row]], None] | None = None,
    analysis: Callable[[dict[str, Any], list[Row]], Mapping[str, Any]] | None = None,
    notes: str | Callable[[dict[str, Any]], str] = "",
    extra_tables: Sequence[tuple[str, Sequence[str]]] | None = None,
    out_dir: str | Path | None = None,
    log: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """The benchmark skeleton: announce the plan, run every seed, summarise, compare, write JSON and markdown.

    1. :func:`announce_plan` writes ``plan`` to ``<out_dir>/<name>.json`` before anything runs;
    2. :func:`run_seeds` calls ``run_seed(seed)`` (``{model: {metric: value}}``) for each seed with progress output;
    3. :func:`summarize_rows` turns the rows into the contract's ``models`` (``seen``/``unseen`` from those metric
       keys, every other metric in ``extra`` with ``_ci95`` and per-seed ``_values``); ``derive(models, rows)`` may
       add cross-seed read-outs and ``analysis(models, rows)`` return what the benchmark concludes from them (stored
       as the results' ``analysis``: a chosen design, a decision);
    4. :func:`write_results` computes the pre-registered ``comparisons`` and writes JSON + markdown, whose notes are
       ``notes`` (or ``notes(models)``, generated from the results) after the comparisons section.

    ``config`` (or ``config()``, evaluated after the run) is stored with the run's ``wall_seconds``.

    Example::

        >>> run_benchmark("toy", True, PLAN, [0, 1], lambda s: {"me": {"seen_auroc": 0.8, "unseen_auroc": 0.7}},
        ...               metric="auroc", seen="seen_auroc", unseen="unseen_auroc", config={})  # doctest: +SKIP
    """
    out = DEFAULT_OUT if out_dir is None else Path(out_dir)
    announce_plan(name, quick, plan, seeds, out)
    start = time.perf_counter()
    checkpoint, key = (
        out / f"{name}.rows.jsonl",
        resume_key(name, quick, plan, seeds, config if isinstance(config, Mapping) else None),
    )
    resumed = sorted(set(saved_rows(checkpoint, key)) & {int(s) for s in seeds})
    rows = run_seeds(seeds, run_seed, log, checkpoint=checkpoint, run_key=key)
    models = summarize_rows(rows, seen, unseen, order)
    if derive is not None:
        derive(models, rows)
    derived = analysis(models, rows) if analysis is not None else None
    cfg = {**(config() if callable(config) else config), "wall_seconds": round(time.perf_counter() - start, 1)}
    if resumed:  # their time is not in wall_seconds
        cfg["resumed_seeds"] = resumed
    results = write_results(
        name,
        quick,
        metric,
        len(seeds),
        models,
        cfg,
        seeds,
        out,
        notes=notes(models) if callable(notes) else notes,
        extra_tables=extra_tables,
        plan=plan,
        comparisons=comparisons,
        splits={k: v for k, v in ((seen, "seen"), (unseen, "unseen")) if k is not None},
        analysis=derived,
    )
    checkpoint.unlink(missing_ok=True)  # the results file now holds every row
    return results


_resume_key = resume_key  # the old private name, still imported by benchmarks.mri_few_shot: drop once it is updated
