import math

import pytest
import torch

from pipeline.train.run import heat_loss


def test_heat_loss_is_the_penalty_reduced_focal_loss_by_hand():
    target = torch.tensor([[[[1.0, 0.5, 0.0]]]])
    logits = torch.zeros_like(target)                    # p = 0.5 everywhere
    log_half = math.log(0.5)
    centre = -(0.5 ** 2) * log_half                      # -(1 - p)^2 log p
    near = -(0.5 ** 4) * 0.25 * log_half                 # -(1 - t)^4 p^2 log(1 - p)
    far = -(1.0 ** 4) * 0.25 * log_half
    assert heat_loss(logits, target).item() == pytest.approx(centre + near + far, rel=1e-5)


def test_background_near_a_light_costs_less_than_far_from_it_and_no_light_is_finite():
    logits = torch.full((1, 1, 1, 2), 1.0)               # the same (wrong) score on two background cells
    near_far = torch.tensor([[[[0.9, 0.0]]]])
    cells = [heat_loss(logits[..., i:i + 1], near_far[..., i:i + 1]).item() for i in range(2)]
    assert cells[0] < 0.01 * cells[1]
    assert math.isfinite(heat_loss(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)).item())


def test_a_confident_right_heat_map_costs_almost_nothing_and_the_gradient_raises_a_missed_centre():
    target = torch.zeros(1, 1, 8, 8)
    target[0, 0, 3, 4] = 1.0
    right = torch.where(target >= 1, 8.0, -8.0)
    assert heat_loss(right, target).item() < 1e-3
    logits = torch.full((1, 1, 8, 8), -4.0, requires_grad=True)
    heat_loss(logits, target).backward()
    assert logits.grad[0, 0, 3, 4] < 0 and (logits.grad.flatten()[torch.arange(64) != 3 * 8 + 4] >= 0).all()

