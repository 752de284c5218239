"""`medgen weights`: one weights directory, filled by a verified fetch or by an archive, and read by training,
metrics and check-data without a config key. Sources are a local http server or file:// URLs serving stand-in
networks under the real names and layout; their checksums come from a test registry (MEDGEN_WEIGHTS_REGISTRY)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import shutil
import tarfile
import threading
from pathlib import Path

import pytest
import torch

from conftest import TINY, stand_in_weights, train_vae
from medgen.cli import main
from medgen.io import weights

NAME = "radimagenet_resnet50"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture()
def source(tmp_path) -> Path:
    """Where the stand-in networks are served from: files at the registry's paths."""
    return stand_in_weights(tmp_path / "source")


def _use_registry(tmp_path, monkeypatch, source: Path, url_of=None, sha_of=None) -> Path:
    """A registry with medgen's own names and paths, whose URLs point into ``source`` (``url_of(rel)``;
    default file://) and whose checksums are the stand-ins' (``sha_of(rel)`` may replace one)."""
    nets = []
    for net in weights.BUILTIN:
        if not (source / net.weights.path).is_file():
            continue  # the torchvision networks have no stand-in
        files = tuple(
            weights.WeightFile(f.path, url_of(f.path) if url_of else (source / f.path).as_uri(),
                               (sha_of or (lambda rel: None))(f.path) or _sha256(source / f.path))
            for f in net.files
        )
        nets.append(weights.Network(net.name, net.use, "stand-in", files, net.feature_defaults))
    path = tmp_path / "registry.json"
    path.write_text(weights.registry_json(nets))
    monkeypatch.setenv(weights.ENV_REGISTRY, str(path))
    return path


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    """A clean weights directory (not created yet)."""
    path = tmp_path / "medgen_home"
    monkeypatch.setenv(weights.ENV_HOME, str(path))
    return path


class _Server(http.server.ThreadingHTTPServer):
    requests = 0


@pytest.fixture()
def http_source(source, monkeypatch):
    """``source`` served over http on 127.0.0.1; yields (server, base URL)."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.server.requests += 1
            super().do_GET()

    monkeypatch.setenv("no_proxy", "127.0.0.1")
    server = _Server(("127.0.0.1", 0), functools.partial(Handler, directory=str(source)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _err_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line and not line.startswith("medgen: note:")]
    assert len(lines) == 1, lines
    return lines[0]


def test_the_registry_records_a_source_and_a_checksum_for_every_file():
    for net in weights.BUILTIN:
        assert net.files and net.weights.path.startswith("hub/")
        for f in net.files:
            assert f.url.startswith("https://")
            assert f.sha256 is None or (len(f.sha256) in (8, 64) and int(f.sha256, 16) >= 0)
    # the hub networks' files sit where torch hub and MONAI's loaders look, and their code is pinned
    assert weights.HUB_CHECKOUT == weights.MONAI_HUB_REPO.replace("/", "_") + "_main"
    radimagenet = weights.network(NAME)
    assert len(radimagenet.weights.sha256) == 64
    assert all(weights.PERCEPTUAL_MODELS_COMMIT in f.url for f in radimagenet.files[:-1])


def test_the_weights_directory_is_medgen_home_or_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDGEN_HOME", str(tmp_path / "w"))
    assert weights.weights_home() == tmp_path / "w"
    monkeypatch.delenv("MEDGEN_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert weights.weights_home() == tmp_path / "cache" / "medgen"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert weights.weights_home() == Path.home() / ".cache" / "medgen"


def test_list_shows_presence_place_and_size(home, source, capsys):
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert str(home) in out and "$MEDGEN_HOME" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.split() and line.split()[0] in weights.registry()}
    assert set(rows) == set(weights.registry())
    assert "  no  " in rows[NAME] and "sha256" in rows[NAME] and "none published" in rows["medicalnet_resnet10_23datasets"]

    shutil.copytree(source, home)
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.split() and line.split()[0] in weights.registry()}
    size = sum((home / f.path).stat().st_size for f in weights.network(NAME).files)
    assert size < 1e5 and "  yes  " in rows[NAME] and f"{size / 1e3:.1f} kB" in rows[NAME]
    assert "  no  " in rows["resnet50"]
    assert f"{NAME}: {home / weights.network(NAME).weights.path}" in out


def test_fetch_over_http_places_the_network_verified_in_the_layout_monai_reads(home, source, http_source, tmp_path,
                                                                               monkeypatch, capsys):
    server, base = http_source
    _use_registry(tmp_path, monkeypatch, source, url_of=lambda rel: f"{base}/{rel}")
    assert main(["weights", "fetch", NAME]) == 0
    captured = capsys.readouterr()
    assert "SHA-256 verified" in captured.out and weights.ENV_REGISTRY in captured.err  # a replaced registry is said
    net = weights.network(NAME)
    for f in net.files:
        assert (home / f.path).read_bytes() == (source / f.path).read_bytes()
    assert (home / "hub" / "trusted_list").read_text().split() == ["Project-MONAI_perceptual-models"]
    assert server.requests == len(net.files)
    assert not [p for p in home.iterdir() if p.name.startswith(".tmp")]
    # MONAI's loader reads it from there, offline
    from monai.losses import PerceptualLoss

    before = torch.hub.get_dir()
    with pytest.warns(UserWarning, match="Setting cache_dir"):
        loss = PerceptualLoss(spatial_dims=2, network_type=NAME, cache_dir=str(home / "hub"))
    torch.hub.set_dir(before)
    x = torch.rand(1, 1, 16, 16)
    assert loss(x, torch.rand(1, 1, 16, 16)).item() > 0
    # a second fetch keeps the verified files; another network downloads only its own weights
    assert main(["weights", "fetch", NAME]) == 0
    assert server.requests == len(net.files)
    assert main(["weights", "fetch", "medicalnet_resnet10_23datasets"]) == 0
    assert server.requests == len(net.files) + 1


def test_fetch_refuses_a_wrong_checksum_and_leaves_nothing(home, source, tmp_path, monkeypatch, capsys):
    wrong = "0" * 64
    net = weights.network(NAME)
    _use_registry(tmp_path, monkeypatch, source, sha_of=lambda rel: wrong if rel == net.weights.path else None)
    assert main(["weights", "fetch", NAME]) == 2
    line = _err_line(capsys)
    assert line.startswith("medgen: weights error: the download of file://") and net.weights.path in line
    assert _sha256(source / net.weights.path) in line and wrong in line and "nothing was written" in line
    assert not home.exists()  # no partial file, no temporary file, not even the folder
    # into an existing directory: the code files were right, but nothing of the network is placed
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    assert main(["weights", "fetch", NAME]) == 2
    assert _files(home) == [home / "notes.txt"]


def test_fetch_interrupted_leaves_nothing(home, source, tmp_path, monkeypatch, capsys):
    _use_registry(tmp_path, monkeypatch, source)
    original, last = torch.hub.download_url_to_file, str(len(weights.network(NAME).files) - 1)

    def interrupted(url, dst, *args, **kwargs):
        if Path(dst).name == last:  # Ctrl-C amid the weights file, the code files downloaded already
            Path(dst).write_bytes(b"0123456789")
            raise KeyboardInterrupt
        return original(url, dst, *args, **kwargs)

    monkeypatch.setattr(torch.hub, "download_url_to_file", interrupted)
    assert main(["weights", "fetch", NAME]) == 130
    assert not home.exists()


def test_fetch_of_a_network_without_a_published_checksum_needs_the_flag(home, capsys):
    # medgen's own registry: refused before any download is tried
    assert main(["weights", "fetch", "medicalnet_resnet10_23datasets"]) == 2
    line = _err_line(capsys)
    assert "records no SHA-256" in line and "--unverified" in line
    assert not home.exists()
    assert main(["weights", "fetch", "resnet5O"]) == 2
    assert "known: radimagenet_resnet50" in _err_line(capsys)


def test_export_then_import_on_a_clean_directory(home, source, tmp_path, monkeypatch, capsys):
    _use_registry(tmp_path, monkeypatch, source)
    online = tmp_path / "online"
    assert main(["weights", "fetch", NAME, "--to", str(online)]) == 0
    archive = tmp_path / "carry" / f"{NAME}.tar"
    monkeypatch.setenv(weights.ENV_HOME, str(online))
    assert main(["weights", "export", NAME, str(archive)]) == 0
    assert main(["weights", "export", NAME, str(archive)]) == 2  # never overwritten
    assert "already exists" in _err_line(capsys)
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
    net = weights.network(NAME)
    assert [m.name for m in members] == [weights.MANIFEST, *[f.path for f in net.files]]
    assert all(m.uname == "" and m.uid == 0 for m in members)

    monkeypatch.setenv(weights.ENV_HOME, str(home))
    assert main(["weights", "import", str(archive)]) == 0
    assert f"imported {NAME}" in capsys.readouterr().out
    for f in net.files:
        assert (home / f.path).read_bytes() == (online / f.path).read_bytes()
    assert main(["weights", "verify"]) == 0
    assert f"{NAME}: {len(net.files)} ok" in capsys.readouterr().out
    assert not [p for p in home.iterdir() if p.name.startswith(".tmp")]


def _archive(path: Path, files: dict[str, bytes], manifest_files: dict[str, bytes] | None = None,
             networks=(NAME,)) -> Path:
    """An archive in export's format; ``manifest_files`` (default ``files``) is what its manifest lists."""
    listed = manifest_files if manifest_files is not None else files
    manifest = {"format": weights.ARCHIVE_FORMAT, "networks": list(networks),
                "files": [{"path": k, "sha256": hashlib.sha256(v).hexdigest(), "size": len(v)} for k, v in listed.items()]}
    with tarfile.open(path, "w") as tar:
        for name, data in [(weights.MANIFEST, json.dumps(manifest).encode()), *files.items()]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_import_refuses_a_damaged_or_wrong_archive_and_places_nothing(home, source, tmp_path, monkeypatch, capsys):
    _use_registry(tmp_path, monkeypatch, source)
    net = weights.network(NAME)
    good = {f.path: (source / f.path).read_bytes() for f in net.files}
    data = bytearray(good[net.weights.path])
    data[len(data) // 2] ^= 0xFF
    damaged = {**good, net.weights.path: bytes(data)}
    cases = {
        "damaged in transit": (_archive(tmp_path / "a.tar", damaged, good), "not the", "it had when exported"),
        "another file": (_archive(tmp_path / "b.tar", damaged), "medgen records", net.weights.path),
        "outside the layout": (_archive(tmp_path / "c.tar", {**good, "../evil.py": b"x"}), "extra", "../evil.py"),
        "incomplete": (_archive(tmp_path / "d.tar", {k: v for k, v in good.items() if k != net.weights.path}),
                       "missing", net.weights.path),
        "not an archive": (tmp_path / "e.tar", "not a weights archive", "e.tar"),
    }
    (tmp_path / "e.tar").write_bytes(b"not a tar file" * 100)
    truncated = tmp_path / "f.tar"
    whole = _archive(tmp_path / "g.tar", good).read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])
    cases["truncated"] = (truncated, "truncated", "f.tar")
    for what, (archive, *words) in cases.items():
        assert main(["weights", "import", str(archive)]) == 2, what
        line = _err_line(capsys)
        assert line.startswith("medgen: ") and all(w in line for w in words), (what, line)
        assert not home.exists(), what
    assert not (tmp_path / "evil.py").exists()


def test_verify_finds_a_corrupted_file(home, source, capsys, tmp_path, monkeypatch):
    _use_registry(tmp_path, monkeypatch, source)
    assert main(["weights", "verify"]) == 0
    assert "no networks" in capsys.readouterr().out
    shutil.copytree(source, home)
    assert main(["weights", "verify"]) == 0
    weights_file = home / weights.network(NAME).weights.path
    data = bytearray(weights_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights_file.write_bytes(bytes(data))
    assert main(["weights", "verify"]) == 2
    line = _err_line(capsys)
    assert str(weights_file) in line and _sha256(weights_file) in line and f"medgen weights fetch {NAME}" in line
    # export refuses it too
    assert main(["weights", "export", NAME, str(tmp_path / "x.tar")]) == 2
    assert "nothing was exported" in _err_line(capsys) and not (tmp_path / "x.tar").exists()


def test_an_imported_archive_makes_the_default_config_train_with_the_perceptual_loss(
        demo2d, home, source, tmp_path, monkeypatch, capsys):
    """Done when: on a machine without the network, importing an archive made by export makes vae_config.json
    train with perceptual_weight 1.0 and no other change (the overrides only shrink the model and the data)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _use_registry(tmp_path, monkeypatch, source)
    online = tmp_path / "online"
    assert main(["weights", "fetch", NAME, "--to", str(online)]) == 0
    monkeypatch.setenv(weights.ENV_HOME, str(online))
    archive = tmp_path / f"{NAME}.tar"
    assert main(["weights", "export", NAME, str(archive)]) == 0
    monkeypatch.setenv(weights.ENV_HOME, str(home))
    monkeypatch.delenv(weights.ENV_REGISTRY)  # training reads the directory alone, in medgen's own layout
    capsys.readouterr()

    sizes = [s for s in TINY if "perceptual" not in s]
    run = tmp_path / "run"
    argv = ["vae_config.json", *[f"--set={s}" for s in [*sizes, f"data_base_dir={demo2d}", f"run_dir={run}"]]]
    config = json.loads(Path("vae_config.json").read_text())["autoencoder_train"]
    assert config["perceptual_weight"] == 1.0 and config["perceptual_network"] == NAME
    assert config["perceptual_cache_dir"] is None and config["perceptual_weights"] is None
    assert train_vae(argv) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    for fix in (f"medgen weights fetch {NAME}", "medgen weights import", "autoencoder_train.perceptual_weight=0"):
        assert fix in line
    assert str(home) in line and not (run / "checkpoints").exists()

    monkeypatch.setenv(weights.ENV_REGISTRY, str(tmp_path / "registry.json"))  # the stand-in's checksums
    assert main(["weights", "import", str(archive)]) == 0
    monkeypatch.delenv(weights.ENV_REGISTRY)
    assert train_vae(argv) == 0
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    perceptual = [e.value for e in acc.Scalars("epoch/loss/perceptual")]
    assert perceptual and all(0 < v < float("inf") for v in perceptual)


def test_fid_features_from_a_network_name(home, source):
    from medgen.config.wgan import WGANTrain
    from medgen.metrics import FeatureExtractor, feature_network_problem

    WGANTrain(fid_feature_weights=NAME).validate()  # a name is not a path
    problem = feature_network_problem(NAME)
    assert f"medgen weights fetch {NAME}" in problem and str(home) in problem
    with pytest.raises(weights.WeightsError, match=f"not in the weights directory {home}"):
        FeatureExtractor(NAME)
    assert "not a feature network" in feature_network_problem("medicalnet_resnet10_23datasets")
    assert "neither a file nor a feature network" in feature_network_problem("inceptoin")

    shutil.copytree(source, home)
    assert feature_network_problem(NAME) is None
    extractor = FeatureExtractor(NAME)
    images = torch.rand(3, 1, 24, 24)
    # the stand-in network with RadImageNet's preprocessing: 3 channels, mean subtracted, spatial mean
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3, padding=1))
    net.load_state_dict(torch.load(home / weights.network(NAME).weights.path, weights_only=True))
    mean = torch.tensor([0.406, 0.456, 0.485]).view(1, 3, 1, 1)
    expected = net(images.expand(-1, 3, -1, -1) - mean).mean((2, 3))
    torch.testing.assert_close(extractor(images), expected)


def test_train_wgan_with_an_absent_feature_network_stops_before_the_first_step(demo2d, home, tmp_path, capsys):
    run = tmp_path / "run"
    sets = ["num_workers=0", "scan_workers=0", "data_source=both", f"data_base_dir={demo2d}", f"run_dir={run}",
            f"wgan_train.fid_feature_weights={NAME}"]
    assert main(["train-wgan", "wgan_config.json", *[f"--set={s}" for s in sets]]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"wgan_train.fid_feature_weights={NAME}" in line and f"medgen weights fetch {NAME}" in line
    assert not (run / "checkpoints").exists()


def test_check_data_says_whether_the_perceptual_network_is_here(demo2d, home, source, tmp_path, capsys):
    config = json.loads(Path("vae_config.json").read_text())
    config.update(data_base_dir=str(demo2d), data_source="both")
    config["autoencoder_train"]["patch_size"] = [32, 32]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert main(["check-data", str(path), "--workers", "0"]) == 0  # the exit code is about the images
    assert f"perceptual network {NAME}: missing, training would stop" in capsys.readouterr().out
    shutil.copytree(source, home)
    assert main(["check-data", str(path), "--workers", "0"]) == 0
    assert f"perceptual network {NAME}: on this machine" in capsys.readouterr().out
