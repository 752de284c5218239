"""Shared fixtures: demo data sets written once per session, tiny model overrides."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A model small enough for 2 CPU cores: 2 levels (8, 16), attention on the deeper level, 32x32 patches.
TINY = [
    "autoencoder_def.channels=[8,16]", "autoencoder_def.norm_num_groups=4", "autoencoder_def.num_res_blocks=1",
    "autoencoder_def.latent_channels=2", "autoencoder_def.attention_levels=[false,true]",
    "discriminator_def.channels=8", "discriminator_def.num_layers_d=2",
    "autoencoder_train.patch_size=[32,32]", "autoencoder_train.batch_size=2", "autoencoder_train.max_epochs=2",
    "autoencoder_train.perceptual_weight=0", "autoencoder_train.adv_warmup_epochs=1", "autoencoder_train.lr=1e-4",
    "num_workers=0", "scan_workers=0", "data_source=both", "log_interval=1",
]

# A UNet small enough for 2 CPU cores: 2 levels (8, 16), attention on the deeper one, non-square 8x16 crops.
TINY_LDM = [
    "diffusion_def.channels=[8,16]", "diffusion_def.attention_levels=[false,true]", "diffusion_def.num_res_blocks=1",
    "diffusion_def.num_head_channels=8", "diffusion_def.norm_num_groups=4",
    "ldm_train.latent_patch_size=[8,16]", "ldm_train.batch_size=2", "ldm_train.max_epochs=2",
    "ldm_train.num_train_timesteps=100", "ldm_train.num_inference_steps=3", "ldm_train.val_interval=1",
    "ldm_train.ema_decay=0.9", "ldm_train.lr=1e-3", "num_val_images=2",
    "num_workers=0", "scan_workers=0", "data_source=both", "log_interval=1",
]

# A WGAN small enough for 2 CPU cores: 64x64 images, generator 32 -> 8 channels, critic 8.. channels.
TINY_WGAN = [
    "generator.g_channels=32", "generator.min_channels=8", "critic.d_channels=8", "wgan_train.batch_size=2",
    "wgan_train.max_epochs=2", "wgan_train.n_critic=2", "wgan_train.num_eval_samples=4", "num_val_images=4",
    "num_workers=0", "scan_workers=0", "data_source=both", "log_interval=1",
]


@pytest.fixture(scope="session", autouse=True)
def weights_home(tmp_path_factory) -> Path:
    """An empty weights directory (MEDGEN_HOME) for the whole run, subprocesses included: no test sees the
    networks of the user running the tests, and none reads a replaced registry unless it sets one."""
    saved = {k: os.environ.get(k) for k in ("MEDGEN_HOME", "MEDGEN_WEIGHTS_REGISTRY")}
    os.environ["MEDGEN_HOME"] = str(tmp_path_factory.mktemp("medgen_home"))
    os.environ.pop("MEDGEN_WEIGHTS_REGISTRY", None)
    yield Path(os.environ["MEDGEN_HOME"])
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


# Stand-ins for MONAI's perceptual networks, in the code layout of the torch hub repository MONAI loads them from:
# hubconf.py imports each entry point from its model module, which reads its weights from
# <hub>/monai_checkpoints/ (where the real code reads them). The networks are small: RadImageNet 3 -> 4 channels
# in 2D, MedicalNet 1 -> 4 channels in 3D.
_STAND_IN_CODE = {
    "hubconf.py": """
        dependencies = ["torch"]
        from medicalnet.resnet import medicalnet_resnet10_23datasets, medicalnet_resnet50_23datasets
        from radimagenet.resnet import radimagenet_resnet50
    """,
    "radimagenet/resnet.py": """
        import os
        import torch

        def net():
            return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3, padding=1))

        def radimagenet_resnet50(cache_dir=None, file_name="RadImageNet-ResNet50_notop.pth"):
            model = net()
            model.load_state_dict(torch.load(os.path.join(cache_dir, "monai_checkpoints", file_name), weights_only=True))
            return model
    """,
    "medicalnet/resnet.py": """
        import os
        import torch

        def net():
            return torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 4, 3, padding=1))

        def _load(cache_dir, filename):
            model = net()
            state = torch.load(os.path.join(cache_dir, "monai_checkpoints", filename), weights_only=True)["state_dict"]
            model.load_state_dict({k.replace("module.", ""): v for k, v in state.items()})
            return model

        def medicalnet_resnet10_23datasets(cache_dir=None, filename="medicalnet_resnet_10_23dataset.pth"):
            return _load(cache_dir, filename)

        def medicalnet_resnet50_23datasets(cache_dir=None, filename="medicalnet_resnet50_23datasets.pth"):
            return _load(cache_dir, filename)
    """,
    "LICENSE": "stand-in for the repository's license",
}


def stand_in_weights(home: Path) -> Path:
    """A weights directory holding stand-ins of MONAI's three hub networks under their real names, in the
    real layout (the registry's paths); returns ``home``."""
    import textwrap

    import torch

    from medgen.io.weights import HUB_CHECKOUT

    checkout = home / "hub" / HUB_CHECKOUT
    for rel, text in _STAND_IN_CODE.items():
        (checkout / rel).parent.mkdir(parents=True, exist_ok=True)
        (checkout / rel).write_text(textwrap.dedent(text))
    torch.manual_seed(0)
    net2d = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3, padding=1))
    net3d = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 4, 3, padding=1))
    checkpoints = home / "hub" / "monai_checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    torch.save(net2d.state_dict(), checkpoints / "RadImageNet-ResNet50_notop.pth")
    medicalnet = {"state_dict": {f"module.{k}": v for k, v in net3d.state_dict().items()}}  # saved from DataParallel
    torch.save(medicalnet, checkpoints / "medicalnet_resnet_10_23dataset.pth")
    torch.save(medicalnet, checkpoints / "medicalnet_resnet50_23datasets.pth")
    return home


@pytest.fixture(scope="session")
def demo2d(tmp_path_factory) -> Path:
    from medgen.data.demo import write_demo_dataset

    return write_demo_dataset(tmp_path_factory.mktemp("demo2d"), spatial_dims=2, count=5, size=40, seed=0)


@pytest.fixture(scope="session")
def demo3d(tmp_path_factory) -> Path:
    from medgen.data.demo import write_demo_dataset

    return write_demo_dataset(tmp_path_factory.mktemp("demo3d"), spatial_dims=3, count=3, size=16, seed=0)


@pytest.fixture()
def one_thread():
    """Tiny ops: extra threads only contend with the other test processes on a 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_vae(argv: list[str]) -> int:
    """`medgen train-vae ARGV` (what scripts/train_vae.py runs), in this process; returns the exit code."""
    from medgen.cli import main

    return main(["train-vae", *argv])


def train_wgan(argv: list[str]) -> int:
    """`medgen train-wgan ARGV` (what scripts/train_wgan.py runs), in this process; returns the exit code."""
    from medgen.cli import main

    return main(["train-wgan", *argv])


def tb_scalars(run: Path, tag: str) -> list[tuple[int, float]]:
    """``(step, value)`` of every ``tag`` scalar in ``run/tensorboard``, in the order they were written.

    A resumed run writes a second event file. Both names hold the second they were opened, then a per-process
    writer count, so two runs of one test process within one second sort "...10" before "...9", and TensorBoard's
    loader, reading them in that order, drops the data of the older file (its steps are earlier): keep every event
    and order them by the time they were written."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0}, purge_orphaned_data=False)
    acc.Reload()
    events = sorted(acc.Scalars(tag), key=lambda e: e.wall_time) if tag in acc.Tags()["scalars"] else []
    return [(e.step, e.value) for e in events]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], timeout: int = 300, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -m torch.distributed.run ARGS`` on CPU; fail the test with its output on error (``check``)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"torchrun {' '.join(args)} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def native_threads() -> list[str]:
    """The names of this process's native threads (Linux): gloo's are gloo_tcp_loop and pt_gloo_runloop."""
    tasks = Path("/proc/self/task")
    return sorted((t / "comm").read_text().strip() for t in tasks.iterdir()) if tasks.is_dir() else []


def run_and_record_threads(command: str) -> int:
    """Run the training command, then record the native threads left after it returned (process group
    destroyed): ``run_dir/threads_rank<r>.txt``, one name per line."""
    from medgen.cli import script_main

    code = script_main(command)
    run_dir = next(a.split("=", 2)[2] for a in sys.argv if a.startswith("--set=run_dir="))
    (Path(run_dir) / f"threads_rank{os.environ.get('RANK', '0')}.txt").write_text("\n".join(native_threads()))
    return code


def run_trainer_script(trainer_cls) -> int:
    """``SCRIPT CONFIG [--set K=V ...]`` for a trainer class that has no ``medgen`` sub-command: trains it as
    ``medgen train-<name>`` would (MEDGEN_TEST_SIGNAL honoured), errors reported in one line; the exit code."""
    import argparse
    import logging

    from medgen.cli import report
    from medgen.cli.train import add_set_argument
    from medgen.training.base import launch

    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    add_set_argument(parser, "seed=1")
    args = parser.parse_args()
    install_signal_hook(trainer_cls)
    logging.basicConfig(level=logging.INFO)
    try:
        launch(args.config, args.overrides, trainer_cls)
    except (KeyboardInterrupt, Exception) as exc:  # noqa: BLE001 - one line, as the medgen CLI reports it
        return report(exc)
    return 0


def install_signal_hook(trainer_cls) -> None:
    """With MEDGEN_TEST_SIGNAL=NAME@EPOCH:STEP:RANK, the process of RANK sends itself signal NAME (e.g. SIGTERM)
    during step STEP of epoch EPOCH (0-based), as a scheduler's preemption would arrive mid-step."""
    spec = os.environ.get("MEDGEN_TEST_SIGNAL")
    if not spec:
        return
    import signal

    name, where = spec.split("@")
    epoch, step, rank = (int(v) for v in where.split(":"))
    original = trainer_cls.train_step

    def train_step(self, images, *args):
        if (self.epoch, self.step_in_epoch, self.dist.rank) == (epoch, step, rank):
            os.kill(os.getpid(), getattr(signal, name))
        return original(self, images, *args)

    trainer_cls.train_step = train_step


def stop_preempt_resume(ddp_run, demo, run, max_epochs_key: str) -> tuple[dict, subprocess.CompletedProcess]:
    """Two processes, 2 steps an epoch (8 training images, batch 2), three launches that each resume the last:

    1. a run with ``max_epochs=1`` ends at the epoch boundary: last.pt at (epoch 1, step 0);
    2. resumed with the full epoch count, rank 1 alone gets SIGTERM during step 0 of epoch 1; both ranks must
       stop after that step with last.pt at (epoch 1, step 1);
    3. resumed again, to the end.

    Returns the final checkpoint and the last run's process, to compare with an uninterrupted run."""
    from medgen.io.checkpoint import load_checkpoint

    ddp_run(demo, run, [f"{max_epochs_key}=1"])
    saved = load_checkpoint(run / "checkpoints" / "last.pt")
    assert (saved["epoch"], saved["step_in_epoch"]) == (1, 0)
    proc = ddp_run(demo, run, ["resume_ckpt=true"], env={"MEDGEN_TEST_SIGNAL": "SIGTERM@1:0:1"}, check=False)
    assert proc.returncode != 0 and "interrupted (SIGTERM) at epoch 2 step 1" in proc.stderr, proc.stderr[-3000:]
    saved = load_checkpoint(run / "checkpoints" / "last.pt")
    assert (saved["epoch"], saved["step_in_epoch"]) == (1, 1)
    resumed = ddp_run(demo, run, ["resume_ckpt=true"])
    return load_checkpoint(run / "checkpoints" / "last.pt"), resumed


# Fake clones of the public repositories (medgen.data.public): real names and folders, tiny files.
TRAIN = ["cate1-00001.jpg", "cate4-00002.jpg", "cate7-00003.jpg", "cate10-00004.jpg"]
VAL = ["cate2-00005.jpg", "cate8-00006.jpg"]
LEFT_OUT = ["cate5-00007.jpg", "cate6-00008.jpg"]  # in the clone, in no list


def write_public_clones(root: Path) -> tuple[Path, Path, Path]:
    """Under ``root``: a clone of Instance_seg_teeth (24x32 RGB JPEGs, the categories above), one of niivue-images
    (a 16x12x20 CT_AVM.nii.gz) and split lists for them (CT: slices 0-11 train, 14-19 val).

    Returns:
        (panoramic clone, CT clone, split-list folder).
    """
    import json

    import nibabel as nib
    import numpy as np
    from PIL import Image

    from medgen.data.public import PANORAMIC_FOLDER

    folder = root / "Instance_seg_teeth" / PANORAMIC_FOLDER
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in TRAIN + VAL + LEFT_OUT:
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(folder / name)
    (folder / ".DS_Store").write_bytes(b"\0")
    ct = root / "niivue-images"
    ct.mkdir()
    affine = np.diag([0.7, 0.7, 1.0, 1.0])
    affine[:3, 3] = [-5.0, -5.0, -10.0]
    nib.save(nib.Nifti1Image(rng.integers(0, 1000, (16, 12, 20), dtype=np.int16), affine), ct / "CT_AVM.nii.gz")
    splits = root / "splits"
    splits.mkdir()
    (splits / "panoramic_train.txt").write_text("# a comment\n" + "\n".join(TRAIN) + "\n\n")
    (splits / "panoramic_val.txt").write_text("\n".join(VAL) + "  # trailing comment\n")
    slabs = {"file": "CT_AVM.nii.gz", "shape": [16, 12, 20], "axis": 2, "train": [0, 12], "val": [14, 20]}
    (splits / "ct_slabs.json").write_text(json.dumps(slabs))
    return root / "Instance_seg_teeth", ct, splits
