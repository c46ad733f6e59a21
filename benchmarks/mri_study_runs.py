# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Running the MRI study's units of work (one cohort, or one selection fit) in parallel, resumably.

A unit is a picklable dictionary handed to a module-level function that returns one row ``{model: {metric: value}}``.
Units run in up to ``workers`` processes with one torch thread each; every finished row is appended at once to
``<out>/<name>.rows.jsonl`` under the run's resume key (:func:`benchmarks._common.resume_key`: commit, mode, plan,
units and config), so a run that is cut off resumes where it stopped, and rows of other code or settings are never
reused. The unit's index in the run's list is its id (the list is part of the key).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from benchmarks import _common
from benchmarks._common import resume_key, saved_rows

__all__ = ["require_clean_tree", "run_key", "run_units", "clear_checkpoint"]

Row = Mapping[str, Mapping[str, float]]


def require_clean_tree(quick: bool) -> str:
    """The commit of the checkout; a full (non-quick) run from a modified or non-git tree is refused (its results
    could not be traced to code)."""
    commit = _common.git_commit()
    if not quick and not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise SystemExit(
            f"refusing a full run from a modified checkout (commit {commit!r}): commit first, or run from a clean "
            "worktree (git worktree add --detach DIR COMMIT); --quick runs anywhere."
        )
    return commit


def run_key(name: str, quick: bool, plan: Mapping[str, Any], units: Sequence[Mapping[str, Any]]) -> str | None:
    """The resume key of a run of ``units`` (None from a modified checkout: then nothing is reused)."""
    return resume_key(name, quick, plan, list(range(len(units))), {"units": list(units)})


def _one_thread() -> None:
    """One torch thread and one BLAS/OpenMP thread: on a shared machine the probes' multithreaded BLAS calls are
    ~15x slower than single-threaded ones."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(1)


def run_units(
    name: str,
    units: Sequence[Mapping[str, Any]],
    fn: Callable[[Mapping[str, Any]], Row],
    out_dir: str | os.PathLike,
    key: str | None,
    workers: int = 1,
    log: Callable[[str], Any] = print,
    describe: Callable[[Mapping[str, Any]], str] = str,
) -> list[Row]:
    """``fn(unit)`` for every unit (reusing rows saved under ``key``), in unit order.

    ``workers`` 1 runs in this process (tests, debugging); more uses a process pool. ``describe(unit)`` names a unit
    in the progress lines.
    """
    checkpoint = Path(out_dir) / f"{name}.rows.jsonl"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    done = {i: r for i, r in saved_rows(checkpoint, key).items() if i < len(units)}
    rows: dict[int, Row] = dict(done)
    if done:
        log(f"{name}: {len(done)} of {len(units)} units reused from {checkpoint}")
    todo = [i for i in range(len(units)) if i not in done]
    start = time.perf_counter()

    def finish(i: int, row: Row) -> None:
        rows[i] = row
        if key is not None:
            with checkpoint.open("a") as f:
                f.write(json.dumps({"key": key, "seed": i, "row": row}) + "\n")
        load = os.getloadavg()[0]
        log(
            f"[{time.perf_counter() - start:6.0f} s, load {load:.1f}] {name}: {describe(units[i])} done "
            f"({len(rows)}/{len(units)})"
        )

    if workers <= 1:
        _one_thread()
        for i in todo:
            finish(i, fn(units[i]))
    else:
        with ProcessPoolExecutor(max_workers=workers, initializer=_one_thread) as pool:
            futures = {pool.submit(fn, units[i]): i for i in todo}
            for future in as_completed(futures):
                finish(futures[future], future.result())
    return [rows[i] for i in range(len(units))]


def clear_checkpoint(name: str, out_dir: str | os.PathLike) -> None:
    """Remove the run's saved rows once its results file holds them all."""
    (Path(out_dir) / f"{name}.rows.jsonl").unlink(missing_ok=True)
