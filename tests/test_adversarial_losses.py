"""Adversarial losses: gradient penalty by hand and under real 2-process DDP (gloo), loss kinds, feature matching."""

from __future__ import annotations

import math
import os


import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from conftest import free_port
from medgen.losses import (
    feature_matching_loss,
    gan_d_loss,
    gan_g_loss,
    gradient_penalty,
    wgan_critic_loss,
    wgan_generator_loss,
)
from medgen.models.wgan import WGANCritic


class QuadraticCritic(nn.Module):
    """D(x) = a/2 * ||x||^2 per sample, so dD/dx = a * x: the penalty is known in closed form."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.a * x.flatten(1).pow(2).sum(1)


# two samples of shape (C=1, H=1, W=2): the norm must cover all pixels of a sample, not only the channel axis
REAL = torch.tensor([[[[0.0, 2.0]]], [[[1.0, 1.0]]]])
FAKE = torch.tensor([[[[2.0, 0.0]]], [[[1.0, -1.0]]]])
ALPHA = torch.tensor([0.5, 0.25])
# interpolates: 0.5*(0,2)+0.5*(2,0) = (1,1);  0.25*(1,1)+0.75*(1,-1) = (1,-0.5)
NORMS = (math.sqrt(2.0), math.sqrt(1.25))


def test_gradient_penalty_matches_hand_computation():
    a = 1.5
    critic = QuadraticCritic(a)
    gp, grad_norm = gradient_penalty(critic, REAL, FAKE, alpha=ALPHA)
    expected = sum((a * n - 1.0) ** 2 for n in NORMS) / 2
    assert gp.item() == pytest.approx(expected, rel=1e-6)
    assert grad_norm.item() == pytest.approx(a * sum(NORMS) / 2, rel=1e-6)
    assert not grad_norm.requires_grad
    # create_graph=True: the penalty is differentiable w.r.t. the critic's parameter (double backward)
    gp.backward()
    d_gp_da = sum(2.0 * (a * n - 1.0) * n for n in NORMS) / 2
    assert critic.a.grad.item() == pytest.approx(d_gp_da, rel=1e-6)


def test_gradient_penalty_linear_critic_and_detached_inputs():
    w = torch.tensor([3.0, 4.0])  # ||w|| = 5, gradient independent of the interpolate
    critic = nn.Linear(2, 1, bias=True)
    with torch.no_grad():
        critic.weight.copy_(w.view(1, 2))
    real = torch.randn(4, 2, requires_grad=True)
    fake = torch.randn(4, 2, requires_grad=True)
    gp, grad_norm = gradient_penalty(critic, real, fake)
    assert gp.item() == pytest.approx(16.0) and grad_norm.item() == pytest.approx(5.0)
    gp.backward()
    torch.testing.assert_close(critic.weight.grad.view(2), 2 * (5.0 - 1.0) * w / 5.0)
    assert real.grad is None and fake.grad is None  # the penalty trains only the critic


def test_gradient_penalty_seeded_generator_is_reproducible():
    critic = QuadraticCritic(1.0)
    real, fake = torch.randn(8, 1, 4, 4), torch.randn(8, 1, 4, 4)
    gp1, _ = gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(3))
    gp2, _ = gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(3))
    gp3, _ = gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(4))
    assert gp1.item() == gp2.item() and gp1.item() != gp3.item()
    with pytest.raises(ValueError, match="one weight per sample"):
        gradient_penalty(critic, real, fake, alpha=torch.rand(3))


def test_gradient_penalty_drives_critic_gradient_norm_to_one():
    """Toy 2D WGAN-GP critic (8 Gaussians vs a fixed fake blob): after 200 steps the mean gradient norm on the
    interpolates is within 0.2 of 1 (without the penalty it grows far past it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: extra threads only contend with other test processes
    try:
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(0)
        critic = nn.Sequential(
            nn.Linear(2, 32), nn.LeakyReLU(0.2), nn.Linear(32, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1)
        )
        opt = torch.optim.Adam(critic.parameters(), lr=1e-3, betas=(0.0, 0.9))
        angles = torch.arange(8) * math.pi / 4
        centers = 2 * torch.stack([angles.cos(), angles.sin()], dim=1)

        def batch(n):
            real = centers[torch.randint(0, 8, (n,), generator=g)] + 0.05 * torch.randn(n, 2, generator=g)
            return real, 0.5 * torch.randn(n, 2, generator=g)

        for _ in range(200):
            real, fake = batch(64)
            gp, _ = gradient_penalty(critic, real, fake, generator=g)
            loss = wgan_critic_loss(critic(real), critic(fake)) + 10.0 * gp
            opt.zero_grad()
            loss.backward()
            opt.step()
        _, grad_norm = gradient_penalty(critic, *batch(1024), generator=g)
    finally:
        torch.set_num_threads(threads)
    assert abs(grad_norm.item() - 1.0) < 0.2


# ------------------------------------------------------------------------------------------ DDP, 2 ranks, gloo
LAMBDA_GP = 10.0


def _tiny_critic() -> WGANCritic:
    torch.manual_seed(0)
    return WGANCritic(d_channels=2, image_size=64, max_channels=4, self_attention_resolutions=(8,))


def _rank_batch(rank: int):
    g = torch.Generator().manual_seed(100 + rank)
    real = torch.randn(3, 1, 64, 64, generator=g)
    fake = torch.randn(3, 1, 64, 64, generator=g)
    alpha = torch.rand(3, generator=g)
    return real, fake, alpha


def _critic_loss(critic, rank: int, with_gp: bool = True) -> torch.Tensor:
    real, fake, alpha = _rank_batch(rank)
    loss = wgan_critic_loss(critic(real), critic(fake))
    if with_gp:
        gp, _ = gradient_penalty(critic, real, fake, alpha=alpha)
        loss = loss + LAMBDA_GP * gp
    return loss


def _flat_grad(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    from torch.distributed import nn as _dist_nn  # noqa: F401 - before the group, as init_distributed does (why: there)

    from medgen.training.distributed import cleanup

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        ddp = nn.parallel.DistributedDataParallel(_tiny_critic())
        _critic_loss(ddp, rank).backward()  # the GP goes through the DDP-wrapped critic
        torch.save(_flat_grad(ddp.module), os.path.join(out_dir, f"grad{rank}.pt"))
        del ddp  # its reducer holds the group: gloo's threads must stop before the interpreter does
    finally:
        cleanup()


def test_gradient_penalty_double_backward_under_ddp(tmp_path):
    mp.spawn(_ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    g0, g1 = (torch.load(tmp_path / f"grad{r}.pt", weights_only=True) for r in (0, 1))
    torch.testing.assert_close(g0, g1)

    # reference: one process, the mean of both ranks' losses (what DDP's gradient averaging computes)
    ref = _tiny_critic()
    ((_critic_loss(ref, 0) + _critic_loss(ref, 1)) / 2).backward()
    torch.testing.assert_close(g0, _flat_grad(ref), rtol=1e-4, atol=1e-6)

    # the penalty's parameter gradient is a real part of it (lost if double backward did not happen)
    no_gp = _tiny_critic()
    ((_critic_loss(no_gp, 0, False) + _critic_loss(no_gp, 1, False)) / 2).backward()
    assert (g0 - _flat_grad(no_gp)).norm() > 1e-2 * g0.norm()


# ---------------------------------------------------------------------------------------------- loss kinds
REAL_LOGITS = torch.tensor([2.0, -1.0])
FAKE_LOGITS = torch.tensor([0.5, -3.0])


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_wgan_losses():
    assert wgan_critic_loss(REAL_LOGITS, FAKE_LOGITS).item() == pytest.approx(-1.25 - 0.5)
    assert wgan_generator_loss(FAKE_LOGITS).item() == pytest.approx(1.25)


@pytest.mark.parametrize(
    "kind, d_expected, g_expected",
    [
        (
            "bce",
            (_softplus(-2.0) + _softplus(1.0)) / 2 + (_softplus(0.5) + _softplus(-3.0)) / 2,
            (_softplus(-0.5) + _softplus(3.0)) / 2,
        ),
        ("hinge", (0.0 + 2.0) / 2 + (1.5 + 0.0) / 2, 1.25),
        ("least_squares", (1.0 + 4.0) / 2 + (0.25 + 9.0) / 2, (0.25 + 16.0) / 2),
    ],
)
def test_gan_loss_values(kind, d_expected, g_expected):
    assert gan_d_loss(kind, REAL_LOGITS, FAKE_LOGITS).item() == pytest.approx(d_expected, rel=1e-6)
    assert gan_g_loss(kind, FAKE_LOGITS).item() == pytest.approx(g_expected, rel=1e-6)


def test_least_squares_matches_monai_patch_adversarial_loss():
    from monai.losses import PatchAdversarialLoss  # imported here so DDP workers spawned above skip MONAI

    monai_ls = PatchAdversarialLoss(criterion="least_squares", no_activation_leastsq=True)
    real, fake = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    d_monai = monai_ls(real, target_is_real=True, for_discriminator=True) + monai_ls(
        fake, target_is_real=False, for_discriminator=True
    )
    torch.testing.assert_close(gan_d_loss("least_squares", real, fake), d_monai)
    torch.testing.assert_close(gan_g_loss("least_squares", fake), monai_ls(fake, True, False))


def test_bce_is_safe_under_autocast_and_large_logits():
    disc = nn.Linear(4, 1)
    x = torch.randn(8, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = disc(x) * 1e4  # sigmoid would saturate to exactly 0/1 here
        d = gan_d_loss("bce", logits, -logits)
        g = gan_g_loss("bce", logits)
    assert d.dtype == torch.float32 and torch.isfinite(d) and torch.isfinite(g)
    d.backward()
    assert torch.isfinite(disc.weight.grad).all()


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match=r"choose one of \['bce', 'hinge', 'least_squares'\]"):
        gan_d_loss("wasserstein", REAL_LOGITS, FAKE_LOGITS)


def test_feature_matching_loss():
    real = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)  # mean (2, 3)
    fake = torch.tensor([[0.0, 0.0], [2.0, 2.0], [1.0, 1.0]], requires_grad=True)  # mean (1, 1)
    loss = feature_matching_loss(real, fake)
    assert loss.item() == pytest.approx((1.0 + 4.0) / 2)
    loss.backward()
    assert real.grad is None and fake.grad is not None  # trains only the generator
    assert feature_matching_loss(real, real.clone()).item() == 0.0
    with pytest.raises(ValueError, match="feature sizes differ"):
        feature_matching_loss(torch.randn(2, 3), torch.randn(2, 4))


@pytest.mark.parametrize("criterion", ["least_squares", "bce", "hinge"])
def test_the_vae_gan_loss_with_targets_made_on_the_device_equals_monais(criterion):
    from monai.losses import PatchAdversarialLoss

    from medgen.losses.vae import DeviceTargetsAdversarialLoss

    ours, monais = DeviceTargetsAdversarialLoss(criterion=criterion), PatchAdversarialLoss(criterion=criterion)
    logits = [torch.randn(2, 1, 5, 5, dtype=dtype) for dtype in (torch.float32, torch.float64)]
    for real, for_disc in ((True, True), (False, True), (True, False)):
        for x in (logits[0], logits):  # one discriminator output, and a list of them (multi-scale)
            assert torch.equal(ours(x, real, for_disc), monais(x, real, for_disc)), (criterion, real, for_disc)
