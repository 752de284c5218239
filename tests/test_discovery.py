"""One way in for data: a config or a command-line path names the same images for training, check-data,
reconstruct/encode and the bundles, with one rule for relative paths."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import ROOT
from medgen.cli import main
from medgen.config import ConfigError, load_config
from medgen.inference.inputs import find_inputs
from medgen.io.discovery import data_source, discover_items, folder_items


@pytest.fixture()
def project(tmp_path, demo2d):
    """project/data (edente/, dente/) and project/config.json naming it relatively, run from another folder."""
    proj = tmp_path / "project"
    shutil.copytree(demo2d, proj / "data")
    config = json.loads((ROOT / "vae_config.json").read_text())
    config.update(data_base_dir="data", data_source="both", spatial_dims=2)
    config["autoencoder_train"]["patch_size"] = [32, 32]
    (proj / "config.json").write_text(json.dumps(config))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    return proj, elsewhere


def test_relative_data_path_resolves_beside_the_config_for_every_consumer(project, monkeypatch, capsys):
    proj, elsewhere = project
    monkeypatch.chdir(elsewhere)
    cfg = load_config(proj / "config.json")
    assert cfg.data_base_dir == str(proj / "data")
    train, val = discover_items(cfg)
    # check-data reads exactly what training reads
    assert main(["check-data", str(proj / "config.json"), "--workers", "0"]) == 0
    assert "edente: 5 usable" in capsys.readouterr().out
    source = data_source(proj / "config.json")
    assert (source.train, source.val) == (train, val)
    # reconstruct/encode take the same validation split
    assert sorted(str(i.path) for i in find_inputs(proj / "config.json")) == sorted(it["image"] for it in val)


def test_a_relative_path_that_exists_here_wins(project, monkeypatch):
    proj, elsewhere = project
    shutil.copytree(proj / "data", elsewhere / "data")
    monkeypatch.chdir(elsewhere)
    assert load_config(proj / "config.json").data_base_dir == "data"


def test_folder_file_and_series_sources(demo2d, demo3d):
    both = folder_items(demo2d)
    assert {it["label"] for it in both} == {"edente", "dente"} and len(both) == 10
    only = data_source(demo2d / "dente")
    assert len(only.train) == 5 and only.val == [] and only.config is None
    one = next((demo2d / "edente").glob("*.dcm"))
    assert data_source(one).train == [{"image": str(one), "label": None}]
    series = next((demo3d / "dente").iterdir())
    assert [it["image"] for it in data_source(series).train] == [str(series)]  # a series folder is one volume


def test_a_missing_class_folder_names_the_fix(tmp_path, demo2d):
    shutil.copytree(demo2d / "dente", tmp_path / "dente")
    cfg = load_config(ROOT / "vae_config.json", [f"data_base_dir={tmp_path}", "data_source=both"])
    with pytest.raises(ConfigError, match=r'no images found in .*edente .*set data_source="dente"') as err:
        discover_items(cfg)
    assert "demo-data" not in str(err.value)  # never suggest writing demo data into a real data folder
    with pytest.raises(ConfigError, match="does not exist"):
        data_source(tmp_path / "nowhere")


def test_a_class_folder_of_unreadable_files_never_gets_the_demo_data_hint(tmp_path):
    (tmp_path / "edente").mkdir()
    (tmp_path / "edente" / "notes.txt").write_text("not an image")
    cfg = load_config(ROOT / "vae_config.json", [f"data_base_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="holds files but none medgen reads as an image; `medgen check-data") as err:
        discover_items(cfg)
    assert "demo-data" not in str(err.value)


def test_relative_names_of_linked_subsets_and_of_items_outside_the_base(tmp_path):
    from medgen.io.discovery import relative_name

    (tmp_path / "all" / "dente").mkdir(parents=True)
    (tmp_path / "all" / "dente" / "a.png").write_bytes(b"")
    (tmp_path / "subset" / "dente").mkdir(parents=True)
    (tmp_path / "subset" / "dente" / "a.png").symlink_to(tmp_path / "all" / "dente" / "a.png")
    assert relative_name(tmp_path / "subset" / "dente" / "a.png", tmp_path / "subset") == "dente/a.png"
    assert relative_name(tmp_path / "all" / "dente" / "a.png", tmp_path / "subset") == "../all/dente/a.png"
    (tmp_path / "linked_base").symlink_to(tmp_path / "all")  # a base given by a link, items by their real paths
    assert relative_name(tmp_path / "all" / "dente" / "a.png", tmp_path / "linked_base") == "dente/a.png"
