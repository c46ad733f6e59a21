# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Choose the default training length (``train#trainer#max_epochs``) of the ``mri_me_unet_segmentation`` bundle on
validation data only.

Problem (issue 16): with the bundle's former default of 10 epochs the shipped model never predicts CSF, a rare class
at 6 mm; the bundle's default training must stay within 5 minutes on 2 idle CPU cores.

Decision rule (:func:`decide`, fixed before the run): candidates :data:`CANDIDATES` epochs. A candidate is
*affordable* when its estimated idle training time (:func:`estimated_idle_seconds`) is at most :data:`BUDGET_S`.
Among affordable candidates, the smallest whose validation mean Dice is within :data:`TOLERANCE` of the best
affordable candidate's is chosen. If no candidate is affordable, or the chosen one does not learn CSF (validation
CSF Dice 0), the result says so and the bundle's default is left unchanged.

Validation data: the bundle's own ``validation`` split (held-out subjects of the training sites), scored by the
bundle's own evaluator (sliding-window inference of whole volumes, mean Dice over the foreground classes, the key
metric the bundle's early stopping and best-model saving use); per-class Dice is recorded beside it. Test scans are
never read.

Curve: one training run of the bundle's ``train.json`` with the largest candidate, everything else at the bundle's
defaults (validation every ``val_interval`` epochs, early stopping, best-model saving), gives every candidate's
validation score, because nothing in the recipe depends on ``max_epochs`` (Adam at a constant learning rate, no
scheduler), so the first ``N`` epochs of that run are the run with ``max_epochs = N``. The validation interval must
stay the bundle's: each validation's ``DataLoader`` draws a base seed from torch's global generator, so another
interval changes the later training batches. A candidate the run does not reach (early stopping) is an error.

Timing: torch and OpenMP use one thread and data loading runs in the main thread, so the main thread's CPU time
approximates the wall time of the same work on an idle core. The estimate for ``N`` epochs with the default
validation interval ``v`` is set-up CPU time (config, cohort loading and caching, intensity statistics; generating the
cohort is excluded and reported apart) + ``N`` x mean training-epoch CPU time + ``floor(N / v)`` x mean validation CPU
time. Python start-up and imports come on top (the bundle card quotes a whole ``monai.bundle run``). Wall times and
the load average are recorded beside it.

The run follows the benchmarks' skeleton (:func:`benchmarks._common.run_benchmark`): the plan is written first, the
training run is its one (resumable) seed, each candidate is a model of the results (its validation Dice on the seen
sites, one repeat) and the curve, the timing and the decision are the results' ``analysis``. Run
``python -m benchmarks.segmentation_bundle_epochs [--out DIR]`` from the repository root (writes
``segmentation_bundle_epochs.{json,md}``; there is no ``--quick``, the run is one short training).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import benchmark_parser, git_commit, run_benchmark

__all__ = [
    "CANDIDATES",
    "TOLERANCE",
    "BUDGET_S",
    "PLAN",
    "estimated_idle_seconds",
    "decide",
    "markdown",
    "train_curve",
    "run",
]

CANDIDATES = (10, 20, 30, 40)
TOLERANCE = 0.01
BUDGET_S = 300.0
BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "mri_me_unet_segmentation"
NAME = "segmentation_bundle_epochs"
_TRAIN = json.loads((BUNDLE / "configs" / "train.json").read_text())
PLAN = {
    "candidates": list(CANDIDATES),
    "tolerance": TOLERANCE,
    "budget_s": BUDGET_S,
    "val_every": _TRAIN["val_interval"],
    "default_val_interval": _TRAIN["val_interval"],
    "config_max_epochs": _TRAIN["train"]["trainer"]["max_epochs"],
}
"""The pre-registered plan (:func:`decide`'s rule and its inputs), written before the training run."""


def estimated_idle_seconds(timing: Mapping[str, float], epochs: int, val_interval: int) -> float:
    """Idle single-core training time of ``epochs`` epochs validated every ``val_interval`` epochs (see module doc).

    Example:
        >>> estimated_idle_seconds({"setup_cpu_s": 10.0, "train_epoch_cpu_s": 5.0, "validation_cpu_s": 2.0}, 10, 2)
        70.0
    """
    return (
        timing["setup_cpu_s"]
        + epochs * timing["train_epoch_cpu_s"]
        + (epochs // val_interval) * timing["validation_cpu_s"]
    )


def decide(curve: Mapping[int, Mapping[str, float]], seconds: Mapping[int, float]) -> dict[str, Any]:
    """Apply the decision rule to ``curve`` (epochs -> validation ``mean`` and ``csf`` Dice) and ``seconds``
    (epochs -> estimated idle training time).

    Example:
        >>> curve = {10: {"mean": 0.5, "csf": 0.0}, 20: {"mean": 0.7, "csf": 0.4}, 30: {"mean": 0.705, "csf": 0.5}}
        >>> decide(curve, {10: 100.0, 20: 200.0, 30: 400.0})["chosen_epochs"]
        20
    """
    affordable = [n for n in sorted(curve) if seconds[n] <= BUDGET_S]
    if not affordable:
        return {"chosen_epochs": None, "affordable": [], "reason": f"no candidate within {BUDGET_S} s"}
    best = max(curve[n]["mean"] for n in affordable)
    chosen = next(n for n in affordable if curve[n]["mean"] >= best - TOLERANCE)
    if curve[chosen]["csf"] <= 0.0:
        return {"chosen_epochs": None, "affordable": affordable, "reason": f"{chosen} epochs do not learn CSF"}
    return {"chosen_epochs": chosen, "affordable": affordable, "best_affordable_mean_dice": best, "reason": "rule"}


def markdown(record: Mapping[str, Any]) -> str:
    """The record's candidates (validation Dice per class, estimated idle time) and decision as markdown."""
    plan, timing = record["plan"], record["timing"]
    lines = [
        "# Segmentation bundle: default training length",
        "",
        f"Validation split of the training sites, validated every {plan['val_every']} epochs. Rule: the smallest "
        f"candidate within {plan['tolerance']} mean Dice of the best one whose estimated idle time is at most "
        f"{plan['budget_s']:.0f} s.",
        "",
        "| epochs | val mean Dice | csf | grey matter | white matter | estimated idle s |",
        "|---|---|---|---|---|---|",
    ]
    for n in plan["candidates"]:
        c = record["curve"][str(n)]
        lines.append(
            f"| {n} | {c['mean']:.3f} | {c['csf']:.3f} | {c['grey_matter']:.3f} | {c['white_matter']:.3f} "
            f"| {record['estimated_idle_seconds'][str(n)]:.0f} |"
        )
    decision = record["decision"]
    lines += [
        "",
        f"Chosen: {decision['chosen_epochs']} epochs ({decision['reason']}). Run: {timing['total_wall_s']:.0f} s wall, "
        f"{timing['total_cpu_s']:.0f} s CPU, load average {timing['load_average_start'][0]} -> "
        f"{timing['load_average_end'][0]}; commit {record['env']['commit']}.",
        "",
    ]
    return "\n".join(lines)


def train_curve(runs_dir: str) -> dict[str, Any]:
    """Train the bundle once for ``max(CANDIDATES)`` epochs (its own validation interval): every validation's Dice
    (``curve``, by epoch), each training epoch's times and the run's ``timing``."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    from ignite.engine import Events
    from monai.bundle import ConfigParser
    from monai.metrics import DiceMetric

    torch.set_num_threads(1)
    t0_cpu, t0_wall, load_start = time.thread_time(), time.perf_counter(), os.getloadavg()
    train_config = json.loads((BUNDLE / "configs" / "train.json").read_text())
    parser = ConfigParser(train_config)
    parser.update(
        {
            "bundle_root": str(BUNDLE),
            "runs_dir": runs_dir,
            "run_name": "epochs_curve",
            "train#trainer#max_epochs": max(CANDIDATES),
            "replace_models": False,
        }
    )
    gen_cpu = None
    if not (BUNDLE / "data" / "datalist.json").exists():  # first run: generate the cohort (timed apart)
        gen_cpu = time.thread_time()
        parser.get_parsed_content("cohort")()
        gen_cpu = time.thread_time() - gen_cpu
    parser.get_parsed_content("initialize")  # as ``monai.bundle run``: seed, then site data, network, trainer
    trainer = parser.get_parsed_content("train#trainer")
    evaluator = parser.get_parsed_content("validate#evaluator")
    class_names = parser.get_parsed_content("class_names")
    setup_cpu = time.thread_time() - t0_cpu - (gen_cpu or 0.0)

    dice = DiceMetric(include_background=False, reduction="mean_batch", ignore_empty=True)
    epochs: list[dict[str, float]] = []
    curve: dict[int, dict[str, float]] = {}
    marks: dict[str, float] = {}

    def _val_started(_):
        dice.reset()
        marks["val_cpu"], marks["val_wall"] = time.thread_time(), time.perf_counter()

    def _val_iteration(engine):
        out = engine.state.output
        dice(y_pred=[o["pred"] for o in out], y=[o["label"] for o in out])

    def _val_completed(engine):
        per_class = dice.aggregate().tolist()
        curve[trainer.state.epoch] = {
            "mean": float(engine.state.metrics["val_mean_dice"]),
            **{name: float(v) for name, v in zip(class_names, per_class)},
            "cpu_s": time.thread_time() - marks["val_cpu"],
            "wall_s": time.perf_counter() - marks["val_wall"],
        }
        print(f"epoch {trainer.state.epoch}: validation {curve[trainer.state.epoch]}", flush=True)

    def _epoch_started(_):
        marks["cpu"], marks["wall"] = time.thread_time(), time.perf_counter()

    def _epoch_completed(_):  # runs before the ValidationHandler, so it times the training epoch only
        epochs.append({"cpu_s": time.thread_time() - marks["cpu"], "wall_s": time.perf_counter() - marks["wall"]})

    evaluator.add_event_handler(Events.EPOCH_STARTED, _val_started)
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, _val_iteration)
    evaluator.add_event_handler(Events.EPOCH_COMPLETED, _val_completed)
    trainer.add_event_handler(Events.EPOCH_STARTED, _epoch_started)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, _epoch_completed)
    completed = trainer._event_handlers[Events.EPOCH_COMPLETED]  # run it first, before the ValidationHandler
    completed.insert(0, completed.pop())
    run_cpu = time.thread_time()
    parser.get_parsed_content("run")
    run_cpu = time.thread_time() - run_cpu
    total_cpu, total_wall, load_end = time.thread_time() - t0_cpu, time.perf_counter() - t0_wall, os.getloadavg()

    return {
        "curve": {str(n): v for n, v in curve.items()},
        "epochs_timing": epochs,
        "stopped_at": trainer.state.epoch,
        "timing": {
            "setup_cpu_s": setup_cpu,
            # everything of the run but validation (checkpoints and handlers included), per epoch
            "train_epoch_cpu_s": (run_cpu - sum(c["cpu_s"] for c in curve.values())) / len(epochs),
            "validation_cpu_s": sum(c["cpu_s"] for c in curve.values()) / len(curve),
            "train_epoch_wall_s": sum(e["wall_s"] for e in epochs) / len(epochs),
            "cohort_generation_cpu_s": gen_cpu,
            "total_cpu_s": total_cpu,
            "total_wall_s": total_wall,
            "load_average_start": [round(v, 2) for v in load_start],
            "load_average_end": [round(v, 2) for v in load_end],
        },
    }


def _candidate_row(curve: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """The candidates as the skeleton's models: validation mean and per-class Dice at each candidate's epoch."""
    missing = [n for n in CANDIDATES if str(n) not in curve]
    if missing:
        raise RuntimeError(
            f"the run stopped early; candidates {missing} have no validation (validated: {list(curve)})."
        )
    return {
        f"{n}_epochs": {
            "val_mean_dice": c["mean"],
            **{k: v for k, v in c.items() if k not in ("mean", "cpu_s", "wall_s")},
        }
        for n, c in ((n, curve[str(n)]) for n in CANDIDATES)
    }


def _analysis(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The curve, the timing, every candidate's estimated idle seconds and :func:`decide`'s decision."""
    run = rows[0]["run"]
    curve, timing = run["curve"], run["timing"]
    seconds = {n: estimated_idle_seconds(timing, n, PLAN["default_val_interval"]) for n in CANDIDATES}
    decision = decide({n: curve[str(n)] for n in CANDIDATES}, seconds)
    return {
        "curve": curve,
        "estimated_idle_seconds": {str(n): v for n, v in seconds.items()},
        "epochs_timing": run["epochs_timing"],
        "timing": timing,
        "decision": decision,
    }


def run(out_dir: Path | None, runs_dir: str, log=print) -> dict[str, Any]:
    """Plan, the training run (the one seed: the bundle's own), analysis and decision; writes
    ``segmentation_bundle_epochs.{json,md}`` and returns the results (the decision in ``analysis``)."""
    seed = int(_TRAIN.get("seed", 0))
    state: dict[str, Any] = {}

    def run_seed(_):
        trained = train_curve(runs_dir)
        return {**_candidate_row(trained["curve"]), "run": trained}

    def analysis(models, rows):
        state["analysis"] = _analysis(rows)
        return state["analysis"]

    def notes(models):
        return markdown({"plan": PLAN, "env": {"commit": git_commit()}, **state["analysis"]})

    return run_benchmark(
        NAME,
        False,
        PLAN,
        [seed],
        run_seed,
        metric="val_mean_dice",
        seen="val_mean_dice",
        unseen=None,
        config={"bundle": str(BUNDLE.relative_to(BUNDLE.parents[1])), "train_config": "configs/train.json"},
        order=[f"{n}_epochs" for n in CANDIDATES],
        analysis=analysis,
        notes=notes,
        out_dir=out_dir,
        log=log,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = benchmark_parser("Choose the segmentation bundle's default training length on validation data.")
    args = parser.parse_args(argv)
    if args.quick:
        parser.error("--quick: there is no reduced run (one training of the largest candidate); run without --quick")
    with tempfile.TemporaryDirectory() as runs_dir:
        results = run(args.out, runs_dir)
    print(json.dumps(results["analysis"]["decision"]), flush=True)


if __name__ == "__main__":
    main()
