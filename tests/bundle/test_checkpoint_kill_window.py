# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""A run killed at any moment keeps a complete checkpoint to resume from.

Ignite's ``Checkpoint`` removes the oldest kept file *before* it writes the new one, and MONAI's saver writes in place
(``atomic=False``). With ``n_saved=1`` there is a window per epoch in which the only checkpoint on disk is the
half-written new one: a kill there loses the whole run (seen once as a flaky failure of the SIGKILL test). The bundles
keep two; this test writes checkpoints with each bundle's saver settings and checks, at the moment every new file is
being written, that a complete earlier checkpoint exists.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine
from monai.handlers import CheckpointSaver

from monai_medl.bundle import artifacts

BUNDLES = sorted(p.parents[1] for p in (Path(__file__).parents[2] / "bundles").glob("*/configs/train.json"))


def _epoch_saver_settings(bundle: Path) -> dict:
    found = []

    def walk(node):
        if isinstance(node, dict):
            if node.get("_target_") == "CheckpointSaver" and node.get("save_interval", 0) > 0:
                found.append(node)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(json.loads((bundle / "configs" / "train.json").read_text()))
    assert len(found) == 1, f"{bundle.name}: expected one per-epoch CheckpointSaver in train.json, found {len(found)}"
    return {"save_interval": found[0]["save_interval"], "n_saved": found[0].get("n_saved", None)}


@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_a_complete_checkpoint_exists_while_each_new_one_is_written(bundle, tmp_path, monkeypatch):
    settings = _epoch_saver_settings(bundle)
    net = torch.nn.Linear(2, 1)
    engine = Engine(lambda e, b: None)
    # two entries, as in the bundles: the file is then named checkpoint_epoch=N.pt
    save_dict = {"model": net, "optimizer": torch.optim.SGD(net.parameters(), 0.1)}
    CheckpointSaver(str(tmp_path), save_dict, **settings).attach(engine)
    seen_while_writing = []
    real_save = torch.save

    def save_and_check(obj, f, *args, **kwargs):
        if engine.state.epoch >= 2:  # from the second epoch on a complete earlier checkpoint must be on disk
            seen_while_writing.append(artifacts._last_checkpoint(str(tmp_path)))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_and_check)
    engine.run([0], max_epochs=4)
    assert len(seen_while_writing) == 3 and all(p is not None for p in seen_while_writing), seen_while_writing
    assert artifacts._last_checkpoint(str(tmp_path)).endswith("checkpoint_epoch=4.pt")
