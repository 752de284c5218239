"""load_autoencoder: medgen checkpoints, plain MONAI state dicts and monai-generative state dicts."""

import pytest
import torch

from medgen.config import AutoencoderDef
from medgen.models.autoencoder import build_autoencoder, load_autoencoder

AE_DEF = AutoencoderDef(channels=(8, 16), latent_channels=2, num_res_blocks=1, norm_num_groups=4,
                        attention_levels=(False, True))


def test_monai_generative_state_dict_with_attention_loads_with_identical_outputs(tmp_path):
    generative = pytest.importorskip("generative.networks.nets")
    torch.manual_seed(0)
    old = generative.AutoencoderKL(
        spatial_dims=2, in_channels=1, out_channels=1, num_channels=(8, 16), latent_channels=2,
        num_res_blocks=1, norm_num_groups=4, attention_levels=(False, True),
        with_encoder_nonlocal_attn=True, with_decoder_nonlocal_attn=True,
    ).eval()
    # perturb every weight so that a wrongly mapped attention projection would show
    with torch.no_grad():
        for p in old.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert any(k.endswith(".proj_attn.weight") for k in old.state_dict())  # the old attention layout
    path = tmp_path / "generative_ae.pt"
    torch.save(old.state_dict(), path)

    new = load_autoencoder(path, AE_DEF)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        expected = old.reconstruct(x)
        got = new.reconstruct(x)
    assert (expected - got).abs().max().item() < 1e-5


def test_medgen_checkpoint_and_plain_state_dict(tmp_path):
    torch.manual_seed(1)
    model = build_autoencoder(AE_DEF).eval()
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        ref = model.reconstruct(x)
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    from medgen.config import to_dict

    torch.save({"autoencoder": model.state_dict(), "config": {"autoencoder_def": to_dict(AE_DEF)}}, tmp_path / "ckpt.pt")
    for path, ae_def in ((tmp_path / "plain.pt", AE_DEF), (tmp_path / "ckpt.pt", None)):
        with torch.no_grad():
            assert torch.equal(load_autoencoder(path, ae_def).reconstruct(x), ref)


def test_wrong_architecture_is_reported(tmp_path):
    model = build_autoencoder(AE_DEF)
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    other = AutoencoderDef(channels=(8, 16, 16), latent_channels=2, num_res_blocks=1, norm_num_groups=4,
                           attention_levels=(False, False, False))
    with pytest.raises(ValueError, match="does not match autoencoder_def"):
        load_autoencoder(tmp_path / "plain.pt", other)
