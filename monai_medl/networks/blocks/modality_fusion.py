# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Fusion of per-modality embeddings that honours a per-sample presence mask (absent modalities add nothing)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers.utils import get_act_layer
from torch import nn

__all__ = ["ModalityFusion", "GatedAttentionPooling", "FUSION_MODES"]

FUSION_MODES = ("concat", "attention")


class GatedAttentionPooling(nn.Module):
    """Gated attention pooling over a set of embeddings with a presence mask.

    Each embedding is projected to ``fusion_dim`` (``p_m = act(P_m e_m)``), scored
    ``s_m = w^T (tanh(V p_m) * sigmoid(U p_m))`` (`Ilse et al., Attention-based Deep Multiple Instance Learning
    <https://arxiv.org/abs/1802.04712>`_), and pooled as ``sum_m a_m p_m`` with ``a = softmax(s)`` over the present
    embeddings only: an absent one gets weight 0 exactly and the present weights sum to 1.

    Args:
        in_features: length of each embedding.
        fusion_dim: projection (and output) width. Defaults to 64.
        attention_dim: hidden width of the scorer. Defaults to 32.
        act: activation after the projections. Defaults to ``"relu"``.

    Example::

        >>> pool = GatedAttentionPooling([8, 4], fusion_dim=16)
        >>> out, weights = pool([torch.randn(2, 8), torch.randn(2, 4)], torch.tensor([[1.0, 1.0], [1.0, 0.0]]))
        >>> out.shape, weights[1, 1].item()
        (torch.Size([2, 16]), 0.0)
    """

    def __init__(
        self, in_features: Sequence[int], fusion_dim: int = 64, attention_dim: int = 32, act: str | tuple = "relu"
    ) -> None:
        super().__init__()
        self.project = nn.ModuleList(nn.Sequential(nn.Linear(n, fusion_dim), get_act_layer(act)) for n in in_features)
        self.attn_v = nn.Linear(fusion_dim, attention_dim)
        self.attn_u = nn.Linear(fusion_dim, attention_dim)
        self.attn_w = nn.Linear(attention_dim, 1)

    def forward(self, embeddings: list[torch.Tensor], weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the pooled ``(batch, fusion_dim)`` vector and the ``(batch, num_inputs)`` attention weights."""
        projected: list[torch.Tensor] = []
        for m, proj in enumerate(self.project):
            projected.append(proj(embeddings[m]))
        stacked = torch.stack(projected, dim=1)  # (batch, num_inputs, fusion_dim)
        scores = self.attn_w(torch.tanh(self.attn_v(stacked)) * torch.sigmoid(self.attn_u(stacked))).squeeze(-1)
        scores = scores.masked_fill(weight <= 0, -1e4)  # finite: a row with nothing present stays finite
        attn = torch.softmax(scores, dim=1) * weight
        attn = attn / attn.sum(dim=1, keepdim=True).clamp_min(1e-12)
        return (attn.unsqueeze(-1) * stacked).sum(dim=1), attn


class ModalityFusion(nn.Module):
    """Fuse one embedding per modality (or covariate branch) into one vector per sample, over present inputs only.

    ``"concat"``: the embeddings are concatenated with an absent modality's slot set to zeros, so any linear
    read-out of the fused vector is the sum of the present modalities' contributions (an absent one contributes
    exactly nothing). Output length ``sum(in_features)``.

    ``"attention"``: :class:`GatedAttentionPooling` over the present modalities (absent ones get weight 0 and the
    fused vector keeps its scale when a modality is missing). Output length ``fusion_dim``. The latest attention
    weights are kept in :attr:`latest_weights` (eager mode) for inspection.

    Args:
        in_features: length of each embedding, in modality order.
        mode: ``"concat"`` or ``"attention"``. Defaults to ``"concat"``.
        fusion_dim: projection width for ``"attention"``. Defaults to 64.
        attention_dim: hidden width of the attention scorer. Defaults to 32.
        act: activation after the attention projections, MONAI name or ``(name, kwargs)``. Defaults to ``"relu"``.

    Example::

        >>> fusion = ModalityFusion([8, 8], mode="attention", fusion_dim=16)
        >>> present = torch.tensor([[True, True], [True, False]])
        >>> fusion([torch.randn(2, 8), torch.randn(2, 8)], present).shape
        torch.Size([2, 16])
    """

    def __init__(
        self,
        in_features: Sequence[int],
        mode: str = "concat",
        fusion_dim: int = 64,
        attention_dim: int = 32,
        act: str | tuple = "relu",
    ) -> None:
        super().__init__()
        if mode not in FUSION_MODES:
            raise ValueError(f"fusion mode must be one of {FUSION_MODES}, got {mode!r}.")
        widths = [int(n) for n in in_features]
        if not widths or min(widths) < 1:
            raise ValueError(f"in_features must list one positive width per modality, got {list(in_features)}.")
        self.mode = mode
        self.in_features = widths
        self.num_inputs = len(widths)
        self.attention: GatedAttentionPooling | None = None
        if mode == "attention":
            self.attention = GatedAttentionPooling(widths, fusion_dim, attention_dim, act)
            self.out_features = int(fusion_dim)
        else:
            self.out_features = int(sum(widths))

    def forward(self, embeddings: list[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        """Fuse ``embeddings`` (each ``(batch, in_features[m])``) given ``present`` (``(batch, num_inputs)``)."""
        if not torch.jit.is_scripting():
            self._check(embeddings, present)
        weight = present.to(embeddings[0].dtype)
        attention = self.attention
        if attention is None:
            return torch.cat([e * weight[:, m : m + 1] for m, e in enumerate(embeddings)], dim=1)
        fused, attn = attention(embeddings, weight)
        if not torch.jit.is_scripting():
            self.__dict__["latest_weights"] = attn.detach()
        return fused

    @torch.jit.unused
    def _check(self, embeddings: list[torch.Tensor], present: torch.Tensor) -> None:
        if len(embeddings) != self.num_inputs:
            raise ValueError(f"expected {self.num_inputs} embeddings (one per modality), got {len(embeddings)}.")
        for m, (e, n) in enumerate(zip(embeddings, self.in_features)):
            if e.dim() != 2 or e.shape[1] != n:
                raise ValueError(f"embedding {m} must have shape (batch, {n}), got {tuple(e.shape)}.")
        if present.dim() != 2 or present.shape[1] != self.num_inputs or present.shape[0] != embeddings[0].shape[0]:
            raise ValueError(
                f"present must have shape (batch={embeddings[0].shape[0]}, {self.num_inputs}), "
                f"got {tuple(present.shape)}."
            )
