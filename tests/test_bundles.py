"""MONAI bundles (bundles/*): `python -m monai.bundle run` trains each train.json for one epoch on demo data,
the 2D VAE also with torchrun and the multi-GPU overlay; each inference.json runs on the result; the
bundle's transforms equal scripts/train_vae.py's; `ckpt_export` TorchScript equals the eager model; the
latent diffusion bundle's samples equal `medgen sample`'s."""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY, TINY_LDM, torchrun
from medgen.config import load_config
from medgen.io import find_images, read_image

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"
NAMES = ("dental_vae_2d", "dental_vae_3d", "dental_wgan_2d", "dental_ldm_2d")

# Tiny networks through the bundles' own override mechanism (MONAI `#` ids in an --args_file): the same
# sizes as conftest.TINY, so a bundle run and a scripts/train_vae.py run can be compared.
VAE_TINY = {
    "medgen_config#autoencoder_def#channels": [8, 16],
    "medgen_config#autoencoder_def#norm_num_groups": 4,
    "medgen_config#autoencoder_def#num_res_blocks": 1,
    "medgen_config#autoencoder_def#latent_channels": 2,
    "medgen_config#autoencoder_def#attention_levels": [False, True],
    "medgen_config#discriminator_def#channels": 8,
    "medgen_config#discriminator_def#num_layers_d": 2,
    "medgen_config#autoencoder_train#patch_size": [32, 32],
    "medgen_config#autoencoder_train#batch_size": 2,
    "medgen_config#autoencoder_train#perceptual_weight": 0.0,
    "medgen_config#autoencoder_train#adv_warmup_epochs": 0,
    "medgen_config#autoencoder_train#lr": 1e-4,
    "medgen_config#num_workers": 0,
    "medgen_config#scan_workers": 0,
    "medgen_config#log_interval": 1,
}
VAE3D_TINY = {**VAE_TINY, "medgen_config#autoencoder_def#norm_num_groups": 4,
              "medgen_config#autoencoder_train#patch_size": [16, 16, 16]}
WGAN_TINY = {
    "medgen_config#generator#g_channels": 32,
    "medgen_config#generator#min_channels": 8,
    "medgen_config#critic#d_channels": 8,
    "medgen_config#wgan_train#image_size": 64,
    "medgen_config#wgan_train#batch_size": 2,
    "medgen_config#wgan_train#n_critic": 2,
    "medgen_config#wgan_train#num_eval_samples": 4,
    "medgen_config#num_val_images": 4,
    "medgen_config#num_workers": 0,
    "medgen_config#scan_workers": 0,
    "medgen_config#log_interval": 1,
}



def _bundle_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:  # a plain string such as data_source=both
        return text


# conftest.TINY_LDM as bundle overrides (max_epochs comes from the bundle's own --max_epochs)
LDM_TINY = {f"medgen_config#{key.replace('.', '#')}": _bundle_value(value)
            for key, value in (o.split("=", 1) for o in TINY_LDM) if key != "ldm_train.max_epochs"}


def _env(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **extra}


def _args_file(tmp: Path, overrides: dict) -> str:
    path = tmp / "overrides.json"
    path.write_text(json.dumps(overrides))
    return str(path)


def bundle_run(bundle: str, config: str, *args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m monai.bundle run --config_file configs/<config> --bundle_root .` inside the bundle folder."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", f"configs/{config}", "--bundle_root", ".", *args]
    proc = subprocess.run(cmd, check=False, cwd=BUNDLES / bundle, env=env or _env(), capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def _train(bundle: str, demo: Path, out: Path, overrides: dict, *extra: str) -> subprocess.CompletedProcess:
    out.mkdir(parents=True, exist_ok=True)
    return bundle_run(bundle, "train.json", "--dataset_dir", str(demo), "--output_dir", str(out / "run"),
                      "--max_epochs", "1", "--args_file", _args_file(out, overrides), *extra)


def _in_process(fn, **kwargs):
    """Run a monai.bundle script function (what `python -m monai.bundle <fn>` calls) in this process."""
    import warnings

    import monai.bundle

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="parsing config_file")  # MONAI's reminder that configs run code
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # shape checks frozen by tracing
        getattr(monai.bundle, fn)(**kwargs)


@pytest.fixture(scope="module")
def vae2d(demo2d, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("vae2d")
    return out / "run", _train("dental_vae_2d", demo2d, out, VAE_TINY)


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------- layout, metadata
@pytest.mark.parametrize("name", NAMES)
def test_bundle_layout_and_metadata(name):
    root = BUNDLES / name
    for f in ("train.json", "multi_gpu_train.json", "inference.json", "metadata.json"):
        json.loads((root / "configs" / f).read_text())
    assert "Apache License, Version 2.0" in (root / "LICENSE").read_text()
    assert "torchrun" in (root / "docs" / "README.md").read_text()
    log_conf = configparser.ConfigParser(interpolation=None)
    log_conf.read(root / "configs" / "logging.conf")
    assert log_conf["logger_root"]["handlers"] == "consoleHandler"

    meta = json.loads((root / "configs" / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"] and meta["version"].count(".") == 2
    for key in ("monai_version", "pytorch_version", "numpy_version", "task", "description", "authors", "copyright",
                "intended_use", "data_type"):
        assert meta[key], key
    assert {"medgen", "fire"} <= meta["required_packages_version"].keys()
    image, pred = meta["network_data_format"]["inputs"]["image"], meta["network_data_format"]["outputs"]["pred"]
    for field in ("type", "format", "num_channels", "spatial_shape", "dtype", "value_range", "is_patch_data", "channel_def"):
        assert field in image and field in pred, field

    train = json.loads((root / "configs" / "train.json").read_text())
    for key in ("dataset_dir", "output_dir", "max_epochs", "network_def", "run"):
        assert key in train, key
    assert train["medgen_config"]["data_base_dir"] == "@dataset_dir" and train["medgen_config"]["run_dir"] == "@output_dir"
    mc = train["medgen_config"]
    if "diffusion_def" in mc:  # the UNet maps noisy latents to noise of the same shape
        factor = 2 ** (len(mc["diffusion_def"]["channels"]) - 1)
        assert image["num_channels"] == pred["num_channels"]
        assert image["spatial_shape"] == [f"{factor}*n"] * mc["spatial_dims"] == pred["spatial_shape"]
        assert all(p % factor == 0 for p in mc["ldm_train"]["latent_patch_size"])
    elif "autoencoder_def" in mc:  # the metadata describes the network train.json builds
        ae = mc["autoencoder_def"]
        factor = 2 ** (len(ae["channels"]) - 1)
        assert image["num_channels"] == ae["in_channels"] and pred["num_channels"] == ae["out_channels"]
        assert image["spatial_shape"] == [f"{factor}*n"] * mc["spatial_dims"] == pred["spatial_shape"]
        assert meta["network_data_format"]["latent"]["z_mu"]["num_channels"] == ae["latent_channels"]
        assert all(p % factor == 0 for p in mc["autoencoder_train"]["patch_size"])
    else:
        assert image["num_channels"] == mc["generator"]["z_dim"]
        assert pred["spatial_shape"] == [mc["wgan_train"]["image_size"]] * 2


# ------------------------------------------------------------------------------------------- the 2D VAE
def test_vae2d_bundle_trains_with_medgen_and_logs_through_logging_conf(vae2d, demo2d):
    run, proc = vae2d
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["world_size"] == 1
    assert ckpt["config"]["autoencoder_def"]["channels"] == [8, 16]  # the overrides reached the trainer
    assert ckpt["config"]["data_base_dir"] == str(demo2d)
    assert (run / "tensorboard").is_dir() and (run / "checkpoints" / "best.pt").is_file()
    # logging.conf's format "asctime - name - level - message" on stdout
    assert " - medgen.train - INFO - training on " in proc.stdout


def test_vae2d_bundle_with_torchrun_and_multi_gpu_overlay(demo2d, tmp_path):
    bundle = BUNDLES / "dental_vae_2d"
    configs = [str(bundle / "configs" / f) for f in ("train.json", "multi_gpu_train.json")]
    run = tmp_path / "run"
    proc = torchrun(["--standalone", "--nproc_per_node=2", "-m", "monai.bundle", "run", "--config_file", repr(configs),
                     "--bundle_root", str(bundle), "--dataset_dir", str(demo2d), "--output_dir", str(run),
                     "--max_epochs", "1", "--args_file", _args_file(tmp_path, VAE_TINY)])
    versions = json.loads((run / "versions.json").read_text())
    assert versions["world_size"] == 2
    assert versions["effective_lr"]["generator"] == pytest.approx(2 * 1e-4)  # lr x world size
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["world_size"] == 2
    assert (proc.stdout + proc.stderr).count("training on ") == 1  # rank 0 logs, rank 1 does not


def test_train_json_alone_under_several_processes_stops_with_advice(demo2d, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun sets; without the overlay every rank would train alone
    bundle = BUNDLES / "dental_vae_2d"
    with pytest.raises(SystemExit, match="multi_gpu_train.json"):
        _in_process("run", config_file=str(bundle / "configs" / "train.json"), logging_file=False, bundle_root=str(bundle),
                    dataset_dir=str(demo2d), output_dir=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_vae2d_inference_json_reconstructs_like_the_cli(vae2d, demo2d, tmp_path):
    from medgen.inference.autoencoder import reconstruct

    run, _ = vae2d
    _in_process("run", config_file=str(BUNDLES / "dental_vae_2d" / "configs" / "inference.json"), logging_file=False,
                bundle_root=str(BUNDLES / "dental_vae_2d"), dataset_dir=str(demo2d), output_dir=str(tmp_path / "bundle"),
                checkpoint=str(run / "checkpoints" / "last.pt"))
    cli = reconstruct(run / "checkpoints" / "last.pt", demo2d, tmp_path / "cli", device="cpu", progress=False)
    inputs = find_images(demo2d)
    assert len(cli) == len(inputs)
    for item, cli_out in zip(inputs, sorted(cli)):
        out = tmp_path / "bundle" / item.relative_to(demo2d).with_name(item.name.removesuffix(".dcm") + ".nii.gz")
        arr, _ = read_image(out)
        assert arr.shape == read_image(item)[0].shape and arr.min() >= 0 and arr.max() <= 1
        assert torch.equal(torch.as_tensor(arr), torch.as_tensor(read_image(cli_out)[0]))


@pytest.mark.parametrize("augment", [False, True])
def test_bundle_transforms_equal_train_vae_script_transforms(demo2d, tmp_path, augment):
    from monai.bundle import ConfigParser

    from medgen.data.transforms import train_transforms, val_transforms

    bundle = BUNDLES / "dental_vae_2d"
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    parser.update({**VAE_TINY, "dataset_dir": str(demo2d), "output_dir": str(tmp_path / "b"), "medgen_config#augment": augment})
    # scripts/train_vae.py vae_config.json --set ...: the same settings as the medgen config the bundle builds
    script_cfg = load_config(ROOT / "vae_config.json", [*TINY, f"data_base_dir={demo2d}", f"run_dir={tmp_path / 's'}",
                                                        f"augment={json.dumps(augment)}"])
    patch = script_cfg.autoencoder_train.patch_size
    pairs = [(parser.get_parsed_content("train#preprocessing"), train_transforms(script_cfg, patch)),
             (parser.get_parsed_content("validate#preprocessing"), val_transforms(script_cfg, patch))]
    image = str(find_images(demo2d)[0])
    for bundle_tf, script_tf in pairs:
        for seed in (0, 1, 2):
            bundle_tf.set_random_state(seed=seed)
            script_tf.set_random_state(seed=seed)
            a, b = bundle_tf({"image": image})["image"], script_tf({"image": image})["image"]
            assert a.shape == (1, 32, 32)
            assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))


def test_ckpt_export_torchscript_equals_eager(vae2d, tmp_path):
    from medgen.models.autoencoder import load_autoencoder

    run, _ = vae2d
    ckpt, bundle = run / "checkpoints" / "last.pt", BUNDLES / "dental_vae_2d"
    _in_process("ckpt_export", net_id="network_def", filepath=str(tmp_path / "model.ts"), ckpt_file=str(ckpt),
                config_file=str(bundle / "configs" / "inference.json"), bundle_root=str(bundle), checkpoint=str(ckpt),
                key_in_ckpt="autoencoder", use_trace=True, input_shape=[1, 1, 32, 32])
    exported = torch.jit.load(str(tmp_path / "model.ts"))
    eager = load_autoencoder(ckpt)  # medgen's own loader, independent of the export's weight copy
    torch.manual_seed(0)
    for shape in ((1, 1, 32, 32), (2, 1, 48, 40)):  # the traced model keeps dynamic shapes
        x = torch.rand(shape)
        with torch.no_grad():
            torch.testing.assert_close(exported(x), eager.reconstruct(x), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------- 3D VAE, WGAN
def test_vae3d_bundle_trains_and_reconstructs_volumes(demo3d, tmp_path):
    _train("dental_vae_3d", demo3d, tmp_path / "t", VAE3D_TINY)
    ckpt = tmp_path / "t" / "run" / "checkpoints" / "last.pt"
    assert torch.load(ckpt, weights_only=True)["config"]["spatial_dims"] == 3
    bundle = BUNDLES / "dental_vae_3d"
    volume = find_images(demo3d / "dente")[0]  # a DICOM series folder
    _in_process("run", config_file=str(bundle / "configs" / "inference.json"), logging_file=False, bundle_root=str(bundle),
                dataset_dir=str(volume), output_dir=str(tmp_path / "eval"), checkpoint=str(ckpt))
    arr, spacing = read_image(tmp_path / "eval" / f"{volume.name}.nii.gz")
    src, src_spacing = read_image(volume)
    assert arr.shape == src.shape and spacing == pytest.approx(src_spacing, rel=1e-5)


def test_wgan_bundle_trains_samples_and_exports(demo2d, tmp_path):
    from medgen.inference.sample import load_generator

    _train("dental_wgan_2d", demo2d, tmp_path / "t", WGAN_TINY)
    ckpt = tmp_path / "t" / "run" / "checkpoints" / "last.pt"
    bundle = BUNDLES / "dental_wgan_2d"
    _in_process("run", config_file=str(bundle / "configs" / "inference.json"), logging_file=False, bundle_root=str(bundle),
                output_dir=str(tmp_path / "samples"), checkpoint=str(ckpt), num_samples=3, device="cpu")
    samples = sorted((tmp_path / "samples").glob("sample_*.png"))
    assert len(samples) == 3 and read_image(samples[0])[0].shape == (1, 64, 64)

    _in_process("ckpt_export", net_id="network_def", filepath=str(tmp_path / "g.ts"), ckpt_file=str(ckpt),
                config_file=str(bundle / "configs" / "inference.json"), bundle_root=str(bundle), checkpoint=str(ckpt),
                key_in_ckpt="generator", use_trace=True, input_shape=[1, 100])
    exported, eager = torch.jit.load(str(tmp_path / "g.ts")), load_generator(ckpt, use_ema=False)
    z = torch.randn(3, 100, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(exported(z), eager(z), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------- latent diffusion
@pytest.fixture(scope="module")
def ldm2d(demo2d, tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """The LDM bundle trained one epoch on a tiny autoencoder (the one tests/test_train_ldm.py trains on)."""
    from test_train_ldm import vae_checkpoint

    out = tmp_path_factory.mktemp("ldm2d")
    vae = vae_checkpoint(out / "vae.pt")
    return out / "run", vae, _train("dental_ldm_2d", demo2d, out, LDM_TINY, "--autoencoder_checkpoint", str(vae))


def test_ldm_bundle_trains_with_medgen_and_network_def_is_its_unet(ldm2d, demo2d):
    from monai.bundle import ConfigParser

    run, vae, proc = ldm2d
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 4  # 8 training latents, batch 2
    assert ckpt["config"]["diffusion_def"]["channels"] == [8, 16] and ckpt["config"]["autoencoder_checkpoint"] == str(vae)
    assert ckpt["config"]["data_base_dir"] == str(demo2d)
    assert ckpt["latent_stats"]["image_shape"] == [40, 40] and (run / "tensorboard").is_dir()
    assert " - medgen.train - INFO - training on " in proc.stdout
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / "dental_ldm_2d" / "configs" / "train.json"))
    parser.update({**LDM_TINY, "autoencoder_checkpoint": str(vae)})
    parser.get_parsed_content("network_def").load_state_dict(ckpt["unet"])  # strict: the same architecture


def test_ldm_bundle_with_torchrun_and_multi_gpu_overlay(demo2d, ldm2d, tmp_path):
    bundle = BUNDLES / "dental_ldm_2d"
    _, vae, _ = ldm2d
    configs = [str(bundle / "configs" / f) for f in ("train.json", "multi_gpu_train.json")]
    run = tmp_path / "run"
    proc = torchrun(["--standalone", "--nproc_per_node=2", "-m", "monai.bundle", "run", "--config_file", repr(configs),
                     "--bundle_root", str(bundle), "--dataset_dir", str(demo2d), "--output_dir", str(run),
                     "--autoencoder_checkpoint", str(vae), "--max_epochs", "1", "--args_file", _args_file(tmp_path, LDM_TINY)])
    versions = json.loads((run / "versions.json").read_text())
    assert versions["world_size"] == 2 and versions["effective_lr"]["unet"] == pytest.approx(2 * 1e-3)  # lr x world size
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and ckpt["global_step"] == 2  # 8 latents, 4 per rank, batch 2
    assert (proc.stdout + proc.stderr).count("training on ") == 1  # rank 0 logs, rank 1 does not


def test_ldm_inference_json_samples_every_class_like_medgen_sample(ldm2d, tmp_path):
    from medgen.cli import main

    run, _, _ = ldm2d
    ckpt, bundle = run / "checkpoints" / "last.pt", BUNDLES / "dental_ldm_2d"
    _in_process("run", config_file=str(bundle / "configs" / "inference.json"), logging_file=False, bundle_root=str(bundle),
                output_dir=str(tmp_path / "bundle"), checkpoint=str(ckpt), num_samples=2, num_inference_steps=3,
                guidance_scale=2.0, device="cpu")
    for name in ("edente", "dente"):
        files = sorted((tmp_path / "bundle" / name).iterdir())
        assert [p.name for p in files] == ["sample_00000.png", "sample_00001.png"]
        assert read_image(files[0])[0].shape == (1, 40, 40)  # the training images' size
        assert main(["sample", "--checkpoint", str(ckpt), "--output", str(tmp_path / "cli" / name), "--class", name,
                     "--count", "2", "--steps", "3", "--guidance", "2"]) == 0
        assert [p.read_bytes() for p in files] == [p.read_bytes() for p in sorted((tmp_path / "cli" / name).iterdir())]
    edente, dente = (read_image(tmp_path / "bundle" / n / "sample_00000.png")[0] for n in ("edente", "dente"))
    assert not torch.equal(torch.as_tensor(edente), torch.as_tensor(dente))  # same noise, the class changes the image

    _in_process("run", config_file=str(bundle / "configs" / "inference.json"), logging_file=False, bundle_root=str(bundle),
                output_dir=str(tmp_path / "one"), checkpoint=str(ckpt), num_samples=1, num_inference_steps=2,
                classes=["dente"], device="cpu")
    assert [p.name for p in (tmp_path / "one").iterdir()] == ["dente"]
    with pytest.raises(RuntimeError) as error:  # MONAI wraps the error of an expression
        _in_process("run", config_file=str(bundle / "configs" / "inference.json"), logging_file=False,
                    bundle_root=str(bundle), output_dir=str(tmp_path / "x"), checkpoint=str(ckpt), classes=["molar"])
    assert "class 'molar' is not one of the model's classes ['edente', 'dente']" in str(error.value.__cause__)
    assert not (tmp_path / "x").exists()
