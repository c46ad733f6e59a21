# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""How strongly latent vectors cluster by batch: Davies-Bouldin, Calinski-Harabasz and a batch-probe accuracy."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["latent_batch_clustering", "batch_probe_accuracy"]


def _as_arrays(latents, batches, two_batches: bool = True) -> tuple[np.ndarray, np.ndarray]:
    x = latents.detach().cpu().numpy() if isinstance(latents, torch.Tensor) else np.asarray(latents)
    b = batches.detach().cpu().numpy() if isinstance(batches, torch.Tensor) else np.asarray(batches)
    x = x.reshape(x.shape[0], -1).astype(np.float64)
    b = b.reshape(-1)
    if x.shape[0] != b.shape[0]:
        raise ValueError(f"latents have {x.shape[0]} rows but batches has {b.shape[0]} labels.")
    if two_batches and len(np.unique(b)) < 2:
        raise ValueError("batch clustering needs at least two different batches.")
    if not np.all(np.isfinite(x)):
        raise ValueError("latents contain NaN/Inf values.")
    return x, b


def latent_batch_clustering(latents, batches, standardize: bool = True) -> dict[str, float]:
    """Davies-Bouldin and Calinski-Harabasz indices of ``latents`` grouped by ``batches`` (scikit-learn).

    As in ARMED (Table V), the latents are z-scored per dimension first. **Lower** Davies-Bouldin and **higher**
    Calinski-Harabasz mean *stronger* clustering by batch; a batch-invariant latent has a high Davies-Bouldin and a
    low Calinski-Harabasz index.

    Args:
        latents: ``(n, d)`` array or tensor.
        batches: ``(n,)`` batch labels.
        standardize: z-score every latent dimension first. Defaults to True.

    Example::

        >>> rng = np.random.default_rng(0)
        >>> b = np.repeat([0, 1], 50)
        >>> latent_batch_clustering(rng.normal(size=(100, 4)) + 3 * b[:, None], b)["davies_bouldin"] < 1
        True
    """
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score

    x, b = _as_arrays(latents, batches)
    if standardize:
        x = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)
    return {
        "davies_bouldin": float(davies_bouldin_score(x, b)),
        "calinski_harabasz": float(calinski_harabasz_score(x, b)),
    }


def batch_probe_accuracy(
    latents, batches, folds: int = 5, seed: int = 0, eval_latents=None, eval_batches=None
) -> float:
    """Accuracy of a fresh logistic-regression probe predicting the batch from ``latents``.

    Cross-validated on ``latents`` by default; with ``eval_latents``/``eval_batches`` the probe is fit on all of
    ``latents`` and scored on the held-out ``eval_latents`` (e.g. fit on training tiles, scored on validation tiles).
    Chance is about ``1 / number of batches``; a batch-invariant latent scores near chance.

    Args:
        latents: ``(n, d)`` array or tensor.
        batches: ``(n,)`` batch labels.
        folds: stratified cross-validation folds. Defaults to 5.
        seed: seed of the fold split. Defaults to 0.
        eval_latents: optional ``(m, d)`` held-out latents to score the probe on (no cross-validation then).
        eval_batches: ``(m,)`` batch labels of ``eval_latents``; required with ``eval_latents``.

    Example::

        >>> b = np.repeat([0, 1], 50)
        >>> batch_probe_accuracy(np.random.default_rng(0).normal(size=(100, 4)) + 3 * b[:, None], b) > 0.9
        True
        >>> rng = np.random.default_rng(1)
        >>> fit, held_out = rng.normal(size=(100, 4)) + 3 * b[:, None], rng.normal(size=(100, 4)) + 3 * b[:, None]
        >>> batch_probe_accuracy(fit, b, eval_latents=held_out, eval_batches=b) > 0.9
        True
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, b = _as_arrays(latents, batches)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    if (eval_latents is None) != (eval_batches is None):
        raise ValueError("eval_latents and eval_batches must be given together (or neither).")
    if eval_latents is not None:
        x_eval, b_eval = _as_arrays(eval_latents, eval_batches, two_batches=False)
        if x_eval.shape[1] != x.shape[1]:
            raise ValueError(f"eval_latents have {x_eval.shape[1]} dimensions, latents have {x.shape[1]}.")
        return float(probe.fit(x, b).score(x_eval, b_eval))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(cross_val_score(probe, x, b, cv=cv).mean())
