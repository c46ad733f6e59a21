# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""A fast plain-PyTorch training loop for tabular (vector-input) models, mixed-effects or not.

Tabular mixed-effects models are tiny (an ARMED DFNN has ~100 weights), so a MONAI/Ignite engine with a
``DataLoader`` spends far more time on Python bookkeeping than on arithmetic. :class:`TabularTrainer` keeps the
whole data set as tensors on its ``device``, shuffles by index once per epoch and slices views per mini-batch,
updates with the fused ``torch.optim.Adam`` (one optimizer kernel per step instead of one per parameter tensor) and
never synchronises per step. The losses are the package's own: the task loss of
both heads plus the random effects' KL (:func:`~monai_medl.losses.task_loss`, as in
:class:`~monai_medl.losses.MixedEffectsLoss`) and the adversary step of
:class:`~monai_medl.losses.AdversarialRegularizer`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import nn

from monai_medl.engines.adam_step import AdamStep
from monai_medl.engines.tabular_fused import adversary_losses
from monai_medl.engines.tabular_manual import ManualMLPStep, manual_step_unsupported
from monai_medl.losses.adversarial_regularizer import AdversarialRegularizer
from monai_medl.losses.mixed_effects_loss import TASKS, task_loss
from monai_medl.networks.layers.random_effects import accumulate_kl_grads_
from monai_medl.networks.nets.mixed_effects_net import MixedEffectsNet
from monai_medl.networks.utils import random_effects_layers

__all__ = ["make_adam", "TabularHistory", "TabularTrainer", "predict_tabular", "data_dependent_init_"]


def make_adam(params: Iterable[nn.Parameter], lr: float) -> torch.optim.Adam:
    """``torch.optim.Adam`` with its fused implementation where it exists (one kernel for all tensors).

    The optimizer holds the parameters themselves, so moving or casting the network afterwards (``.to()``,
    ``.double()``) keeps training; tiny tabular models have many small tensors, for which the fused (else
    ``foreach``) update is several times faster than the per-tensor loop.
    """
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("no parameter requires a gradient.")
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=lr, fused=fused, foreach=None if fused else True)


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

        >>> import torch
        >>> from monai_medl.networks.nets import MixedEffectsMLP
        >>> net = MixedEffectsMLP(in_features=2, out_channels=1, num_clusters=4)
        >>> x_train = torch.randn(101, 2)
        >>> net = data_dependent_init_(net, x_train[:1024])
        >>> (net.hidden[0](x_train) > 0).sum(0).tolist()  # every first-layer unit fires on half of the 101 inputs
        [50, 50, 50, 50]
    """
    targets = list(layers) if layers is not None else _hidden_linears(network)
    for layer in targets:
        if layer.bias is None:
            raise ValueError(f"data_dependent_init_ needs layers with a bias, got {layer}.")

    def centre(module: nn.Linear, _inputs, output: torch.Tensor) -> torch.Tensor:
        shift = output.reshape(-1, output.shape[-1]).median(dim=0).values
        cast(torch.Tensor, module.bias).sub_(shift)  # every target has a bias (checked above)
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
    activations ``h`` (its own Adam), then yields the adversarial term with the adversary
    frozen. ``lambda_g=0`` with an adversary trains it as a site probe without influencing the model.

    Args:
        network: the model to train (moved to ``device``; updated with the fused ``torch.optim.Adam``).
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
            :class:`~monai_medl.networks.nets.ClusterClassifier`), or None. Defaults to None.
        lambda_g: weight of the adversarial term. Defaults to 0.0.
        adversary_lr: Adam learning rate of the adversary. Defaults to 1e-3.
        adversary_objective: ``"confusion"`` (push the adversary to uniform predictions) or ``"ce"`` (ARMED's
            ``-lambda_g * CE``); see :class:`~monai_medl.losses.AdversarialRegularizer`. Defaults to ``"confusion"``.
        seed: seed of the shuffling and of the random-effects sampling during :meth:`fit` (the global RNG state
            is restored afterwards). Defaults to 0.
        fused: one backward and one optimizer step per mini-batch for the model and its adversary (the adversary
            is a second parameter group of one fused Adam): both heads, the adversary's loss on the detached
            activations and the adversarial term through the not-yet-updated, frozen adversary form one graph
            (:func:`~monai_medl.engines.tabular_fused.adversary_losses`; simultaneous instead of alternating
            updates). False: the two-step :class:`~monai_medl.losses.AdversarialRegularizer` order (adversary
            first, then the model against the updated adversary). Without an adversary both are the same.
            Defaults to False.
        device: device to train on; the network (and adversary) are moved there and :meth:`fit` moves the data.
            Defaults to the network's current device.
        manual_backward: compute the default (two-step) step with hand-written gradients instead of autograd
            (:class:`~monai_medl.engines.tabular_manual.ManualMLPStep`: the same update and random numbers, equal up
            to floating-point rounding, several times faster than autograd on the spirals MLPs). It covers a
            ReLU :class:`~monai_medl.networks.nets.MixedEffectsMLP` with ``task="bce"``
            (:func:`~monai_medl.engines.tabular_manual.manual_step_unsupported`). None: wherever it covers the
            configuration, autograd elsewhere; True: always (a configuration it does not cover raises a ValueError
            naming why); False: always autograd. The attribute ``backward`` (``"manual"`` or ``"autograd"``) says
            which path trains and ``manual_unsupported`` why not manual (None when manual). Defaults to None.

    Example::

        >>> import torch
        >>> from monai_medl.data.synthetic.spirals import make_spirals
        >>> from monai_medl.networks.nets import ClusterClassifier, MixedEffectsMLP
        >>> data = make_spirals(num_clusters=4, points_per_cluster=50, seed=0)
        >>> x, y = torch.from_numpy(data.x), torch.from_numpy(data.y).float().unsqueeze(1)
        >>> site = torch.from_numpy(data.site)
        >>> net = MixedEffectsMLP(in_features=2, out_channels=1, num_clusters=4)
        >>> adv = ClusterClassifier(in_features=12, num_clusters=4)  # reads the three hidden layers (4 + 4 + 4 units)
        >>> trainer = TabularTrainer(net, epochs=2, kl_weight=1e-5, adversary=adv, lambda_g=0.5, seed=0)
        >>> history = trainer.fit(x, y, z=torch.eye(4)[site], sites=site)
        >>> len(history.loss), len(history.adversary_accuracy)
        (2, 2)
        >>> x_test = torch.randn(5, 2)
        >>> prob = torch.sigmoid(predict_tabular(net, x_test, head="fixed"))
        >>> prob.shape
        torch.Size([5, 1])
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
        device: str | torch.device | None = None,
        fused: bool = False,
        manual_backward: bool | None = None,
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
        if device is None:
            param = next(network.parameters(), None)
            device = param.device if param is not None else "cpu"
        self.device = torch.device(device)
        self.network = network.to(self.device)
        self.task = task
        self.epochs = epochs
        self.batch_size = batch_size
        self.lambda_mixed = lambda_mixed
        self.lambda_fixed = lambda_fixed
        self.kl_weight = kl_weight
        self.seed = seed
        self.re_layers = list(random_effects_layers(network).values())
        self.optimizer = make_adam(network.parameters(), lr=lr)
        self._step = AdamStep(self.optimizer)  # the same fused update without torch.optim's per-step bookkeeping
        self.regularizer: AdversarialRegularizer | None = None
        self.fused = bool(fused) and adversary is not None
        if adversary is not None:
            adversary = adversary.to(self.device)
            if self.fused:  # one optimizer; the regulariser only holds (and validates) the settings, step() is unused
                params = [p for p in adversary.parameters() if p.requires_grad]
                self.optimizer.add_param_group({"params": params, "lr": adversary_lr})
                adv_opt = self.optimizer
            else:
                adv_opt = make_adam(adversary.parameters(), lr=adversary_lr)
            self.regularizer = AdversarialRegularizer(adversary, adv_opt, lambda_g, objective=adversary_objective)
        reason = None if manual_backward is False else manual_step_unsupported(network, task, self.regularizer, fused)
        if manual_backward and reason is not None:
            raise ValueError(f"TabularTrainer(manual_backward=True): {reason}.")
        self.manual_unsupported = "manual_backward=False" if manual_backward is False else reason
        self.manual_backward = self.manual_unsupported is None
        self.backward = "manual" if self.manual_backward else "autograd"

    def _check(self, x, y, z, sites) -> tuple[torch.Tensor, ...]:
        param = next(self.network.parameters(), None)
        x = _as_tensor(x, "x", torch.get_default_dtype() if param is None else param.dtype)
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
        out = cast(MixedEffectsNet, self.network).forward_all(xb, zb)
        noise = out.log_noise_scale
        if use_mixed:
            loss = _weighted(self.lambda_mixed, task_loss(self.task, out.mixed, yb, noise))
            loss = loss + _weighted(self.lambda_fixed, task_loss(self.task, out.fixed, yb, noise))
        else:
            loss = task_loss(self.task, out.fixed, yb, noise)
        reg = self.regularizer
        if reg is not None and self.fused:
            adv_loss, term, accuracy = adversary_losses(reg.adversary, out.features, sb, reg.lambda_g, reg.objective)
            self._adversary_out = (adv_loss, accuracy)
            return loss + term
        if reg is not None:
            loss = loss + reg.step(out.features, sb)
        return loss

    def fit(self, x, y, z=None, sites=None) -> TabularHistory:
        """Train on ``x`` ``(n, features)``, targets ``y`` ``(n,)``/``(n, out)``, design ``z`` ``(n, K)`` or None.

        ``sites`` (``(n,)`` cluster indices, negative = unknown) feed the adversary; they default to
        ``argmax(z)`` for rows of ``z`` that are not all zero.
        """
        x, y, z, sites = (None if t is None else t.to(self.device) for t in self._check(x, y, z, sites))
        if self.manual_backward and y.dim() == 1:  # the manual step's (n, 1) targets, shaped once per fit
            y = y.unsqueeze(1)
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
            # x and z were checked once above; per-batch checks would cost ~10% (the ignore: torch types Module
            # attributes as Tensor | Module)
            net.validate_inputs = False  # type: ignore[assignment]
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                manual = None
                if self.manual_backward:  # one step object per fit (its adversary's AdamStep keeps its cache)
                    manual = ManualMLPStep(
                        net,
                        self.optimizer,
                        self.regularizer,
                        self.lambda_mixed,
                        self.lambda_fixed,
                        kl_layers,
                        kl_weight,
                        optimizer_step=self._step,
                    )
                try:
                    for _ in range(self.epochs):
                        self._epoch(x, y, z, sites, use_mixed, kl_weight, kl_layers, history, manual)
                finally:
                    if manual is not None:  # the parameters' own storage again (flat while the step trains)
                        manual.close()
        finally:
            if checks is not None:
                net.validate_inputs = checks
        net.eval()
        history.seconds = time.perf_counter() - start
        if not all(math.isfinite(v) for v in history.loss):
            raise FloatingPointError(f"training diverged: epoch losses {history.loss}.")
        return history

    def _epoch(
        self, x, y, z, sites, use_mixed: bool, kl_weight: float, kl_layers: list, history: TabularHistory, manual=None
    ):
        """One pass over the shuffled data in mini-batches; appends the epoch's means to ``history`` (``manual``: the
        fit's :class:`~monai_medl.engines.tabular_manual.ManualMLPStep`, or None for autograd)."""
        opt, reg = self.optimizer, self.regularizer
        n = x.shape[0]
        t0 = time.perf_counter()
        perm = torch.randperm(n).to(x.device)
        xs, ys = x[perm], y[perm]
        zs = z[perm] if z is not None else None
        ss = sites[perm] if reg is not None else None
        # running sums stay tensors: one conversion per epoch, no per-step host synchronisation
        total = x.new_zeros(())
        adv_acc = x.new_zeros(())
        # one split per epoch instead of four slices per step (per-step Python/dispatch cost matters here)
        # (the manual step takes the sites unsplit: its adversary targets are made per epoch)
        batches = [None if t is None else t.split(self.batch_size) for t in (xs, ys, zs, None if manual else ss)]
        steps = len(cast(tuple, batches[0]))  # xs is never None
        if manual is not None:
            return self._manual_epoch(manual, batches, ss, use_mixed, history, t0)
        for k in range(steps):
            xb, yb, zb, sb = (None if b is None else b[k] for b in batches)
            loss = self._loss(xb, yb, zb, sb, use_mixed)
            total += loss.detach()
            if self.fused:  # the adversary's loss joins the one backward
                adv_loss, accuracy = self._adversary_out
                adv_acc += accuracy
                loss = loss + adv_loss
            elif reg is not None:
                adv_acc += reg.last[1]
            opt.zero_grad()
            loss.backward()
            if kl_layers:  # + kl_weight * KL, its gradient added in closed form (all layers in one pass)
                total.add_(accumulate_kl_grads_(kl_layers, kl_weight), alpha=kl_weight)
            self._step()
        history.loss.append(float(total) / steps)
        if reg is not None:
            history.adversary_accuracy.append(float(adv_acc) / steps)
        history.epoch_seconds.append(time.perf_counter() - t0)

    def _manual_epoch(self, step: ManualMLPStep, batches, sites, use_mixed: bool, history, t0) -> None:
        """:meth:`_epoch` with :class:`~monai_medl.engines.tabular_manual.ManualMLPStep` (hand-written gradients)."""
        reg = self.regularizer
        xs, ys, zs, _ = batches
        steps = len(xs)
        targets = [None] * steps if reg is None else step.adversary_targets(sites, self.batch_size)
        for k in range(steps):
            step(xs[k], ys[k], zs[k] if use_mixed else None, targets[k])
        # the losses are computed once for the epoch: no per-step loss values, no per-step host synchronisation
        loss, accuracy = step.end_epoch()
        history.loss.append(float(loss) / steps)
        if reg is not None:
            history.adversary_accuracy.append(float(cast(torch.Tensor, accuracy)) / steps)
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
    param = next(network.parameters(), None)
    x = _as_tensor(x, "x", torch.get_default_dtype() if param is None else param.dtype)
    if param is not None:
        x = x.to(param.device)
    z = None if z is None else _as_tensor(z, "z", x.dtype).to(x.device)
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
