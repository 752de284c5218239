"""Pretrained networks: which ones medgen can use, where they live on this machine, and how they get there.

One weights directory holds them all: ``$MEDGEN_HOME``, by default ``$XDG_CACHE_HOME/medgen`` (``~/.cache/medgen``).
Its ``hub/`` folder is a torch hub directory in the layout MONAI and torchvision read, so MONAI's own loaders
find the networks there offline:

- ``hub/Project-MONAI_perceptual-models_main/``: the checkout of the torch hub repository MONAI's
  ``PerceptualLoss`` loads ``radimagenet_resnet50`` and ``medicalnet_*`` from (``hubconf.py`` and the two
  model modules), with ``hub/monai_checkpoints/<file>.pth`` beside it, where that code reads the weights;
- ``hub/checkpoints/<file>.pth``: torchvision weights, where torchvision caches them.

The registry below records for every file its place in that layout, the URL MONAI's code (or torchvision)
downloads it from, and its SHA-256. ``medgen weights fetch`` is the only code in medgen that downloads;
training, metrics, ``check-data`` and the bundles only read the directory. ``MEDGEN_WEIGHTS_REGISTRY`` may name
a JSON registry that replaces this one (for stand-in networks); every ``medgen weights`` command says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import json
import os
import shutil
import socket
import tarfile
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medgen.errors import MedgenError, MissingInputError, OutputExistsError
from medgen.io.files import atomic_path

ENV_HOME = "MEDGEN_HOME"
ENV_REGISTRY = "MEDGEN_WEIGHTS_REGISTRY"
MANIFEST = "medgen-weights.json"  # first member of an archive made by `medgen weights export`
ARCHIVE_FORMAT = "medgen-weights/1"

# The torch hub repository MONAI's PerceptualLoss loads its RadImageNet and MedicalNet networks from (at ref
# main), and the folder torch hub keeps its checkout in. medgen fetches that code at a fixed commit, so the
# code it runs is the code whose checksums are recorded here.
MONAI_HUB_REPO = "Project-MONAI/perceptual-models"
HUB_CHECKOUT = MONAI_HUB_REPO.replace("/", "_") + "_main"  # torch hub's folder for <owner>/<name> at ref main
PERCEPTUAL_MODELS_COMMIT = "6ac297e49bfaeaa22c032a646512206e95cd9847"  # 2025-12-05, "Change hf download with monai.apps."
_HF_CHECKPOINTS = "https://huggingface.co/MONAI/checkpoints/resolve/main"
_TORCHVISION = "https://download.pytorch.org/models"


class WeightsError(MedgenError):
    """A pretrained network that is missing, incomplete or not the file medgen records."""

    kind = "weights error"


@dataclass(frozen=True)
class WeightFile:
    """One file of a network: where it lives under the weights directory, where it comes from, its SHA-256.

    ``sha256`` is 64 hex digits; a shorter value is the SHA-256 prefix torchvision puts in its file names (and
    torch hub checks); None means no checksum was published that medgen could check (``fetch`` then needs
    ``--unverified``).
    """

    path: str  # relative to the weights directory, "/"-separated
    url: str
    sha256: str | None

    def matches(self, digest: str) -> bool:
        return self.sha256 is not None and digest.startswith(self.sha256.lower())

    def in_hub(self, hub: str | os.PathLike) -> Path:
        """Where it is in the torch hub directory ``hub`` (its path names the weights directory's ``hub/``)."""
        return Path(hub) / Path(self.path).relative_to("hub")


@dataclass(frozen=True)
class Network:
    """A pretrained network medgen can use, and the files it needs in the weights directory."""

    name: str
    use: str  # what medgen uses it for
    source: str  # where fetch gets it from
    files: tuple[WeightFile, ...]
    # FID/KID: how FeatureExtractor prepares images for it (in_channels, mean, std); None: not a feature network
    feature_defaults: dict | None = field(default=None, hash=False, compare=False)

    @property
    def weights(self) -> WeightFile:
        """Its own weights file: the last of ``files`` (the others are code, shared by the hub networks)."""
        return self.files[-1]

    @property
    def checksums(self) -> str:
        """How its files are checked: ``sha256``, ``sha256 prefix`` (torchvision's) or ``none published``."""
        recorded = [f.sha256 for f in self.files]
        if None in recorded:
            return "none published"
        return "sha256" if all(len(s) == 64 for s in recorded) else "sha256 prefix"

    def has_weights(self, home: str | os.PathLike | None = None) -> bool:
        return ((Path(home) if home is not None else weights_home()) / self.weights.path).is_file()

    @property
    def hub(self) -> bool:
        """Loaded through the torch hub checkout of MONAI's perceptual-models repository."""
        return any(f.path.startswith(f"hub/{HUB_CHECKOUT}/") for f in self.files)

    @property
    def weights_first(self) -> tuple[WeightFile, ...]:
        """``files`` with the weights file first: the one to name when several are missing."""
        return (self.weights, *self.files[:-1])

    def missing(self, home: str | os.PathLike | None = None) -> list[Path]:
        """Its files that are not in the weights directory ``home``, the weights file first."""
        home = Path(home) if home is not None else weights_home()
        return [home / f.path for f in self.weights_first if not (home / f.path).is_file()]


def _code(path: str, sha256: str) -> WeightFile:
    url = f"https://raw.githubusercontent.com/{MONAI_HUB_REPO}/{PERCEPTUAL_MODELS_COMMIT}/{path}"
    return WeightFile(f"hub/{HUB_CHECKOUT}/{path}", url, sha256)


# The checkout every hub network needs (hubconf.py imports both model modules). SHA-256 of each file at
# PERCEPTUAL_MODELS_COMMIT, computed from the repository's own blobs.
_HUB_CODE = (
    _code("hubconf.py", "31bf6fb178b1aafb325f8456badd26acf16ce401ddd081db8bfe891205f0ffae"),
    _code("radimagenet/resnet.py", "62de059159086b326da972ddacdcd8d9f4d1de6b09f0eceb3c2517119de3685e"),
    _code("medicalnet/resnet.py", "3dc09033099addeee952f5c8e55261c43bcdb4eb8f2b9a95f2398f24ac29599b"),
    _code("LICENSE", "c71d239df91726fc519c6eb72d318ec65820627232b2f796219e87dcf35d0ab4"),  # Apache-2.0, travels with the code
)
_HUB_SOURCE = f"torch hub {MONAI_HUB_REPO}@{PERCEPTUAL_MODELS_COMMIT[:7]} + huggingface.co/MONAI/checkpoints"


def _monai_checkpoint(file: str, sha256: str | None) -> WeightFile:
    return WeightFile(f"hub/monai_checkpoints/{file}", f"{_HF_CHECKPOINTS}/{file}", sha256)


def _torchvision(file: str) -> WeightFile:
    # torchvision names its files <arch>-<first 8 hex digits of the SHA-256>.pth; that prefix is all it publishes
    return WeightFile(f"hub/checkpoints/{file}", f"{_TORCHVISION}/{file}", file.rsplit("-", 1)[1].split(".")[0])


BUILTIN = (
    Network(
        "radimagenet_resnet50", "2D perceptual (also 2.5D on volumes); FID/KID features", _HUB_SOURCE,
        # SHA-256 as published by Hugging Face for MONAI/checkpoints (the file's LFS pointer)
        (*_HUB_CODE, _monai_checkpoint("RadImageNet-ResNet50_notop.pth",
                                       "2457479b254569e5a81ba48fee6c5b2b84b7a729e507aaa2466101aedb8e5c37")),
        # RadImageNet's training preprocessing, as MONAI's RadImageNetPerceptualSimilarity applies it: 3 channels,
        # mean subtracted, no scaling (grayscale images repeated to 3 channels, so its BGR order makes no difference)
        feature_defaults={"in_channels": 3, "mean": [0.406, 0.456, 0.485], "std": [1.0, 1.0, 1.0]},
    ),
    # No SHA-256 of the two MedicalNet files could be checked against a published value: fetch needs --unverified.
    Network("medicalnet_resnet10_23datasets", "3D perceptual (whole volumes)", _HUB_SOURCE,
            (*_HUB_CODE, _monai_checkpoint("medicalnet_resnet_10_23dataset.pth", None))),
    Network("medicalnet_resnet50_23datasets", "3D perceptual (whole volumes)", _HUB_SOURCE,
            (*_HUB_CODE, _monai_checkpoint("medicalnet_resnet50_23datasets.pth", None))),
    # torchvision networks (need `pip install torchvision`; alex, vgg and squeeze also `pip install lpips`)
    Network("resnet50", "2D perceptual (torchvision ImageNet ResNet50)", "download.pytorch.org",
            (_torchvision("resnet50-11ad3fa6.pth"),)),
    Network("alex", "2D perceptual (LPIPS on torchvision AlexNet)", "download.pytorch.org",
            (_torchvision("alexnet-owt-7be5be79.pth"),)),
    Network("vgg", "2D perceptual (LPIPS on torchvision VGG16)", "download.pytorch.org",
            (_torchvision("vgg16-397923af.pth"),)),
    Network("squeeze", "2D perceptual (LPIPS on torchvision SqueezeNet 1.1)", "download.pytorch.org",
            (_torchvision("squeezenet1_1-b8a52dc0.pth"),)),
)


def weights_home() -> Path:
    """The weights directory: ``$MEDGEN_HOME``, else ``$XDG_CACHE_HOME/medgen``, else ``~/.cache/medgen``."""
    if os.environ.get(ENV_HOME):
        return Path(os.environ[ENV_HOME]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "medgen"


def hub_dir(home: str | os.PathLike | None = None) -> Path:
    """The torch hub directory inside the weights directory."""
    return (Path(home) if home is not None else weights_home()) / "hub"


def registry_override() -> str | None:
    """The JSON registry named by ``MEDGEN_WEIGHTS_REGISTRY``, which replaces medgen's own; None when unset."""
    return os.environ.get(ENV_REGISTRY) or None


def _load_registry(path: str) -> tuple[Network, ...]:
    try:
        data = json.loads(Path(path).read_text())
        return tuple(
            Network(n["name"], n["use"], n["source"], tuple(WeightFile(**f) for f in n["files"]), n.get("feature_defaults"))
            for n in data["networks"]
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise WeightsError(f"{ENV_REGISTRY}={path} is not a readable weights registry ({type(e).__name__}: {e}); "
                           f"unset {ENV_REGISTRY} to use medgen's own") from None


def registry() -> dict[str, Network]:
    """Every network medgen can use, by name (the ``MEDGEN_WEIGHTS_REGISTRY`` file's, when set)."""
    override = registry_override()
    return {n.name: n for n in (_load_registry(override) if override else BUILTIN)}


def network(name: str) -> Network:
    """The registry entry ``name``; a WeightsError listing the names when there is none."""
    known = registry()
    if name not in known:
        raise WeightsError(f"no pretrained network {name!r} in medgen's registry; known: {', '.join(known)}")
    return known[name]


def how_to_get(name: str) -> str:
    """The commands that put network ``name`` into the weights directory (one sentence part)."""
    return (f"on a machine with internet run `medgen weights fetch {name}`; for an offline machine run "
            f"`medgen weights export {name} {name}.tar` on one that has it and `medgen weights import {name}.tar` "
            "on the offline one")


def require(name: str, home: str | os.PathLike | None = None) -> Network:
    """The network ``name``, after checking that all its files are in the weights directory ``home``."""
    net, home = network(name), Path(home) if home is not None else weights_home()
    missing = net.missing(home)
    if missing:
        raise WeightsError(f"pretrained network {name} is not in the weights directory {home} (no {missing[0]}); "
                           f"{how_to_get(name)}")
    return net


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _download(url: str, dst: Path, progress: bool = False) -> None:
    """``url`` (https, http or file) into ``dst`` by torch hub's downloader, which writes a ``.partial`` file beside
    ``dst`` and removes it when the download fails or is interrupted."""
    from torch.hub import download_url_to_file

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(60)  # download_url_to_file takes no timeout: a stalled server fails instead of hanging
    try:
        download_url_to_file(url, str(dst), progress=progress)
    except (OSError, http.client.HTTPException) as e:  # URLError, HTTPError, timeouts, a refused or cut connection
        raise WeightsError(f"downloading {url} failed ({getattr(e, 'reason', None) or e}); nothing was written. "
                           "`medgen weights fetch` needs internet access; on an offline machine use "
                           "`medgen weights import ARCHIVE`") from None
    finally:
        socket.setdefaulttimeout(previous)


@contextlib.contextmanager
def _staging(home: Path) -> Iterator[Path]:
    """A temporary folder inside ``home`` (same file system, so files move into place atomically), removed
    afterwards whatever happens; ``home`` itself is removed again if this created it and it stayed empty."""
    created = not home.exists()
    home.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=home, prefix=".tmp-weights-"))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if created and not any(home.iterdir()):
            home.rmdir()


def _place(files: Iterable[tuple[Path, Path]], home: Path, hub: bool) -> None:
    """Move verified files from the staging folder to their places (each move atomic)."""
    for tmp, target in files:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)
    if hub:  # what torch hub writes once a repository is trusted; a read-only copy then needs no write at load
        trusted = hub_dir(home) / "trusted_list"
        owner_name = MONAI_HUB_REPO.replace("/", "_")
        if owner_name not in (trusted.read_text().split() if trusted.is_file() else []):
            with open(trusted, "a") as f:
                f.write(owner_name + "\n")


def _mismatch(what: str, digest: str, wf: WeightFile, name: str, fix: str) -> WeightsError:
    return WeightsError(f"{what} has SHA-256 {digest}, but medgen records {wf.sha256} for {wf.path} of {name}; {fix}")


def fetch(name: str, home: str | os.PathLike | None = None, unverified: bool = False,
          progress: bool = False) -> list[Path]:
    """Download network ``name`` from its source into the weights directory ``home``, verifying each file's
    SHA-256 before anything is placed: a wrong file leaves nothing behind. Files already there with the
    recorded checksum are kept. Returns the network's files.

    Args:
        unverified: also fetch files for which medgen records no checksum.
        progress: draw download progress bars (on stderr).
    """
    net, home = network(name), Path(home) if home is not None else weights_home()
    unchecked = [f for f in net.files if f.sha256 is None]
    if unchecked and not unverified:
        raise WeightsError(f"medgen records no SHA-256 for {unchecked[0].path} of {name} (none is published that "
                           f"medgen could check), so its download cannot be verified; to fetch it anyway run "
                           f"`medgen weights fetch {name} --unverified`")
    with _staging(home) as stage:
        todo = []
        for i, wf in enumerate(net.files):
            target = home / wf.path
            if target.is_file() and (wf.sha256 is None or wf.matches(sha256_file(target))):
                continue
            tmp = stage / str(i)
            _download(wf.url, tmp, progress)
            digest = sha256_file(tmp)
            if wf.sha256 is not None and not wf.matches(digest):
                raise _mismatch(f"the download of {wf.url}", digest, wf, name,
                                "nothing was written; the source changed or the download was damaged, so try again "
                                "and report it if it persists")
            todo.append((tmp, target))
        _place(todo, home, net.hub)
    return [home / f.path for f in net.files]


def _anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o644
    return info


def export(name: str, archive: str | os.PathLike, home: str | os.PathLike | None = None) -> Path:
    """Write network ``name`` from the weights directory into the single file ``archive`` (a tar holding a
    manifest of every file's SHA-256, then the files in their layout), after verifying each file."""
    home, archive = Path(home) if home is not None else weights_home(), Path(archive)
    net = require(name, home)
    if archive.exists():
        raise OutputExistsError(f"{archive} already exists; medgen never overwrites it: remove it or name another file")
    entries = []
    for wf in net.files:
        digest = sha256_file(home / wf.path)
        if wf.sha256 is not None and not wf.matches(digest):
            raise _mismatch(str(home / wf.path), digest, wf, name,
                            f"nothing was exported; delete it and run `medgen weights fetch {name}`")
        entries.append({"path": wf.path, "sha256": digest, "size": (home / wf.path).stat().st_size})
    manifest = json.dumps({"format": ARCHIVE_FORMAT, "networks": [name], "files": entries}, indent=1).encode()
    with atomic_path(archive) as tmp, tarfile.open(tmp, "w") as tar:
        info = _anonymous(tarfile.TarInfo(MANIFEST))
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
        for wf in net.files:
            tar.add(home / wf.path, arcname=wf.path, recursive=False, filter=_anonymous)
    return archive


def _read_manifest(tar: tarfile.TarFile, archive: Path) -> dict:
    try:
        member = tar.next()
        if member is None or member.name != MANIFEST or not member.isfile():
            raise ValueError(f"its first member is not {MANIFEST}")
        manifest = json.loads(tar.extractfile(member).read())
        if not isinstance(manifest, dict) or manifest.get("format") != ARCHIVE_FORMAT:
            raise ValueError(f"unknown format {manifest.get('format') if isinstance(manifest, dict) else None!r}")
        if not manifest.get("networks") or not all(isinstance(n, str) for n in manifest["networks"]) or not all(
                isinstance(e, dict) and isinstance(e.get("path"), str) and isinstance(e.get("sha256"), str)
                for e in manifest.get("files", [None])):
            raise ValueError(f"its {MANIFEST} does not list networks and files")
        return manifest
    except (ValueError, KeyError, tarfile.TarError, EOFError, OSError) as e:
        raise WeightsError(f"{archive} is not a weights archive made by `medgen weights export` ({e}); "
                           "export it again on the machine that has the network") from None


@dataclass
class Imported:
    """What :func:`import_archive` placed."""

    networks: list[str]
    files: list[Path]
    unverified: list[str]  # files for which medgen records no checksum (checked against the archive's manifest only)


def import_archive(archive: str | os.PathLike, home: str | os.PathLike | None = None) -> Imported:
    """Place the networks of an archive made by :func:`export` into the weights directory ``home``.

    Every file is checked against the archive's manifest (a damaged copy) and against the SHA-256 medgen
    records (another file); on any mismatch nothing is placed. Files must be exactly the registry's layout
    of the archive's networks; nothing outside it is ever written.
    """
    archive, home = Path(archive), Path(home) if home is not None else weights_home()
    if not archive.is_file():
        raise MissingInputError(f"weights archive {archive} does not exist; make it with `medgen weights export NAME {archive.name}`")
    redo = "nothing was imported; export it again with `medgen weights export` on the machine that has the network"
    try:
        tar = tarfile.open(archive, "r:")  # export writes a plain tar: the weights do not compress
    except (tarfile.TarError, OSError) as e:
        raise WeightsError(f"{archive} is not a weights archive made by `medgen weights export` ({e})") from None
    with tar:
        manifest = _read_manifest(tar, archive)
        names = manifest["networks"]
        expected = {wf.path: (n, wf) for n in names for wf in network(n).files}
        listed = {e["path"]: e for e in manifest["files"]}
        if set(listed) != set(expected):
            odd = sorted(set(listed) ^ set(expected))[0]
            raise WeightsError(f"{archive} does not hold the files medgen expects for {', '.join(names)} "
                               f"({odd} is {'extra' if odd in listed else 'missing'}); {redo}")
        todo, unverified, seen = [], [], set()
        with _staging(home) as stage:
            try:
                for member in tar:
                    if member.name == MANIFEST:  # read above (iteration starts again at the first member)
                        continue
                    name, wf = expected.get(member.name, (None, None))
                    if wf is None or not member.isfile() or member.name in seen:
                        raise WeightsError(f"{archive} holds {member.name!r}, which is not a file of "
                                           f"{', '.join(names)}; {redo}")
                    seen.add(member.name)
                    tmp = stage / str(len(todo))
                    with tar.extractfile(member) as src, open(tmp, "wb") as out:
                        shutil.copyfileobj(src, out)
                    digest = sha256_file(tmp)
                    if digest != listed[member.name]["sha256"]:
                        raise WeightsError(f"{member.name} in {archive} has SHA-256 {digest}, not the "
                                           f"{listed[member.name]['sha256']} it had when exported: the archive is damaged; {redo}")
                    if wf.sha256 is None:
                        unverified.append(wf.path)
                    elif not wf.matches(digest):
                        raise _mismatch(f"{member.name} in {archive}", digest, wf, name, redo)
                    todo.append((tmp, home / wf.path))
            except (tarfile.TarError, EOFError) as e:
                raise WeightsError(f"{archive} is truncated or damaged ({e}); {redo}") from None
            if len(todo) != len(expected):
                raise WeightsError(f"{archive} is truncated: it holds {len(todo)} of the {len(expected)} files its "
                                   f"manifest lists; {redo}")
            _place(todo, home, any(network(n).hub for n in names))
    return Imported(names, [t for _, t in todo], unverified)


@dataclass
class Check:
    """One file of a network present (at least in part) in the weights directory."""

    network: str
    path: Path
    status: str  # "ok", "mismatch", "missing", "unverified" (no recorded checksum)
    digest: str | None = None
    expected: str | None = None


def verify(home: str | os.PathLike | None = None) -> list[Check]:
    """Recompute the SHA-256 of the files of every network whose weights file is in the weights directory
    ``home`` (its other files, when absent, are reported missing)."""
    home = Path(home) if home is not None else weights_home()
    digests: dict[Path, str] = {}  # the hub code is shared by three networks: hash it once
    checks = []
    for net in registry().values():
        if not net.has_weights(home):
            continue
        for wf in net.files:
            path = home / wf.path
            if not path.is_file():
                checks.append(Check(net.name, path, "missing", expected=wf.sha256))
                continue
            if path not in digests:
                digests[path] = sha256_file(path)
            digest = digests[path]
            status = "unverified" if wf.sha256 is None else "ok" if wf.matches(digest) else "mismatch"
            checks.append(Check(net.name, path, status, digest, wf.sha256))
    return checks


def mismatch_error(check: Check, count: int) -> WeightsError:
    """The one-line error for a file :func:`verify` found changed (``count`` such files in all)."""
    more = f" ({count - 1} more changed file{'s' if count > 2 else ''})" if count > 1 else ""
    return WeightsError(f"{check.path} has SHA-256 {check.digest}, but medgen records {check.expected} for "
                        f"{check.network}{more}; delete it and run `medgen weights fetch {check.network}` "
                        f"(or `medgen weights import ARCHIVE`)")


def load_network(name: str, home: str | os.PathLike | None = None):
    """The torch module of hub network ``name``, built by its own hub entry point from the weights directory
    (torch hub's local source: no trust prompt, no network access; every file is checked present first, so the
    entry point never reaches for a download)."""
    import torch

    home = Path(home) if home is not None else weights_home()
    net = require(name, home)
    if not net.hub:
        raise WeightsError(f"pretrained network {name} is not a torch hub network; it cannot be loaded by name")
    try:
        with warnings.catch_warnings():  # the hub code checks no hash; medgen does at fetch, import and verify
            warnings.filterwarnings("ignore", message="No hash value provided")
            return torch.hub.load(str(hub_dir(home) / HUB_CHECKOUT), name, source="local", verbose=False,
                                  cache_dir=str(hub_dir(home)))
    except Exception as e:  # its files are here but are not what its code expects
        raise WeightsError(f"loading pretrained network {name} from {home} failed ({type(e).__name__}: {e}); "
                           "`medgen weights verify` checks its files") from e


def registry_json(networks: Iterable[Network]) -> str:
    """``networks`` in the JSON form ``MEDGEN_WEIGHTS_REGISTRY`` reads."""
    return json.dumps({"networks": [asdict(n) for n in networks]}, indent=1)
