# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""How long datalist validation takes on N 1 mm T1-sized scans, against the time to merely decompress them.

Generates ``--distinct`` smooth random 182 x 218 x 182 int16 scans (``.nii.gz``, the size and compression of a
1 mm T1) in a temporary folder, and N datalist entries over them: each entry is its own file (a hard link to one
of the distinct scans, so N files cost no disk and stay in the page cache; each path is opened, read and
decompressed on its own). Then, with the load average and the CPU seconds recorded beside every timing:

1. **decompression**: a plain nibabel read of every voxel (``np.asanyarray(nib.load(path).dataobj)``) of every
   file, in the same worker processes and through the same pool as the validation (so both are measured alike,
   whatever else the machine runs: the wall time of this step is the decompression time per core); and, as the
   strict floor, ``gzip.decompress`` of every file's bytes, likewise (``--no_gzip_floor`` skips it: a pass less);
2. **first pass**: :func:`~monai_medl.data.validate_datalist` with every core and an empty cache (every check and
   the intensity profile from one read per scan); target: at most 1.3 x the decompression time per core;
3. **decompression again** (nibabel), to see how far the load drifted during the first pass (the ratio uses the
   mean of the two);
4. **second pass**: the same datalist again with the cache; target: under 3 s at 2,000 scans;
5. the passes extrapolated linearly to 10,000 scans.

Run: ``python -m benchmarks.validation_scale [--quick] [--n N] [--out DIR]`` (under ``nice`` on a shared machine).
"""

from __future__ import annotations

import gzip
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import announce_plan, benchmark_parser, write_results

NAME = "validation_scale"
SHAPE = (182, 218, 182)
TARGET_N, EXTRAPOLATE_N = 2000, 10_000


def _scan(path: Path, seed: int) -> None:
    """A smooth random int16 volume (low-resolution noise, trilinearly upsampled, plus fine noise) on a 1 mm grid."""
    import nibabel as nib
    from scipy.ndimage import zoom

    rng = np.random.default_rng(seed)
    coarse = rng.normal(0.0, 1.0, size=(12, 14, 12))
    smooth = zoom(coarse, [s / c for s, c in zip(SHAPE, coarse.shape)], order=1)[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    data = (600 + 250 * smooth + rng.normal(0, 15, size=SHAPE)).clip(0, 4000).astype(np.int16)
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 1.0, 1.0])), str(path))


def _cohort(folder: Path, n: int, distinct: int) -> list[dict[str, Any]]:
    sources = [folder / f"source-{i}.nii.gz" for i in range(distinct)]
    for i, path in enumerate(sources):
        _scan(path, seed=i)
    entries = []
    for i in range(n):
        path = folder / f"sub-{i:05d}.nii.gz"
        os.link(sources[i % distinct], path)
        entries.append({"image": str(path), "site": f"site-{i % 4}", "label": i % 2})
    return entries


def _cpu() -> float:
    """CPU seconds of this process and of its finished children (the worker processes)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


CPU: dict[str, float] = {}


def _timed(fn, name: str = "") -> tuple[float, float, Any]:
    """Wall seconds, 1-minute load average at the start, result; CPU seconds into ``CPU[name]``."""
    load, cpu = os.getloadavg()[0], _cpu()
    start = time.perf_counter()
    out = fn()
    wall = time.perf_counter() - start
    CPU[name] = _cpu() - cpu
    return wall, load, out


def _nibabel_read(path: str) -> int:
    """Every voxel of ``path`` as nibabel reads it (the plain decompression a full check cannot avoid)."""
    import nibabel as nib

    return int(np.asanyarray(nib.load(path).dataobj).nbytes)


def _gunzip(path: str) -> int:
    with open(path, "rb") as f:
        return len(gzip.decompress(f.read()))


def _in_workers(fn, paths: list[str], workers: int) -> None:
    from monai_medl.data.image_survey import map_in_workers

    for _ in map_in_workers(fn, paths, workers):
        pass


def main() -> dict[str, Any]:
    parser = benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=None, help=f"scans (default {TARGET_N}; --quick: 24)")
    parser.add_argument("--distinct", type=int, default=8, help="distinct generated scans the N files link to")
    parser.add_argument("--no_gzip_floor", action="store_true", help="skip the gzip.decompress floor (a pass less)")
    args = parser.parse_args()
    n = args.n or (24 if args.quick else TARGET_N)
    from monai_medl.data import DatalistSpec, validate_datalist
    from monai_medl.data.image_survey import ImageInfoCache, default_workers

    workers = default_workers()
    plan = {
        "scans": n,
        "distinct_scans": args.distinct,
        "shape": list(SHAPE),
        "workers": workers,
        "targets": "first pass <= 1.3 x decompression time per core; second pass < 3 s at 2,000 scans",
        "extrapolation": f"linear in the number of scans, to {EXTRAPOLATE_N}",
        "gzip_floor": not args.no_gzip_floor,
    }
    announce_plan(NAME, args.quick, plan, seeds=list(range(args.distinct)), out_dir=args.out)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        gen_s, gen_load, entries = _timed(lambda: _cohort(folder, n, args.distinct))
        paths = [e["image"] for e in entries]
        size_mb = os.path.getsize(paths[0]) / 2**20
        nib_s, nib_load, _ = _timed(lambda: _in_workers(_nibabel_read, paths, workers), "nibabel")
        gz_s, gz_load = 0.0, 0.0
        if not args.no_gzip_floor:
            gz_s, gz_load, _ = _timed(lambda: _in_workers(_gunzip, paths, workers), "gzip")
        cache = ImageInfoCache(folder / "cache.sqlite")
        first_s, first_load, problems = _timed(
            lambda: validate_datalist(entries, DatalistSpec(num_classes=2), cache=cache, workers=workers), "first"
        )
        assert not problems, problems[:3]
        nib2_s, nib2_load, _ = _timed(lambda: _in_workers(_nibabel_read, paths, workers), "nibabel_again")
        second_s, second_load, problems = _timed(
            lambda: validate_datalist(entries, DatalistSpec(num_classes=2), cache=cache, workers=workers)
        )
        assert not problems and cache.hits == n, (problems[:3], cache.hits)
    per_core = (nib_s + nib2_s) / 2
    nib_cpu = (CPU["nibabel"] + CPU["nibabel_again"]) / 2
    extra = {
        "scans": n,
        "file_mb": round(size_mb, 2),
        "workers": workers,
        "decompress_s_per_core": round(per_core, 2),
        "decompress_s_per_core_before": round(nib_s, 2),
        "decompress_s_per_core_after": round(nib2_s, 2),
        "first_pass_s": round(first_s, 2),
        "first_pass_over_decompress_per_core": round(first_s / per_core, 3),
        "second_pass_s": round(second_s, 3),
        "decompress_cpu_s": round(nib_cpu, 2),
        "first_pass_cpu_s": round(CPU["first"], 2),
        "first_pass_cpu_over_decompress_cpu": round(CPU["first"] / nib_cpu, 3),
        "cores_used_first_pass": round(CPU["first"] / first_s, 2),
        "first_pass_s_at_10000": round(first_s / n * EXTRAPOLATE_N, 1),
        "second_pass_s_at_10000": round(second_s / n * EXTRAPOLATE_N, 2),
        "second_pass_s_at_2000": round(second_s / n * TARGET_N, 2),
        "load_generate": round(gen_load, 2),
        "load_decompress": round(nib_load, 2),
        "load_first_pass": round(first_load, 2),
        "load_decompress_again": round(nib2_load, 2),
        "load_second_pass": round(second_load, 2),
        "load_end": round(os.getloadavg()[0], 2),
        "generate_s": round(gen_s, 1),
    }
    if not args.no_gzip_floor:
        extra.update(
            gzip_s_per_core=round(gz_s, 2),
            first_pass_over_gzip_per_core=round(first_s / gz_s, 3),
            gzip_cpu_s=round(CPU["gzip"], 2),
            first_pass_cpu_over_gzip_cpu=round(CPU["first"] / CPU["gzip"], 3),
            load_gzip=round(gz_load, 2),
        )
    notes = (
        f"{n} files of {size_mb:.1f} MB (hard links to {args.distinct} generated scans; each path is read and "
        f"decompressed on its own), {workers} worker processes for the decompression and the validation alike (the "
        "same pool), so the wall-time ratio is measured alike even on a loaded machine; decompression per core is "
        "the mean of the nibabel reads before and after the first pass. Load average (1 min) at the start of each "
        "step is recorded beside it: the ratios, not the seconds, are the result; the CPU-time ratios (all "
        "processes) do not depend on the load; cores_used_first_pass is CPU seconds over wall seconds. The "
        "10,000-scan figures are linear extrapolations, not measurements."
    )
    return write_results(
        NAME, args.quick, "seconds", 1, {"validate_datalist": {"seen": None, "unseen": None, "extra": extra}},
        config={"n": n, "distinct": args.distinct, "shape": list(SHAPE), "workers": workers,
                "gzip_floor": not args.no_gzip_floor},
        seeds=list(range(args.distinct)), out_dir=args.out, notes=notes, plan=plan,
    )  # fmt: skip


if __name__ == "__main__":
    main()
