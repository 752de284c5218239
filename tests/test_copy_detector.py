"""The copy detector, tested as it is used: training images injected into a folder of samples, changed the
ways a generator's copy of a patient's radiograph can come out (exactly, mirrored, brighter and with more
contrast, slightly cropped, slightly shifted), must all be flagged; held-out images of the same kind (other
"patients": demo radiographs of other seeds) must not be; noise must be reported as unjudgeable."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from medgen.cli import main
from medgen.data.demo import write_demo_dataset
from medgen.data.transforms import read_windowed

VARIANTS = {
    "exact": lambda x: x,
    "flipped": lambda x: x[:, ::-1],
    "brighter": lambda x: np.clip(0.15 + 0.8 * x, 0, 1),  # brightness and contrast changed
    "cropped": lambda x: _resize(x[2:, 3:], x.shape),  # 3% of the rows and 4% of the columns cut, scaled back
    "shifted": lambda x: np.pad(x[:-2, 2:], ((2, 0), (0, 2)), mode="edge"),  # 2 pixels down and left (3%)
}


def _resize(x: np.ndarray, shape) -> np.ndarray:
    return np.asarray(Image.fromarray(x.astype(np.float32)).resize(shape[::-1], Image.BILINEAR))


def _png(x: np.ndarray, path) -> None:
    Image.fromarray((np.clip(x, 0, 1) * 65535).astype(np.uint16)).save(path)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("copies")
    train = write_demo_dataset(root / "train", spatial_dims=2, count=10, size=64, seed=0)
    held_out = write_demo_dataset(root / "held_out", spatial_dims=2, count=10, size=64, seed=1)
    return root, train, held_out


def _check(samples, train, out) -> dict:
    main(["check-copies", "--samples", str(samples), "--train", str(train), "--output", str(out)])
    return json.loads((out / "copy_check.json").read_text())


def test_injected_training_images_are_flagged_in_every_variant_and_held_out_images_are_not(sets, tmp_path):
    root, train, held_out = sets
    samples = tmp_path / "samples"
    samples.mkdir()
    sources = [sorted((train / c).iterdir())[i] for c, i in (("dente", 0), ("edente", 3))]
    for k, source in enumerate(sources):
        x = read_windowed(str(source), (0.5, 99.5))[0].numpy()
        for name, change in VARIANTS.items():
            _png(change(x), samples / f"{name}_{k}.png")
    held = sorted(p for c in ("dente", "edente") for p in (held_out / c).iterdir())
    assert len(held) == 20
    for p in held:
        (samples / f"heldout_{p.parent.name}_{p.name}").write_bytes(p.read_bytes())
    report = _check(samples, train, tmp_path / "report")
    rows = {r["sample"]: r for r in report["samples"]}
    injected = [f"{name}_{k}.png" for k in range(2) for name in VARIANTS]
    assert sorted(report["flagged"]) == sorted(injected)
    for k, source in enumerate(sources):  # each found as the training image it was made from
        assert {rows[f"{name}_{k}.png"]["nearest_train"] for name in VARIANTS} == {f"{source.parent.name}/{source.name}"}
    assert report["unlike"] == []  # every sample here looks like a radiograph: judged


def test_noise_is_reported_as_unjudgeable_not_as_clean(sets, tmp_path, capsys):
    root, train, _ = sets
    samples = tmp_path / "noise"
    samples.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        _png(rng.random((64, 64)), samples / f"noise_{i}.png")
    _png((rng.random((64, 64)) > 0.5).astype(float), samples / "saturated.png")  # half the pixels 0, half 1
    capsys.readouterr()
    assert main(["check-copies", "--samples", str(samples), "--train", str(train), "--output", str(tmp_path / "r")]) == 1
    report = json.loads((tmp_path / "r" / "copy_check.json").read_text())
    assert report["flagged"] == [] and len(report["unlike"]) == 4
    assert "4 of 4 samples are unlike every training image" in capsys.readouterr().out
