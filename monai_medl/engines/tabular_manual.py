# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""A training step of the ME-MLP with its adversary whose gradients are written out by hand (no autograd graph).

On a 4-4-4 MLP every tensor operation costs a few microseconds of dispatch and every autograd node as much again,
so the mixed-effects step (both heads, two random-effects draws, the KL, the adversary's update and its penalty)
costs several times the plain MLP's although the arithmetic is negligible. :class:`ManualMLPStep` computes the same
step, in the same order as :class:`~monai_medl.engines.TabularTrainer`'s default (two-step adversary: the adversary's
update on the detached activations with its own optimizer, then the main loss with the updated, frozen adversary's
penalty, then the closed-form KL gradient and the main optimizer's step), from the closed-form derivatives of the ReLU
MLPs, the binary cross-entropy and the reparameterised draws, with the same random numbers. The result equals the
autograd step up to floating-point rounding (tested); over thousands of steps such differences can grow (the
trainer's ``manual_backward=False`` keeps autograd). :class:`~monai_medl.engines.TabularTrainer` takes this step by
default wherever it applies. It covers the configuration of the spirals benchmark:
a single-factor :class:`~monai_medl.networks.nets.MixedEffectsMLP` with ReLU layers (random slopes on ``h`` and/or an
intercept, no input slopes, no dropout, no learned noise), ``task="bce"`` and an optional
:class:`~monai_medl.networks.nets.ClusterClassifier` adversary with ReLU layers; :func:`manual_step_unsupported` names
what else it meets.
"""

from __future__ import annotations

from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import nn

from monai_medl.engines.adam_step import AdamStep
from monai_medl.engines.flat_parameters import FlatParameters
from monai_medl.losses.adversarial_regularizer import AdversarialRegularizer
from monai_medl.networks.layers.random_effects import (
    _SIGMA_FLOOR,
    RandomEffects,
    accumulate_kl_grads_,
    kl_rho_grad_factor,
    kl_scaled_moment,
    kl_value,
)
from monai_medl.networks.nets.cluster_classifier import ClusterClassifier
from monai_medl.networks.nets.me_mlp import MixedEffectsMLP

__all__ = ["AdversaryTargets", "ManualMLPStep", "manual_step_unsupported"]


def _relu_linears(layers: nn.Module) -> list[nn.Linear] | None:
    """The Linear layers of a stack of ``Linear, ReLU`` pairs (a last Linear allowed), or None for anything else."""
    mods = [m for m in layers.modules() if not isinstance(m, (nn.Sequential, nn.ModuleList))]
    linears = [m for m in mods if isinstance(m, nn.Linear)]
    relus = [m for m in mods if isinstance(m, nn.ReLU)]
    if len(linears) + len(relus) != len(mods) or len(relus) not in (len(linears), len(linears) - 1):
        return None
    return linears


def manual_step_unsupported(
    network: nn.Module, task: str, regularizer: AdversarialRegularizer | None, fused: bool
) -> str | None:
    """Why :class:`ManualMLPStep` cannot train this configuration (None when it can)."""
    if not isinstance(network, MixedEffectsMLP) or network.grouped:
        return "the network must be a single-factor MixedEffectsMLP"
    if network.linear_slopes is not None or network.head.log_noise_scale is not None:
        return "input slopes (linear_slopes=True) and a learned noise scale are not covered"
    if _relu_linears(network.hidden) is None or not network.hidden:
        return "the hidden layers must be Linear + ReLU (act='relu', dropout=0)"
    if network.out_channels != 1 or task != "bce":
        return "only task='bce' with one output is covered"
    head = network.head
    if any(layer is not None and layer.sample_per_item for layer in (head.slopes, head.intercept)):
        return "sample_per_item random effects are not covered"
    if regularizer is None:
        return None
    if fused:
        return "manual_backward replaces fused=True (use one of them)"
    adversary = regularizer.adversary
    if not isinstance(adversary, ClusterClassifier) or adversary.input_norm is not None:
        return "the adversary must be a ClusterClassifier without input_norm"
    if _relu_linears(adversary.net) is None:
        return "the adversary's layers must be Linear + ReLU (act='relu', dropout=0)"
    if regularizer.steps != 1 or regularizer._memory is not None or regularizer.label_classes:
        return "the adversary must take one step per batch without memory or labels"
    if regularizer.feature_scaling != "none" or regularizer.update != "two_step":
        return "the adversary needs feature_scaling='none' and update='two_step'"
    return None


class _Dense(NamedTuple):
    """A Linear layer's tensors, read once per step object: a Module attribute read costs as much as a small
    operation, and a ``.grad`` assignment more. The transposed weight is a view (the optimizer's in-place updates
    show in it; ``addmm(bias, x, weight_t)`` is ``F.linear`` without its per-call transpose) and the gradients are
    the layer's own ``.grad`` tensors, overwritten (``out=``) by every step."""

    weight: torch.Tensor
    bias: torch.Tensor
    weight_t: torch.Tensor
    grad_weight: torch.Tensor
    grad_bias: torch.Tensor
    grad_weight_t: torch.Tensor  # the gradient's transposed view: ``mm(input_t, grad, out=)`` writes dW


def _dense(linears: list[nn.Linear]) -> list[_Dense]:
    layers = []
    for layer in linears:
        weight, bias = layer.weight, cast(torch.Tensor, layer.bias)
        # a FlatParameters' gradient views are kept
        grad_w = torch.zeros_like(weight) if weight.grad is None else weight.grad
        grad_b = torch.zeros_like(bias) if bias.grad is None else bias.grad
        weight.grad, bias.grad = grad_w, grad_b
        layers.append(_Dense(weight, bias, weight.t(), grad_w, grad_b, grad_w.t()))
    return layers


def _mlp_forward(layers: list[_Dense], x: torch.Tensor, relu_last: bool, outs=None) -> list[torch.Tensor]:
    """Activations ``[x, a_1, ..., a_L]`` of the Linear/ReLU stack (no ReLU after the last layer unless asked);
    ``outs[i]``, where given, is the buffer layer ``i`` writes into (a :class:`_Workspace` view)."""
    acts = [x]
    last = len(layers) - 1
    for i, layer in enumerate(layers):
        out = None if outs is None else outs[i]
        if out is None:
            pre = torch.addmm(layer.bias, acts[-1], layer.weight_t)
        else:
            pre = torch.addmm(layer.bias, acts[-1], layer.weight_t, out=out)
        acts.append(pre.relu_() if relu_last or i < last else pre)
    return acts


def _mlp_backward(layers: list[_Dense], acts, grad: torch.Tensor, inputs_t, extra=None) -> None:
    """Write the stack's parameter gradients from its output gradient; ``inputs_t[i]`` is ``acts[i].t()`` (a cached
    view of a workspace buffer, or None: transposed here); ``extra[i]`` is added to the gradient of ``acts[i + 1]``
    (the adversary's gradient on the features)."""
    for i in range(len(layers) - 1, -1, -1):
        layer, input_t = layers[i], inputs_t[i]
        torch.mm(acts[i].t() if input_t is None else input_t, grad, out=layer.grad_weight_t)
        torch.sum(grad, 0, out=layer.grad_bias)
        if i == 0:
            return
        if extra is not None:  # one addmm instead of mm + add_
            grad = torch.addmm(extra[i - 1], grad, layer.weight)
        else:
            grad = grad.mm(layer.weight)
        grad = _relu_backward(grad, acts[i])


def _flatten(linears: list[nn.Linear], drawn, optimizer, step: AdamStep | None) -> FlatParameters | None:
    """The optimizer's one group as :class:`FlatParameters` (registered with its ``step``) in the step's layout: the
    Linear layers' weights and biases, then the ``drawn`` random-effects layers' locs, rhos and learned prior scales;
    None, leaving the parameters as they are, where ``drawn`` is None, the group holds anything else or the update
    is not the fused kernel's."""
    if drawn is None or step is None or not step.fast or len(optimizer.param_groups) != 1:
        return None
    layout = [p for layer in linears for p in (layer.weight, layer.bias)]
    layout += [layer.loc for layer in drawn] + [layer.rho for layer in drawn]
    layout += [layer.log_prior_scale for layer in drawn if layer.log_prior_scale.requires_grad]
    params = optimizer.param_groups[0]["params"]
    if len(layout) != len(params) or {id(p) for p in layout} != {id(p) for p in params}:
        return None
    flat = FlatParameters(layout)
    step.use_flat(flat)
    return flat


class _Workspace(NamedTuple):
    """The buffers a step of one batch size writes into (``rows`` items), made once and reused by every step.

    The hidden layers write side by side into ``features`` (the adversary's input, without a concatenation); with
    random effects the rows below it hold ``h (1 + u)`` under ``h``, so that ``stacked = [h; h (1 + u)]`` is one
    strided view and both heads are one pass. The transposed views give the weight gradients as
    ``mm(input_t, grad)`` without a per-step transpose.
    """

    hidden_outs: list[torch.Tensor]
    hidden_inputs_t: list[torch.Tensor | None]  # x (the batch) is transposed per step
    features: torch.Tensor
    features_t: torch.Tensor
    head_in: torch.Tensor  # stacked [h; h (1 + u)], or h
    head_in_t: torch.Tensor
    bottom: torch.Tensor  # the h (1 + u) rows
    g_head_in: torch.Tensor  # gradient of head_in, and its two halves
    g_top: torch.Tensor
    g_bottom: torch.Tensor
    adversary_outs: list[torch.Tensor | None]  # the adversary's hidden activations (its logits are kept: fresh)
    adversary_inputs_t: list[torch.Tensor]
    g_features: torch.Tensor  # the penalty's gradient on the features, and its view per hidden layer
    g_feature_views: list[torch.Tensor]


def _workspace(hidden: list[_Dense], adversary: list[_Dense], rows: int, stacked: bool) -> _Workspace:
    widths = [layer.weight.shape[0] for layer in hidden]
    ref = hidden[0].weight
    buffer = ref.new_empty(2 * rows if stacked else rows, sum(widths))
    features = buffer[:rows]
    hidden_outs = list(features.split(widths, 1))
    head_in = buffer[:, -widths[-1] :]
    g_head_in, g_features = torch.empty_like(head_in), torch.empty_like(features)
    adversary_outs: list[torch.Tensor | None] = [ref.new_empty(rows, layer.weight.shape[0]) for layer in adversary]
    adversary_outs[-1:] = [None]
    return _Workspace(
        hidden_outs,
        [None] + [out.t() for out in hidden_outs[:-1]],
        features,
        features.t(),
        head_in,
        head_in.t(),
        head_in[rows:],
        g_head_in,
        g_head_in[:rows],
        g_head_in[rows:],
        adversary_outs,
        [features.t()] + [cast(torch.Tensor, out).t() for out in adversary_outs[:-1]],
        g_features,
        list(g_features.split(widths, 1)),
    )


_THRESHOLD_BACKWARD = torch.ops.aten.threshold_backward.default  # the overload itself: no per-call resolution


def _relu_backward(grad: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    # autograd's own ReLU backward (one operation; a multiplication by the boolean mask would first convert it)
    return _THRESHOLD_BACKWARD(grad, output, 0.0)


class _Draws:
    """The reparameterised draws ``loc + sigma * eps`` of the head's random-effects layers as one flat pass.

    The layers' entries are taken together so that the elementwise work (``sigmoid``, ``softplus``, the draw, the
    KL) runs once for all of them: as slices of the network's :class:`FlatParameters` when it has them (the layers'
    ``loc`` and ``rho`` consecutive in its layout), else concatenated per step into buffers whose views become the
    layers' gradients. ``eps`` is drawn per layer, in the layers' order and shape, so the random numbers are those of
    ``randn_like(layer.loc)``. Every step overwrites the gradients (the head's backward writes them with ``out=``,
    the KL adds to them).
    """

    def __init__(self, layers: list[RandomEffects], flat: FlatParameters | None) -> None:
        self.layers = layers
        self.sizes = [layer.loc.numel() for layer in layers]
        ref = layers[0].loc
        self.eps = ref.new_empty(sum(self.sizes))
        self.eps_parts = list(self.eps.split(self.sizes))
        self.weights = ref.new_empty(sum(self.sizes))
        self.weight_views = [w.view_as(layer.loc) for w, layer in zip(self.weights.split(self.sizes), layers)]
        self.flat = flat
        if flat is not None:
            self.loc, self.grad_loc = flat.slice(layers[0].loc, len(layers))
            self.rho, self.grad_rho = flat.slice(layers[0].rho, len(layers))
        else:
            self.locs = [layer.loc.view(-1) for layer in layers]  # views: the updates show in them
            self.rhos = [layer.rho.view(-1) for layer in layers]
            self.grad_loc, self.grad_rho = ref.new_zeros(sum(self.sizes)), ref.new_zeros(sum(self.sizes))
            for layer, g_loc, g_rho in zip(layers, self.grad_loc.split(self.sizes), self.grad_rho.split(self.sizes)):
                layer.loc.grad, layer.rho.grad = g_loc.view_as(layer.loc), g_rho.view_as(layer.rho)
        self.grad_loc_views = [cast(torch.Tensor, layer.loc.grad) for layer in layers]

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loc, sigma, sigmoid(rho), d weights / d rho)``, flat; the drawn weights are in ``weight_views``."""
        if self.flat is not None:
            loc, rho = self.loc, self.rho
        else:
            loc = torch.cat(self.locs) if len(self.locs) > 1 else self.locs[0]
            rho = torch.cat(self.rhos) if len(self.rhos) > 1 else self.rhos[0]
        sig = torch.sigmoid(rho)
        sigma = F.softplus(rho).add_(_SIGMA_FLOOR)
        for part in self.eps_parts:
            part.normal_()
        torch.addcmul(loc, sigma, self.eps, out=self.weights)
        return loc, sigma, sig, self.eps * sig


class _FlatKL:
    """The drawn layers' closed-form KL gradients in one pass over their entries, from the pieces of
    :func:`~monai_medl.networks.layers.random_effects._kl_and_grads` (``kl_scaled_moment``, ``kl_rho_grad_factor``,
    ``kl_value``) accumulated into the step's flat gradient buffers; returns the parts of the KL's value, which the
    step sums once per epoch (``-2 log s`` is kept: the value's ``log s`` is exactly ``-1/2`` of it)."""

    def __init__(self, draws: _Draws, weight: float) -> None:
        self.priors: list[torch.Tensor] = [layer.log_prior_scale for layer in draws.layers]
        self.learned = self.priors[0].requires_grad
        self.weight = weight
        ref = draws.grad_loc
        sizes = torch.tensor(draws.sizes, device=ref.device)
        self.index = torch.repeat_interleave(torch.arange(len(draws.sizes), device=ref.device), sizes)
        self.counts = sizes.to(ref.dtype)
        self.counts_weighted = self.counts * weight
        self.indicator = F.one_hot(self.index, len(draws.sizes)).t().to(ref.dtype)  # (layers, entries)
        self.log_s: torch.Tensor | None = None  # the prior scales' flat slice (a view) when the network is flat
        if self.learned and draws.flat is not None:
            self.log_s, self.prior_grad = draws.flat.slice(self.priors[0], len(self.priors))
        else:
            self.prior_grad = ref.new_zeros(len(self.priors))
            if self.learned:
                for prior, grad in zip(self.priors, self.prior_grad):
                    prior.grad = grad

    @staticmethod
    def covers(layers: list, kl_layers: list) -> bool:
        """The drawn layers are the KL's, with one-number prior scales all learned or all fixed."""
        priors = [layer.log_prior_scale for layer in layers]
        learned = {p.requires_grad for p in priors}
        return bool(layers) and kl_layers == layers and all(p.dim() == 0 for p in priors) and len(learned) == 1

    def __call__(self, draws: _Draws, loc, sigma, sig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        log_s = torch.stack(self.priors) if self.log_s is None else self.log_s
        minus_2_log_s = log_s * -2.0
        inv_var = torch.exp(minus_2_log_s).index_select(0, self.index)
        scaled = kl_scaled_moment(loc, sigma, inv_var)
        w = self.weight
        if self.learned:  # d KL / d log s_l = n_l - sum of the layer's scaled entries
            torch.sub(self.counts_weighted, torch.mv(self.indicator, scaled), alpha=w, out=self.prior_grad)
        draws.grad_loc.addcmul_(loc, inv_var, value=w)  # d KL / d loc = loc / s^2
        draws.grad_rho.addcmul_(kl_rho_grad_factor(sigma, inv_var), sig, value=w)
        return scaled, sigma, minus_2_log_s

    def value(self, parts: list) -> torch.Tensor:
        """The summed KL of the steps whose ``parts`` were returned."""
        scaled, sigma, minus_2_log_s = (torch.stack(p) for p in zip(*parts))
        n = float(self.counts.sum()) * len(parts)
        log_s_sum = minus_2_log_s.mv(self.counts).sum().mul_(-0.5)
        return kl_value(scaled, sigma.log_(), log_s_sum, n)


class AdversaryTargets(NamedTuple):
    """The adversary's per-batch constants, computed once per epoch (see :meth:`ManualMLPStep.adversary_targets`)."""

    target: torch.Tensor  # (batch,) site index, unknown sites as 0
    one_hot: torch.Tensor  # (batch, clusters)
    scale: torch.Tensor  # (batch, 1) item weight / number of known sites in the batch
    scale_g: torch.Tensor  # lambda_g * scale


class ManualMLPStep:
    """One training step of a :class:`~monai_medl.engines.TabularTrainer` with hand-written gradients.

    Per epoch, :meth:`adversary_targets` prepares the adversary's targets of every mini-batch, each call trains one
    mini-batch and :meth:`end_epoch` returns the epoch's summed main loss and the sum of the adversary's per-batch
    accuracies and sets the regulariser's ``last`` to the epoch's last batch. The loss values do not feed the
    gradients, so each step keeps the tensors they are made of (logits, the KL's parts) and :meth:`end_epoch`
    computes them for the whole epoch at once. Both heads run as one stacked pass over ``[h; h (1 + u)]`` and the
    random-effects layers' draws and KL as one flat pass (:class:`_Draws`). Both optimizers are stepped through
    :class:`~monai_medl.engines.adam_step.AdamStep` (the fused kernel called directly, the same update).

    Args:
        network: the MixedEffectsMLP (see :func:`manual_step_unsupported`).
        optimizer: the network's optimizer (stepped once per call).
        regularizer: the two-step adversary (its own optimizer), or None.
        lambda_mixed: weight of the mixed head's loss.
        lambda_fixed: weight of the fixed head's loss.
        kl_layers: random-effects layers whose closed-form KL gradient is added (empty: no KL).
        kl_weight: weight of the KL.
        optimizer_step: the :class:`~monai_medl.engines.adam_step.AdamStep` of ``optimizer`` to step through (a
            trainer's own, so that one object keeps its cached state lists); None builds one. Defaults to None.

    Example::

        >>> from monai_medl.engines.tabular import make_adam
        >>> from monai_medl.networks.nets import MixedEffectsMLP
        >>> net = MixedEffectsMLP(2, 1, num_clusters=3, linear_slopes=False).train()
        >>> step = ManualMLPStep(net, make_adam(net.parameters(), 1e-3), None, 1.0, 1.0, [], 0.0)
        >>> step(torch.randn(8, 2), torch.ones(8, 1), torch.eye(3)[[0, 1, 2, 0, 1, 2, 0, 1]])
        >>> loss, accuracy = step.end_epoch()  # summed over the epoch's steps (one here); no adversary
        >>> loss.shape, accuracy
        (torch.Size([]), None)
    """

    def __init__(
        self,
        network,
        optimizer,
        regularizer,
        lambda_mixed,
        lambda_fixed,
        kl_layers,
        kl_weight,
        optimizer_step: AdamStep | None = None,
    ) -> None:
        self.network, self.optimizer, self.regularizer = network, optimizer, regularizer
        if optimizer_step is not None and optimizer_step.optimizer is not optimizer:
            raise ValueError("ManualMLPStep: optimizer_step must step the given optimizer (optimizer_step.optimizer).")
        reason = manual_step_unsupported(network, "bce", regularizer, False)
        if reason is not None:
            raise ValueError(f"ManualMLPStep: {reason}.")
        self.hidden: list[nn.Linear] = _relu_linears(network.hidden) or []
        self.adversary: list[nn.Linear] = [] if regularizer is None else _relu_linears(regularizer.adversary.net) or []
        self.lambda_mixed, self.lambda_fixed = float(lambda_mixed), float(lambda_fixed)
        self.kl_layers, self.kl_weight = list(kl_layers), float(kl_weight)
        self.step = AdamStep(optimizer) if optimizer_step is None else optimizer_step
        self.adversary_step = None if regularizer is None else AdamStep(regularizer.optimizer)
        # every gradient the step writes is overwritten each call; the KL adds to the prior scales' gradients
        optimizer.zero_grad(set_to_none=True)
        head = network.head
        self._drawn = [layer for layer in (head.slopes, head.intercept) if layer is not None]
        self._slopes, self._intercept = head.slopes is not None, head.intercept is not None
        covered = not self._drawn or _FlatKL.covers(self._drawn, self.kl_layers)
        # parameters held in one flat tensor each for the model and the adversary (restored by close())
        drawn = self._drawn if covered else None
        self.flat: list[FlatParameters | None] = [_flatten(self.hidden + [head.linear], drawn, optimizer, self.step)]
        if regularizer is not None:
            self.flat.append(_flatten(self.adversary, [], regularizer.optimizer, self.adversary_step))
        self._hidden, self._adversary_layers = _dense(self.hidden), _dense(self.adversary)
        self._head = _dense([head.linear])[0]
        self._accumulated = [layer.log_prior_scale for layer in self.kl_layers if layer.log_prior_scale.requires_grad]
        self._draws: _Draws | None = None  # built at the first mixed step (its buffers become the layers' gradients)
        self._flat_kl: _FlatKL | None = None
        self._workspaces: dict[tuple[int, bool], _Workspace] = {}  # (rows, stacked heads) -> buffers
        self._row_weights: dict[tuple[int, bool], torch.Tensor] = {}
        self._epoch_targets: tuple[torch.Tensor, ...] = ()
        self._reset()

    def _reset(self) -> None:
        self._logits: list[torch.Tensor] = []  # the adversary's logits before its update (its accuracy)
        self._penalty_logits: list[torch.Tensor] = []  # ... after it (the adversarial term)
        self._heads: list[tuple[torch.Tensor, torch.Tensor, bool]] = []  # (head logits, targets, stacked)
        self._kl_parts: list[tuple[torch.Tensor, ...]] = []
        self._kl_values: list[torch.Tensor] = []

    def adversary_targets(self, sites: torch.Tensor, batch_size: int) -> list[AdversaryTargets]:
        """The adversary's :class:`AdversaryTargets` of each mini-batch of ``sites`` (negative: unknown)."""
        reg = self.regularizer
        if reg is None:
            raise ValueError("ManualMLPStep.adversary_targets: the step has no adversary.")
        dtype = self.hidden[0].weight.dtype
        target, weight = sites.clamp_min(0), (sites >= 0).to(dtype)
        batch = torch.arange(sites.shape[0], device=sites.device).div_(batch_size, rounding_mode="floor")
        counts = weight.new_zeros(-(-sites.shape[0] // batch_size)).index_add_(0, batch, weight).clamp_min_(1.0)
        scale = (weight / counts[batch]).unsqueeze(1)
        one_hot = F.one_hot(target, self.adversary[-1].out_features).to(dtype)
        self._logits, self._penalty_logits, self._epoch_targets = [], [], (target, one_hot, scale)
        parts = (t.split(batch_size) for t in (target, one_hot, scale, scale * reg.lambda_g))
        return [AdversaryTargets(*batch_parts) for batch_parts in zip(*parts)]

    def end_epoch(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(summed main loss, summed adversary accuracy)`` of the steps since the last call (the accuracy None
        without adversary); the main loss of a step is its task terms, ``kl_weight`` times the KL and the
        adversarial term, as the autograd step's."""
        loss = self._head_loss()
        if self._kl_parts:
            loss = loss.add_(cast(_FlatKL, self._flat_kl).value(self._kl_parts), alpha=self.kl_weight)
        if self._kl_values:
            loss = loss.add_(torch.stack(self._kl_values).sum(), alpha=self.kl_weight)
        accuracy = None
        if self.regularizer is not None and self._logits:
            loss = loss.add_(self._penalty())
            accuracy = self._accuracy()
        self._reset()
        return loss, accuracy

    def _head_loss(self) -> torch.Tensor:
        """The task terms of the stored steps: ``sum over rows of weight * BCE`` (a stacked step's weights are
        ``lambda_fixed / n`` and ``lambda_mixed / n``, a single head's ``1 / n``)."""
        if not self._heads:
            return self.hidden[0].weight.new_zeros(())
        logits = torch.cat([logit for logit, _, _ in self._heads])
        targets = torch.cat([t for _, y, stacked in self._heads for t in ((y, y) if stacked else (y,))])
        weights = torch.cat([self._weights(y.shape[0], stacked) for _, y, stacked in self._heads])
        per_entry = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        return per_entry.view(-1).dot(weights.view(-1))

    def _penalty(self) -> torch.Tensor:
        """The adversarial terms of the stored steps (the updated, frozen adversary's logits)."""
        reg = cast(AdversarialRegularizer, self.regularizer)
        log_p = torch.log_softmax(torch.cat(self._penalty_logits), 1)
        _, one_hot, scale = self._epoch_targets
        scale_g = scale[: log_p.shape[0], 0] * reg.lambda_g
        if reg.objective == "confusion":  # lambda_g * mean over items and classes of -log p
            return log_p.sum(1).dot(scale_g).mul_(-1.0 / log_p.shape[1])
        return (log_p * one_hot[: log_p.shape[0]]).sum(1).dot(scale_g)  # -lambda_g * CE(site)

    def _accuracy(self) -> torch.Tensor:
        """The summed per-batch accuracy of the adversary (before its updates); sets the regulariser's ``last``."""
        target, one_hot, scale = self._epoch_targets
        logits = torch.cat(self._logits)
        correct = (logits.argmax(1) == target[: logits.shape[0]]).to(scale.dtype).unsqueeze(1)
        last, count = self._logits[-1], self._logits[-1].shape[0]
        own = -(torch.log_softmax(last, 1) * one_hot[-count:] * scale[-count:]).sum()
        cast(AdversarialRegularizer, self.regularizer)._last = (own, (correct[-count:] * scale[-count:]).sum())
        return (correct * scale[: logits.shape[0]]).sum()

    def _weights(self, rows: int, stacked: bool) -> torch.Tensor:
        """Per-row weights of the task terms of a batch of ``rows`` items (cached per size)."""
        key = (rows, stacked)
        if key not in self._row_weights:
            ref = self.hidden[0].weight
            values = [self.lambda_fixed / rows, self.lambda_mixed / rows] if stacked else [1.0 / rows]
            self._row_weights[key] = ref.new_tensor(values).repeat_interleave(rows).unsqueeze(1)
        return self._row_weights[key]

    def close(self) -> None:
        """Give the parameters their own storage again (they are views of one flat tensor while the step trains)."""
        for flat, step in zip(self.flat, (self.step, self.adversary_step)):
            if flat is not None and step is not None:
                flat.restore()
                step.use_flat(None)
        self.flat = [None]

    def _workspace(self, rows: int, stacked: bool) -> _Workspace:
        """The :class:`_Workspace` of a batch size (the random effects' draws are set up at the first stacked step:
        their buffers become the layers' gradients)."""
        key = (rows, stacked)
        if key not in self._workspaces:
            self._workspaces[key] = _workspace(self._hidden, self._adversary_layers, rows, stacked)
        if stacked and self._draws is None:
            self._draws = _Draws(self._drawn, self.flat[0])
            if _FlatKL.covers(self._drawn, self.kl_layers):
                self._flat_kl = _FlatKL(self._draws, self.kl_weight)
        return self._workspaces[key]

    @torch.no_grad()
    def __call__(self, x, y, z, targets: AdversaryTargets | None = None) -> None:
        """Train one mini-batch (the adversary's update, then the model's); :meth:`end_epoch` sums the losses."""
        y = y.unsqueeze(1) if y.dim() == 1 else y  # as task_loss: (batch,) or (batch, 1) targets
        y = y if y.dtype == x.dtype else y.to(x.dtype)
        stacked = z is not None and bool(self._drawn)
        work = self._workspace(x.shape[0], stacked)
        acts = _mlp_forward(self._hidden, x, relu_last=True, outs=work.hidden_outs)
        h, head = acts[-1], self._head
        if stacked:
            logits, g_h = self._mixed_head(h, y, z, work)
        else:
            logits = torch.addmm(head.bias, h, head.weight_t)
            g = torch.sigmoid(logits).sub_(y).mul_(1.0 / y.numel())
            torch.mm(work.head_in_t, g, out=head.grad_weight_t)
            torch.sum(g, 0, out=head.grad_bias)
            g_h = g.mm(head.weight)
        self._heads.append((logits, y, stacked))
        feature_grads = None
        if targets is not None:
            feature_grads = self._adversary(acts[1:], targets, work)
            g_h = g_h.add_(feature_grads[-1])
        _mlp_backward(self._hidden, acts, _relu_backward(g_h, h), work.hidden_inputs_t, feature_grads)
        if self.kl_layers and self._flat_kl is None:  # another layer set: the concatenated pass
            for p in self._accumulated:
                p.grad = None
            self._kl_values.append(accumulate_kl_grads_(self.kl_layers, self.kl_weight))
        self.step()

    def _mixed_head(self, h, y, z, work: _Workspace) -> tuple[torch.Tensor, torch.Tensor]:
        """Both heads on ``[h; h (1 + u)]``, their gradients and the random effects' (with the KL's): ``(logits,
        gradient of h)``."""
        head, draws = self._head, cast(_Draws, self._draws)
        loc, sigma, sig, dw_drho = draws()
        stacked, bottom, g_h, g_hm = work.head_in, work.bottom, work.g_top, work.g_bottom
        weights = iter(draws.weight_views)
        u = None
        if self._slopes:
            u = z.mm(next(weights))
            torch.addcmul(h, h, u, out=bottom)
        else:
            bottom.copy_(h)
        rows = h.shape[0]
        logits = torch.addmm(head.bias, stacked, head.weight_t)
        if self._intercept:
            logits[rows:].addmm_(z, next(weights))
        g = torch.sigmoid(logits)
        g.view(2, rows, 1).sub_(y)
        g.mul_(self._weights(rows, True))
        torch.mm(work.head_in_t, g, out=head.grad_weight_t)
        torch.sum(g, 0, out=head.grad_bias)
        torch.mm(g, head.weight, out=work.g_head_in)
        z_t, grads = z.t(), iter(draws.grad_loc_views)
        if self._slopes:
            torch.mm(z_t, g_hm * h, out=next(grads))
        if self._intercept:
            torch.mm(z_t, g[rows:], out=next(grads))
        torch.mul(draws.grad_loc, dw_drho, out=draws.grad_rho)
        if self._flat_kl is not None:
            self._kl_parts.append(self._flat_kl(draws, loc, sigma, sig))
        return logits, (g_h.add_(g_hm) if u is None else g_h.addcmul_(g_hm, u).add_(g_hm))

    def _adversary(self, features, targets: AdversaryTargets, work: _Workspace) -> list[torch.Tensor]:
        """The adversary's two-step update, then the gradient of its penalty on each feature."""
        reg, layers, live = self.regularizer, self._adversary_layers, work.features
        acts = _mlp_forward(layers, live, relu_last=False, outs=work.adversary_outs)
        self._logits.append(acts[-1])
        grad = torch.softmax(acts[-1], 1).sub_(targets.one_hot).mul_(targets.scale)
        _mlp_backward(layers, acts, grad, work.adversary_inputs_t)
        reg._sync_grads()
        cast(AdamStep, self.adversary_step)()
        acts = _mlp_forward(layers, live, relu_last=False)  # the updated adversary, frozen
        self._penalty_logits.append(acts[-1])
        p = torch.softmax(acts[-1], 1)
        if reg.objective == "confusion":  # d/d logits of -mean log p
            grad = p.sub_(1.0 / p.shape[1])
        else:  # of +CE(site) ... negated: -lambda_g * CE
            grad = p.sub_(targets.one_hot).neg_()
        _mlp_input_grad(layers, acts, grad.mul_(targets.scale_g), work.g_features)
        return work.g_feature_views


def _mlp_input_grad(layers: list[_Dense], acts: list[torch.Tensor], grad: torch.Tensor, out: torch.Tensor) -> None:
    """Write the gradient of the stack's input into ``out`` from its output gradient (no parameter gradients: a
    frozen network)."""
    for i in range(len(layers) - 1, 0, -1):
        grad = _relu_backward(grad.mm(layers[i].weight), acts[i])
    torch.mm(grad, layers[0].weight, out=out)
