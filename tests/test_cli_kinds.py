"""Every sub-command that takes a config or a checkpoint, against every config kind (VAE 2D and 3D, WGAN, latent
diffusion) and every checkpoint kind: each either works or prints one line naming the mismatch and exits 2,
never a traceback. The checkpoints are trained here by the training commands themselves (the cells where a
config meets its own method)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, TINY, TINY_LDM, TINY_WGAN
from medgen.cli import main
from medgen.config import load_config, to_dict

pytestmark = pytest.mark.usefixtures("one_thread")

KINDS = ("vae2d", "vae3d", "wgan", "ldm")
COMMAND = {"vae2d": "train-vae", "vae3d": "train-vae", "wgan": "train-wgan", "ldm": "train-ldm"}
TITLE = {"vae2d": "VAE", "vae3d": "VAE", "wgan": "WGAN/GAN", "ldm": "latent diffusion"}
SAMPLES = ("wgan", "ldm")  # checkpoints that sample; the autoencoders reconstruct, encode and decode


def _lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip() and "%|" not in line]


def _run(capsys, *argv: str) -> tuple[int, str]:
    """``medgen ARGV`` in this process: its exit code and its stderr (no traceback may escape)."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err


def _mismatch(code: int, err: str, *named: str) -> None:
    """One line, exit 2, naming each of ``named``."""
    lines = [line for line in _lines(err) if line.startswith("medgen")]
    assert code == 2 and len(lines) == 1, err
    assert all(n in lines[0] for n in named), lines[0]


@pytest.fixture(scope="module")
def setup(demo2d, demo3d, tmp_path_factory):
    """A config file of every kind and the checkpoint its own training command writes (one tiny epoch)."""
    root = tmp_path_factory.mktemp("kinds")
    sets = {
        "vae2d": ("vae_config.json", [*TINY, f"data_base_dir={demo2d}", "autoencoder_train.max_epochs=1"]),
        "vae3d": ("vae_config.json", [*TINY, f"data_base_dir={demo3d}", "spatial_dims=3", "autoencoder_def.spatial_dims=3",
                                      "autoencoder_train.patch_size=[16,16,16]", "autoencoder_train.max_epochs=1",
                                      "data_source=edente"]),
        "wgan": ("wgan_config.json", [*TINY_WGAN, f"data_base_dir={demo2d}", "wgan_train.max_epochs=1"]),
        "ldm": ("ldm_config.json", [*TINY_LDM, f"data_base_dir={demo2d}", "ldm_train.max_epochs=1",
                                    f"autoencoder_checkpoint={root / 'vae2d' / 'checkpoints' / 'last.pt'}"]),
    }
    configs, checkpoints = {}, {}
    for kind in KINDS:  # vae2d first: the latent diffusion model is trained on its autoencoder
        base, overrides = sets[kind]
        configs[kind] = root / f"{kind}.json"
        configs[kind].write_text(json.dumps(to_dict(load_config(ROOT / base, [*overrides, f"run_dir={root / kind}"]))))
        assert main([COMMAND[kind], str(configs[kind])]) == 0
        checkpoints[kind] = root / kind / "checkpoints" / "last.pt"
    image2d = root / "image.png"
    Image.fromarray((np.random.default_rng(0).random((40, 40)) * 65535).astype(np.uint16)).save(image2d)
    inputs = {"vae2d": image2d, "vae3d": next((demo3d / "edente").iterdir())}
    return configs, checkpoints, inputs, root


@pytest.mark.parametrize("kind", KINDS)
def test_check_data_works_on_every_config_kind(setup, kind, capsys):
    code = main(["check-data", str(setup[0][kind]), "--workers", "0"])
    out, err = capsys.readouterr()
    assert code == 0 and "Traceback" not in err, err
    assert "items are usable" in out, out


@pytest.mark.parametrize("kind, command", [(kind, command) for kind in KINDS for command in sorted(set(COMMAND.values()))
                                           if command != COMMAND[kind]])  # its own method: trained by the fixture
def test_a_config_of_another_method_is_one_line(setup, kind, command, capsys):
    code, err = _run(capsys, command, setup[0][kind])
    _mismatch(code, err, str(setup[0][kind]), f"this is a {TITLE[kind]} config")


@pytest.mark.parametrize("command", ("reconstruct", "encode"))
@pytest.mark.parametrize("kind", KINDS)
def test_autoencoder_commands_on_every_checkpoint_kind(setup, kind, command, tmp_path, capsys):
    _, checkpoints, inputs, _ = setup
    code, err = _run(capsys, command, "--checkpoint", checkpoints[kind], "--input", inputs.get(kind, inputs["vae2d"]),
                     "--output", tmp_path / "out", "--device", "cpu")
    if kind in inputs:
        assert code == 0 and any((tmp_path / "out").iterdir()), err
    else:
        _mismatch(code, err, str(checkpoints[kind]), "not written by `medgen train-vae`")


@pytest.mark.parametrize("kind", KINDS)
def test_decode_on_every_checkpoint_kind(setup, kind, tmp_path, capsys):
    _, checkpoints, inputs, _ = setup
    own = kind if kind in inputs else "vae2d"
    assert main(["encode", "--checkpoint", str(checkpoints[own]), "--input", str(inputs[own]), "--output",
                 str(tmp_path / "latents"), "--device", "cpu"]) == 0
    code, err = _run(capsys, "decode", "--checkpoint", checkpoints[kind], "--input", tmp_path / "latents", "--output",
                     tmp_path / "out", "--device", "cpu")
    if kind in inputs:
        assert code == 0 and any((tmp_path / "out").iterdir()), err
    else:
        _mismatch(code, err, str(checkpoints[kind]), "not written by `medgen train-vae`")


def test_decode_refuses_latents_of_another_autoencoder(setup, tmp_path, capsys):
    _, checkpoints, inputs, _ = setup
    assert main(["encode", "--checkpoint", str(checkpoints["vae3d"]), "--input", str(inputs["vae3d"]), "--output",
                 str(tmp_path / "latents"), "--device", "cpu"]) == 0
    code, err = _run(capsys, "decode", "--checkpoint", checkpoints["vae2d"], "--input", tmp_path / "latents",
                     "--output", tmp_path / "out", "--device", "cpu")
    _mismatch(code, err, "3D latent", "2D latents", "decode with the autoencoder that encoded it")


@pytest.mark.parametrize("kind", KINDS)
def test_sample_on_every_checkpoint_kind(setup, kind, tmp_path, capsys):
    checkpoints = setup[1]
    extra = ["--class", "dente", "--steps", "2"] if kind == "ldm" else []
    code, err = _run(capsys, "sample", "--checkpoint", checkpoints[kind], "--count", "1", "--output", tmp_path / "s", *extra)
    if kind in SAMPLES:
        assert code == 0 and len(list((tmp_path / "s").iterdir())) == 1, err
    else:
        _mismatch(code, err, str(checkpoints[kind]), "not a WGAN/GAN checkpoint", "latent diffusion")


@pytest.mark.parametrize("kind", KINDS)
def test_reconstruct_a_config_kind_s_validation_split(setup, kind, tmp_path, capsys):
    """``--input CONFIG``: the config's validation images, whatever method the config is for; a 3D config's
    volumes given to a 2D autoencoder are refused in one line."""
    configs, checkpoints, _, _ = setup
    code, err = _run(capsys, "reconstruct", "--checkpoint", checkpoints["vae2d"], "--input", configs[kind],
                     "--output", tmp_path / "out", "--device", "cpu")
    if kind == "vae3d":
        _mismatch(code, err, "is a 3D image but the checkpoint's model is 2D")
    else:
        assert code == 0, err


@pytest.mark.parametrize("kind", KINDS)
def test_check_copies_against_every_config_kind(setup, kind, demo2d, tmp_path, capsys):
    configs = setup[0]
    samples = tmp_path / "samples"
    samples.mkdir()
    for i, path in enumerate(sorted((demo2d / "dente").iterdir())[:2]):
        (samples / f"s{i}{path.suffix}").write_bytes(path.read_bytes())
    code, err = _run(capsys, "check-copies", "--samples", samples, "--train", configs[kind], "--output", tmp_path / "r")
    if kind == "vae3d":
        _mismatch(code, err, "holds 2D images but --train", "3D ones")
    else:
        assert code in (0, 1) and (tmp_path / "r" / "copy_check.json").is_file(), err


def test_check_data_on_the_shipped_ldm_config_before_its_autoencoder_exists(demo2d, capsys):
    code = main(["check-data", str(ROOT / "ldm_config.json"), "--set", f"data_base_dir={demo2d}", "--workers", "0"])
    out, err = capsys.readouterr()
    assert code == 0 and "Traceback" not in err, err
    assert "items are usable" in out and "image sizes not checked: autoencoder_checkpoint=" in out, out


def test_check_data_set_applies_to_configs_only(demo2d, capsys):
    code, err = _run(capsys, "check-data", demo2d, "--set", "data_source=both")
    _mismatch(code, err, "--set applies to a config")


def test_the_cheapest_check_speaks_first(tmp_path, capsys):
    """The shipped vae_config.json with no data folder: the missing folder is named, not the perceptual network
    (whose weights are not on this machine either) that only building the networks would find."""
    code, err = _run(capsys, "train-vae", ROOT / "vae_config.json", "--set", f"data_base_dir={tmp_path / 'none'}",
                     "--set", f"run_dir={tmp_path / 'run'}")
    _mismatch(code, err, f"data_base_dir={tmp_path / 'none'} is not a folder")
