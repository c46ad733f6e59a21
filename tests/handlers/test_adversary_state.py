# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""AdversaryHandler / AdversarialRegularizer state: a run restored from a checkpoint taken mid-training continues with
the weights of an uninterrupted run when the adversary has a memory and is label-conditional."""

from __future__ import annotations

import io

import pytest
import torch
from monai.data import MetaTensor

from monai_medl.handlers import AdversaryHandler
from monai_medl.networks.nets import ClusterAdversary


def _batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(6, 5, generator=g), torch.arange(6) % 3, torch.arange(6) % 2) for _ in range(n)]


def _handler(memory: int = 2) -> AdversaryHandler:
    torch.manual_seed(1)
    adversary = ClusterAdversary(5 + 2, num_clusters=3, hidden=(4,))
    optimizer = torch.optim.Adam(adversary.parameters(), 1e-2)
    return AdversaryHandler(adversary, optimizer, 0.1, memory=memory, label_classes=2, feature_scaling="batch_std")


def _step(handler: AdversaryHandler, batch) -> torch.Tensor:
    h, sites, labels = batch  # collated MONAI batches carry MetaTensors, which weights_only loading refuses
    return handler.regularizer.step([MetaTensor(h).requires_grad_()], MetaTensor(sites), labels=MetaTensor(labels))


def _checkpoint(handler: AdversaryHandler) -> bytes:
    buffer = io.BytesIO()
    reg = handler.regularizer
    state = {"adversary": reg.adversary.state_dict(), "opt": reg.optimizer.state_dict()}
    state["handler"] = handler.state_dict()
    torch.save(state, buffer)
    return buffer.getvalue()


def test_restored_state_continues_like_an_uninterrupted_run():
    batches = _batches(6)
    straight = _handler()
    terms = [_step(straight, b) for b in batches]
    first = _handler()
    for b in batches[:3]:
        _step(first, b)
    state = torch.load(io.BytesIO(_checkpoint(first)), weights_only=True)  # what CheckpointLoader reads
    assert len(state["handler"]["memory"]) == 2 and state["handler"]["site_counts"].shape == (2, 3)
    resumed = _handler()
    resumed.regularizer.adversary.load_state_dict(state["adversary"])
    resumed.regularizer.optimizer.load_state_dict(state["opt"])
    resumed.load_state_dict(state["handler"])
    resumed_terms = [_step(resumed, b) for b in batches[3:]]
    for a, b in zip(terms[3:], resumed_terms):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for p, q in zip(straight.regularizer.adversary.parameters(), resumed.regularizer.adversary.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    # without the handler's state the memory and the counts restart: the run diverges (the check can fail)
    fresh = _handler()
    fresh.regularizer.adversary.load_state_dict(state["adversary"])
    fresh.regularizer.optimizer.load_state_dict(state["opt"])
    assert not torch.equal(_step(fresh, batches[3]), terms[3])


def test_bad_states_name_the_problem():
    handler = _handler(memory=1)
    with pytest.raises(KeyError, match="site_counts"):
        handler.load_state_dict({"memory": []})
    full = _handler(memory=2)
    for b in _batches(3):
        _step(full, b)
    with pytest.raises(ValueError, match="holds 2 past batches.*memory=1"):
        handler.load_state_dict(full.state_dict())
    assert _handler(memory=0).state_dict()["memory"] == []
