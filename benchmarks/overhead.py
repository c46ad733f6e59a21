# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Overhead of the mixed-effects wrapper: ME model vs the same bare backbone, train step and inference.

For each backbone, the bare network and ``MixedEffectsCNN(backbone)`` (``MixedEffectsUNet(backbone)`` for the UNet
case, with ``dice_ce`` losses on a label map in place of BCE) are built from the same seed and timed in one
process on the same batch: a **train step** (bare: forward, BCE, backward, Adam step; ME: forward with ``z``,
:class:`~monai_medl.losses.MixedEffectsLoss` on both heads + KL, one :class:`~monai_medl.losses.AdversarialRegularizer`
step (adversary update on the detached pooled taps, then the adversarial term), backward, Adam step) and
**inference** (eval mode, no gradient; ME with a one-hot ``z``), eager and after ``torch.jit.script`` (the exported
path a bundle's ``model.ts`` runs). Repeats alternate which model runs first (ME, bare,
bare, ME, ...) so machine noise from other jobs hits both alike; each repeat times ``steps`` consecutive calls per
model, keeps the fastest (other jobs can only slow a call down) and gives one paired ratio ``ME / bare``. Times
are CPU time of the benchmark thread (``time.thread_time``; one torch thread, so all model work runs on it), which
other engineers' jobs on the shared cores do not inflate; wall-clock ratios are reported next to them
(``wall_ratio``). The table also shows the ratio of the medians and of the overall minima.

Peak memory is **tensor memory** measured with ``torch.profiler`` (``profile_memory=True``): the tensors alive
before the step (parameters, buffers, Adam state, inputs; for ME also the adversary and its Adam state) plus the
highest running total of the allocations made during one step. This is what the models need, free of the
allocator's caching and of the process's other memory (process RSS is not comparable between two models that
share one process).

``train_one_pass`` times the ME step with the opt-in ``AdversarialRegularizer(update="one_pass")`` (the adversary's
gradient from the main backward pass, its optimizer step after the main one; simultaneous instead of alternating
updates, so not the default's numbers). ``train_no_adversary`` times the ME step without the adversary (forward
with ``z``, both heads, KL, backward, Adam):
the wrapper's own cost, so the adversary's share of the train step is the difference. ``small_cnn_3d_bundle_batch``
is SmallCNN at the MRI bundle's training batch size (read from its ``train.json``); ``unet_3d_segmentation_bundle`` is
the segmentation bundle's UNet at its training patch size (read from its ``train.json``), batch 4.

Models in the results file are ``<backbone>/<phase>`` for the phases ``train``, ``train_one_pass``,
``train_no_adversary``,
``inference`` and ``inference_scripted``;
``seen`` holds the per-repeat
ratio summary (there is no seen/unseen split here, ``unseen`` is null) and ``extra`` the milliseconds, the memory
ratio, the tensor operations one call dispatches (``me_ops``/``bare_ops``, see :func:`count_ops`) and the targets
(train <= 1.10, inference <= 1.05, peak memory <= 1.10).

``unet_3d_segmentation_bundle_last_stage`` is the same UNet with ``cluster_scale_bias="last"`` (cluster scale/bias on
the last decoder stage only; the fixed and mixed predictions share the decoder before it), and
``small_cnn_3d_cluster_scale_bias_last`` SmallCNN with cluster scale/bias on its last normalisation layer only
(``MixedEffectsCNN(cluster_scale_bias="last")``: the two paths share every stage before it), and
``unet_3d_segmentation_bundle_intercept_only`` the UNet with no cluster scale/bias (``cluster_scale_bias=False``: the
per-class intercepts are the only random effect and one decoder pass serves both predictions; since the segmentation
benchmark's variant selection this is ``MixedEffectsUNet``'s default, so it equals ``unet_3d_segmentation_bundle``),
and ``unet_3d_segmentation_bundle_every_norm`` the former default (``cluster_scale_bias=True``: every decoder norm).

``--compile`` adds ``train_compiled``, ``train_compiled_no_adversary`` and ``inference_compiled``: the same steps with
both networks under ``torch.compile`` (default mode), which is what MONAI's ``SupervisedTrainer(compile=True)`` does;
the adversary's update, the losses and the optimizers stay eager there as in that trainer. Compilation happens in the
warm-up calls (their time is ``config.cases.<case>.warm_up_seconds``), not in the timed ones.

Run ``python -m benchmarks.overhead [--quick] [--out DIR] [--device DEV] [--compile]``. On a CUDA device every call is
synchronised and both time columns are wall-clock times; memory is ``torch.cuda.max_memory_allocated`` above the
memory held before the call (plus the resident tensors). :mod:`benchmarks.gpu_suite` is the GPU suite (sizes,
batches, throughput, AMP, channels-last).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import DenseNet121, UNet
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

from benchmarks._common import announce_plan, benchmark_parser, summarize, write_results
from monai_medl.losses import AdversarialRegularizer, MixedEffectsLoss
from monai_medl.losses.mixed_effects_loss import task_loss
from monai_medl.networks.nets import MixedEffectsCNN, MixedEffectsUNet, SmallCNN

__all__ = [
    "CASES",
    "Pair",
    "time_steps",
    "count_ops",
    "peak_bytes",
    "segmentation_bundle_unet",
    "measure_case",
    "run",
    "main",
]

NAME = "overhead"
NUM_CLUSTERS = 8
TARGETS = {
    "train": 1.10,
    "train_one_pass": 1.10,
    "train_no_adversary": 1.10,
    "inference": 1.05,
    "inference_scripted": 1.05,
    "memory": 1.10,
    "train_compiled": 1.10,
    "train_compiled_no_adversary": 1.10,
    "inference_compiled": 1.05,
}
PHASES = ("train", "train_one_pass", "train_no_adversary", "inference", "inference_scripted")
COMPILED_PHASES = ("train_compiled", "train_compiled_no_adversary", "inference_compiled")
"""With ``--compile``: both networks under ``torch.compile`` (what ``SupervisedTrainer(compile=True)`` does); the
adversary's update, the losses and the optimizers stay eager, as in that trainer."""
ADVERSARY_PHASES = ("train", "train_one_pass", "train_compiled")
MRI_BUNDLE_TRAIN = Path(__file__).resolve().parents[1] / "bundles/mri_me_cnn_classification/configs/train.json"
SEGMENTATION_BUNDLE_TRAIN = Path(__file__).resolve().parents[1] / "bundles/mri_me_unet_segmentation/configs/train.json"


def mri_bundle_batch_size() -> int:
    """The MRI bundle's training batch size, read from its config (the SmallCNN case at the size it is used)."""
    return int(json.loads(MRI_BUNDLE_TRAIN.read_text())["train"]["dataloader"]["batch_size"])


def segmentation_bundle_unet() -> UNet:
    """The segmentation bundle's UNet backbone, built from its ``train.json`` (4 classes)."""
    spec = dict(json.loads(SEGMENTATION_BUNDLE_TRAIN.read_text())["network_def"]["backbone"])
    spec.pop("_target_")
    spec["out_channels"] = 4
    return UNet(**spec)


def segmentation_bundle_patch() -> int:
    """The segmentation bundle's training patch size (first axis; its patches are cubes)."""
    return int(json.loads(SEGMENTATION_BUNDLE_TRAIN.read_text())["patch_size"][0])


_SMALL_CNN: dict[str, Any] = {
    "backbone": lambda: SmallCNN(spatial_dims=3, in_channels=1, out_channels=1),
    "me_kwargs": {},
    "quick": {"batch": 4, "size": 32, "repeats": 10, "inference_repeats": 10, "steps": 10},
    "full": {"batch": 4, "size": 48, "repeats": 20, "inference_repeats": 20, "steps": 10},
}
_SEGMENTATION_UNET: dict[str, Any] = {
    "backbone": segmentation_bundle_unet,
    "wrapper": MixedEffectsUNet,
    "task": "dice_ce",
    "me_kwargs": {},
    "quick": {"batch": 4, "size": segmentation_bundle_patch, "repeats": 6, "inference_repeats": 10, "steps": 5},
    "full": {"batch": 4, "size": segmentation_bundle_patch, "repeats": 12, "inference_repeats": 20, "steps": 5},
}
"""The SmallCNN and segmentation-UNet cases that the variants below change in ``me_kwargs`` (or the sizes) only."""

# a case's "wrapper" (default MixedEffectsCNN) builds the ME model around the backbone; "task" (default "bce") is the
# loss task of both models (segmentation: "dice_ce" against a random label map of the backbone's classes)
CASES: dict[str, dict[str, Any]] = {
    "densenet121_3d": {
        "backbone": lambda: DenseNet121(spatial_dims=3, in_channels=1, out_channels=1),
        "me_kwargs": {},
        "quick": {"batch": 2, "size": 32, "repeats": 6, "inference_repeats": 10, "steps": 2},
        "full": {"batch": 4, "size": 48, "repeats": 12, "inference_repeats": 24, "steps": 3},
    },
    "small_cnn_3d": _SMALL_CNN,
    "small_cnn_3d_bundle_batch": {
        **_SMALL_CNN,
        "quick": {"batch": mri_bundle_batch_size, "size": 32, "repeats": 6, "inference_repeats": 6, "steps": 5},
        "full": {"batch": mri_bundle_batch_size, "size": 32, "repeats": 12, "inference_repeats": 12, "steps": 5},
    },
    "small_cnn_3d_cluster_scale_bias": {**_SMALL_CNN, "me_kwargs": {"cluster_scale_bias": True}},
    "small_cnn_3d_cluster_scale_bias_last": {**_SMALL_CNN, "me_kwargs": {"cluster_scale_bias": "last"}},
    "unet_3d_segmentation_bundle": _SEGMENTATION_UNET,
    "unet_3d_segmentation_bundle_last_stage": {**_SEGMENTATION_UNET, "me_kwargs": {"cluster_scale_bias": "last"}},
    "unet_3d_segmentation_bundle_intercept_only": {**_SEGMENTATION_UNET, "me_kwargs": {"cluster_scale_bias": False}},
    "unet_3d_segmentation_bundle_every_norm": {**_SEGMENTATION_UNET, "me_kwargs": {"cluster_scale_bias": True}},
}


def _tensor_bytes(tensors) -> int:
    seen: set[int] = set()
    total = 0
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def _optimizer_state(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [v for state in opt.state.values() for v in state.values() if isinstance(v, torch.Tensor)]


def _step_peak_bytes(fn: Callable[[], Any]) -> int:
    """Highest running total of the tensor blocks allocated while ``fn`` runs (torch.profiler allocation events).

    Frees of blocks allocated before the window (last step's gradients, released by ``zero_grad``) are ignored: the
    resident total already leaves them out, and whether the profiler reports them depends on earlier profiling
    sessions, which made the peak differ by a few hundred bytes from run to run.
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    allocations, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.tag == _EventType.Allocation:
            allocations.append((node.start_time_ns, node.extra_fields.ptr, node.extra_fields.alloc_size))
    live: dict[int, int] = {}
    running = peak = 0
    for _, ptr, size in sorted(allocations):
        if size > 0:
            live[ptr] = size
            running += size
        elif ptr in live:
            running -= live.pop(ptr)
        peak = max(peak, running)
    return peak


AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Pair:
    """The bare backbone and its mixed-effects wrapper, with optimizers, on one shared batch.

    ``amp`` (``"bf16"``/``"fp16"``) runs forward passes and losses under ``torch.autocast`` (fp16 with a gradient
    scaler on the main models); ``channels_last`` puts models and input in ``torch.channels_last_3d`` layout."""

    def __init__(
        self,
        case: dict[str, Any],
        batch: int,
        size: int,
        seed: int,
        device: str = "cpu",
        amp: str = "none",
        channels_last: bool = False,
    ) -> None:
        if amp not in AMP_DTYPES:
            raise ValueError(f"amp must be one of {sorted(AMP_DTYPES)}, got {amp!r}.")
        self.device, self.amp = torch.device(device), AMP_DTYPES[amp]
        torch.manual_seed(seed)
        self.bare = case["backbone"]()
        torch.manual_seed(seed)
        wrapper = case.get("wrapper", MixedEffectsCNN)
        self.me = wrapper(NUM_CLUSTERS, backbone=case["backbone"](), **case["me_kwargs"])
        self.task = case.get("task", "bce")
        self.adversary = self.me.make_adversary()
        layout = torch.channels_last_3d if channels_last else torch.contiguous_format
        for m in (self.bare, self.me, self.adversary):
            m.to(self.device, memory_format=layout)
        self.scalers = {w: torch.amp.GradScaler(self.device.type, enabled=amp == "fp16") for w in ("bare", "me")}
        self.opt_bare = torch.optim.Adam(self.bare.parameters(), 1e-4)
        self.opt_me = torch.optim.Adam(self.me.parameters(), 1e-4)
        self.opt_adv = torch.optim.Adam(self.adversary.parameters(), 1e-4)
        self.regularizer = AdversarialRegularizer(self.adversary, self.opt_adv, lambda_g=0.1)
        # the opt-in simultaneous update (one backward for the model and the adversary), same adversary and optimizer
        self.one_pass = AdversarialRegularizer(self.adversary, self.opt_adv, lambda_g=0.1, update="one_pass")
        self.loss = MixedEffectsLoss(task=self.task, kl_weight=1e-3)
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(batch, 1, size, size, size, generator=gen)
        if self.task == "dice_ce":  # a label map of the wrapper's classes
            self.y = torch.randint(0, self.me.out_channels, (batch, 1, size, size, size), generator=gen)
        else:
            self.y = torch.randint(0, 2, (batch, 1), generator=gen).float()
        self.sites = torch.arange(batch) % NUM_CLUSTERS
        self.z = F.one_hot(self.sites, NUM_CLUSTERS).float()
        self.x, self.y, self.sites, self.z = (t.to(self.device) for t in (self.x, self.y, self.sites, self.z))
        self.x = self.x.contiguous(memory_format=layout)

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None)

    def _step(self, which: str, loss: torch.Tensor) -> None:
        opt, scaler = (self.opt_bare, self.scalers["bare"]) if which == "bare" else (self.opt_me, self.scalers["me"])
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    def compile(self, backend: str = "inductor") -> None:
        """``torch.compile`` both networks (default mode) for the compiled phases; their first calls compile."""
        # static shapes: every case compiles for its own sizes (the networks' forward code is shared across cases)
        torch._dynamo.reset()
        pairs = (("bare", self.bare), ("me", self.me))
        self.compiled = {w: torch.compile(m, backend=backend, dynamic=False) for w, m in pairs}

    def _net(self, which: str, compiled: bool) -> Callable[..., Any]:
        if compiled:
            return self.compiled[which]
        return self.bare if which == "bare" else self.me

    def train_bare(self, compiled: bool = False) -> None:
        self.bare.train()
        self.opt_bare.zero_grad(set_to_none=True)
        with self.autocast():
            loss = task_loss(self.task, self._net("bare", compiled)(self.x), self.y)
        self._step("bare", loss)

    def train_me(self, compiled: bool = False) -> None:
        self.me.train()
        self.opt_me.zero_grad(set_to_none=True)
        with self.autocast():
            out = self._net("me", compiled)(self.x, self.z)  # training mode: the structured output
            loss = self.loss(out, self.y) + self.regularizer.step(out.features, self.sites)
        self._step("me", loss)

    def train_me_one_pass(self) -> None:
        """The ME step with ``AdversarialRegularizer(update="one_pass")``: the adversary's gradient comes from the
        main backward pass, its optimizer steps after the main one."""
        self.me.train()
        self.opt_me.zero_grad(set_to_none=True)
        with self.autocast():
            out = self.me(self.x, self.z)
            loss = self.loss(out, self.y) + self.one_pass.step(out.features, self.sites)
        self._step("me", loss)
        self.one_pass.finish_step()

    def train_me_no_adversary(self, compiled: bool = False) -> None:
        """The wrapper's own cost: the ME step without the adversary update and term."""
        self.me.train()
        self.opt_me.zero_grad(set_to_none=True)
        with self.autocast():
            loss = self.loss(self._net("me", compiled)(self.x, self.z), self.y)
        self._step("me", loss)

    def infer_bare(self, compiled: bool = False) -> None:
        self.bare.eval()
        with torch.no_grad(), self.autocast():
            self._net("bare", compiled)(self.x)

    def infer_me(self, compiled: bool = False) -> None:
        self.me.eval()
        with torch.no_grad(), self.autocast():
            self._net("me", compiled)(self.x, self.z)

    def script(self) -> None:
        self.bare_ts = torch.jit.script(self.bare.eval())
        self.me_ts = torch.jit.script(self.me.eval())

    def infer_bare_scripted(self) -> None:
        with torch.no_grad():
            self.bare_ts(self.x)

    def infer_me_scripted(self) -> None:
        with torch.no_grad():
            self.me_ts(self.x, self.z)

    def resident_bytes(self, which: str, phase: str) -> int:
        inputs = [self.x, self.y] + ([self.z] if which == "me" else [])
        if which == "bare":
            modules, opts = [self.bare], [self.opt_bare]
        elif phase in ADVERSARY_PHASES:
            modules, opts = [self.me, self.adversary], [self.opt_me, self.opt_adv]
        elif phase.endswith("no_adversary"):
            modules, opts = [self.me], [self.opt_me]
        else:
            modules, opts = [self.me], []
        tensors = [t for m in modules for t in [*m.parameters(), *m.buffers()]] + inputs
        if phase.startswith("train"):
            tensors += [t for o in opts for t in _optimizer_state(o)]
        return _tensor_bytes(tensors)


def time_steps(fn: Callable[[], None], steps: int, device: torch.device | None = None) -> tuple[float, float]:
    """Fastest of ``steps`` consecutive calls, as (thread CPU seconds, wall seconds).

    With one torch thread every op (and the CPU autograd engine) runs on the calling thread, so its CPU time counts
    the model's work and not the time other jobs on the machine hold the cores; interference only ever slows a
    call down, hence the minimum. On a CUDA ``device`` the work runs on the GPU: each call is synchronised and
    both values are its wall time.
    """
    cuda = device is not None and device.type == "cuda"
    cpu = wall = float("inf")
    for _ in range(steps):
        if cuda:
            torch.cuda.synchronize(device)
        c, w = time.thread_time(), time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(device)
        spent = time.perf_counter() - w
        cpu, wall = min(cpu, spent if cuda else time.thread_time() - c), min(wall, spent)
    return cpu, wall


def count_ops(fn: Callable[[], Any]) -> int:
    """Tensor operations one call of ``fn`` dispatches from Python or autograd: the ``aten::`` events of a
    ``torch.profiler`` trace that no other ``aten::`` operation called (a composite operation counts once). Each
    costs a few microseconds of dispatch on the CPU whatever its size, which is what the small models' ratios are
    made of."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    return sum(1 for e in events if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))


def peak_bytes(pair: Pair, which: str, phase: str, fn: Callable[[], Any]) -> int:
    """Peak tensor memory of one call of ``fn``: the model's resident tensors plus the step's peak allocations
    (``torch.cuda.max_memory_allocated`` above the memory held before the call on a GPU, the profiler's running
    total on the CPU)."""
    resident = pair.resident_bytes(which, phase)
    if pair.device.type != "cuda":
        return resident + _step_peak_bytes(fn)
    torch.cuda.synchronize(pair.device)
    before = torch.cuda.memory_allocated(pair.device)
    torch.cuda.reset_peak_memory_stats(pair.device)
    fn()
    torch.cuda.synchronize(pair.device)
    return resident + torch.cuda.max_memory_allocated(pair.device) - before


def measure_case(
    case: dict[str, Any],
    batch: int,
    size: int,
    repeats: int,
    inference_repeats: int,
    steps: int,
    seed: int,
    device: str = "cpu",
    compile: bool = False,
) -> dict[str, Any]:
    """Interleaved timings and profiler memory of one backbone; returns per-repeat ratios and medians (with
    ``compile`` also the :data:`COMPILED_PHASES`; ``warm_up_seconds``: the three warm-up calls of every phase, which
    include the compilation)."""
    pair = Pair(case, batch, size, seed, device)
    pair.script()
    fns: dict[str, dict[str, Callable[[], None]]] = {
        "train": {"me": pair.train_me, "bare": pair.train_bare},
        "train_one_pass": {"me": pair.train_me_one_pass, "bare": pair.train_bare},
        "train_no_adversary": {"me": pair.train_me_no_adversary, "bare": pair.train_bare},
        "inference": {"me": pair.infer_me, "bare": pair.infer_bare},
        "inference_scripted": {"me": pair.infer_me_scripted, "bare": pair.infer_bare_scripted},
    }
    if compile:
        pair.compile()
        compiled = {"train_compiled": ("train_me", "train_bare"), "inference_compiled": ("infer_me", "infer_bare")}
        compiled["train_compiled_no_adversary"] = ("train_me_no_adversary", "train_bare")
        for phase in COMPILED_PHASES:
            me_fn, bare_fn = (getattr(pair, name) for name in compiled[phase])
            fns[phase] = {"me": functools.partial(me_fn, compiled=True), "bare": functools.partial(bare_fn, True)}
    started = time.perf_counter()
    for phase in fns.values():  # warm-up: allocator, Adam state, TorchScript profiling runs, compilation
        for fn in phase.values():
            for _ in range(3):
                fn()
    warm_up_seconds = time.perf_counter() - started
    out: dict[str, Any] = {}
    for phase, pair_fns in fns.items():
        times: dict[str, list[float]] = {"me": [], "bare": []}
        walls: dict[str, list[float]] = {"me": [], "bare": []}
        for r in range(repeats if phase.startswith("train") else inference_repeats):
            order = ("me", "bare") if r % 2 == 0 else ("bare", "me")
            for which in order:
                cpu, wall = time_steps(pair_fns[which], steps, pair.device)
                times[which].append(cpu)
                walls[which].append(wall)
        ratios = [m / b for m, b in zip(times["me"], times["bare"])]
        peaks = {w: peak_bytes(pair, w, phase, pair_fns[w]) for w in ("me", "bare")}
        ops = {w: count_ops(pair_fns[w]) for w in ("me", "bare")}
        out[phase] = {
            "ratios": ratios,
            "me_ms": 1e3 * float(np.median(times["me"])),
            "bare_ms": 1e3 * float(np.median(times["bare"])),
            "ratio_of_minimums": min(times["me"]) / min(times["bare"]),
            "wall_ratios": [m / b for m, b in zip(walls["me"], walls["bare"])],
            "me_wall_ms": 1e3 * float(np.median(walls["me"])),
            "bare_wall_ms": 1e3 * float(np.median(walls["bare"])),
            "me_peak_mib": peaks["me"] / 2**20,
            "bare_peak_mib": peaks["bare"] / 2**20,
            "me_ops": ops["me"],
            "bare_ops": ops["bare"],
        }
    out["warm_up_seconds"] = warm_up_seconds
    out["params"] = {
        "me": sum(p.numel() for p in pair.me.parameters()),
        "bare": sum(p.numel() for p in pair.bare.parameters()),
        "adversary": sum(p.numel() for p in pair.adversary.parameters()),
    }
    return out


PLAN = {
    "seeds": "one seed (0) for weights and batch; repeats alternate which model runs first",
    "primary_comparisons": [
        "ME / bare backbone: train step (with and without the adversary), eager and scripted inference, peak tensor "
        "memory; SmallCNN at batch 4 and at the MRI bundle's training batch size; the segmentation bundle's UNet"
    ],
    "decision_rule": "targets train <= 1.10, inference <= 1.05, memory <= 1.10 on the ratio of thread CPU times "
    "(median over repeats of the fastest-of-steps per repeat)",
}


def run(
    quick: bool, out_dir, cases: list[str] | None = None, seed: int = 0, device: str = "cpu", compile: bool = False
) -> dict[str, Any]:
    torch.set_num_threads(1)
    mode = "quick" if quick else "full"
    names = list(CASES) if cases is None else cases
    announce_plan(NAME, quick, PLAN, [seed], out_dir)
    models: dict[str, dict[str, Any]] = {}
    config: dict[str, Any] = {
        "num_clusters": NUM_CLUSTERS,
        "threads": 1,
        "device": device,
        "timing": "thread CPU time" if torch.device(device).type == "cpu" else "synchronised wall time",
        "targets": TARGETS,
        "compile": compile,
        "cases": {},
    }
    repeats = 0
    for name in names:
        settings = {k: v() if callable(v) else v for k, v in CASES[name][mode].items()}
        config["cases"][name] = {**settings, "me_kwargs": CASES[name]["me_kwargs"]}
        repeats = max(repeats, settings["repeats"], settings["inference_repeats"])
        started = time.perf_counter()
        res = measure_case(CASES[name], seed=seed, device=device, compile=compile, **settings)
        print(f"{name}: measured in {time.perf_counter() - started:.0f} s", flush=True)
        config["cases"][name]["warm_up_seconds"] = res["warm_up_seconds"]
        for phase in PHASES + (COMPILED_PHASES if compile else ()):
            r = res[phase]
            summary = summarize(r["ratios"])
            memory_ratio = r["me_peak_mib"] / r["bare_peak_mib"]
            models[f"{name}/{phase}"] = {
                "seen": summary,
                "unseen": None,
                "extra": {
                    "ratio_of_medians": r["me_ms"] / r["bare_ms"],
                    "ratio_of_minimums": r["ratio_of_minimums"],
                    "wall_ratio": float(np.mean(r["wall_ratios"])),
                    "wall_ratio_ci95": summarize(r["wall_ratios"])["ci95"],
                    "me_wall_ms": r["me_wall_ms"],
                    "bare_wall_ms": r["bare_wall_ms"],
                    "me_ms": r["me_ms"],
                    "bare_ms": r["bare_ms"],
                    "peak_memory_ratio": memory_ratio,
                    "me_peak_mib": r["me_peak_mib"],
                    "bare_peak_mib": r["bare_peak_mib"],
                    "me_ops": r["me_ops"],
                    "bare_ops": r["bare_ops"],
                    "time_target": TARGETS[phase],
                    "meets_time_target": bool(summary["mean"] <= TARGETS[phase]),
                    "meets_memory_target": bool(memory_ratio <= TARGETS["memory"]),
                    "me_params": res["params"]["me"] + (res["params"]["adversary"] if phase in ADVERSARY_PHASES else 0),
                    "bare_params": res["params"]["bare"],
                },
            }
    notes = """
`seen` = ME/bare step-time ratio per repeat, each the fastest of `steps` calls in thread CPU time (mean [95% CI];
repeats per phase in `config`; `wall_ratio` = the same in wall-clock time); there is no seen/unseen split here
(`unseen` is `-`). `me_ms`/`bare_ms` are median thread CPU milliseconds. `me_ops`/`bare_ops`: tensor operations one call
dispatches (top-level `aten::` events of a profiler trace; each costs a few microseconds on the CPU whatever its size).
Train step: ME = forward with z + both heads + KL + one adversary update and the adversarial term; bare = forward +
BCE. Both: backward + Adam. `train_one_pass`: the ME step with the opt-in one-pass adversary
(`AdversarialRegularizer(update="one_pass")`). `train_no_adversary`: the same ME step without the adversary (the
wrapper's own cost).
`small_cnn_3d_bundle_batch`: SmallCNN at the MRI bundle's training batch size.
Inference: eval mode, no gradient, eager or TorchScript. Peak memory = tensor memory
from torch.profiler (resident parameters/buffers/Adam state/inputs + peak of the step's allocations); ME train memory
includes the adversary and its optimizer. Targets (DenseNet121-class): train <= 1.10, inference <= 1.05, peak
memory <= 1.10.
`train_compiled*`/`inference_compiled` (with `--compile`): both networks under torch.compile, the adversary's update,
losses and optimizers eager (as in SupervisedTrainer(compile=True)).
`*_cluster_scale_bias`: random slopes on feature maps (norm layers); with z given, every stage after the first
cluster block runs twice in training and eager evaluation (z-free pass for the fixed head and the adversary, z pass
for the mixed head); the scripted forward runs the mixed pass only.
"""
    return write_results(NAME, quick, "step_time_ratio", repeats, models, config, [seed], out_dir, notes, plan=PLAN)


def main() -> None:
    parser = benchmark_parser(__doc__.splitlines()[1], device=True)
    parser.add_argument("--cases", nargs="*", choices=list(CASES), default=None, help="backbones to measure")
    parser.add_argument("--compile", action="store_true", help="add the phases with both networks torch.compile'd")
    args = parser.parse_args()
    run(args.quick, args.out, args.cases, device=args.device, compile=args.compile)


if __name__ == "__main__":
    main()
