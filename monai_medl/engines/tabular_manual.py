# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""A training step of the ME-MLP with its adversary whose gradients are written out by hand (no autograd graph).

On a 4-4-4 MLP every tensor operation costs a few microseconds of dispatch and every autograd node as much again,
so the mixed-effects step (both heads, two random-effects draws, the KL, the adversary's update and its penalty)
costs several times the plain MLP's although the arithmetic is negligible. :class:`ManualMLPStep` computes the same
step, in the same order as :class:`~monai_medl.engines.TabularTrainer`'s default (two-step adversary: the adversary's
update on the detached activations with its own optimizer, then the main loss with the updated, frozen adversary's
penalty, then the closed-form KL gradient and the main optimizer's step), from the closed-form derivatives of the ReLU
MLPs, the binary cross-entropy and the reparameterised draws, with the same random numbers. The result equals the
autograd step up to floating-point rounding (tested); over thousands of steps such differences can grow, so this path
is opt-in (``TabularTrainer(manual_backward=True)``). It covers the configuration of the spirals benchmark:
a single-factor :class:`~monai_medl.networks.nets.MixedEffectsMLP` with ReLU layers (random slopes on ``h`` and/or an
intercept, no input slopes, no dropout, no learned noise), ``task="bce"`` and an optional
:class:`~monai_medl.networks.nets.ClusterClassifier` adversary with ReLU layers; :func:`manual_step_unsupported` names
what else it meets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from monai_medl.losses.adversarial_regularizer import AdversarialRegularizer
from monai_medl.networks.layers.random_effects import RandomEffects, accumulate_kl_grads_
from monai_medl.networks.nets.cluster_classifier import ClusterClassifier
from monai_medl.networks.nets.me_mlp import MixedEffectsMLP

__all__ = ["ManualMLPStep", "manual_step_unsupported"]


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
        pre = torch.addmm(layer.bias, acts[-1], layer.weight.t())
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


def _draw(layer: RandomEffects) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(weights, eps, d weights / d rho)`` of one reparameterised draw (the same random numbers as the layer)."""
    scale = F.softplus(layer.rho) + 1e-5
    eps = torch.randn_like(layer.loc)
    return torch.addcmul(layer.loc, scale, eps), eps, eps * torch.sigmoid(layer.rho)


class ManualMLPStep:
    """One training step of a :class:`~monai_medl.engines.TabularTrainer` with hand-written gradients.

    Args:
        network: the MixedEffectsMLP (see :func:`manual_step_unsupported`).
        optimizer: the network's optimizer (stepped once per call).
        regularizer: the two-step adversary (its own optimizer), or None.
        lambda_mixed: weight of the mixed head's loss.
        lambda_fixed: weight of the fixed head's loss.
        kl_layers: random-effects layers whose closed-form KL gradient is added (empty: no KL).
        kl_weight: weight of the KL.

    Example::

        >>> from monai_medl.engines.tabular import make_adam
        >>> from monai_medl.networks.nets import MixedEffectsMLP
        >>> net = MixedEffectsMLP(2, 1, num_clusters=3, linear_slopes=False).train()
        >>> step = ManualMLPStep(net, make_adam(net.parameters(), 1e-3), None, 1.0, 1.0, [], 0.0)
        >>> loss, _ = step(torch.randn(8, 2), torch.ones(8, 1), torch.eye(3)[[0, 1, 2, 0, 1, 2, 0, 1]], None)
        >>> loss.shape
        torch.Size([])
    """

    def __init__(self, network, optimizer, regularizer, lambda_mixed, lambda_fixed, kl_layers, kl_weight) -> None:
        self.network, self.optimizer, self.regularizer = network, optimizer, regularizer
        reason = manual_step_unsupported(network, "bce", regularizer, False)
        if reason is not None:
            raise ValueError(f"ManualMLPStep: {reason}.")
        self.hidden: list[nn.Linear] = _relu_linears(network.hidden) or []
        self.adversary: list[nn.Linear] = [] if regularizer is None else _relu_linears(regularizer.adversary.net) or []
        self.lambda_mixed, self.lambda_fixed = float(lambda_mixed), float(lambda_fixed)
        self.kl_layers, self.kl_weight = list(kl_layers), float(kl_weight)

    @torch.no_grad()
    def __call__(self, x, y, z, sites) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(main loss with the weighted KL, adversary accuracy or None)`` of one mini-batch, after both updates."""
        acts = _mlp_forward(self.hidden, x, relu_last=True)
        head, h = self.network.head, acts[-1]
        linear = head.linear
        fixed = torch.addmm(linear.bias, h, linear.weight.t())
        y = y.reshape(fixed.shape).to(fixed.dtype)  # as task_loss: (batch,) or (batch, 1) targets
        mixed, hm, u, slope_draw, intercept_draw = fixed, h, None, None, None
        if z is not None and head.slopes is not None:
            ws, *slope_draw = _draw(head.slopes)
            u = z.mm(ws)
            hm = torch.addcmul(h, h, u)
            mixed = torch.addmm(linear.bias, hm, linear.weight.t())
        if z is not None and head.intercept is not None:
            wi, *intercept_draw = _draw(head.intercept)
            mixed = torch.addmm(mixed, z, wi)
        use_mixed = z is not None and (u is not None or intercept_draw is not None)
        loss = F.binary_cross_entropy_with_logits(fixed, y)
        g_fixed = (torch.sigmoid(fixed) - y).mul_(1.0 / y.numel())
        if use_mixed:
            loss = self.lambda_fixed * loss + self.lambda_mixed * F.binary_cross_entropy_with_logits(mixed, y)
            g_fixed.mul_(self.lambda_fixed)
        accuracy, feature_grads = None, None
        if self.regularizer is not None:
            term, accuracy, feature_grads = self._adversary(acts[1:], sites)
            loss = loss + term
        self.optimizer.zero_grad(set_to_none=True)
        g_mixed = (torch.sigmoid(mixed) - y).mul_(self.lambda_mixed / y.numel()) if use_mixed else None
        g_h = self._head_backward(head, h, hm, u, z, g_fixed, g_mixed, slope_draw, intercept_draw)
        g_pre = g_h.add_(feature_grads[-1]) if feature_grads is not None else g_h
        grads, _ = _mlp_backward(self.hidden, acts, _relu_backward(g_pre, h), feature_grads)
        _set_grads(self.hidden, grads)
        if self.kl_layers:
            loss = loss + self.kl_weight * accumulate_kl_grads_(self.kl_layers, self.kl_weight)
        self.optimizer.step()
        return loss.detach(), accuracy

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

    def _adversary(self, features, sites):
        """The adversary's two-step update, then its penalty: ``(term, accuracy, gradient of each feature)``."""
        reg, linears = self.regularizer, self.adversary
        target = sites.clamp_min(0)
        weight = (sites >= 0).to(features[0].dtype)
        scale = (weight / weight.sum().clamp_min(1.0)).unsqueeze(1)  # per-item weight / number of seen items
        live = torch.cat(features, 1)
        acts = _mlp_forward(linears, live, relu_last=False)
        logits = acts[-1]
        one_hot = F.one_hot(target, logits.shape[1]).to(logits.dtype)
        log_p = torch.log_softmax(logits, 1)
        own = -(log_p * one_hot * scale).sum()
        accuracy = ((logits.argmax(1) == target).to(scale.dtype) * scale[:, 0]).sum()
        reg.optimizer.zero_grad(set_to_none=True)
        grads, _ = _mlp_backward(linears, acts, log_p.exp().sub_(one_hot).mul_(scale))
        _set_grads(linears, grads)
        reg._sync_grads()
        reg.optimizer.step()
        reg._last = (own.detach(), accuracy)
        acts = _mlp_forward(linears, live, relu_last=False)  # the updated adversary, frozen
        log_p = torch.log_softmax(acts[-1], 1)
        if reg.objective == "confusion":
            per_item = -log_p.mean(1, keepdim=True)
            grad = log_p.exp().sub_(1.0 / logits.shape[1])
        else:
            per_item = (log_p * one_hot).sum(1, keepdim=True)
            grad = one_hot - log_p.exp()
        term = reg.lambda_g * (per_item * scale).sum()
        _, g_live = _mlp_backward(linears, acts, grad.mul_(scale * reg.lambda_g), need_input=True)
        return term, accuracy, list(g_live.split([f.shape[1] for f in features], 1))


def _set_draw_grads(layer: RandomEffects, grad_weights: torch.Tensor, draw) -> None:
    """``loc`` and ``rho`` gradients of a draw ``loc + softplus(rho) * eps`` from the gradient of the weights."""
    _, d_rho = draw
    layer.loc.grad, layer.rho.grad = grad_weights, grad_weights * d_rho
