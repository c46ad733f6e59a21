# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""``python -m monai_medl.fl.job``: simulate a federated mixed-effects job, each site reading only its datalist."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from monai_medl.fl.local_training import LocalTrainingSettings
from monai_medl.fl.recipe import FederatedJobPaths, federated_me_recipe
from monai_medl.fl.site_datalist import SiteDataError

__all__ = ["job_parser", "run_job", "main"]


def job_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m monai_medl.fl.job", description=__doc__)
    parser.add_argument("--site_datalists", nargs="+", required=True, help="one datalist JSON per site")
    parser.add_argument("--site_names", nargs="+", help="NVFlare client names (default site-1, site-2, ...)")
    parser.add_argument("--network", help="JSON of MixedEffectsMLP arguments, with in_features (tabular datalists)")
    parser.add_argument("--bundle_root", help="a bundle folder: the sites train its network_def on image datalists")
    parser.add_argument("--bundle_overrides", default="{}", help="JSON of bundle config ids to replace")
    parser.add_argument("--out", required=True, help="the job's output folder")
    parser.add_argument("--num_rounds", type=int, default=2)
    for field, default in LocalTrainingSettings().to_dict().items():
        parser.add_argument(f"--{field}", type=type(default), default=default)
    return parser


def run_job(
    site_datalists: dict[str, str],
    network: dict | None,
    out_dir: str | Path,
    training: LocalTrainingSettings,
    num_rounds: int,
    bundle_root: str | None = None,
    bundle_overrides: dict | None = None,
) -> dict:
    """Build the recipe, run it in NVFlare's simulator (one thread per site) and return the job summary.

    The summary (also written to ``<out>/summary.json``) holds the sites, the global model checkpoint and the last
    round's variance components and bytes received per site, read from the aggregator's audit trail.
    """
    from nvflare.recipe import SimEnv

    recipe, paths = federated_me_recipe(
        site_datalists,
        network,
        out_dir,
        training,
        num_rounds,
        bundle_root=bundle_root,
        bundle_overrides=bundle_overrides,
    )
    env = SimEnv(clients=list(site_datalists), num_threads=len(site_datalists), workspace_root=str(paths.simulator))
    run = recipe.execute(env)
    result = run.get_result() if run is not None else None
    return _summary(paths, site_datalists, result)


def _summary(paths: FederatedJobPaths, site_datalists: dict[str, str], result) -> dict:
    rounds_file = paths.server / "rounds.json"
    rounds = json.loads(rounds_file.read_text()) if rounds_file.is_file() else []
    checkpoints = sorted(paths.simulator.rglob("FL_global_model.pt"))
    summary = {
        "sites": site_datalists,
        "rounds_completed": len(rounds),
        "global_model": str(checkpoints[-1]) if checkpoints else None,
        "simulator_result": str(result) if result is not None else None,
        "variance_components": rounds[-1]["variance_components"] if rounds else None,
        "bytes_received": [r["bytes_received"] for r in rounds],
    }
    (paths.root / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    args = job_parser().parse_args(argv)
    names = args.site_names or [f"site-{i + 1}" for i in range(len(args.site_datalists))]
    if len(names) != len(args.site_datalists) or len(set(names)) != len(names):
        print(f"error: --site_names must give {len(args.site_datalists)} distinct names, got {names}", file=sys.stderr)
        return 2
    if (args.network is None) == (args.bundle_root is None):
        print("error: give exactly one of --network (tabular) and --bundle_root (a bundle's images)", file=sys.stderr)
        return 2
    try:
        network = None if args.network is None else json.loads(args.network)
        overrides = json.loads(args.bundle_overrides)
    except json.JSONDecodeError as e:
        print(f"error: --network/--bundle_overrides is not JSON ({e})", file=sys.stderr)
        return 2
    fields = LocalTrainingSettings().to_dict()
    training = LocalTrainingSettings(**{k: getattr(args, k) for k in fields})
    sites = dict(zip(names, args.site_datalists))
    try:
        summary = run_job(sites, network, args.out, training, args.num_rounds, args.bundle_root, overrides)
    except (SiteDataError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0 if summary["rounds_completed"] == args.num_rounds else 1


if __name__ == "__main__":
    sys.exit(main())
