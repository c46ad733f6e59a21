# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""GPU suite: mixed-effects overhead and throughput (images/s, peak memory) of 3D networks over sizes and batches.

For DenseNet121 (classification, :class:`~monai_medl.networks.nets.MixedEffectsCNN`, BCE), SegResNet and the
segmentation bundle's UNet (:class:`~monai_medl.networks.nets.MixedEffectsUNet`, Dice-CE on a 4-class label map),
at every volume size and batch size of the plan, the bare network and its ME wrapper are built from one seed and
timed side by side, exactly as in :mod:`benchmarks.overhead` (the same model pair: the ME train step includes both
heads, the KL and one adversary update): a **train step** and **inference** (eval mode, no gradient, one-hot
``z``). Repeats alternate which model runs first; each repeat keeps the fastest of ``steps`` calls and gives one
paired ratio ME / bare (the overhead table); the throughput table gives images/s (batch / median fastest-call time)
and the peak tensor memory of one call (resident parameters, buffers, Adam state and inputs plus the call's peak
allocations: ``torch.cuda.max_memory_allocated`` on a GPU, the ``torch.profiler`` allocation total on the CPU; the
memory kind is recorded). On a GPU every call is synchronised and timed in wall-clock time; on the CPU (the test
size) in thread CPU time with one thread.

Options: ``--device`` (default ``cuda`` when available), ``--amp none|bf16|fp16`` (``torch.autocast`` for the
forward passes and losses; fp16 with a gradient scaler; default bf16 on a GPU, none on the CPU) and
``--channels-last`` (``torch.channels_last_3d`` models and inputs). A configuration that runs out of GPU memory is
recorded as such; the suite stops starting new configurations after its time budget (``budget_s``, 420 s by
default, so that a run ends within 8 minutes on one GPU) and lists the ones it skipped.

Run ``python -m benchmarks.gpu_suite [--quick] [--out DIR] [--device cuda] [--amp bf16] [--channels-last]``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.networks.nets import DenseNet121, SegResNet

from benchmarks._common import announce_plan, benchmark_parser, summarize, write_results
from benchmarks.overhead import Pair, peak_bytes, segmentation_bundle_unet, time_steps
from monai_medl.networks.nets import MixedEffectsCNN, MixedEffectsUNet

__all__ = ["NETWORKS", "default_config", "measure", "run", "main"]

NAME = "gpu_suite"
NETWORKS: dict[str, dict[str, Any]] = {
    "densenet121": {
        "backbone": lambda: DenseNet121(spatial_dims=3, in_channels=1, out_channels=1),
        "wrapper": MixedEffectsCNN,
        "me_kwargs": {},
    },
    "segresnet": {
        "backbone": lambda: SegResNet(spatial_dims=3, init_filters=8, in_channels=1, out_channels=4),
        "wrapper": MixedEffectsUNet,
        "task": "dice_ce",
        "me_kwargs": {},
    },
    "unet": {"backbone": segmentation_bundle_unet, "wrapper": MixedEffectsUNet, "task": "dice_ce", "me_kwargs": {}},
}
PHASES = {"train": ("train_me", "train_bare"), "inference": ("infer_me", "infer_bare")}


def default_config(quick: bool = False, device: str = "cpu", amp: str | None = None, channels_last: bool = False):
    """The plan's grid and timing settings (``quick``: one small size, for a CPU check)."""
    gpu = torch.device(device).type == "cuda"
    return {
        "networks": list(NETWORKS),
        "sizes": [32] if quick else [96, 128],
        "batches": [2] if quick else [1, 2, 4],  # DenseNet121 batch norm needs 2 items at 32^3
        "repeats": 3 if quick else 5,
        "steps": 2 if quick else 3,
        "warmup": 2,
        "budget_s": 420.0,
        "device": device,
        "amp": amp if amp is not None else ("bf16" if gpu else "none"),
        "channels_last": bool(channels_last),
        "memory": "torch.cuda.max_memory_allocated" if gpu else "torch.profiler tensor memory (CPU)",
        "timing": "synchronised wall time" if gpu else "thread CPU time, 1 thread",
        "num_clusters": 8,
    }


def measure(net: str, size: int, batch: int, cfg: dict[str, Any], seed: int = 0) -> dict[str, dict[str, Any]]:
    """Paired ME / bare ratios, images/s and peak memory of one network, size and batch (train and inference)."""
    pair = Pair(NETWORKS[net], batch, size, seed, cfg["device"], cfg["amp"], cfg["channels_last"])
    out: dict[str, dict[str, Any]] = {}
    for phase, names in PHASES.items():
        fns = {"me": getattr(pair, names[0]), "bare": getattr(pair, names[1])}
        for fn in fns.values():  # warm-up: allocator, Adam state, cuDNN algorithm choice
            for _ in range(cfg["warmup"]):
                fn()
        times: dict[str, list[float]] = {"me": [], "bare": []}
        for r in range(cfg["repeats"]):
            for which in ("me", "bare") if r % 2 == 0 else ("bare", "me"):
                times[which].append(time_steps(fns[which], cfg["steps"], pair.device)[0])
        peaks = {w: peak_bytes(pair, w, phase, fns[w]) / 2**20 for w in fns}
        ms = {w: 1e3 * float(np.median(t)) for w, t in times.items()}
        out[phase] = {
            "ratios": [m / b for m, b in zip(times["me"], times["bare"])],
            "extra": {
                "ratio_of_medians": ms["me"] / ms["bare"],
                "peak_memory_ratio": peaks["me"] / peaks["bare"],
                "bare_images_per_s": 1e3 * batch / ms["bare"],
                "me_images_per_s": 1e3 * batch / ms["me"],
                "bare_ms": ms["bare"],
                "me_ms": ms["me"],
                "bare_peak_mib": peaks["bare"],
                "me_peak_mib": peaks["me"],
            },
        }
    return out


PLAN = {
    "seeds": "one seed (0) for weights and batch; repeats alternate which model runs first",
    "primary_comparisons": [
        "ME / bare: train step and inference time ratio and peak memory ratio, DenseNet121 (MixedEffectsCNN), "
        "SegResNet and the segmentation bundle's UNet (MixedEffectsUNet), every size x batch of the grid",
        "throughput: images/s of bare and ME, training and inference",
    ],
    "decision_rule": "descriptive (no claim): the tables report what ran; out-of-memory and budget-skipped "
    "configurations are listed, never dropped",
}

NOTES = """
`seen` = ME / bare time ratio per repeat (fastest of `steps` calls; mean [95% CI]); there is no seen/unseen split
(`unseen` is `-`). Model keys are `<network>/<size>^3/b<batch>/<phase>`. `*_images_per_s` = batch / median time;
`*_peak_mib` = resident tensors + the call's peak allocations (kind in `config.memory`). Timing, device, AMP and
layout are in `config`; `config.out_of_memory` and `config.skipped` list the configurations that did not run.
"""


def _grid(cfg: dict[str, Any]) -> Sequence[tuple[str, int, int]]:
    return [(n, s, b) for n in cfg["networks"] for s in cfg["sizes"] for b in cfg["batches"]]


def run(quick: bool = False, out_dir=None, config: dict[str, Any] | None = None, seed: int = 0) -> dict[str, Any]:
    """Measure the grid within the time budget; writes ``gpu_suite.json`` / ``gpu_suite.md``."""
    cfg = dict(config or default_config(quick))
    unknown = sorted(set(cfg["networks"]) - set(NETWORKS))
    if unknown:
        raise ValueError(f"gpu_suite: unknown networks {unknown}; expected some of {sorted(NETWORKS)}.")
    if torch.device(cfg["device"]).type == "cpu":
        torch.set_num_threads(1)
    kwargs = {} if out_dir is None else {"out_dir": out_dir}
    announce_plan(NAME, quick, PLAN, [seed], **kwargs)
    models: dict[str, dict[str, Any]] = {}
    cfg["out_of_memory"], cfg["skipped"] = [], []
    started = time.perf_counter()
    for net, size, batch in _grid(cfg):
        key = f"{net}/{size}^3/b{batch}"
        if (models or cfg["out_of_memory"]) and time.perf_counter() - started > cfg["budget_s"]:  # first always
            cfg["skipped"].append(key)
            continue
        try:
            res = measure(net, size, batch, cfg, seed)
        except torch.OutOfMemoryError:
            cfg["out_of_memory"].append(key)
            torch.cuda.empty_cache()
            continue
        print(f"{key}: measured at {time.perf_counter() - started:.0f} s", flush=True)
        for phase, r in res.items():
            models[f"{key}/{phase}"] = {"seen": summarize(r["ratios"]), "unseen": None, "extra": r["extra"]}
    cfg["wall_seconds"] = round(time.perf_counter() - started, 1)
    tables = [
        ("", ["ratio_of_medians", "peak_memory_ratio"]),
        ("Throughput and peak memory", ["bare_images_per_s", "me_images_per_s", "bare_peak_mib", "me_peak_mib"]),
    ]
    return write_results(
        NAME, quick, "step_time_ratio", cfg["repeats"], models, cfg, [seed], notes=NOTES, plan=PLAN,
        extra_tables=tables, **kwargs,
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    parser = benchmark_parser(__doc__.splitlines()[1], device=True)
    parser.set_defaults(device="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], default=None, help="autocast dtype")
    parser.add_argument("--channels-last", action="store_true", help="channels_last_3d models and inputs")
    args = parser.parse_args(argv)
    run(args.quick, args.out, default_config(args.quick, args.device, args.amp, args.channels_last))


if __name__ == "__main__":
    main()
