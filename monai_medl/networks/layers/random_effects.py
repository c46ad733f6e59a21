# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Variational random-effects layer: cluster-specific weights with a zero-mean Gaussian prior."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RandomEffects", "gaussian_kl", "accumulate_kl_grads_", "inverse_softplus"]

_SIGMA_FLOOR = 1e-5


def inverse_softplus(x: float) -> float:
    """Inverse of ``softplus`` for a positive scalar (numerically stable for small and large ``x``)."""
    if x <= 0:
        raise ValueError(f"inverse_softplus needs a positive value, got {x}.")
    return x + math.log(-math.expm1(-x))


class RandomEffects(nn.Module):
    """Random effects ``u(z) = z @ W`` with a mean-field Gaussian posterior over ``W`` (``num_clusters x units``).

    Each entry of ``W`` has posterior ``N(mu, sigma^2)`` with ``sigma = softplus(rho) + 1e-5`` and prior
    ``N(0, s^2)``. In training mode one reparameterised sample of ``W`` is drawn per forward call; in eval mode the
    posterior means are used, so inference is deterministic. ``z`` is a design matrix row per sample: one-hot for a
    seen cluster, a probability vector for an inferred one (giving the probability-weighted mix of the clusters'
    effects) and all zeros for a population-level prediction (``u = 0`` exactly).

    The prior scale ``s`` can be learned (empirical Bayes): it then estimates the random effect's standard
    deviation, i.e. the variance component. That estimate is only meaningful when :meth:`kl` enters the loss with
    its evidence-lower-bound weight (``1 / number of training samples`` for a per-sample-mean task loss).

    Args:
        num_clusters: number of clusters seen in training (``K``, the width of ``z``).
        units: number of random-effect values per cluster (1 for a random intercept, one per feature for slopes).
        prior_scale: initial (or fixed) prior standard deviation ``s``. Defaults to 0.1.
        learn_prior_scale: learn ``s`` by maximising the evidence lower bound. Defaults to False.
        post_loc_init_scale: standard deviation of the initial posterior means. Defaults to 0.1.
        post_scale_init: range ``(low, high)`` of the initial posterior standard deviations, drawn uniformly.
            Defaults to ``(0.003, 0.05)``, the effective range of the ARMED reference.
        sample_per_item: draw an independent weight sample for every item of the batch instead of one per batch
            (lower-variance gradients at slightly higher cost). Defaults to False.

    Example::

        >>> re = RandomEffects(num_clusters=4, units=1)
        >>> z = torch.eye(4)[[0, 2]]
        >>> re.eval()(z).shape
        torch.Size([2, 1])
        >>> re.kl().item() > 0
        True
    """

    def __init__(
        self,
        num_clusters: int,
        units: int = 1,
        prior_scale: float = 0.1,
        learn_prior_scale: bool = False,
        post_loc_init_scale: float = 0.1,
        post_scale_init: tuple[float, float] = (0.003, 0.05),
        sample_per_item: bool = False,
    ) -> None:
        super().__init__()
        if num_clusters < 1 or units < 1:
            raise ValueError(f"num_clusters and units must be >= 1, got num_clusters={num_clusters}, units={units}.")
        if prior_scale <= 0:
            raise ValueError(f"prior_scale must be positive, got {prior_scale}.")
        low, high = post_scale_init
        if not 0 < low <= high:
            raise ValueError(f"post_scale_init must satisfy 0 < low <= high, got {post_scale_init}.")
        self.num_clusters = num_clusters
        self.units = units
        self.learn_prior_scale = learn_prior_scale
        self.sample_per_item = sample_per_item
        self.loc = nn.Parameter(torch.randn(num_clusters, units) * post_loc_init_scale)
        sigma0 = torch.empty(num_clusters, units).uniform_(low, high) - _SIGMA_FLOOR
        self.rho = nn.Parameter(sigma0.clamp_min(1e-6).expm1().log())  # softplus^-1
        log_prior = torch.tensor(math.log(prior_scale))
        if learn_prior_scale:
            self.log_prior_scale = nn.Parameter(log_prior)
        else:
            self.register_buffer("log_prior_scale", log_prior)

    @property
    def scale(self) -> torch.Tensor:
        """Posterior standard deviations, shape ``(num_clusters, units)``."""
        return F.softplus(self.rho) + 1e-5  # floor keeps log(sigma) finite

    def posterior_second_moment(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``E[w^2] = mu^2 + sigma^2`` of every entry under the posterior, shape ``(num_clusters, units)``, in
        ``dtype`` (default: the parameters'). Its mean is the empirical-Bayes (M-step) estimate of ``s^2``.

        Example::

            >>> re = RandomEffects(num_clusters=3, units=2)
            >>> bool(torch.allclose(re.posterior_second_moment(), re.loc ** 2 + re.scale ** 2))
            True
        """
        loc, scale = (self.loc, self.scale) if dtype is None else (self.loc.to(dtype), self.scale.to(dtype))
        return loc.square() + scale.square()

    @property
    def prior_scale(self) -> torch.Tensor:
        """Prior standard deviation ``s`` (a variance-component estimate when learned)."""
        return self.log_prior_scale.exp()

    def check_design(self, z: torch.Tensor) -> None:
        """Raise a clear error when ``z`` is not a ``(batch, num_clusters)`` design matrix."""
        if z.dim() != 2 or z.shape[1] != self.num_clusters:
            raise ValueError(
                f"z must have shape (batch, {self.num_clusters}) (one column per training cluster), "
                f"got {list(z.shape)}."
            )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = self._design(z)
        if not self.training:
            return z @ self.loc
        if self.sample_per_item:
            eps = torch.randn(z.shape[0], self.num_clusters, self.units, device=z.device, dtype=z.dtype)
            weights = self.loc + self.scale * eps
            return torch.bmm(z.unsqueeze(1), weights).squeeze(1)
        return z @ self._draw()

    def add_to(self, base: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``base + self(z)`` for a ``(batch, units)`` ``base``, as one fused operation (``addmm``) where possible.

        Example::

            >>> re = RandomEffects(num_clusters=3, units=2).eval()
            >>> base, z = torch.randn(4, 2), torch.eye(3)[[0, 1, 2, 0]]
            >>> torch.allclose(re.add_to(base, z), base + re(z))
            True
        """
        if self.sample_per_item:
            return base + self.forward(z)
        z = self._design(z)
        return torch.addmm(base, z, self.loc if not self.training else self._draw())

    def _design(self, z: torch.Tensor) -> torch.Tensor:
        self.check_design(z)
        return z if z.dtype == self.loc.dtype else z.to(self.loc.dtype)

    def _draw(self) -> torch.Tensor:
        """One reparameterised sample of the effects: ``loc + sigma * eps``."""
        return torch.addcmul(self.loc, self.scale, torch.randn_like(self.loc))

    def kl(self) -> torch.Tensor:
        """Closed-form ``KL(q(W) || p(W))`` summed over all ``num_clusters x units`` entries (differentiable).

        The gradient is closed-form too (one autograd node instead of about a dozen).
        """
        return _GaussianKL.apply(self.loc, self.rho, self.log_prior_scale)

    def accumulate_kl_grad_(self, weight: float) -> torch.Tensor:
        """Add ``weight * dKL/dparameter`` to the parameters' ``.grad`` without autograd; return the KL (detached).

        After ``loss.backward()`` this gives exactly the gradient of ``loss + weight * kl()`` at a fraction of the
        cost, for training loops that own their backward pass (:class:`~monai_medl.engines.TabularTrainer`).
        """
        with torch.no_grad():
            kl, *grads = _kl_and_grads(self.loc, self.rho, self.log_prior_scale, self.log_prior_scale.requires_grad)
        for param, grad in zip((self.loc, self.rho, self.log_prior_scale), grads):
            if param.requires_grad and grad is not None:  # grad is None only for a fixed prior
                _add_grad(param, grad, weight)
        return kl

    def extra_repr(self) -> str:
        return (
            f"num_clusters={self.num_clusters}, units={self.units}, "
            f"prior_scale={float(self.prior_scale):.3g}, learn_prior_scale={self.learn_prior_scale}"
        )


def kl_scaled_moment(loc: torch.Tensor, sigma: torch.Tensor, inv_var: torch.Tensor) -> torch.Tensor:
    """``(sigma^2 + loc^2) / s^2`` per entry (``inv_var = 1 / s^2``): the KL's data term, whose sum over a layer's
    entries also gives the prior scale's gradient ``n - sum``. The pieces of :func:`_kl_and_grads` are shared with
    the hand-written tabular step, which accumulates them differently."""
    return sigma.square().addcmul_(loc, loc).mul_(inv_var)


def kl_rho_grad_factor(sigma: torch.Tensor, inv_var: torch.Tensor) -> torch.Tensor:
    """``sigma / s^2 - 1 / sigma`` per entry: ``d KL / d rho`` divided by ``d sigma / d rho = sigmoid(rho)``."""
    return sigma.mul(inv_var).sub_(sigma.reciprocal())


def kl_value(scaled: torch.Tensor, log_sigma: torch.Tensor, log_s_sum: torch.Tensor, n: float) -> torch.Tensor:
    """``KL = sum(scaled) / 2 - sum(log sigma) + sum(log s) - n / 2`` over ``n`` entries (``log_s_sum``: the prior's
    log s.d. summed over the entries)."""
    return scaled.sum().mul_(0.5).sub_(log_sigma.sum()).add_(log_s_sum).sub_(0.5 * n)


def _kl_and_grads(
    loc: torch.Tensor,
    rho: torch.Tensor,
    log_s: torch.Tensor,
    need_log_s_grad: bool = True,
    sigma: torch.Tensor | None = None,
    sigmoid_rho: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``KL(N(loc, sigma^2) || N(0, s^2))`` summed over entries and its gradients w.r.t. ``loc``, ``rho``, ``log_s``.

    With ``sigma = softplus(rho) + floor`` and ``s = exp(log_s)``, per entry
    ``KL = log s - log sigma + (sigma^2 + loc^2) / (2 s^2) - 1/2``, hence ``dKL/dloc = loc / s^2``,
    ``dKL/drho = (sigma / s^2 - 1 / sigma) * sigmoid(rho)`` and ``dKL/dlog_s = 1 - (sigma^2 + loc^2) / s^2`` (summed
    over the entries when ``log_s`` is one number; ``log_s`` may also give one prior per entry, shaped like ``loc``,
    which is how :func:`gaussian_kl` sums many layers in one pass). The ``log_s`` gradient is None when
    ``need_log_s_grad`` is False (a fixed prior). ``sigma`` and ``sigmoid_rho``, when the caller has them already (a
    reparameterised draw computes both), are used instead of being computed again. Call it without gradient tracking
    (inside ``torch.no_grad()`` or an autograd function's ``forward``).
    """
    # the prior scale stays a tensor: reading it as a Python number would synchronise with the device every step
    log_s = log_s.detach()
    inv_var = torch.exp(log_s * -2.0)
    if sigma is None:
        sigma = F.softplus(rho).add_(_SIGMA_FLOOR)
    if sigmoid_rho is None:
        sigmoid_rho = torch.sigmoid(rho)
    scaled = kl_scaled_moment(loc, sigma, inv_var)
    n = loc.numel()
    log_s_sum = log_s * n if log_s.dim() == 0 else log_s.sum()
    kl = kl_value(scaled, sigma.log(), log_s_sum, n)
    grad_rho = kl_rho_grad_factor(sigma, inv_var).mul_(sigmoid_rho)
    grad_log_s = None
    if need_log_s_grad:
        grad_log_s = scaled.neg().add_(1.0)
        if log_s.dim() == 0:
            grad_log_s = grad_log_s.sum()
    return kl, loc * inv_var, grad_rho, grad_log_s


def gaussian_kl(layers: Sequence[RandomEffects]) -> torch.Tensor:
    """Summed ``KL(q || p)`` of several random-effects layers in one closed-form pass (differentiable).

    Every layer's KL costs a couple of dozen tiny tensor operations; a backbone with cluster scale/bias blocks has
    ten or more layers, so their entries are concatenated (with each layer's prior expanded to its entries) and the
    KL is computed once. Equals ``sum(layer.kl() for layer in layers)``.
    """
    if len(layers) == 1:
        return layers[0].kl()
    loc = torch.cat([layer.loc.reshape(-1) for layer in layers])
    rho = torch.cat([layer.rho.reshape(-1) for layer in layers])
    log_s = torch.cat([layer.log_prior_scale.expand(layer.loc.numel()) for layer in layers])
    return _GaussianKL.apply(loc, rho, log_s)


def _add_grad(param: torch.Tensor, grad: torch.Tensor, weight: float) -> None:
    if param.grad is None:
        param.grad = torch.zeros_like(param)
    param.grad.add_(grad, alpha=weight)


def accumulate_kl_grads_(layers: Sequence[RandomEffects], weight: float) -> torch.Tensor:
    """:meth:`RandomEffects.accumulate_kl_grad_` for several layers in one closed-form pass; returns the summed KL.

    The layers' entries are concatenated as in :func:`gaussian_kl`, so a training loop with a slope and an
    intercept layer runs one set of a couple of dozen tiny operations per step instead of one per layer. Every
    gradient is computed element by element as the per-layer method does (the same values); the returned KL is the
    same sum, added in another order.

    Example::

        >>> layers = [RandomEffects(3, 2), RandomEffects(3, 1, learn_prior_scale=True)]
        >>> kl = accumulate_kl_grads_(layers, 0.5)
        >>> bool(torch.allclose(kl, sum(layer.kl() for layer in layers)))
        True
        >>> layers[1].log_prior_scale.grad.shape
        torch.Size([])
    """
    if len(layers) == 1:
        return layers[0].accumulate_kl_grad_(weight)
    sizes = [layer.loc.numel() for layer in layers]
    need_log_s = any(layer.log_prior_scale.requires_grad for layer in layers)
    with torch.no_grad():
        loc = torch.cat([layer.loc.reshape(-1) for layer in layers])
        rho = torch.cat([layer.rho.reshape(-1) for layer in layers])
        log_s = torch.cat([layer.log_prior_scale.detach().expand(n) for layer, n in zip(layers, sizes)])
        kl, grad_loc, grad_rho, grad_log_s = _kl_and_grads(loc, rho, log_s, need_log_s)
    per_entry_log_s = loc if grad_log_s is None else grad_log_s  # loc: a placeholder of the right length, unused
    parts = zip(layers, grad_loc.split(sizes), grad_rho.split(sizes), per_entry_log_s.split(sizes))
    for layer, g_loc, g_rho, g_log_s in parts:
        if layer.loc.requires_grad:
            _add_grad(layer.loc, g_loc.view_as(layer.loc), weight)
        if layer.rho.requires_grad:
            _add_grad(layer.rho, g_rho.view_as(layer.rho), weight)
        if layer.log_prior_scale.requires_grad:
            _add_grad(layer.log_prior_scale, g_log_s.sum(), weight)
    return kl


class _GaussianKL(torch.autograd.Function):
    """:func:`_kl_and_grads` as an autograd function: the gradients are computed with the value (they share every
    intermediate) and only scaled in :meth:`backward`."""

    @staticmethod
    def forward(ctx, loc: torch.Tensor, rho: torch.Tensor, log_s: torch.Tensor) -> torch.Tensor:
        # a fixed prior (a buffer) needs no log_s gradient: three fewer operations per step
        kl, *grads = _kl_and_grads(loc, rho, log_s, ctx.needs_input_grad[2])
        ctx.save_for_backward(*grads)
        return kl

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: torch.Tensor):
        return tuple(None if g is None else grad_output * g for g in ctx.saved_tensors)
