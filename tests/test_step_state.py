"""The device-side step state: a skipped step changes nothing, a finite one what torch's own code would."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from medgen.training.base import adam
from medgen.training.step_state import ScalarSums, SkippedSteps, ema_update, guarded_step


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 1, 3))


def _backward(net: torch.nn.Module, poison: bool = False) -> None:
    loss = net(torch.rand(2, 1, 8, 8)).square().mean()
    (loss * float("nan") if poison else loss).backward()


@pytest.mark.parametrize("grad_clip", [None, 0.01])
def test_a_finite_step_is_the_plain_optimiser_step(grad_clip):
    a, b = _net(), _net()
    opt_a, opt_b = adam(a.parameters(), 1e-2, (0.5, 0.9)), adam(b.parameters(), 1e-2, (0.5, 0.9))
    for _ in range(3):
        torch.manual_seed(1)
        _backward(a)
        torch.nn.utils.clip_grad_norm_(a.parameters(), grad_clip if grad_clip is not None else float("inf"))
        opt_a.step()
        opt_a.zero_grad()
        torch.manual_seed(1)
        _backward(b)
        assert guarded_step(opt_b, b.parameters(), grad_clip).item() == 0.0
        opt_b.zero_grad()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert str(opt_a.state_dict()) == str(opt_b.state_dict())


def test_a_nonfinite_step_changes_no_weight_moment_or_step_count():
    net = _net()
    opt = adam(net.parameters(), 1e-2, (0.5, 0.9))
    _backward(net)
    guarded_step(opt, net.parameters(), None)
    opt.zero_grad()
    weights, state = copy.deepcopy(net.state_dict()), copy.deepcopy(opt.state_dict())
    _backward(net, poison=True)
    assert guarded_step(opt, net.parameters(), 1.0).item() == 1.0
    params = [p for p in net.parameters()]
    assert all(torch.equal(p, weights[k]) for k, p in net.named_parameters())
    after = opt.state_dict()["state"]
    for i in range(len(params)):
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(after[i][key], state["state"][i][key]), (i, key)


def test_the_ema_is_averaged_models_own_and_a_skipped_step_leaves_it():
    decay = 0.9
    net = _net()
    ours = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    torchs = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    for step in range(4):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        net(torch.rand(2, 1, 8, 8))  # BatchNorm statistics and its integer step count move too
        torchs.update_parameters(net)
        ema_update(ours, net, decay, torch.zeros(()))
        for x, y in zip(ours.state_dict().values(), torchs.state_dict().values()):  # the same up to rounding
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7, msg=f"step {step}")
            if step == 0:  # the first update copies
                assert torch.equal(x, y)
    before = copy.deepcopy(ours.state_dict())
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema_update(ours, net, decay, torch.ones(()))
    assert all(torch.equal(x, y) for x, y in zip(ours.state_dict().values(), before.values()))


def test_skipped_steps_count_runs_and_remember_the_longest_since_the_last_read():
    s = SkippedSteps(torch.device("cpu"))
    for step, skipped in enumerate([0, 1, 1, 1, 0, 1], start=1):
        s.update(torch.tensor(float(skipped)), step)
    assert s.read() == (1, 4, 3, 4)  # now 1 in a row, 4 in all, 3 in a row up to step 4
    s.update(torch.tensor(1.0), 7)
    assert s.read() == (2, 5, 2, 7)


def test_scalar_sums_leave_out_nonfinite_values_and_name_them():
    sums = ScalarSums()
    sums.add({"a": torch.tensor(1.0), "b": torch.tensor(2.0)})
    sums.add({"a": torch.tensor(float("nan"))})
    sums.add({"a": torch.tensor(3.0), "b": torch.tensor(float("inf")), "c": torch.tensor(5.0, dtype=torch.bfloat16)})
    assert sums.means() == {"a": 2.0, "b": 2.0, "c": 5.0}
    bad = sums.nonfinite()
    assert list(bad) == ["a", "b"] and bad["b"] == float("inf") and bad["a"] != bad["a"]
    assert sums.nonfinite() == {}
