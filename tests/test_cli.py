"""One error path: every sub-command and both training scripts turn a bad argument, a missing file and Ctrl-C
into one line on stderr and a non-zero exit, without a traceback; --debug shows the traceback."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, TINY, TINY_LDM, write_public_clones
from medgen.cli import build_parser, main

SUBCOMMANDS = ("demo-data", "check-data", "train-vae", "train-wgan", "train-ldm", "reconstruct", "encode", "decode",
               "sample", "check-copies", "fit-decoder", "weights", "prepare-public-data")


PROGRESS = re.compile(r"\d+%\|")  # a tqdm bar (data scan, epochs) drawn before the interruption


def _one_line(err: str) -> str:
    """The only message on stderr besides progress bars."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and not PROGRESS.search(line)]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_every_subcommand_is_covered_here():
    assert set(build_parser()._subparsers._group_actions[0].choices) == set(SUBCOMMANDS)


BAD_ARGUMENTS = {
    "demo-data": ["demo-data", "out", "--count", "many"],
    "check-data": ["check-data", "data", "--spatial-dims", "4"],
    "train-vae": ["train-vae", "vae_config.json", "--sett", "lr=1"],
    "train-wgan": ["train-wgan"],
    "train-ldm": ["train-ldm", "ldm_config.json", "--set"],
    "reconstruct": ["reconstruct", "--checkpoint", "c.pt", "--input", "x", "--output", "o", "--format", "jpg"],
    "encode": ["encode", "--checkpoint", "c.pt", "--output", "o"],
    "decode": ["decode", "--checkpoint", "c.pt", "--input", "lat", "--output", "o", "--tile-size", "big"],
    "sample": ["sample", "--checkpoint", "c.pt", "--count", "3.5", "--output", "o"],
    "check-copies": ["check-copies", "--samples", "s", "--train", "t", "--threshold", "low"],
    "fit-decoder": ["fit-decoder", "--input", "x.png", "--output", "o.png", "--steps", "-"],
    "weights": ["weights", "fetch"],
    "prepare-public-data": ["prepare-public-data", "--ct", "clone"],  # no OUT
}


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_a_bad_argument_is_one_line_naming_it(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(BAD_ARGUMENTS[command])
    assert exit_.value.code == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("medgen") and line.endswith("--help)")


def _missing(tmp_path: Path) -> dict[str, list[str]]:
    nowhere = tmp_path / "nowhere"
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    return {
        "demo-data": ["demo-data", str(a_file / "sub")],  # the output's parent is a file
        "check-data": ["check-data", str(nowhere)],
        "train-vae": ["train-vae", str(nowhere / "vae_config.json")],
        "train-wgan": ["train-wgan", str(nowhere / "wgan_config.json")],
        "train-ldm": ["train-ldm", str(nowhere / "ldm_config.json")],
        "reconstruct": ["reconstruct", "--checkpoint", str(nowhere / "best.pt"), "--input", str(a_file), "--output", str(tmp_path / "o")],
        "encode": ["encode", "--checkpoint", str(nowhere / "best.pt"), "--input", str(a_file), "--output", str(tmp_path / "o")],
        "decode": ["decode", "--checkpoint", str(nowhere / "best.pt"), "--input", str(a_file), "--output", str(tmp_path / "o")],
        "sample": ["sample", "--checkpoint", str(nowhere / "last.pt"), "--count", "2", "--output", str(tmp_path / "o")],
        "check-copies": ["check-copies", "--samples", str(nowhere), "--train", str(a_file)],
        "fit-decoder": ["fit-decoder", "--input", str(nowhere / "pano.png"), "--output", str(tmp_path / "o.png")],
        "weights": ["weights", "import", str(nowhere / "radimagenet_resnet50.tar")],
        "prepare-public-data": ["prepare-public-data", "--ct", str(nowhere), str(tmp_path / "o")],
    }


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_a_missing_file_is_one_line_naming_it(command, tmp_path, capsys):
    assert main(_missing(tmp_path)[command]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("medgen: ") and str(tmp_path) in line


# Where each command is interrupted: a function on its real path raises KeyboardInterrupt, as Ctrl-C would there.
INTERRUPT_AT = {
    "demo-data": "medgen.data.demo.make_jaw_image",
    "check-data": "medgen.data.check.read_pixels",
    "train-vae": "medgen.training.base.Trainer.train_epoch",
    "train-wgan": "medgen.training.base.Trainer.train_epoch",
    "train-ldm": "medgen.training.base.Trainer.train_epoch",
    "reconstruct": "medgen.data.whole.preprocess",
    "encode": "medgen.data.whole.preprocess",
    "decode": "medgen.inference.autoencoder.decode_latents",
    "sample": "medgen.inference.sample.generate",
    "check-copies": "medgen.inference.check_copies.read_windowed",
    "fit-decoder": "medgen.training.fit_decoder.fit_decoder",
    "weights": "medgen.io.weights._download",
    "prepare-public-data": "medgen.data.public._write_ct",
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, demo2d):
    """A tiny VAE and a tiny WGAN checkpoint (one epoch each)."""
    root = tmp_path_factory.mktemp("ckpts")
    sets = [*TINY, f"data_base_dir={demo2d}", "autoencoder_train.max_epochs=1", f"run_dir={root / 'vae'}"]
    assert main(["train-vae", "vae_config.json", *[f"--set={s}" for s in sets]]) == 0
    wsets = ["generator.g_channels=32", "generator.min_channels=8", "critic.d_channels=8", "wgan_train.batch_size=2",
             "wgan_train.max_epochs=1", "wgan_train.n_critic=2", "wgan_train.num_eval_samples=4", "num_workers=0", "scan_workers=0",
             "data_source=both", f"data_base_dir={demo2d}", f"run_dir={root / 'wgan'}"]
    assert main(["train-wgan", "wgan_config.json", *[f"--set={s}" for s in wsets]]) == 0
    return root / "vae" / "checkpoints" / "last.pt", root / "wgan" / "checkpoints" / "last.pt"


def _runs(command: str, tmp_path: Path, demo2d: Path, checkpoints) -> list[str]:
    vae, wgan = checkpoints
    image = next((demo2d / "dente").glob("*.dcm"))
    sets = [*TINY, f"data_base_dir={demo2d}", f"run_dir={tmp_path / 'run'}"]
    argv = {
        "demo-data": ["demo-data", str(tmp_path / "demo"), "--count", "1", "--size", "32"],
        "check-data": ["check-data", str(demo2d), "--workers", "0"],
        "train-vae": ["train-vae", "vae_config.json", *[f"--set={s}" for s in sets]],
        "train-wgan": ["train-wgan", "wgan_config.json", "--set=num_workers=0", "--set=scan_workers=0",
                       "--set=data_source=both", f"--set=data_base_dir={demo2d}", f"--set=run_dir={tmp_path / 'run'}"],
        "train-ldm": ["train-ldm", "ldm_config.json", *[f"--set={s}" for s in (*TINY_LDM, f"autoencoder_checkpoint={vae}",
                      f"data_base_dir={demo2d}", f"run_dir={tmp_path / 'run'}")]],
        "reconstruct": ["reconstruct", "--checkpoint", str(vae), "--input", str(image), "--output", str(tmp_path / "o")],
        "encode": ["encode", "--checkpoint", str(vae), "--input", str(image), "--output", str(tmp_path / "o")],
        "decode": ["decode", "--checkpoint", str(vae), "--input", "LATENTS", "--output", str(tmp_path / "o")],
        "sample": ["sample", "--checkpoint", str(wgan), "--count", "2", "--output", str(tmp_path / "o")],
        "check-copies": ["check-copies", "--samples", str(demo2d / "dente"), "--train", str(demo2d)],
        "fit-decoder": ["fit-decoder", "--input", str(image), "--output", str(tmp_path / "o.png")],
        "weights": ["weights", "fetch", "radimagenet_resnet50", "--to", str(tmp_path / "weights")],
        "prepare-public-data": ["prepare-public-data", "--ct", "CT_CLONE", "--split-lists", "SPLITS", str(tmp_path / "o")],
    }[command]
    if command == "decode":  # latents to decode: written before the command under test runs
        return [str(_latents(vae, image, tmp_path)) if a == "LATENTS" else a for a in argv]
    if command == "prepare-public-data":  # a fake clone and its split lists
        _, ct, splits = write_public_clones(tmp_path)
        return [{"CT_CLONE": str(ct), "SPLITS": str(splits)}.get(a, a) for a in argv]
    return argv


def _latents(vae: Path, image: Path, tmp_path: Path) -> Path:
    assert main(["encode", "--checkpoint", str(vae), "--input", str(image), "--output", str(tmp_path / "lat")]) == 0
    return tmp_path / "lat"


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_ctrl_c_is_one_line_and_exit_130(command, tmp_path, demo2d, checkpoints, monkeypatch, capsys):
    monkeypatch.setattr(INTERRUPT_AT[command], _interrupt)
    assert main(_runs(command, tmp_path, demo2d, checkpoints)) == 130
    assert _one_line(capsys.readouterr().err) == "medgen: interrupted"


def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    assert main(["--debug", "check-data", str(tmp_path / "nowhere")]) == 2
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("MEDGEN_DEBUG", "1")
    assert main(["check-data", str(tmp_path / "nowhere")]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_a_bug_keeps_its_traceback(monkeypatch):
    monkeypatch.setattr("medgen.data.demo.write_demo_dataset", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        main(["demo-data", "out"])


# ------------------------------------------------------------------------------------ the training scripts
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (INFO|WARNING) ")


def _script(name: str, *args: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen([sys.executable, f"scripts/{name}", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


@pytest.mark.parametrize("script, config", [("train_vae.py", "vae_config.json"), ("train_wgan.py", "wgan_config.json")])
def test_training_scripts_report_bad_arguments_and_missing_files_in_one_line(script, config, tmp_path):
    out, err = _script(script, config, "--set", "seed=").communicate(timeout=120)  # seed must be an integer
    assert "seed" in _one_line(err)
    proc = _script(script, str(tmp_path / config))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and _one_line(err) == f"medgen: config error: config file {tmp_path / config} does not exist"


WGAN_TINY = ["generator.g_channels=32", "generator.min_channels=8", "critic.d_channels=8", "wgan_train.batch_size=2",
             "wgan_train.n_critic=2", "wgan_train.num_eval_samples=4", "num_workers=0", "scan_workers=0",
             "data_source=both", "wgan_train.max_epochs=500"]


@pytest.mark.parametrize("script, config, tiny", [
    ("train_vae.py", "vae_config.json", [*TINY, "autoencoder_train.max_epochs=500"]),
    ("train_wgan.py", "wgan_config.json", WGAN_TINY),
])
def test_training_script_ctrl_c_during_training(script, config, tiny, demo2d, tmp_path):
    """A real SIGINT in the middle of a run: last.pt saved at the next step boundary, one line, exit 130."""
    sets = [f"--set={s}" for s in (*tiny, f"data_base_dir={demo2d}", f"run_dir={tmp_path / 'run'}")]
    proc = _script(script, config, *sets)
    seen = []
    deadline = time.monotonic() + 120
    for line in proc.stderr:  # INFO logs go to stderr; the epoch lines mean the loop is running
        seen.append(line)
        if "epoch 1/500:" in line or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    proc.wait(timeout=60)
    assert proc.returncode == 130, "".join(seen) + rest
    # log lines of the steps that finished before the signal arrived, progress bars, then the one line
    lines = [line for line in rest.replace("\r", "\n").splitlines()
             if line.strip() and not PROGRESS.search(line) and not LOG_LINE.match(line)]
    assert len(lines) == 1 and lines[0].startswith("medgen: interrupted (SIGINT) ") and "resume_ckpt=true" in lines[0], rest
    assert "\r" not in "".join(seen) + rest  # not a terminal: no progress-bar fragments in the log
    from medgen.io.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["epoch"] >= 1 and f"epoch {ckpt['epoch'] + 1} step {ckpt['step_in_epoch']}" in lines[0] or ckpt["step_in_epoch"] == 0


def test_running_out_of_memory_is_one_line_with_what_to_change(tmp_path, demo2d, checkpoints, monkeypatch, capsys):
    def allocate(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:119] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 279257288704 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr("medgen.data.whole.preprocess", allocate)
    assert main(_runs("encode", tmp_path, demo2d, checkpoints)) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("medgen: out of memory (") and "279257288704 bytes" in line and "smaller" in line


def test_a_mask_covering_the_whole_image_is_one_line(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)).save(tmp_path / "img.png")
    Image.fromarray(np.full((64, 64), 255, dtype=np.uint8)).save(tmp_path / "mask.png")
    argv = ["fit-decoder", "--input", str(tmp_path / "img.png"), "--mask", str(tmp_path / "mask.png"),
            "--output", str(tmp_path / "o.png"), "--no-progress"]
    assert main(argv) == 2
    assert _one_line(capsys.readouterr().err) == "medgen: fit_decoder: the mask covers the whole image; nothing is left to fit."
