# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""A fast plain-PyTorch training loop for tabular (vector-input) models, mixed-effects or not.

Tabular mixed-effects models are tiny (an ARMED DFNN has ~100 weights), so a MONAI/Ignite engine with a
``DataLoader`` spends far more time on Python bookkeeping than on arithmetic. :class:`TabularTrainer` keeps the
whole data set as tensors, shuffles by index once per epoch and slices views per mini-batch, keeps every
parameter of a model in one contiguous buffer (:class:`ContiguousAdam`: one optimizer kernel per step instead of
one per parameter tensor) and never synchronises per step. The losses are the package's own: the task loss of
both heads plus the random effects' KL (:func:`~monai_medl.losses.task_loss`, as in
:class:`~monai_medl.losses.MixedEffectsLoss`) and the adversary step of
:class:`~monai_medl.losses.AdversarialRegularizer`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from monai_medl.losses.adversarial_regularizer import AdversarialRegularizer
from monai_medl.losses.mixed_effects_loss import TASKS, task_loss
from monai_medl.networks.nets.mixed_effects_net import MixedEffectsNet
from monai_medl.networks.utils import random_effects_layers

__all__ = ["ContiguousAdam", "TabularHistory", "TabularTrainer", "predict_tabular", "data_dependent_init_"]


class ContiguousAdam(torch.optim.Optimizer):
    """Adam whose parameters live in one contiguous buffer (and their gradients in another).

    On construction every parameter's storage is moved into a single flat tensor (``p.data`` and ``p.grad``
    become views of it), so one Adam update of a handful of in-place operations and one ``zero_grad`` cover the
    whole model. For models with many small tensors, such as tabular mixed-effects networks, this is several
    times faster than per-tensor Adam on CPU; the arithmetic is exactly :class:`torch.optim.Adam`'s (L2
    ``weight_decay`` included, no AMSGrad). ``zero_grad`` zeroes the gradient buffer in place (the views must
    survive), whatever ``set_to_none`` says.

    Args:
        params: parameters to optimise (those with ``requires_grad=False`` are ignored).
        lr: learning rate. Defaults to 1e-3.
        betas: coefficients of the running averages of the gradient and its square. Defaults to (0.9, 0.999).
        eps: term added to the denominator. Defaults to 1e-8.
        weight_decay: L2 penalty. Defaults to 0.

    Example::

        >>> opt = ContiguousAdam(net.parameters(), lr=1e-3)
        >>> opt.zero_grad(); loss.backward(); opt.step()
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        tensors = [p for p in params if p.requires_grad]
        if not tensors:
            raise ValueError("ContiguousAdam got no parameter that requires a gradient.")
        if len({p.device for p in tensors}) > 1 or len({p.dtype for p in tensors}) > 1:
            raise ValueError("ContiguousAdam needs all parameters on one device with one dtype.")
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"invalid Adam hyper-parameters lr={lr}, betas={betas}, eps={eps}, wd={weight_decay}.")
        flat = nn.Parameter(torch.cat([p.detach().reshape(-1) for p in tensors]))
        flat.grad = torch.zeros_like(flat)
        offset = 0
        for p in tensors:
            n = p.numel()
            p.data = flat.data[offset : offset + n].view_as(p)
            p.grad = flat.grad[offset : offset + n].view_as(p)
            offset += n
        self.flat_param = flat
        self.params = tensors
        super().__init__([flat], {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    def zero_grad(self, set_to_none: bool = True) -> None:  # the gradient views must stay alive
        self.flat_param.grad.zero_()

    def step(self, closure=None):  # noqa: D102 (torch.optim.Optimizer.step)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.update()
        return loss

    @torch.no_grad()
    def update(self) -> None:
        """One Adam update from the current gradients: :meth:`step` without a closure and without the profiling
        and hook wrapper ``torch.optim`` puts around ``step`` (a fixed ~0.1 ms per call, as much as the update
        itself for a tabular model)."""
        group = self.param_groups[0]
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        p = self.flat_param
        grad = p.grad if wd == 0 else p.grad.add(p, alpha=wd)
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        t = state["step"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = exp_avg_sq.sqrt().div_(math.sqrt(1 - beta2**t)).add_(eps)
        p.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1**t))


def _hidden_linears(network: nn.Module) -> list[nn.Linear]:
    hidden = getattr(network, "hidden", None)
    if isinstance(hidden, nn.Module):  # MixedEffectsMLP and the like: the fixed-effects hidden layers
        return [m for m in hidden.modules() if isinstance(m, nn.Linear)]
    linears = [m for m in network.modules() if isinstance(m, nn.Linear)]
    return linears[:-1]  # a plain MLP: every layer but the read-out


@torch.no_grad()
def data_dependent_init_(
    network: nn.Module, x: torch.Tensor, z: torch.Tensor | None = None, layers: Iterable[nn.Linear] | None = None
) -> nn.Module:
    """Set the bias of every hidden unit so that it is active on half of ``x`` (its median pre-activation is 0).

    Tiny ReLU MLPs (e.g. ARMED's 4-4-4 DFNN) often start with units that are inactive on every input: a unit whose
    incoming weights are all negative never fires on the non-negative outputs of the previous ReLU layer
    (probability 1/16 per unit with four inputs), and a dead unit gets no gradient, so it stays dead and the network
    is stuck with less capacity. This data-dependent initialisation (in the spirit of Kraehenbuehl et al., ICLR 2016,
    and the bias step of Salimans & Kingma's weight-normalisation init) runs ``x`` through the network once and,
    layer by layer in forward order, subtracts each unit's median pre-activation from its bias. Weights are
    unchanged.

    Args:
        network: the model (in eval mode for the pass; its mode is restored).
        x: a sample of training inputs ``(n, features)``.
        z: design matrix passed to a :class:`~monai_medl.networks.nets.MixedEffectsNet`, if any. Defaults to None.
        layers: the ``nn.Linear`` layers to centre. Defaults to the Linear layers inside ``network.hidden`` when it
            exists (MixedEffectsMLP), else every Linear layer except the last.

    Example::

        >>> data_dependent_init_(net, x_train[:1024])
    """
    targets = list(layers) if layers is not None else _hidden_linears(network)
    for layer in targets:
        if layer.bias is None:
            raise ValueError(f"data_dependent_init_ needs layers with a bias, got {layer}.")

    def centre(module: nn.Linear, _inputs, output: torch.Tensor) -> torch.Tensor:
        shift = output.reshape(-1, output.shape[-1]).median(dim=0).values
        module.bias -= shift
        return output - shift

    handles = [layer.register_forward_hook(centre) for layer in targets]
    was_training = network.training
    network.eval()
    try:
        if isinstance(network, MixedEffectsNet):
            network.forward_all(x, z)
        else:
            network(x)
    finally:
        for handle in handles:
            handle.remove()
        network.train(was_training)
    return network


@dataclass
class TabularHistory:
    """What :meth:`TabularTrainer.fit` measured, one entry per epoch.

    Attributes:
        loss: mean main loss (task terms + KL + adversarial term) per epoch.
        adversary_accuracy: mean training accuracy of the adversary per epoch (empty without adversary).
        epoch_seconds: wall-clock seconds per epoch.
        seconds: wall-clock seconds of the whole fit.
    """

    loss: list[float] = field(default_factory=list)
    adversary_accuracy: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _weighted(weight: float, loss: torch.Tensor) -> torch.Tensor:
    return loss if weight == 1.0 else weight * loss


def _as_tensor(value, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    t = torch.as_tensor(value)
    if dtype is not None:
        t = t.to(dtype)
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN/Inf values; clean or impute them first.")
    return t


class TabularTrainer:
    """Mini-batch training of a tabular model on in-memory tensors, with the mixed-effects loss and adversary.

    The network is either a :class:`~monai_medl.networks.nets.MixedEffectsNet` (trained through ``forward_all``)
    or any module mapping ``x`` to predictions. Per mini-batch the main loss is::

        lambda_mixed * task(y, mixed) + lambda_fixed * task(y, fixed) + kl_weight * sum(KL) + adversarial_term(A(h))

    where the mixed term (and the KL) are used only when the model has random-effects layers and ``z`` is given;
    otherwise the single prediction is trained with ``task`` alone. With an ``adversary`` the
    :class:`~monai_medl.losses.AdversarialRegularizer` first updates the adversary on the detached fixed-effects
    activations ``h`` (its own :class:`ContiguousAdam`), then yields the adversarial term with the adversary
    frozen. ``lambda_g=0`` with an adversary trains it as a site probe without influencing the model.

    Args:
        network: the model to train (its parameters are moved into a :class:`ContiguousAdam` buffer).
        task: ``"bce"`` (one logit, 0/1 target), ``"ce"`` (class logits, integer target), ``"mse"`` or
            ``"gaussian_nll"``. Defaults to ``"bce"``.
        epochs: passes over the data. Defaults to 10.
        batch_size: mini-batch size. Defaults to 32.
        lr: Adam learning rate of the network. Defaults to 1e-3.
        lambda_mixed: weight of the mixed-effects task loss. Defaults to 1.0.
        lambda_fixed: weight of the fixed-effects task loss. Defaults to 1.0.
        kl_weight: weight of the summed KL of the random-effects layers; a float or ``"elbo"`` for
            ``1 / number of training samples``. Defaults to 1e-3.
        adversary: cluster classifier on the list of fixed-effects activations (e.g.
            :class:`~monai_medl.networks.nets.ClusterAdversary`), or None. Defaults to None.
        lambda_g: weight of the adversarial term. Defaults to 0.0.
        adversary_lr: Adam learning rate of the adversary. Defaults to 1e-3.
        adversary_objective: ``"confusion"`` (push the adversary to uniform predictions) or ``"ce"`` (ARMED's
            ``-lambda_g * CE``); see :class:`~monai_medl.losses.AdversarialRegularizer`. Defaults to ``"confusion"``.
        seed: seed of the shuffling and of the random-effects sampling during :meth:`fit` (the global RNG state
            is restored afterwards). Defaults to 0.

    Example::

        >>> net = MixedEffectsMLP(in_features=2, out_channels=1, num_clusters=8)
        >>> adv = ClusterAdversary(in_features=12, num_clusters=8)
        >>> trainer = TabularTrainer(net, kl_weight=1e-5, adversary=adv, lambda_g=0.5, seed=0)
        >>> history = trainer.fit(x, y, z=torch.eye(8)[site], sites=site)
        >>> prob = torch.sigmoid(predict_tabular(net, x_test, head="fixed"))
    """

    def __init__(
        self,
        network: nn.Module,
        task: str = "bce",
        epochs: int = 10,
        batch_size: int = 32,
        lr: float = 1e-3,
        lambda_mixed: float = 1.0,
        lambda_fixed: float = 1.0,
        kl_weight: float | str = 1e-3,
        adversary: nn.Module | None = None,
        lambda_g: float = 0.0,
        adversary_lr: float = 1e-3,
        adversary_objective: str = "confusion",
        seed: int = 0,
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
        if epochs < 1 or batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}.")
        if isinstance(kl_weight, str) and kl_weight != "elbo":
            raise ValueError(f"kl_weight must be a float or 'elbo', got {kl_weight!r}.")
        self.is_mixed = isinstance(network, MixedEffectsNet)
        if adversary is not None and not self.is_mixed:
            raise ValueError("an adversary needs a MixedEffectsNet (it reads the fixed-effects activations).")
        self.network = network
        self.task = task
        self.epochs = epochs
        self.batch_size = batch_size
        self.lambda_mixed = lambda_mixed
        self.lambda_fixed = lambda_fixed
        self.kl_weight = kl_weight
        self.seed = seed
        self.re_layers = list(random_effects_layers(network).values())
        self.optimizer = ContiguousAdam(network.parameters(), lr=lr)
        self.regularizer: AdversarialRegularizer | None = None
        if adversary is not None:
            adv_opt = ContiguousAdam(adversary.parameters(), lr=adversary_lr)
            self.regularizer = AdversarialRegularizer(adversary, adv_opt, lambda_g, objective=adversary_objective)

    def _check(self, x, y, z, sites) -> tuple[torch.Tensor, ...]:
        x = _as_tensor(x, "x", torch.get_default_dtype())
        if x.dim() != 2:
            raise ValueError(f"x must be a (samples, features) matrix, got shape {tuple(x.shape)}.")
        n = x.shape[0]
        y = _as_tensor(y, "y")
        y = y.long() if self.task == "ce" else y.to(x.dtype)
        if y.shape[0] != n:
            raise ValueError(f"y has {y.shape[0]} rows but x has {n}.")
        if z is not None:
            z = _as_tensor(z, "z", x.dtype)
            if z.dim() != 2 or z.shape[0] != n:
                raise ValueError(f"z must be a ({n}, num_clusters) design matrix, got shape {tuple(z.shape)}.")
        if self.regularizer is not None:
            if sites is None:
                if z is None:
                    raise ValueError("training with an adversary needs sites (or a one-hot z to derive them from).")
                sites = torch.where(z.sum(1) > 0, z.argmax(1), -1)
            sites = _as_tensor(sites, "sites").long().reshape(-1)
            if sites.shape[0] != n:
                raise ValueError(f"sites has {sites.shape[0]} entries but x has {n} rows.")
        return x, y, z, sites

    def _loss(self, xb, yb, zb, sb, use_mixed: bool) -> torch.Tensor:
        """Main loss of one mini-batch without the KL (added to the gradients in closed form by :meth:`fit`), after
        the adversary's update when there is one."""
        if not self.is_mixed:
            return task_loss(self.task, self.network(xb), yb)
        out = self.network.forward_all(xb, zb)
        noise = out.log_noise_scale
        if use_mixed:
            loss = _weighted(self.lambda_mixed, task_loss(self.task, out.mixed, yb, noise))
            loss = loss + _weighted(self.lambda_fixed, task_loss(self.task, out.fixed, yb, noise))
        else:
            loss = task_loss(self.task, out.fixed, yb, noise)
        if self.regularizer is not None:
            loss = loss + self.regularizer.step(out.features, sb)
        return loss

    def fit(self, x, y, z=None, sites=None) -> TabularHistory:
        """Train on ``x`` ``(n, features)``, targets ``y`` ``(n,)``/``(n, out)``, design ``z`` ``(n, K)`` or None.

        ``sites`` (``(n,)`` cluster indices, negative = unknown) feed the adversary; they default to
        ``argmax(z)`` for rows of ``z`` that are not all zero.
        """
        x, y, z, sites = self._check(x, y, z, sites)
        n = x.shape[0]
        use_mixed = self.is_mixed and z is not None and bool(self.re_layers)
        kl_weight = 1.0 / n if self.kl_weight == "elbo" else float(self.kl_weight)
        net = self.network
        history = TabularHistory()
        start = time.perf_counter()
        kl_layers = self.re_layers if use_mixed and kl_weight else []
        net.train()
        checks = getattr(net, "validate_inputs", None)
        if checks is not None:
            net.validate_inputs = False  # x and z were checked once above; per-batch checks would cost ~10%
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                for _ in range(self.epochs):
                    self._epoch(x, y, z, sites, use_mixed, kl_weight, kl_layers, history)
        finally:
            if checks is not None:
                net.validate_inputs = checks
        net.eval()
        history.seconds = time.perf_counter() - start
        if not all(math.isfinite(v) for v in history.loss):
            raise FloatingPointError(f"training diverged: epoch losses {history.loss}.")
        return history

    def _epoch(self, x, y, z, sites, use_mixed: bool, kl_weight: float, kl_layers: list, history: TabularHistory):
        """One pass over the shuffled data in mini-batches; appends the epoch's means to ``history``."""
        opt, reg = self.optimizer, self.regularizer
        n = x.shape[0]
        t0 = time.perf_counter()
        perm = torch.randperm(n)
        xs, ys = x[perm], y[perm]
        zs = z[perm] if z is not None else None
        ss = sites[perm] if reg is not None else None
        total = torch.zeros(())
        adv_acc = 0.0
        # one split per epoch instead of four slices per step (per-step Python/dispatch cost matters here)
        batches = [t.split(self.batch_size) if t is not None else None for t in (xs, ys, zs, ss)]
        steps = len(batches[0])
        for k in range(steps):
            xb, yb, zb, sb = (None if b is None else b[k] for b in batches)
            loss = self._loss(xb, yb, zb, sb, use_mixed)
            if reg is not None:
                adv_acc += reg.last_accuracy
            opt.zero_grad()
            loss.backward()
            total += loss.detach()
            for layer in kl_layers:  # + kl_weight * KL, its gradient added in closed form
                total.add_(layer.accumulate_kl_grad_(kl_weight), alpha=kl_weight)
            opt.update()
        history.loss.append(float(total) / steps)
        if reg is not None:
            history.adversary_accuracy.append(adv_acc / steps)
        history.epoch_seconds.append(time.perf_counter() - t0)


@torch.no_grad()
def predict_tabular(network: nn.Module, x, z=None, head: str = "mixed", batch_size: int | None = None) -> torch.Tensor:
    """Predictions (logits for classification) of ``network`` in eval mode, without gradients.

    Args:
        network: a :class:`~monai_medl.networks.nets.MixedEffectsNet` or any module ``x -> prediction``.
        x: inputs ``(n, features)``.
        z: design matrix ``(n, K)``: one-hot (seen cluster), soft (inferred), zeros or None (population).
        head: ``"mixed"`` or ``"fixed"`` (the fixed-effects prediction, ignoring ``z``); mixed-effects nets only.
            Defaults to ``"mixed"``.
        batch_size: predict in chunks of this size (None: all at once). Defaults to None.
    """
    if head not in ("mixed", "fixed"):
        raise ValueError(f"head must be 'mixed' or 'fixed', got {head!r}.")
    x = _as_tensor(x, "x", torch.get_default_dtype())
    z = None if z is None else _as_tensor(z, "z", x.dtype)
    was_training = network.training
    network.eval()
    try:
        size = batch_size or max(x.shape[0], 1)
        chunks = []
        for i in range(0, x.shape[0], size):
            xb = x[i : i + size]
            if isinstance(network, MixedEffectsNet):
                out = network.forward_all(xb, None if z is None or head == "fixed" else z[i : i + size])
                chunks.append(out.mixed if head == "mixed" else out.fixed)
            else:
                chunks.append(network(xb))
        return torch.cat(chunks)
    finally:
        network.train(was_training)
