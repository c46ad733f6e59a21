# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The invariance mechanisms the MRI study compares: one config dict (``invariance``) per mechanism, the candidate grid,
and the trainer handlers that implement a config.

An ``invariance`` config is ``{"kind": "none" | "adversary" | "coral" | "mmd", "lambda": float, "label_conditional":
bool, "update": "two_step" | "one_pass", ...}`` plus kind-specific settings (:data:`ADVERSARY_SETTINGS`,
:data:`ALIGNMENT_SETTINGS`). The adversary reads ``h`` (the pooled features the heads read) on a scale-invariant view,
with several updates per batch and a memory of past batches; ``coral``/``mmd`` match the sites' distributions of ``h``
(per label class when ``label_conditional``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from monai_medl.handlers.adversary_handler import AdversaryHandler
from monai_medl.handlers.site_alignment_handler import SiteAlignmentHandler
from monai_medl.losses.site_alignment import SiteAlignmentLoss

__all__ = [
    "ADVERSARY_SETTINGS",
    "ALIGNMENT_SETTINGS",
    "INVARIANCE_KINDS",
    "invariance_candidates",
    "invariance_handlers",
    "resolve_invariance",
]

INVARIANCE_KINDS = ("none", "adversary", "coral", "mmd")
COMMON_SETTINGS: dict[str, Any] = {"kind": "none", "lambda": 0.0, "label_conditional": False, "update": "two_step"}
UPDATES = ("two_step", "one_pass")  # one_pass: the adversary's update rides on the main backward
ADVERSARY_SETTINGS: dict[str, Any] = {
    "taps": "h",  # "h": the pooled features the heads read; "all": also the pooled block outputs
    "feature_scaling": "batch_std",  # what a StandardScaler probe sees, so shrinking h cannot fool it
    "steps": 3,  # adversary updates per batch
    "memory": 4,  # past batches' (scaled, detached) features it also trains on
    "hidden": [64, 32],
    "lr": 1e-3,
    "objective": "confusion",
    "warmup_epochs": 0,
}
"""Defaults of ``kind="adversary"``."""
ALIGNMENT_SETTINGS: dict[str, Any] = {"taps": "h", "feature_scaling": "batch_std", "bandwidth_scales": [0.5, 1.0, 2.0]}
"""Defaults of ``kind="coral"`` and ``kind="mmd"`` (``bandwidth_scales``: MMD only)."""


def resolve_invariance(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` completed with the defaults of its kind, validated (errors name the key and the expected values)."""
    if not isinstance(spec, dict):
        raise TypeError(f"config key 'invariance' must be a dict, got {type(spec).__name__}.")
    kind = spec.get("kind", "none")
    if kind not in INVARIANCE_KINDS:
        raise ValueError(f"config key 'invariance.kind' must be one of {INVARIANCE_KINDS}, got {kind!r}.")
    own = ADVERSARY_SETTINGS if kind == "adversary" else ALIGNMENT_SETTINGS if kind in ("coral", "mmd") else {}
    allowed = {**COMMON_SETTINGS, **own}
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise KeyError(
            f"config key 'invariance' ({kind}) has unknown settings {unknown}; expected some of {sorted(allowed)}."
        )
    out = {**allowed, **spec}
    if isinstance(out["lambda"], bool) or not isinstance(out["lambda"], (int, float)) or not out["lambda"] >= 0:
        raise ValueError(f"config key 'invariance.lambda' must be a number >= 0, got {out['lambda']!r}.")
    if not isinstance(out["label_conditional"], bool):
        raise ValueError(
            f"config key 'invariance.label_conditional' must be true or false, got {out['label_conditional']!r}."
        )
    if out["update"] not in UPDATES:
        raise ValueError(f"config key 'invariance.update' must be one of {UPDATES}, got {out['update']!r}.")
    if out["update"] == "one_pass" and kind != "adversary":
        raise ValueError(f"config key 'invariance.update' 'one_pass' applies to kind 'adversary' only, got {kind!r}.")
    if kind != "none" and out["taps"] not in ("h", "all"):
        raise ValueError(f"config key 'invariance.taps' must be 'h' or 'all', got {out['taps']!r}.")
    return out


def invariance_handlers(spec: dict[str, Any], net: nn.Module, num_clusters: int, label_classes: int = 2) -> list:
    """The trainer handlers of a resolved ``spec`` for the mixed-effects network ``net`` (none for ``kind="none"``).

    ``label_classes``: classes of the label a label-conditional mechanism reads (the MRI label is binary)."""
    classes = label_classes if spec["label_conditional"] else 0
    if spec["kind"] == "none":
        return []
    if spec["kind"] == "adversary":
        adversary = net.make_adversary(spec["hidden"], label_classes=classes)
        optimizer = torch.optim.Adam(adversary.parameters(), spec["lr"])
        return [
            AdversaryHandler(
                adversary,
                optimizer,
                float(spec["lambda"]),
                objective=spec["objective"],
                steps=spec["steps"],
                warmup_epochs=spec["warmup_epochs"],
                memory=spec["memory"],
                label_classes=classes,
                feature_scaling=spec["feature_scaling"],
                update=spec["update"],
            )
        ]
    alignment = SiteAlignmentLoss(
        num_clusters,
        spec["kind"],
        float(spec["lambda"]),
        label_classes=classes,
        feature_scaling=spec["feature_scaling"],
        bandwidth_scales=tuple(spec["bandwidth_scales"]),
    )
    return [SiteAlignmentHandler(alignment)]


def invariance_candidates(grid: Sequence[float] = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)) -> dict[str, dict[str, Any]]:
    """``{name: invariance config}`` for the selection: ``none`` and, for every ``lambda`` of ``grid``, the
    scale-invariant adversary on ``h`` and the CORAL and MMD alignments, unconditional and label-conditional
    (``adversary_h@0.1``, ``adversary_h_cond@0.1``, ``coral@0.3``, ``coral_cond@0.3``, ``mmd@1``, ``mmd_cond@1``)."""
    out: dict[str, dict[str, Any]] = {"none": {"kind": "none"}}
    for name, kind in (("adversary_h", "adversary"), ("coral", "coral"), ("mmd", "mmd")):
        for conditional in (False, True):
            for lam in grid:
                key = f"{name}{'_cond' if conditional else ''}@{float(lam):g}"
                out[key] = {"kind": kind, "lambda": float(lam), "label_conditional": conditional, "update": "two_step"}
    return out
