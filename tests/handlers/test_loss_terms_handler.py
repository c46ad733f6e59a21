"""LossTermsHandler reads the terms the loss carries and recomputes them only for a loss that returns a plain tensor."""

from __future__ import annotations

import pytest
import torch
from monai.engines.utils import IterationEvents

from monai_medl.handlers import LossTermsHandler
from monai_medl.losses import MixedEffectsLoss
from monai_medl.networks.nets import MixedEffectsMLP
from monai_medl.utils.examples import site_trainer


class CountingLoss(MixedEffectsLoss):
    """MixedEffectsLoss counting its terms() calls; ``plain=True`` returns the total as a plain tensor."""

    def __init__(self, plain: bool = False) -> None:
        super().__init__(task="bce")
        self.plain, self.calls = plain, 0

    def terms(self, pred, target):
        self.calls += 1
        return super().terms(pred, target)

    def forward(self, pred, target):
        loss = super().forward(pred, target)
        return loss.as_subclass(torch.Tensor) if self.plain else loss


def _run(loss_fn, handler):
    torch.manual_seed(0)
    trainer = site_trainer(MixedEffectsMLP(4, 1, num_clusters=3, hidden=(8,)), [handler])
    trainer.loss_function = loss_fn
    trainer.run()
    return trainer.state.output[0]


@pytest.mark.parametrize("plain, calls", [(False, 3), (True, 6)])
def test_the_terms_are_read_from_the_loss_and_computed_again_only_for_a_plain_loss(plain, calls):
    loss_fn = CountingLoss(plain)
    out = _run(loss_fn, LossTermsHandler())
    assert loss_fn.calls == calls  # 3 iterations: once per forward, twice per iteration when the handler recomputes
    assert sorted(k for k in out if k in ("kl", "loss_fixed", "loss_mixed")) == ["kl", "loss_fixed", "loss_mixed"]
    assert all(isinstance(out[k], float) for k in ("kl", "loss_fixed", "loss_mixed"))  # detached, decollated


def test_the_written_terms_are_the_losss_own_terms():
    torch.manual_seed(0)
    trainer = site_trainer(MixedEffectsMLP(4, 1, num_clusters=3, hidden=(8,)), [LossTermsHandler()])
    kept = {}
    # the loss as the engine holds it after the backward (the output is decollated into numbers afterwards)
    trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED, lambda e: kept.update(e.state.output["loss"].terms))
    trainer.run()
    out = trainer.state.output[0]
    assert sorted(kept) == ["kl", "loss_fixed", "loss_mixed"]
    assert all(out[k] == float(kept[k]) for k in kept)


def test_interval_skips_iterations():
    out = _run(CountingLoss(), LossTermsHandler(interval=2))  # 3 iterations: the last one (3) is not a multiple of 2
    assert "loss_mixed" not in out
    with pytest.raises(ValueError, match="interval must be >= 1"):
        LossTermsHandler(interval=0)


def test_a_plain_loss_without_terms_is_refused_with_a_message():
    class Plain(torch.nn.Module):
        def forward(self, pred, target):
            return torch.nn.functional.binary_cross_entropy_with_logits(pred.mixed, target)

    with pytest.raises(TypeError, match="carry terms .* or a loss with a terms"):
        _run(Plain(), LossTermsHandler())
