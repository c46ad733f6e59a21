# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Federated mixed effects of the MRI bundle's network against pooling, sites alone and federated conventional.

Data (drawn anew per seed ``s``: the replicates are draws of the cohort, its sites and scans): the package's synthetic
multi-site MRI cohort (:func:`~monai_medl.data.synthetic.mri_cohort.generate_mri_cohort`, tiny: 16^3 voxels of 12
mm) with ``sites`` seen sites (prevalence spread 20%..80%) and ``unseen_sites`` sites (prevalence 0.5) that never
join the federation. A seen site trains on its ``training`` and ``validation`` scans and is scored on its ``test``
scans; an unseen site is scored on all of its scans. Every site reads its scans through the bundle's preprocessing
and its own intensity z-scoring (:func:`~monai_medl.fl.load_bundle_site`; the statistics of the scans it holds).

Models (the bundle ``mri_me_cnn_classification``'s ``MixedEffectsCNN`` with the small backbone of ``overrides``; the
settings of :func:`default_config`, none tuned on test scans): ``federated_me`` (``federate_in_process``: the
NVFlare job's client and aggregator code in one loop, without the transport; the real simulator is exercised in
``benchmarks.federated`` and tests/fl); ``pooled_me`` (the same network with one random-effects row per seen site,
trained jointly on every seen site's scans in one place, as many passes over each scan as ``federated_me``'s two
phases make); ``site_alone`` (each seen site trains the network without random effects on its own scans only, the
same local training and rounds with no partner; on unseen sites the mean over the seen sites' models);
``federated_conventional`` (the federation of the network without random effects: FedAvg); ``prevalence_only``
(each scan scored with its site's training prevalence: no image).

Metric: within-site AUROC (the mean over sites of the AUROC inside each site,
:func:`~monai_medl.metrics.within_site_auroc`), seen sites with their own random effects, unseen sites with the
population model (``z = 0``). Also: the seen within-site AUROC after every round, the rounds to reach pooled_me's
seen AUROC minus ``accuracy_margin``, bytes a site sends per round.

Run ``python -m benchmarks.federated_mri [--quick] [--out DIR] [--rounds N]`` (under ``nice`` on a shared machine;
``--rounds`` writes ``federated_mri_rounds<N>``).
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._common import Comparison, benchmark_parser
from benchmarks.federated import rounds_to, run_federation
from monai_medl.data.synthetic.mri_cohort import generate_mri_cohort
from monai_medl.fl import (
    LocalTrainingSettings,
    bundle_parser,
    bundle_site_network,
    federate_in_process,
    load_bundle_site,
)
from monai_medl.losses.mixed_effects_loss import MixedEffectsLoss
from monai_medl.metrics.within_site import prevalence_only_score, within_site_auroc

__all__ = ["NAME", "MODELS", "PLAN", "COMPARISONS", "default_config", "cohort_sites", "run_seed", "run", "main"]

NAME = "federated_mri"
MODELS = ("federated_me", "pooled_me", "site_alone", "federated_conventional", "prevalence_only")
BUNDLE = str(Path(__file__).resolve().parents[1] / "bundles" / "mri_me_cnn_classification")

PLAN = {
    "seeds": "0..7 (0..1 quick); seed s generates the cohort (sites, scanner effects, prevalences, scans, split)",
    "replication_unit": "the cohort draw: every interval is a t-interval over the seeds' per-draw values",
    "splits": "4 seen sites (training + validation scans train, test scans score) and 2 unseen sites that never "
    "join (every scan scores); the same training scans for every model",
    "primary_comparisons": [
        "federated_me vs pooled_me: seen and unseen within-site AUROC (paired per seed; the price of not pooling)",
        "federated_me vs site_alone and vs federated_conventional: seen and unseen within-site AUROC (paired)",
        "every model vs prevalence_only (within-site AUROC 0.5 by construction)",
    ],
    "secondary": "seen within-site AUROC per round; rounds to reach pooled_me's seen AUROC - 0.02 (censored at rounds "
    "+ 1); bytes sent per site and round; fit seconds with the load",
    "decision_rule": "a difference is claimed only when its 95% t-interval over seeds excludes 0; every setting is "
    "fixed in config before the run, none tuned on test scans",
}

NO_RANDOM_EFFECTS = {
    "network_def#random_effects#random_slopes": False,
    "network_def#random_effects#random_intercept": False,
}


def default_config(quick: bool = False) -> dict[str, Any]:
    """Every setting of the benchmark (written into the results' ``config``)."""
    return {
        "cohort": {"num_subjects": 160 if quick else 288, "sites": 4, "unseen_sites": 2, "spatial_size": [16, 16, 16],
                   "spacing": [12.0, 12.0, 12.0], "validation_fraction": 0.05, "test_fraction": 0.3},
        "seeds": [0, 1] if quick else list(range(8)),
        "rounds": 2 if quick else 8,
        "accuracy_margin": 0.02,
        "overrides": {"spatial_size": [16, 16, 16], "network_def#backbone#channels": [4, 8]},
        "training": {"task": "bce", "epochs": 2, "batch_size": 8, "lr": 0.01},
    }  # fmt: skip


def _write(folder: Path, name: str, entries: list[dict]) -> Path:
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"training": entries}))
    return path


def cohort_sites(cfg: dict[str, Any], seed: int, folder: Path) -> dict[str, list]:
    """Generate seed ``seed``'s cohort in ``folder`` and load ``train``/``test`` (seen sites) and ``unseen``
    :class:`~monai_medl.fl.SiteData` lists, each site through :func:`~monai_medl.fl.load_bundle_site`."""
    path = generate_mri_cohort(folder / "cohort", seed=seed, **cfg["cohort"])
    base, datalist = Path(path).parent, json.loads(Path(path).read_text())
    parts: dict[tuple[str, str], list[dict]] = {}
    for section in ("training", "validation", "test"):
        for e in datalist[section]:
            part = "test" if section == "test" else "train"
            parts.setdefault((e["site"], part), []).append({**e, "image": str(base / e["image"])})

    def load(site: str, part: str):
        return load_bundle_site(_write(folder, f"{site}_{part}", parts[(site, part)]), site, BUNDLE, cfg["overrides"])

    seen, unseen = datalist["seen_sites"], datalist["unseen_sites"]
    return {"train": [load(s, "train") for s in seen], "test": [load(s, "test") for s in seen],
            "unseen": [load(s, "test") for s in unseen]}  # fmt: skip


@torch.no_grad()
def _within(predict, sites) -> float:
    """Within-site AUROC of ``predict(k, x)`` (logits) over ``sites`` (site ``k`` scored by ``predict(k, ...)``)."""
    y = np.concatenate([s.labels.numpy().ravel() for s in sites])
    score = np.concatenate([predict(k, s.features).numpy().ravel() for k, s in enumerate(sites)])
    names = np.concatenate([[s.site_name] * len(s.labels) for s in sites])
    return within_site_auroc(y, score, names)["mean"]


def _score_federation(d, fed) -> tuple[float, float]:
    """Seen (each site: global model + its rows, ``z = 1``) and unseen (population model, ``z = 0``) AUROC."""
    models = [fed.site_model(k) for k in range(len(d["train"]))]
    seen = _within(lambda k, x: models[k](x, torch.ones(len(x), 1)), d["test"])
    unseen = _within(lambda k, x: models[0](x, torch.zeros(len(x), 1)), d["unseen"])
    return seen, unseen


def _federate(cfg, sites, d, overrides, seed) -> tuple[Any, list[float]]:
    curve: list[float] = []
    score = (lambda r, state: curve.append(_score_federation(d, state)[0])) if d is not None else None
    build = functools.partial(bundle_site_network, BUNDLE, overrides)
    settings = LocalTrainingSettings(**cfg["training"])
    return federate_in_process(sites, build, settings, cfg["rounds"], seed=seed, on_round=score), curve


def _pooled_network(cfg, num_sites: int, seed: int) -> torch.nn.Module:
    parser = bundle_parser(BUNDLE, cfg["overrides"])
    parser["num_sites"] = num_sites  # the pooled model holds a row per seen site (bundle_parser sets 1)
    torch.manual_seed(seed)
    return parser.get_parsed_content("network_def", instantiate=True)


def _train_pooled(cfg, sites, seed: int) -> torch.nn.Module:
    """Joint training of every parameter on the pooled seen sites (one-hot ``z``), Adam with the local training's
    linearly decaying rate, ``2 * rounds * epochs`` epochs (the federation's passes: two phases a round)."""
    net, t = _pooled_network(cfg, len(sites), seed), cfg["training"]
    x = torch.cat([s.features for s in sites])
    y = torch.cat([s.labels for s in sites])
    sizes = torch.tensor([len(s.labels) for s in sites])
    z = torch.eye(len(sites))[torch.repeat_interleave(torch.arange(len(sites)), sizes)]
    loss_fn = MixedEffectsLoss(task=t["task"], kl_weight="elbo", num_train_samples=len(y))
    epochs = 2 * cfg["rounds"] * t["epochs"]
    optimizer = torch.optim.Adam(net.parameters(), lr=t["lr"])
    total = epochs * -(-len(y) // t["batch_size"])
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / total)
    generator = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(y), generator=generator).split(t["batch_size"]):
            loss = loss_fn(net(x[batch], z[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return net.eval()


def _pooled_row(cfg, d, seed) -> dict[str, float]:
    start = time.perf_counter()
    net = _train_pooled(cfg, d["train"], seed)
    seconds = time.perf_counter() - start
    k_sites = len(d["train"])
    seen = _within(lambda k, x: net(x, torch.eye(k_sites)[[k] * len(x)]), d["test"])
    unseen = _within(lambda k, x: net(x, torch.zeros(len(x), k_sites)), d["unseen"])
    return {"auroc_seen": seen, "auroc_unseen": unseen, "fit_seconds": seconds}


def _site_alone_row(cfg, d, seed) -> dict[str, float]:
    seen, unseen, start = [], [], time.perf_counter()
    for k, site in enumerate(d["train"]):
        fed, _ = _federate(cfg, [site], None, {**cfg["overrides"], **NO_RANDOM_EFFECTS}, seed + k)
        model = fed.site_model(0)
        seen.append(model(d["test"][k].features, torch.ones(len(d["test"][k].labels), 1)).detach())
        unseen.append(_within(lambda j, x, m=model: m(x, torch.zeros(len(x), 1)), d["unseen"]))
    seconds = time.perf_counter() - start
    return {"auroc_seen": _within(lambda k, x: seen[k], d["test"]), "auroc_unseen": float(np.mean(unseen)),
            "fit_seconds": seconds}  # fmt: skip


def _prevalence_row(d) -> dict[str, float]:
    labels = np.concatenate([s.labels.numpy().ravel() for s in d["train"]])
    names = np.concatenate([[s.site_name] * len(s.labels) for s in d["train"]])

    def predict(k, x, sites):
        return torch.as_tensor(prevalence_only_score(labels, names, [sites[k].site_name] * len(x)))

    return {"auroc_seen": _within(lambda k, x: predict(k, x, d["test"]), d["test"]),
            "auroc_unseen": _within(lambda k, x: predict(k, x, d["unseen"]), d["unseen"])}  # fmt: skip


def _federated_row(cfg, d, overrides, seed, target) -> dict[str, float]:
    start = time.perf_counter()
    fed, curve = _federate(cfg, d["train"], d, overrides, seed)
    seconds = time.perf_counter() - start
    seen, unseen = _score_federation(d, fed)
    rounds, reached = rounds_to([-v for v in curve], -target)  # AUROC: higher is better
    sent = [np.mean(list(r.values())) for r in fed.bytes_sent]
    row = {"auroc_seen": seen, "auroc_unseen": unseen, "rounds_to_accuracy": rounds, "reached": reached,
           "bytes_per_site_round": float(np.mean(sent)), "fit_seconds": seconds}  # fmt: skip
    row.update({f"auroc_seen_round{r + 1}": v for r, v in enumerate(curve)})
    return row


def run_seed(cfg: dict[str, Any], seed: int, log=print) -> dict[str, dict[str, float]]:
    """Generate seed ``seed``'s cohort, fit every model on the seen sites' training scans, score it:
    ``{model: {metric: value}}``."""
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        d = cohort_sites(cfg, seed, Path(tmp))
    load = os.getloadavg()[0]
    row: dict[str, dict[str, float]] = {"pooled_me": _pooled_row(cfg, d, seed)}
    target = row["pooled_me"]["auroc_seen"] - cfg["accuracy_margin"]
    row["federated_me"] = _federated_row(cfg, d, cfg["overrides"], seed, target)
    row["federated_conventional"] = _federated_row(cfg, d, {**cfg["overrides"], **NO_RANDOM_EFFECTS}, seed, target)
    row["site_alone"] = _site_alone_row(cfg, d, seed)
    row["prevalence_only"] = _prevalence_row(d)
    for name in ("pooled_me", "federated_me", "federated_conventional", "site_alone"):
        row[name]["loadavg_1min"] = load
    log(f"seed {seed}: " + ", ".join(f"{m} {r['auroc_seen']:.3f}/{r['auroc_unseen']:.3f}" for m, r in row.items()))
    return row


COMPARISONS = tuple(
    Comparison("federated_me", metric, ref)
    for ref in ("pooled_me", "site_alone", "federated_conventional", "prevalence_only")
    for metric in ("auroc_seen", "auroc_unseen")
)
"""The plan's primary comparisons, paired per seed (stored in ``federated_me``'s ``extra``)."""

NOTES = """
How to read: within-site AUROC (higher is better; 0.5 = no image information, which `prevalence_only` reaches by
construction). `seen`: the 4 federation sites' test scans, each with its own random effects; `unseen`: the 2 sites
that never joined, population model (`z = 0`). Federated rows are `federate_in_process` (the NVFlare job's own client
and aggregator code, without the transport; no simulator in this benchmark). `site_alone` uses the network without
random effects (a single site's random effect is its fixed intercept); unseen: the mean of the seen sites' models.
`bytes_per_site_round`: what one site sends per round, the arrays' own sizes (float32 weights, float64 moments).
`rounds_to_accuracy`: first round at which the seen AUROC >= pooled_me's of the same seed - 0.02 (rounds + 1 when
never, `reached` the fraction of seeds that did). Tiny sizes (16^3 scans, a 4/8-channel backbone, a few dozen scans
per site): a plumbing-scale benchmark, not the flagship study. `fit_seconds` on a shared 2-core machine under `nice`,
one torch thread: compare only within this run (`loadavg_1min` recorded per seed).
"""


def run(quick: bool = False, out_dir=None, cfg: dict[str, Any] | None = None, rounds: int | None = None) -> dict:
    """The benchmark (``cfg`` replaces :func:`default_config`, e.g. for a test). ``rounds`` other than the
    configured number runs the same plan with that many rounds (the pooled model's epochs follow) and writes
    ``federated_mri_rounds<N>.json/.md`` beside the default run's results."""
    cfg = default_config(quick) if cfg is None else cfg
    name = NAME
    if rounds is not None and rounds != cfg["rounds"]:
        cfg, name = {**cfg, "rounds": rounds}, f"{NAME}_rounds{rounds}"
    return run_federation(
        name,
        quick,
        cfg,
        run_seed,
        (PLAN, COMPARISONS, MODELS, NOTES),
        metric="within-site AUROC",
        seen="auroc_seen",
        unseen="auroc_unseen",
        curve_title="Seen within-site AUROC per round",
        tables=[
            (
                "Cost and rounds to accuracy",
                ["bytes_per_site_round", "rounds_to_accuracy", "reached", "fit_seconds", "loadavg_1min"],
            )
        ],
        out_dir=out_dir,
    )


def main(argv=None) -> None:
    parser = benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None, help="federated rounds (default: the config's)")
    args = parser.parse_args(argv)
    run(quick=args.quick, out_dir=args.out, rounds=args.rounds)


if __name__ == "__main__":
    main()
