# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Maximise an evidence lower bound written as a per-sample mean: full-batch L-BFGS or mini-batch Adam."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

__all__ = ["train_elbo"]


class _Patience:
    """Tracks a held-out loss after every iteration; says when it has not improved for ``patience`` iterations."""

    def __init__(self, monitor: Callable[[], float], patience: int, params: Sequence[torch.Tensor]) -> None:
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}.")
        self.monitor, self.patience, self.params = monitor, patience, list(params)
        self.best, self.best_iteration, self.iteration = float(monitor()), 0, 0
        self.best_params = [p.detach().clone() for p in self.params]

    def step(self) -> bool:
        """Record one more iteration; True when the fit should stop."""
        self.iteration += 1
        value = float(self.monitor())
        if value < self.best:
            self.best, self.best_iteration = value, self.iteration
            self.best_params = [p.detach().clone() for p in self.params]
        return not math.isfinite(value) or self.iteration - self.best_iteration >= self.patience

    @torch.no_grad()
    def restore(self) -> dict:
        """Put the parameters back where the monitored loss was lowest; report where that was."""
        for p, best in zip(self.params, self.best_params):
            p.copy_(best)
        return {"best_iteration": self.best_iteration, "best_monitor": self.best}


def train_elbo(
    objective: Callable[[torch.Tensor | None], torch.Tensor],
    params: Sequence[torch.nn.Parameter],
    num_samples: int,
    optimizer: str = "lbfgs",
    max_iter: int = 1000,
    lr: float | None = None,
    batch_size: int | None = None,
    tol: float = 1e-9,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    monitor: Callable[[], float] | None = None,
    patience: int = 20,
) -> dict:
    """Minimise ``objective`` (the negative ELBO divided by the number of samples) and report how it went.

    ``objective(index)`` returns the loss on the samples ``index`` (a LongTensor) or on all samples (None): a
    per-sample mean of the expected negative log-likelihood plus ``KL / num_samples``, so a mini-batch gives an
    unbiased estimate of the full objective.

    ``"lbfgs"`` (default) runs full-batch L-BFGS with a strong-Wolfe line search: with a closed-form expected
    likelihood the objective is deterministic and smooth, and L-BFGS follows the weakly curved ridge between the
    fixed effects and the mean of the random effects that first-order methods crawl along. It stops after
    ``max_iter`` iterations, when the largest gradient entry falls below ``1e-7`` or when an iteration changes the
    objective (a per-sample mean, so the criterion does not depend on the number of samples) by less than ``tol``.
    ``"adam"`` runs ``max_iter`` epochs of mini-batches (``batch_size``, default all samples) with a
    cosine-annealed learning rate, for objectives that only exist as samples or data that do not fit in memory.

    Early stopping: with ``monitor`` (a held-out loss, e.g. the expected negative log-likelihood of validation
    rows) the loss is evaluated before the first and after every L-BFGS iteration or Adam epoch, and the fit
    stops once it has not improved for ``patience`` of them; the parameters are then put back where it was lowest
    (``best_iteration``).

    Returns:
        ``{"iterations": int, "loss": float, "converged": bool}``, plus ``best_iteration`` and ``best_monitor``
        with a ``monitor``.

    Example::

        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> info = train_elbo(lambda rows: (w - torch.tensor([1.0, -2.0])).square().sum(), [w], num_samples=1)
        >>> info["converged"], [round(v, 4) for v in w.tolist()]
        (True, [1.0, -2.0])
    """
    params = [p for p in params if p.requires_grad]
    watch = None if monitor is None else _Patience(monitor, patience, params)
    if optimizer == "lbfgs":
        # with a monitor, one iteration per step() call (the optimiser's state carries over between calls)
        per_step = max_iter if watch is None else 1
        opt = torch.optim.LBFGS(
            params,
            lr=1.0 if lr is None else lr,
            max_iter=per_step,
            max_eval=int(per_step * 1.25) + 1,
            tolerance_grad=1e-7,
            tolerance_change=tol,
            history_size=50,
            line_search_fn="strong_wolfe",
        )

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = objective(None)
            loss.backward()
            return loss

        def iterations() -> int:
            return int(opt.state[opt._params[0]].get("n_iter", 0))

        converged = False
        if watch is None:
            opt.step(closure)
            converged = iterations() < max_iter
        else:
            previous = None
            while iterations() < max_iter:
                before = iterations()
                loss = float(opt.step(closure).detach())
                if iterations() == before or (previous is not None and abs(previous - loss) < tol):
                    converged = True  # gradient below tolerance or the objective no longer changes
                    break
                previous = loss
                if watch.step():
                    break
        best = {} if watch is None else watch.restore()
        with torch.no_grad():
            loss = float(objective(None))
        return {"iterations": iterations(), "loss": loss, "converged": converged and math.isfinite(loss), **best}
    if optimizer != "adam":
        raise ValueError(f"optimizer must be 'lbfgs' or 'adam', got {optimizer!r}.")
    batch = num_samples if batch_size is None else int(batch_size)
    adam = torch.optim.Adam(params, lr=0.05 if lr is None else lr)
    steps_per_epoch = math.ceil(num_samples / batch)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(adam, max_iter * steps_per_epoch)
    epochs = 0
    for _ in range(max_iter):
        order = torch.randperm(num_samples, generator=generator).to(device)
        for start in range(0, num_samples, batch):
            adam.zero_grad()
            index = None if batch >= num_samples else order[start : start + batch]
            objective(index).backward()
            adam.step()
            schedule.step()
        epochs += 1
        if watch is not None and watch.step():
            break
    best = {} if watch is None else watch.restore()
    with torch.no_grad():
        loss = float(objective(None))
    return {"iterations": epochs, "loss": loss, "converged": math.isfinite(loss), **best}
