# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Validation at scale: one read per scan, worker processes, the file-identity cache, progress, header-only mode."""

from __future__ import annotations

import gzip
import logging
import os

import nibabel as nib
import numpy as np
import pytest

import monai_medl.data.image_info as image_info
import monai_medl.data.image_survey as survey
from monai_medl.bundle import voxel_check
from monai_medl.data import read_image_info, validate_datalist
from monai_medl.data.image_info import ImageReadError, _small_int_percentiles
from monai_medl.data.image_survey import ImageInfoCache, map_in_workers, read_image_infos


@pytest.fixture
def scans(tmp_path) -> list[str]:
    """Eight int16 scans, one truncated, one missing."""
    paths = []
    for i in range(8):
        data = np.random.default_rng(i).normal(300, 80, size=(12, 10, 8)).astype(np.int16)
        path = str(tmp_path / f"s{i}.nii.gz")
        nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0])), path)
        paths.append(path)
    raw = open(paths[3], "rb").read()
    with open(paths[3], "wb") as f:
        f.write(raw[: len(raw) // 2])
    return [*paths, str(tmp_path / "missing.nii.gz")]


def _as_comparable(results):
    return {p: str(v) if isinstance(v, ImageReadError) else v for p, v in results.items()}


def test_worker_processes_give_the_same_summaries_as_one_process(scans):
    serial = read_image_infos(scans, workers=1)
    parallel = read_image_infos(scans, workers=2)
    assert _as_comparable(parallel) == _as_comparable(serial)
    assert serial[scans[0]] == read_image_info(scans[0]) and serial[scans[0]].spacing == (2.0, 2.0, 3.0)
    assert "truncated" in str(serial[scans[3]]) and "file not found" in str(serial[scans[-1]])


def test_each_scan_is_decompressed_once_for_every_check(scans, monkeypatch):
    calls = []
    real = image_info._gunzip
    monkeypatch.setattr(image_info, "_gunzip", lambda b: calls.append(1) or real(b))
    problems = validate_datalist([{"image": p, "site": "a"} for p in scans], workers=1)
    assert len(calls) == 8 and len(problems) == 2  # 8 files exist; the truncated and the missing one reported


def test_an_unchanged_dataset_is_revalidated_from_the_cache(scans, tmp_path, monkeypatch):
    cache = ImageInfoCache(tmp_path / "cache" / "info.sqlite")
    first = read_image_infos(scans, workers=1, cache=cache)
    read = []
    real = survey.read_image_info
    monkeypatch.setattr(survey, "read_image_info", lambda p, **kw: read.append(p) or real(p, **kw))
    again = read_image_infos(scans, workers=1, cache=cache)
    assert _as_comparable(again) == _as_comparable(first)
    assert read == [scans[-1]]  # only the missing file (no identity) is tried again; errors are cached too
    st = os.stat(scans[1])
    os.utime(scans[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: read again
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), scans[2])  # replaced
    read.clear()
    third = read_image_infos(scans, workers=1, cache=str(cache.path))
    assert sorted(read) == sorted([scans[1], scans[2], scans[-1]]) and third[scans[2]].spatial_shape == (4, 4, 4)


def test_a_long_pass_reports_count_rate_and_time_left(scans, monkeypatch, caplog):
    monkeypatch.setattr(survey, "PROGRESS_EVERY", 0.0)
    with caplog.at_level(logging.INFO, logger=survey.__name__):
        read_image_infos(scans, workers=1)
    assert "read 9/9 scans (" in caplog.text and "/s, about 0 s left)" in caplog.text


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.uint8, np.int8])
@pytest.mark.parametrize("n", [1, 2, 7, 5000])
def test_histogram_percentiles_equal_numpy(dtype, n):
    info = np.iinfo(dtype)
    data = np.random.default_rng(n).integers(info.min, info.max, size=n, endpoint=True).astype(dtype)
    # NumPy interpolates in the input dtype (int16 differences can overflow for tiny n): compare with float64
    expected = [float(v) for v in np.percentile(data.astype(np.float64), [0, 1, 99, 100])]
    assert _small_int_percentiles(data, (0.0, 1.0, 99.0, 100.0)) == expected


@pytest.mark.parametrize("dtype", [">i2", ">u2", "<i2", "|b1"])
def test_histogram_percentiles_of_big_endian_and_boolean_voxels_equal_numpy(dtype):
    data = np.random.default_rng(3).integers(-500, 3000, size=(9, 7, 5))
    data = (data > 1000 if dtype == "|b1" else data).astype(dtype)
    data = data[:, ::2]  # not contiguous, as a view of a scan can be
    expected = [float(v) for v in np.percentile(data.astype(np.float64), [0, 1, 99, 100])]
    assert _small_int_percentiles(data, (0.0, 1.0, 99.0, 100.0)) == expected


def test_a_multi_member_gzip_reads_as_gzip_does_and_a_truncated_one_fails(tmp_path):
    data = np.random.default_rng(4).integers(0, 900, size=(6, 5, 4)).astype(np.int16)
    path = str(tmp_path / "two_members.nii.gz")
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "one.nii"))
    raw = open(tmp_path / "one.nii", "rb").read()
    with open(path, "wb") as f:  # what a parallel compressor writes: the file in two gzip members
        f.write(gzip.compress(raw[:200]) + gzip.compress(raw[200:]))
    info = read_image_info(path)
    assert info.spatial_shape == (6, 5, 4) and info.intensity[3] == float(data.max())
    with open(path, "wb") as f:
        f.write(gzip.compress(raw)[:-30])
    with pytest.raises(ImageReadError, match=rf"unreadable or truncated image {path}: EOFError"):
        read_image_info(path)


def _square_and_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def test_map_in_workers_runs_in_other_processes_and_keeps_the_order():
    out = list(map_in_workers(_square_and_pid, list(range(9)), workers=2))
    assert [v for v, _ in out] == [x * x for x in range(9)]
    assert os.getpid() not in {pid for _, pid in out}
    assert {pid for _, pid in map_in_workers(_square_and_pid, [1, 2, 3], workers=2)} == {os.getpid()}  # too few


def test_header_validation_says_what_it_skips(caplog):
    assert voxel_check("full") is True
    with caplog.at_level(logging.WARNING):
        assert voxel_check("header") is False
    assert "NaN/Inf voxels and the intensity range are NOT checked" in caplog.text
    with pytest.raises(ValueError, match=r"validate must be one of \['full', 'header'\], got 'quick'"):
        voxel_check("quick")


def _open_cache_and_write(path: str, start, worker: int) -> None:
    start.wait()  # every process opens the new cache file at the same moment
    ImageInfoCache(path).put({f"key{worker}": ImageReadError(f"scan{worker}: a recorded failure")})


def test_processes_opening_a_new_cache_at_the_same_moment_all_succeed(tmp_path):
    """Two ranks of a torchrun validating together open one new cache file at once: switching it to WAL raised
    "database is locked" in one of them (the busy timeout does not cover the journal-mode switch)."""
    import multiprocessing

    context = multiprocessing.get_context("fork")  # fork: the processes start within a few milliseconds
    for attempt in range(10):
        path = str(tmp_path / f"cache{attempt}.sqlite")
        start = context.Event()
        workers = [context.Process(target=_open_cache_and_write, args=(path, start, w)) for w in range(6)]
        for w in workers:
            w.start()
        start.set()
        for w in workers:
            w.join(60)
        assert [w.exitcode for w in workers] == [0] * 6
        assert sorted(ImageInfoCache(path).get([f"key{w}" for w in range(6)])) == [f"key{w}" for w in range(6)]
