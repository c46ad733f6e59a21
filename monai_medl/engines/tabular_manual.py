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
from monai_medl.losses.adversarial_regularizer import AdversarialRegularizer
from monai_medl.networks.layers.random_effects import _SIGMA_FLOOR, RandomEffects, _kl_and_grads, accumulate_kl_grads_
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


def _mlp_forward(linears: list[nn.Linear], x: torch.Tensor, relu_last: bool) -> list[torch.Tensor]:
    """Activations ``[x, a_1, ..., a_L]`` of the Linear/ReLU stack (no ReLU after the last layer unless asked)."""
    acts = [x]
    for i, layer in enumerate(linears):
        pre = F.linear(acts[-1], layer.weight, layer.bias)  # addmm(bias, x, weight.t()) with one dispatch less
        acts.append(pre.relu_() if relu_last or i < len(linears) - 1 else pre)
    return acts


def _mlp_backward(linears, acts, grad, extra=None, need_input: bool = False):
    """Parameter gradients ``[(dW, db)]`` of the stack from the output gradient; ``extra[i]`` is added to the
    gradient of ``acts[i + 1]`` (the adversary's gradient on the features); returns ``(grads, input gradient)``."""
    grads: list[tuple[torch.Tensor, torch.Tensor]] = []
    for i in range(len(linears) - 1, -1, -1):
        grads.append((grad.t().mm(acts[i]), grad.sum(0)))
        if i == 0 and not need_input:
            break
        grad = grad.mm(linears[i].weight)
        if i > 0:
            if extra is not None:
                grad = grad.add_(extra[i - 1])
            grad = _relu_backward(grad, acts[i])
    return grads[::-1], grad


def _relu_backward(grad: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    # autograd's own ReLU backward (one operation; a multiplication by the boolean mask would first convert it)
    return torch.ops.aten.threshold_backward(grad, output, 0.0)


def _set_grads(linears: list[nn.Linear], grads) -> None:
    for layer, (gw, gb) in zip(linears, grads):
        layer.weight.grad, layer.bias.grad = gw, gb


def _draw(layer: RandomEffects) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(weights, d weights / d rho, sigma, sigmoid(rho))`` of one reparameterised draw (the layer's numbers)."""
    sig = torch.sigmoid(layer.rho)
    scale = F.softplus(layer.rho).add_(_SIGMA_FLOOR)
    eps = torch.randn_like(layer.loc)
    return torch.addcmul(layer.loc, scale, eps), eps.mul_(sig), scale, sig


def _add_kl_grads(layer: RandomEffects, sigma: torch.Tensor, sig: torch.Tensor, weight: float) -> torch.Tensor:
    """Add ``weight`` times the closed-form KL gradients to the layer's (set) gradients; return its KL.

    :func:`~monai_medl.networks.layers.random_effects._kl_and_grads` given the draw's ``sigma`` and ``sigmoid(rho)``,
    which it would otherwise compute again.
    """
    prior = layer.log_prior_scale
    kl, g_loc, g_rho, g_log_s = _kl_and_grads(layer.loc, layer.rho, prior, prior.requires_grad, sigma, sig)
    cast(torch.Tensor, layer.loc.grad).add_(g_loc, alpha=weight)
    cast(torch.Tensor, layer.rho.grad).add_(g_rho, alpha=weight)
    if g_log_s is not None:
        prior.grad = g_log_s.mul_(weight)
    return kl


class AdversaryTargets(NamedTuple):
    """The adversary's per-batch constants, computed once per epoch (see :meth:`ManualMLPStep.adversary_targets`)."""

    target: torch.Tensor  # (batch,) site index, unknown sites as 0
    one_hot: torch.Tensor  # (batch, clusters)
    scale: torch.Tensor  # (batch, 1) item weight / number of known sites in the batch
    scale_g: torch.Tensor  # lambda_g * scale


class ManualMLPStep:
    """One training step of a :class:`~monai_medl.engines.TabularTrainer` with hand-written gradients.

    Per epoch, :meth:`adversary_targets` prepares the adversary's targets of every mini-batch, each call trains one
    mini-batch and :meth:`end_epoch` returns the sum of the adversary's per-batch accuracies (computed once from the
    stored logits instead of five operations per step) and sets the regulariser's ``last`` to the epoch's last batch.
    Both optimizers are stepped through :class:`~monai_medl.engines.adam_step.AdamStep` (the fused kernel called
    directly, the same update).

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
        >>> loss = step(torch.randn(8, 2), torch.ones(8, 1), torch.eye(3)[[0, 1, 2, 0, 1, 2, 0, 1]])
        >>> loss.shape, step.end_epoch()
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
        self._accumulated = [layer.log_prior_scale for layer in self.kl_layers if layer.log_prior_scale.requires_grad]
        self._logits: list[torch.Tensor] = []
        self._epoch_targets: tuple[torch.Tensor, ...] = ()

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
        self._logits, self._epoch_targets = [], (target, one_hot, scale)
        parts = (t.split(batch_size) for t in (target, one_hot, scale, scale * reg.lambda_g))
        return [AdversaryTargets(*batch_parts) for batch_parts in zip(*parts)]

    def end_epoch(self) -> torch.Tensor | None:
        """The sum over the epoch's mini-batches of the adversary's accuracy (None without adversary)."""
        if self.regularizer is None or not self._logits:
            return None
        target, one_hot, scale = self._epoch_targets
        logits = torch.cat(self._logits)
        correct = (logits.argmax(1) == target[: logits.shape[0]]).to(scale.dtype).unsqueeze(1)
        last, count = self._logits[-1], self._logits[-1].shape[0]
        own = -(torch.log_softmax(last, 1) * one_hot[-count:] * scale[-count:]).sum()
        self.regularizer._last = (own, (correct[-count:] * scale[-count:]).sum())
        self._logits = []
        return (correct * scale[: logits.shape[0]]).sum()

    @torch.no_grad()
    def __call__(self, x, y, z, targets: AdversaryTargets | None = None) -> torch.Tensor:
        """The main loss with the weighted KL of one mini-batch, after both updates."""
        acts = _mlp_forward(self.hidden, x, relu_last=True)
        head, h = self.network.head, acts[-1]
        linear = head.linear
        fixed = F.linear(h, linear.weight, linear.bias)
        y = y.reshape(fixed.shape).to(fixed.dtype)  # as task_loss: (batch,) or (batch, 1) targets
        mixed, hm, u, slope_draw, intercept_draw = fixed, h, None, None, None
        if z is not None and head.slopes is not None:
            ws, *slope_draw = _draw(head.slopes)
            u = z.mm(ws)
            hm = torch.addcmul(h, h, u)
            mixed = F.linear(hm, linear.weight, linear.bias)
        if z is not None and head.intercept is not None:
            wi, *intercept_draw = _draw(head.intercept)
            mixed = torch.addmm(mixed, z, wi)
        use_mixed = z is not None and (u is not None or intercept_draw is not None)
        inv_n = 1.0 / y.numel()
        loss = _bce(fixed, y)
        g_fixed = torch.sigmoid(fixed).sub_(y).mul_(inv_n * (self.lambda_fixed if use_mixed else 1.0))
        g_mixed = None
        if use_mixed:
            loss = loss.mul_(self.lambda_fixed).add_(_bce(mixed, y), alpha=self.lambda_mixed)
            g_mixed = torch.sigmoid(mixed).sub_(y).mul_(self.lambda_mixed * inv_n)
        feature_grads = None
        if targets is not None:
            term, feature_grads = self._adversary(acts[1:], targets)
            loss = loss.add_(term)
        g_h = self._head_backward(head, h, hm, u, z, g_fixed, g_mixed, slope_draw, intercept_draw)
        g_pre = g_h.add_(feature_grads[-1]) if feature_grads is not None else g_h
        grads, _ = _mlp_backward(self.hidden, acts, _relu_backward(g_pre, h), feature_grads)
        _set_grads(self.hidden, grads)
        if self.kl_layers:
            loss = loss.add_(self._kl(head, slope_draw, intercept_draw), alpha=self.kl_weight)
        self.step()
        return loss

    def _kl(self, head, slope_draw, intercept_draw) -> torch.Tensor:
        """The KL of the drawn layers with its gradients added (the concatenated pass for any other layer set)."""
        drawn = [(head.slopes, slope_draw), (head.intercept, intercept_draw)]
        drawn = [(layer, draw) for layer, draw in drawn if draw is not None]
        if [layer for layer, _ in drawn] != self.kl_layers:
            for p in self._accumulated:
                p.grad = None
            return accumulate_kl_grads_(self.kl_layers, self.kl_weight)
        kls = [_add_kl_grads(layer, draw[1], draw[2], self.kl_weight) for layer, draw in drawn]
        return kls[0] if len(kls) == 1 else kls[0].add_(kls[1])

    def _head_backward(self, head, h, hm, u, z, g_fixed, g_mixed, slope_draw, intercept_draw) -> torch.Tensor:
        """Set the head's gradients; return the gradient of ``h``."""
        w = head.linear.weight
        if g_mixed is None:
            head.linear.weight.grad, head.linear.bias.grad = g_fixed.t().mm(h), g_fixed.sum(0)
            return g_fixed.mm(w)
        head.linear.weight.grad = torch.addmm(g_fixed.t().mm(h), g_mixed.t(), hm)
        head.linear.bias.grad = g_fixed.sum(0).add_(g_mixed.sum(0))
        g_h = g_fixed.mm(w)
        if intercept_draw is not None:
            _set_draw_grads(head.intercept, z.t().mm(g_mixed), intercept_draw)
        if u is None:
            return g_h.add_(g_mixed.mm(w))
        g_hm = g_mixed.mm(w)
        _set_draw_grads(head.slopes, z.t().mm(g_hm * h), slope_draw)
        return g_h.addcmul_(g_hm, u).add_(g_hm)

    def _adversary(self, features, targets: AdversaryTargets):
        """The adversary's two-step update, then its penalty: ``(term, gradient of each feature)``."""
        reg, linears = self.regularizer, self.adversary
        live = torch.cat(features, 1)
        acts = _mlp_forward(linears, live, relu_last=False)
        self._logits.append(acts[-1])
        grads, _ = _mlp_backward(linears, acts, torch.softmax(acts[-1], 1).sub_(targets.one_hot).mul_(targets.scale))
        _set_grads(linears, grads)
        reg._sync_grads()
        cast(AdamStep, self.adversary_step)()
        acts = _mlp_forward(linears, live, relu_last=False)  # the updated adversary, frozen
        log_p = torch.log_softmax(acts[-1], 1)
        if reg.objective == "confusion":  # lambda_g * mean over items and classes of -log p
            term = log_p.sum(1).dot(targets.scale_g[:, 0]).mul_(-1.0 / log_p.shape[1])
            grad = log_p.exp_().sub_(1.0 / log_p.shape[1])
        else:  # -lambda_g * CE(site)
            term = (log_p * targets.one_hot).sum(1).dot(targets.scale_g[:, 0])
            grad = log_p.exp_().sub_(targets.one_hot).neg_()
        g_live = _mlp_input_grad(linears, acts, grad.mul_(targets.scale_g))
        return term, list(g_live.split([f.shape[1] for f in features], 1))


def _bce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy with logits, ``softplus(l) - y l`` (the same value in fewer operations)."""
    return F.softplus(logits).sub_(logits * y).mean()


def _mlp_input_grad(linears: list[nn.Linear], acts: list[torch.Tensor], grad: torch.Tensor) -> torch.Tensor:
    """Gradient of the stack's input from its output gradient (no parameter gradients: a frozen network)."""
    for i in range(len(linears) - 1, -1, -1):
        grad = grad.mm(linears[i].weight)
        if i > 0:
            grad = _relu_backward(grad, acts[i])
    return grad


def _set_draw_grads(layer: RandomEffects, grad_weights: torch.Tensor, draw) -> None:
    """``loc`` and ``rho`` gradients of a draw ``loc + softplus(rho) * eps`` from the gradient of the weights."""
    layer.loc.grad, layer.rho.grad = grad_weights, grad_weights * draw[0]
