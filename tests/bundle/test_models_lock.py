# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The models lock across processes: a reader blocks a promotion, a waiting promotion blocks new readers, a killed
holder leaves no stale lock, and SIGTERM / SIGKILL during a promotion leave models/ byte-identical."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from monai_medl.bundle import ModelsLock, open_artifacts, promote_artifacts
from monai_medl.bundle.locks import release_shared
from tests.bundle.artifact_sets import FILES, make_set, tree_bytes

REPO = Path(__file__).resolve().parents[2]
# the children import the lock and artifact modules alone: the whole package (torch, MONAI) takes ~20 s on a loaded
# 2-core CI, and those two modules need neither
_ONLY_THESE_MODULES = f"""
import sys, types
for name, path in (("monai_medl", "monai_medl"), ("monai_medl.bundle", "monai_medl/bundle")):
    sys.modules[name] = types.ModuleType(name)
    sys.modules[name].__path__ = [{str(REPO)!r} + "/" + path]
"""


@pytest.fixture
def bundle(tmp_path) -> Path:
    make_set(tmp_path / "runs" / "old" / "models", "old")
    promote_artifacts(tmp_path / "runs" / "old" / "models", tmp_path / "models")
    make_set(tmp_path / "runs" / "new" / "models", "new", size=1 << 20)
    return tmp_path


def _spawn(code: str, ready: Path) -> subprocess.Popen:
    """Run ``code`` in a fresh Python process; wait until it has created ``ready``."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    code = _ONLY_THESE_MODULES + textwrap.dedent(code)
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "child never got ready"
        time.sleep(0.05)
    return proc


def test_a_reader_keeps_its_set_until_it_ends_then_the_promotion_proceeds(bundle):
    ready = bundle / "ready"
    reader = _spawn(
        f"""
        import time
        from monai_medl.bundle.artifacts import open_artifacts
        open_artifacts({str(bundle / "models")!r}, ["model.pt"])
        open({str(ready)!r}, "w").close()
        time.sleep(600)
        """,
        ready,
    )
    try:
        before = tree_bytes(bundle / "models")
        with pytest.raises(TimeoutError, match="locking .*models exclusively"):
            promote_artifacts(bundle / "runs" / "new" / "models", bundle / "models", timeout=0.5)
        assert tree_bytes(bundle / "models") == before
    finally:
        reader.send_signal(signal.SIGKILL)  # a killed reader: the kernel drops its lock
        reader.wait()
    promote_artifacts(bundle / "runs" / "new" / "models", bundle / "models", timeout=10)
    assert open_artifacts(bundle / "models", FILES)["run"] == "new"
    release_shared(bundle / "models")


def test_a_waiting_promotion_is_not_starved_by_new_readers(bundle):
    lock = ModelsLock(bundle / "models")
    first_reader = lock.shared()
    done = threading.Event()
    promotion = threading.Thread(
        target=lambda: (promote_artifacts(bundle / "runs" / "new" / "models", bundle / "models"), done.set())
    )
    promotion.start()
    time.sleep(0.5)  # the promotion now holds the queue lock and waits for the first reader
    with pytest.raises(TimeoutError, match="a promotion is waiting"):
        lock.shared(timeout=0.3)
    assert not done.is_set()
    os.close(first_reader)
    promotion.join(timeout=30)
    assert done.is_set()
    later = lock.shared(timeout=5)
    assert open_artifacts(bundle / "models", FILES)["run"] == "new"
    os.close(later)
    release_shared(bundle / "models")


_SLOW_PROMOTION = """
import os, shutil, time
from monai_medl.bundle.artifacts import promote_artifacts
real = shutil.copy2
def slow(src, dst, **kw):
    out = real(src, dst, **kw)
    if os.path.basename(dst) == "model.pt":
        open({ready!r}, "w").close()
        time.sleep(600)
    return out
shutil.copy2 = slow
promote_artifacts({src!r}, {dst!r})
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_signal_during_promotion_leaves_models_byte_identical(bundle, sig):
    before = tree_bytes(bundle / "models")
    ready = bundle / "ready"
    code = _SLOW_PROMOTION.format(ready=str(ready), src=str(bundle / "runs/new/models"), dst=str(bundle / "models"))
    proc = _spawn(code, ready)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert tree_bytes(bundle / "models") == before
    if sig == signal.SIGTERM:
        assert (
            proc.returncode == 143 and "interrupted by SIGTERM before the swap" in err and str(bundle / "models") in err
        )
        assert not list(bundle.glob("models.*"))  # cleaned up on the way out
    else:
        assert proc.returncode == -signal.SIGKILL and list(bundle.glob("models.staging-*"))
    promote_artifacts(bundle / "runs" / "new" / "models", bundle / "models", timeout=5)  # lock free, leftovers gone
    assert not list(bundle.glob("models.*")) and open_artifacts(bundle / "models", FILES)["run"] == "new"
    release_shared(bundle / "models")
