# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Route samples that lack a modality to a network trained on the modalities they have."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch
from torch import nn

from monai_medl.networks.nets.multimodal_me_net import MultimodalMixedEffectsNet

__all__ = ["ModalityFallback"]


class ModalityFallback(nn.Module):
    """Two trained multimodal networks behind one interface: ``primary`` for the samples that have all of its
    modalities, ``fallback`` (trained on a subset of them, e.g. T1 only) for the others.

    Why: one network that fuses T1 and FLAIR does not predict as well from T1 alone as a network trained on T1
    (issue #6 benchmark: FLAIR withheld, unseen sites, 20 seeds: -0.033 [-0.076, +0.009] AUROC), and training it
    with modality dropout to close that gap costs accuracy when both contrasts are present (0.701 vs 0.830).
    Routing keeps both: each sample gets the prediction of the best network for the inputs it has. The cost is a
    second network to train (with its own trainer, on the fallback's modalities of every training sample) and, for
    batches with incomplete samples, a second forward pass.

    Inputs are those of :class:`~monai_medl.networks.nets.MultimodalMixedEffectsNet`: ``x`` with the primary's
    modalities stacked on the channel axis, optional ``z``, ``mask`` (``(batch, num_modalities)``, optionally with
    a covariate column) and ``covariates``. Without ``mask`` every sample is complete. The fallback receives the
    channels, mask columns and covariates of its own modalities; a routed sample must have all of them.

    Args:
        primary: the network for samples with every modality.
        fallback: a :class:`~monai_medl.networks.nets.MultimodalMixedEffectsNet` whose ``modalities`` are a subset
            of the primary's (same ``in_channels`` per modality, same ``num_clusters``, same ``out_channels``;
            covariates only if the primary has the same ones).

    Example::

        >>> from monai_medl.networks.nets import make_multimodal_me_cnn
        >>> both = make_multimodal_me_cnn(4, modalities=("t1", "flair"), spatial_dims=3)
        >>> t1 = make_multimodal_me_cnn(4, modalities=("t1",), spatial_dims=3)  # trained on T1 alone
        >>> net = ModalityFallback(both, t1).eval()
        >>> x, mask = torch.randn(2, 2, 32, 32, 32), torch.tensor([[1, 1], [1, 0]])  # FLAIR missing for item 1
        >>> net(x, None, mask).shape  # item 0 from ``both``, item 1 from ``t1``
        torch.Size([2, 1])
    """

    if TYPE_CHECKING:  # buffers, for the type checker only (TorchScript reads no postponed annotations)
        fallback_columns: torch.Tensor
        fallback_channels: torch.Tensor

    def __init__(self, primary: MultimodalMixedEffectsNet, fallback: MultimodalMixedEffectsNet) -> None:
        super().__init__()
        for name, net in (("primary", primary), ("fallback", fallback)):
            if not isinstance(net, MultimodalMixedEffectsNet):
                raise TypeError(
                    f"{name} must be a multimodal network (a MultimodalMixedEffectsNet, e.g. built by "
                    f"make_multimodal_me_cnn), got {type(net).__name__}."
                )
        names = list(primary.modalities)
        unknown = [m for m in fallback.modalities if m not in names]
        if unknown:
            raise ValueError(f"fallback modalities {unknown} are not among the primary's modalities {names}.")
        if len(fallback.modalities) >= len(names):
            raise ValueError(
                f"the fallback must use fewer modalities than the primary {names}, got {list(fallback.modalities)}."
            )
        for attr in ("num_clusters", "out_channels", "num_covariates"):
            if getattr(fallback, attr) != getattr(primary, attr):
                raise ValueError(
                    f"fallback.{attr} = {getattr(fallback, attr)} differs from primary.{attr} = "
                    f"{getattr(primary, attr)}; both networks must share it."
                )
        offsets = [0]
        for c in primary.modality_channels:
            offsets.append(offsets[-1] + int(c))
        columns: list[int] = []
        channels: list[int] = []
        for m in fallback.modalities:
            j = names.index(m)
            if int(fallback.modality_channels[len(columns)]) != int(primary.modality_channels[j]):
                raise ValueError(f"modality {m!r} has a different number of channels in the fallback.")
            columns.append(j)
            channels.extend(range(offsets[j], offsets[j + 1]))
        self.primary = primary
        self.fallback = fallback
        self.num_modalities = len(names)
        self.num_clusters = primary.num_clusters
        self.modalities = names
        self.fallback_modalities = list(fallback.modalities)
        self.has_covariates = bool(primary.num_covariates)
        self.register_buffer("fallback_columns", torch.tensor(columns, dtype=torch.long), persistent=False)
        self.register_buffer("fallback_channels", torch.tensor(channels, dtype=torch.long), persistent=False)

    def forward(
        self,
        x: torch.Tensor,
        z: Optional[torch.Tensor] = None,
        mask: Optional[torch.Tensor] = None,
        covariates: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        if not torch.jit.is_scripting() and self.training:
            raise RuntimeError("ModalityFallback routes predictions at inference: train its two networks, then eval().")
        out = self.primary(x, z, mask, covariates)
        if mask is None:
            return out
        images = mask[:, : self.num_modalities] > 0
        complete = images.all(dim=1)
        if bool(complete.all()):
            return out
        routed = ~complete
        absent = routed & ~images.index_select(1, self.fallback_columns).all(dim=1)
        if bool(absent.any()):
            bad: list[int] = absent.nonzero().flatten().tolist()
            raise ValueError(
                "sample(s) " + str(bad) + " lack a modality of the fallback network " + str(self.fallback_modalities)
            )
        rows = routed.nonzero().flatten()
        sub_mask = mask.index_select(0, rows).index_select(1, self.fallback_columns)
        if self.has_covariates and mask.shape[1] > self.num_modalities:
            sub_mask = torch.cat([sub_mask, mask.index_select(0, rows)[:, self.num_modalities :]], dim=1)
        fallback = self.fallback(
            x.index_select(0, rows).index_select(1, self.fallback_channels),
            None if z is None else z.index_select(0, rows),
            sub_mask,
            None if covariates is None else covariates.index_select(0, rows),
        )
        return out.index_copy(0, rows, fallback.to(out.dtype))
