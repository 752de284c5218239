"""``cuda_graphs=true``: where it turns itself off, how calls are dispatched to captured graphs (on the CPU, with
the capture replaced by a recorder), and, on a GPU (``benchmarks/gpu_check.sh``), that training through the graphs
gives eager mode's weights."""

from __future__ import annotations

import logging

import pytest
import torch

from conftest import ROOT, TINY, TINY_LDM
from medgen.config import load_config
from medgen.io.checkpoint import load_checkpoint
from medgen.training import graphs as graphs_module
from medgen.training.distributed import DistInfo
from medgen.training.graphs import CudaGraphs, graphs_unavailable

CUDA = torch.device("cuda")
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (benchmarks/gpu_check.sh)")


def test_graphs_turn_off_where_they_cannot_run():
    assert "CUDA device" in graphs_unavailable(torch.device("cpu"), False, 1, False)
    assert "single-GPU" in graphs_unavailable(CUDA, True, 1, False)
    assert "grad_accum_steps=2" in graphs_unavailable(CUDA, False, 2, False)
    assert "compile=true" in graphs_unavailable(CUDA, False, 1, True)
    assert graphs_unavailable(CUDA, False, 1, False) is None


def test_a_cpu_run_asked_for_graphs_says_so_and_trains_eagerly(tmp_path, caplog):
    from medgen.training.vae import VAETrainer

    cfg = load_config(ROOT / "vae_config.json", [*TINY, f"run_dir={tmp_path}", "cuda_graphs=true"])
    with caplog.at_level(logging.WARNING):
        trainer = VAETrainer(cfg, DistInfo())
    assert not trainer.graphs.enabled and trainer.precision.cache
    assert "cuda_graphs=true is off for this run: it needs a CUDA device (this run is on cpu)" in caplog.text
    losses = trainer.train_step(torch.rand(2, 1, 32, 32), adversarial=True)
    assert all(torch.isfinite(v) for v in losses.values())


def test_the_wgan_says_it_runs_eagerly(tmp_path, caplog):
    from medgen.training.wgan import WGANTrainer

    from test_faults import WGAN_TINY

    cfg = load_config(ROOT / "wgan_config.json", [*WGAN_TINY, f"run_dir={tmp_path}", "cuda_graphs=true"])
    with caplog.at_level(logging.WARNING):
        WGANTrainer(cfg, DistInfo())
    assert "cuda_graphs=true is off for this run: the WGAN/GAN steps run eagerly" in caplog.text


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)
        self.embed = torch.nn.Embedding(3, 2)

    def forward(self, x, timesteps=None, class_labels=None):
        y = self.conv(x) * timesteps.float().view(-1, 1, 1, 1)
        return y if class_labels is None else y + self.embed(class_labels)[..., None, None]


@pytest.fixture
def captures(monkeypatch):
    """Replace the capture by a recorder: the returned callable runs the wrapped module eagerly."""
    made = []

    def record(module, samples, allow_unused_input=False):
        made.append([tuple(s.shape) for s in samples])
        assert allow_unused_input and all(not s.requires_grad or s.is_leaf for s in samples)
        return module

    monkeypatch.setattr(torch.cuda, "make_graphed_callables", record)
    return made


def test_each_input_signature_is_captured_once_and_replayed(captures, caplog):
    graphs, net = CudaGraphs(True), Net()
    x, t, labels = torch.rand(2, 1, 4, 4), torch.tensor([3, 5]), torch.tensor([0, 2])
    out = graphs(net, x, timesteps=t, class_labels=labels)
    torch.testing.assert_close(out, net(x, timesteps=t, class_labels=labels))  # positional and keyword inputs kept
    graphs(net, x + 1, timesteps=t + 1, class_labels=labels)
    assert captures == [[(2, 1, 4, 4), (2,), (2,)]]  # same shapes: replayed, not captured again
    graphs(net, x, timesteps=t, class_labels=None)  # no labels: another signature
    graphs(net, torch.rand(3, 1, 4, 4), timesteps=torch.tensor([1, 2, 3]))  # an epoch's smaller last batch
    net.conv.requires_grad_(False)  # a GAN's frozen critic in the generator's step
    graphs(net, x, timesteps=t)
    net.conv.requires_grad_(True)
    assert len(captures) == 4
    with torch.no_grad():
        graphs(net, x, timesteps=t, class_labels=labels[:1].repeat(2) + 1)
    net.eval()
    graphs(net, torch.rand(5, 1, 4, 4), timesteps=torch.arange(5))
    net.train()
    assert len(captures) == 4  # evaluation and no_grad run eagerly
    with caplog.at_level(logging.WARNING):
        for n in (6, 7):
            out = graphs(net, torch.rand(n, 1, 4, 4), timesteps=torch.arange(n))
    assert len(captures) == 4 and out.shape == (7, 2, 4, 4)  # past max_signatures: eager, and said once
    assert caplog.text.count("more than 4 input shapes") == 1


def test_a_capture_out_of_memory_trains_that_network_eagerly(monkeypatch, caplog):
    def no_room(module, samples, allow_unused_input=False):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(torch.cuda, "make_graphed_callables", no_room)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    graphs, net = CudaGraphs(True), Net()
    x, t = torch.rand(2, 1, 4, 4), torch.tensor([1, 2])
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            out = graphs(net, x, timesteps=t)
        graphs(net, torch.rand(3, 1, 4, 4), timesteps=torch.arange(3))
    torch.testing.assert_close(out, net(x, timesteps=t))
    assert caplog.text.count("ran out of GPU memory; it trains eagerly from here") == 1  # tried once, said once
    assert "more than" not in caplog.text


def test_disabled_graphs_call_the_network(captures):
    net = Net()
    x, t = torch.rand(2, 1, 4, 4), torch.tensor([1, 2])
    torch.testing.assert_close(CudaGraphs(False)(net, x, timesteps=t), net(x, timesteps=t))
    assert captures == []


def _trainers(tmp_path, kind, *extra):
    """Two trainers from the same seed on the GPU, eager and with graphs."""
    from medgen.training.ldm import LDMTrainer
    from medgen.training.vae import VAETrainer
    from test_train_ldm import vae_checkpoint

    vae = vae_checkpoint(tmp_path / "vae.pt") if kind == "ldm" else None
    out = []
    for graphs in (False, True):
        run = tmp_path / f"{kind}_{graphs}"
        if kind == "ldm":
            cfg = load_config(ROOT / "ldm_config.json", [*TINY_LDM, f"run_dir={run}", f"autoencoder_checkpoint={vae}",
                                                         f"cuda_graphs={str(graphs).lower()}", *extra])
            out.append(LDMTrainer(cfg, DistInfo(device=CUDA)))
        else:
            cfg = load_config(ROOT / "vae_config.json", [*TINY, f"run_dir={run}", f"cuda_graphs={str(graphs).lower()}",
                                                         "autoencoder_train.adv_warmup_epochs=0", *extra])
            out.append(VAETrainer(cfg, DistInfo(device=CUDA)))
    return out


def _weights(trainer) -> list[torch.Tensor]:
    net = trainer.unet if hasattr(trainer, "unet") else trainer.autoencoder
    return [p.detach().clone() for p in net.parameters()]


@needs_gpu
@pytest.mark.parametrize("kind,extra", [("ldm", ()), ("ldm", ("amp=true",)), ("vae", ()),
                                        ("vae", ("amp=true", "autoencoder_train.grad_clip=1.0"))])
def test_training_through_graphs_gives_eager_weights(tmp_path, kind, extra):
    eager, graphed = _trainers(tmp_path, kind, *extra)
    assert graphed.graphs.enabled and not graphed.precision.cache
    if kind == "vae":  # z = mu: a replay draws the latent sample's noise from the graph's own random offsets
        for trainer in (eager, graphed):
            trainer.autoencoder.sampling = lambda z_mu, z_sigma: z_mu
    g = torch.Generator().manual_seed(0)
    if kind == "ldm":
        shape = (2, 2, *eager.cfg.ldm_train.latent_patch_size)
        batches = [(torch.randn(shape, generator=g).to(CUDA), torch.tensor([0, 1], device=CUDA)) for _ in range(4)]
    else:
        batches = [(torch.rand(2, 1, 32, 32, generator=g).to(CUDA),) for _ in range(4)]
    start = _weights(eager)
    for trainer in (eager, graphed):
        torch.manual_seed(1)
        for batch in batches:
            trainer.train_step(*batch)
    assert len(graphed.graphs._graphed) == (1 if kind == "ldm" else 3)  # (autoencoder, critic for G and for D)
    # Same kernels on the same values, but not bit for bit: cuDNN's backward kernels may add in any order, and
    # Adam turns a rounding difference in a near-zero gradient into a step of up to lr. Measured on an H200: the
    # largest difference is 1e-4 (LDM) and 2% (VAE-GAN) of the largest move; a graph drawing other noise than
    # eager mode (the first version of this test, the VAE's sampling left on) differed by twice the move.
    def l2(xs, ys):
        return sum(((x - y).double() ** 2).sum() for x, y in zip(xs, ys)).sqrt().item()

    eager_w, graphed_w = _weights(eager), _weights(graphed)
    moved, diff = (max((a - b).abs().max().item() for a, b in zip(eager_w, other)) for other in (start, graphed_w))
    relative = l2(eager_w, graphed_w) / l2(eager_w, start)
    assert diff < 0.05 * moved and relative < 0.01, (
        f"graphs moved the weights away from eager mode's by {diff:.3g} at most, {relative:.2%} of the move in L2 "
        f"(training moved them {moved:.3g})")


@needs_gpu
def test_a_replayed_forward_draws_new_noise(tmp_path):
    """The autoencoder samples its latent (z = mu + sigma * noise) inside the graph: every replay draws anew."""
    _, graphed = _trainers(tmp_path, "vae")
    x = torch.rand(2, 1, 32, 32, device=CUDA)
    draws = [graphed.graphs(graphed.autoencoder, x)[0].detach().clone() for _ in range(3)]
    assert len(graphed.graphs._graphed) == 1
    assert all(torch.isfinite(d).all() for d in draws)
    assert not torch.equal(draws[1], draws[2]) and not torch.equal(draws[0], draws[1])


@pytest.fixture
def graphs_forced(monkeypatch, captures):
    """Graphs 'available' on the CPU, captures recorded (the networks run eagerly): whole runs go through the
    dispatch as on a GPU."""
    import medgen.training.base as base

    monkeypatch.setattr(base, "graphs_unavailable", lambda *args: None)
    return captures


def test_whole_runs_dispatch_to_the_graphs_and_resume(demo2d, tmp_path, graphs_forced, caplog):
    """A VAE-GAN run through its adversarial warm-up, validation (eager) and a resume; then an LDM run: each
    network is captured once per input shape, and only while training."""
    from conftest import train_vae
    from test_train_ldm import sets, train_ldm, vae_checkpoint

    run = tmp_path / "vae"
    vae_sets = [*TINY, f"data_base_dir={demo2d}", f"run_dir={run}", "cuda_graphs=true", "autoencoder_train.max_epochs=1"]
    with caplog.at_level(logging.INFO):
        assert train_vae(["vae_config.json", *[f"--set={o}" for o in vae_sets]]) == 0
    assert "captured at the first step of each input shape" in caplog.text
    # epoch 1 is the adversarial warm-up: the autoencoder only (batch 2, and the epoch's last batch of 1)
    assert graphs_forced == [[(2, 1, 32, 32)]]  # the adversarial warm-up epoch trains the autoencoder alone
    resumed = [*vae_sets[:-1], "autoencoder_train.max_epochs=2", "resume_ckpt=true"]
    assert train_vae(["vae_config.json", *[f"--set={o}" for o in resumed]]) == 0
    # the resumed process captures anew; epoch 2 adds the critic for the generator (batch 2 and 1) and the
    # discriminator's step on real and fake together (4 and 2)
    # the resumed process captures anew: the autoencoder, the critic in the generator's step, the discriminator's
    # step on real and fake together
    assert graphs_forced[1:] == [[(2, 1, 32, 32)], [(2, 1, 32, 32)], [(4, 1, 32, 32)]]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 2
    graphs_forced.clear()
    vae = vae_checkpoint(tmp_path / "ae.pt")
    assert train_ldm(["ldm_config.json", *sets(demo2d, tmp_path / "ldm", vae, "cuda_graphs=true")]) == 0
    assert graphs_forced == [[(2, 2, 8, 16), (2,), (2,)]]  # latents, timesteps, class labels; validation is eager
