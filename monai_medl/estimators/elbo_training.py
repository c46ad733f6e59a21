# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Maximise an evidence lower bound written as a per-sample mean: full-batch L-BFGS or mini-batch Adam."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

__all__ = ["train_elbo"]


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
) -> dict:
    """Minimise ``objective`` (the negative ELBO divided by the number of samples) and report how it went.

    ``objective(index)`` returns the loss on the samples ``index`` (a LongTensor) or on all samples (None): a
    per-sample mean of the expected negative log-likelihood plus ``KL / num_samples``, so a mini-batch gives an
    unbiased estimate of the full objective.

    ``"lbfgs"`` (default) runs full-batch L-BFGS with a strong-Wolfe line search: with a closed-form expected
    likelihood the objective is deterministic and smooth, and L-BFGS follows the weakly curved ridge between the
    fixed effects and the mean of the random effects that first-order methods crawl along. ``"adam"`` runs
    ``max_iter`` epochs of mini-batches (``batch_size``, default all samples) with a cosine-annealed learning rate,
    for objectives that only exist as samples or data that do not fit in memory at once.

    Returns:
        ``{"iterations": int, "loss": float, "converged": bool}``.
    """
    params = [p for p in params if p.requires_grad]
    if optimizer == "lbfgs":
        opt = torch.optim.LBFGS(
            params,
            lr=1.0 if lr is None else lr,
            max_iter=max_iter,
            max_eval=int(max_iter * 1.25),
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

        opt.step(closure)
        iterations = int(opt.state[opt._params[0]].get("n_iter", 0))
        with torch.no_grad():
            loss = float(objective(None))
        return {"iterations": iterations, "loss": loss, "converged": iterations < max_iter and math.isfinite(loss)}
    if optimizer != "adam":
        raise ValueError(f"optimizer must be 'lbfgs' or 'adam', got {optimizer!r}.")
    batch = num_samples if batch_size is None else int(batch_size)
    opt = torch.optim.Adam(params, lr=0.05 if lr is None else lr)
    steps_per_epoch = math.ceil(num_samples / batch)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max_iter * steps_per_epoch)
    for _ in range(max_iter):
        order = torch.randperm(num_samples, generator=generator).to(device)
        for start in range(0, num_samples, batch):
            opt.zero_grad()
            index = None if batch >= num_samples else order[start : start + batch]
            objective(index).backward()
            opt.step()
            schedule.step()
    with torch.no_grad():
        loss = float(objective(None))
    return {"iterations": max_iter, "loss": loss, "converged": math.isfinite(loss)}
