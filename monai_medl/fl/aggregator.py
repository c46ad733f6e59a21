# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The server side of federated mixed effects: FedAvg of the fixed effects, pooled moments for the rest."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.aggregators.model_aggregator import ModelAggregator

from monai_medl.fl.feature_statistics import STATS_PREFIX, pool_statistics
from monai_medl.fl.variance_components import MOMENT_PREFIX, SHIFT_META, pool_moments

__all__ = ["MixedEffectsAggregator", "NUM_SAMPLES"]

NUM_SAMPLES = "num_samples"
"""Meta key of a site's result: its number of training items (the FedAvg weight)."""


class MixedEffectsAggregator(ModelAggregator):
    """NVFlare ``ModelAggregator`` for :mod:`monai_medl.fl` clients.

    * fixed-effects parameters: weighted average, weight = the site's number of training items;
    * ``__moments__.*`` entries: summed over the sites into each random-effects layer's prior s.d. (sent back as
      ``<layer>.log_prior_scale``) and, for the layers of ``shift_keys``, the mean row ``c`` moved into the shared
      parameter (sent as ``meta["random_effects_shift"]``, which the sites subtract from their rows; see
      :mod:`monai_medl.fl.variance_components`);
    * ``__feature_stats__.*`` entries: pooled into the federation's class-conditional moments, sent back in the
      global model's ``meta["feature_statistics"]``.

    A site's random-effects rows are never in what it sends; a result holding a ``.loc``/``.rho`` key of a
    random-effects layer (listed in ``local_keys``) is refused with an error naming the site.

    Args:
        local_keys: the state-dict keys that must never arrive (the clients' random-effects rows).
        prior_keys: random-effects layer name -> its ``log_prior_scale`` key in the global model.
        shift_keys: additive random-effects layer -> the shared parameter its mean row moves into
            (:func:`~monai_medl.fl.variance_components.additive_layers`); empty: no centring.
        record_dir: if given, each round's received parameters (one ``.npz`` per site) and a ``rounds.json`` summary
            (variance components, bytes received per site) are written there: the audit trail of what left the sites.
    """

    def __init__(
        self,
        local_keys: list[str],
        prior_keys: Mapping[str, str],
        record_dir: str | None = None,
        shift_keys: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.local_keys = list(local_keys)  # NVFlare writes the constructor arguments into the job config (JSON)
        self.prior_keys = dict(prior_keys)
        self.shift_keys = dict(shift_keys or {})
        self.record_dir = record_dir
        self.round = 0
        self.reset_stats()

    @property
    def bytes_received(self) -> dict[str, int]:
        """Bytes of parameters received from each site in the current round."""
        return dict(self._received)

    def reset_stats(self) -> None:
        self._sums: dict[str, np.ndarray] = {}
        self._weight = 0.0
        self._moments: list[Mapping[str, object]] = []
        self._stats: list[dict] = []
        self._received: dict[str, int] = {}

    def accept_model(self, model: FLModel) -> None:
        site = str((model.meta or {}).get("client_name", f"site{len(self._received)}"))
        params = {k: np.asarray(v) for k, v in (model.params or {}).items()}
        leaked = sorted(set(self.local_keys) & set(params))
        if leaked:
            raise ValueError(f"site {site!r} sent its random-effects rows {leaked}: they must stay at the site.")
        weight = float((model.meta or {}).get(NUM_SAMPLES, 1.0))
        self._record(site, params)
        shared = {k: v for k, v in params.items() if not k.startswith((MOMENT_PREFIX, STATS_PREFIX))}
        for key, value in shared.items():
            self._sums[key] = self._sums.get(key, 0.0) + weight * value.astype(np.float64)
        self._weight += weight
        self._moments.append({k: v for k, v in params.items() if k.startswith(MOMENT_PREFIX)})
        stats = {k: v for k, v in params.items() if k.startswith(STATS_PREFIX)}
        if stats:
            self._stats.append(stats)

    def aggregate_model(self) -> FLModel:
        if self._weight <= 0:
            raise RuntimeError("MixedEffectsAggregator: no site result to aggregate in this round.")
        params = {k: v / self._weight for k, v in self._sums.items()}
        scales, shifts = self._pool_moments(params)
        meta: dict = {
            "variance_components": {n: {"variance": s * s, "std": s} for n, s in scales.items()},
            SHIFT_META: {n: c.tolist() for n, c in shifts.items()},
        }
        if self._stats:
            stats = pool_statistics(self._stats)
            meta["feature_statistics"] = {k: v.tolist() for k, v in stats.items()}
        self._summarise(meta)
        self.round += 1
        params = {k: np.asarray(v, dtype=np.float32) for k, v in params.items()}
        return FLModel(params=params, params_type=ParamsType.FULL, meta=meta)

    def _pool_moments(self, params: dict[str, np.ndarray]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """Prior scales into ``params`` (as log s.d.) and the mean rows moved into their shared parameters."""
        pooled = pool_moments(self._moments) if self.prior_keys or self.shift_keys else {}
        missing = sorted((set(self.prior_keys) | set(self.shift_keys)) - set(pooled))
        if missing:
            raise ValueError(f"the sites sent no posterior moments of the random-effects layers {missing}.")
        for name in set(pooled) - set(self.shift_keys):
            pooled[name].first = None  # only the layers the server shifts are centred: the rest is the plain M-step
        scales = {name: layer.scale for name, layer in pooled.items()}
        for name, key in self.prior_keys.items():
            params[key] = np.asarray(math.log(scales[name]))
        shifts = {}
        for name, key in self.shift_keys.items():
            shift = pooled[name].shift
            if shift is None:
                raise ValueError(f"the sites sent no first moments of {name!r}, which the server centres into {key!r}.")
            params[key] = params[key] + shift.reshape(params[key].shape)
            shifts[name] = shift
        return scales, shifts

    def _record(self, site: str, params: Mapping[str, np.ndarray]) -> None:
        self._received[site] = int(sum(v.nbytes for v in params.values()))
        if self.record_dir:
            folder = Path(self.record_dir) / f"round{self.round}"
            folder.mkdir(parents=True, exist_ok=True)
            np.savez(folder / f"{site}.npz", **dict(params))  # type: ignore[arg-type]

    def _summarise(self, meta: Mapping) -> None:
        if not self.record_dir:
            return
        path = Path(self.record_dir) / "rounds.json"
        rounds = json.loads(path.read_text()) if path.is_file() else []
        rounds.append(
            {
                "round": self.round,
                "bytes_received": dict(self._received),
                "variance_components": meta["variance_components"],
                SHIFT_META: meta[SHIFT_META],
            }
        )
        tmp = path.with_name("rounds.json.tmp")
        tmp.write_text(json.dumps(rounds, indent=1))
        os.replace(tmp, path)
