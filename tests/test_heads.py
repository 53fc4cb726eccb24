"""Heads per task: outputs, losses, activations, standardisation."""

from __future__ import annotations

import pytest
import torch

from graft.heads import make_head


def test_multiclass_head_softmax_and_cross_entropy():
    head = make_head("multiclass", 4, 3)
    out = head(torch.randn(5, 4))
    assert out.shape == (5, 3)
    torch.testing.assert_close(head.activate(out).sum(1), torch.ones(5))
    loss = head.loss(out, torch.tensor([0, 1, 2, 0, 1]))
    assert loss.ndim == 0 and loss > 0


def test_multilabel_head_sigmoid_and_bce():
    head = make_head("multilabel", 4, 3)
    out = head(torch.randn(5, 4))
    probs = head.activate(out)
    assert ((probs > 0) & (probs < 1)).all()
    assert head.loss(out, torch.ones(5, 3)) > 0


def test_regression_head_maps_back_to_target_scale():
    head = make_head("regression", 4, 1)
    targets = torch.tensor([10.0, 20.0, 30.0])
    head.set_target_stats(targets)
    with torch.no_grad():
        head.linear.weight.zero_()
        head.linear.bias.zero_()
    values = head.activate(head(torch.randn(3, 4)))
    torch.testing.assert_close(values, torch.full((3,), 20.0))
    # the loss is on standardised targets: predicting the mean costs 1 (the variance, standardised)
    torch.testing.assert_close(head.loss(head(torch.randn(3, 4)), targets), torch.tensor(1.0))


def test_input_standardisation_is_fixed_from_features():
    head = make_head("multiclass", 2, 2)
    feats = torch.tensor([[1.0, 100.0], [3.0, 300.0]])
    head.set_input_stats(feats)
    torch.testing.assert_close(head.input_mean, torch.tensor([2.0, 200.0]))
    torch.testing.assert_close(head.input_scale, torch.tensor([1.0, 100.0]))
    assert "input_mean" in head.state_dict()


def test_unknown_task():
    with pytest.raises(ValueError, match="unknown task"):
        make_head("ranking", 2, 2)
