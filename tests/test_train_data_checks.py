"""Training runs the same data check as `medgen check-data`, and keeps patient identifiers out of run_dir."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from conftest import TINY
from conftest import train_vae as main

IDENTIFIERS = {
    "PatientName": "Kowalczyk^Marianne",
    "PatientID": "PID-5550123",
    "PatientBirthDate": "19631107",
    "StudyDate": "20240229",
    "InstitutionName": "Lakeside Dental Clinic",
    "AccessionNumber": "ACC-77112233",
    "ReferringPhysicianName": "Oyelaran^Tobi",
}


def _sets(demo, run, *extra):
    return ["vae_config.json", *[f"--set={o}" for o in (*TINY, f"data_base_dir={demo}", f"run_dir={run}",
                                                          "autoencoder_train.max_epochs=1", *extra)]]


@pytest.fixture()
def data_with_bad_files(demo2d, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(demo2d, data)
    (data / "dente" / "empty.dcm").write_bytes(b"")
    (data / "dente" / "notes.dcm").write_text("clinical notes, not an image\n")
    good = next((data / "edente").glob("*.dcm"))
    (data / "edente" / "truncated.dcm").write_bytes(good.read_bytes()[:600])
    ds = pydicom.dcmread(good)
    ds.PixelData = np.full((ds.Rows, ds.Columns), 100, dtype=np.uint16).tobytes()
    ds.save_as(data / "edente" / "constant.dcm")
    return data


def test_training_refuses_bad_files_with_the_check_report(data_with_bad_files, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_sets(data_with_bad_files, run)) == 2
    err = capsys.readouterr().err
    assert "4 of" in err and "skip_bad_files=true" in err
    for name, reason in (("dente/empty.dcm", "empty"), ("dente/notes.dcm", "not_dicom"),
                         ("edente/truncated.dcm", "truncated"), ("edente/constant.dcm", "constant")):
        line = next(line for line in err.splitlines() if name in line)
        assert reason in line
    assert not (run / "checkpoints").exists()


def test_skip_bad_files_trains_on_the_rest_and_lists_them(data_with_bad_files, tmp_path):
    run = tmp_path / "run"
    assert main(_sets(data_with_bad_files, run, "skip_bad_files=true")) == 0
    skipped = json.loads((run / "skipped_files.json").read_text())
    assert sorted(f["path"] for f in skipped["files"]) == [
        "dente/empty.dcm", "dente/notes.dcm", "edente/constant.dcm", "edente/truncated.dcm"]
    assert (run / "checkpoints" / "last.pt").is_file()


def test_a_rerun_does_not_overwrite_an_existing_run(demo2d, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_sets(demo2d, run)) == 0
    before = (run / "checkpoints" / "last.pt").read_bytes()
    assert main(_sets(demo2d, run)) == 2
    assert "resume_ckpt=true" in capsys.readouterr().err
    assert (run / "checkpoints" / "last.pt").read_bytes() == before


def test_patient_identifiers_never_reach_run_dir_or_console(demo2d, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(demo2d, data)
    uids = []
    for path in data.rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        for key, value in IDENTIFIERS.items():
            setattr(ds, key, value)
        ds.StudyInstanceUID = pydicom.uid.generate_uid()
        ds.SeriesInstanceUID = pydicom.uid.generate_uid()
        uids += [ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID]
        ds.save_as(path)
    run = tmp_path / "run"
    assert main(_sets(data, run)) == 0
    from medgen.cli import main as cli

    report = tmp_path / "report.json"
    assert cli(["check-data", str(data), "--json", str(report)]) == 0
    out = capsys.readouterr()
    secrets = [*IDENTIFIERS.values(), *uids, "Kowalczyk", "19631107", "Lakeside"]
    files = [p for p in run.rglob("*") if p.is_file()] + [report]
    assert len(files) > 5
    for path in files:
        blob = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in blob, f"{secret} found in {path}"
    for secret in secrets:
        assert secret not in out.out + out.err


def test_a_file_that_breaks_mid_run_is_skipped_and_reported(demo2d, tmp_path):
    from medgen.config import load_config
    from medgen.training.vae import VAETrainer

    data = tmp_path / "data"
    shutil.copytree(demo2d, data)
    run = tmp_path / "run"
    cfg = load_config("vae_config.json", [*TINY, f"data_base_dir={data}", f"run_dir={run}", "cache=none",
                                          "autoencoder_train.max_epochs=1"])
    trainer = VAETrainer.from_config(cfg)  # scans: every file is fine now
    victim = Path(trainer.train_items[0]["image"])
    victim.write_bytes(victim.read_bytes()[:300])  # the file is cut short after the scan
    trainer.fit()
    lines = [json.loads(line) for line in (run / "unreadable_rank0.jsonl").read_text().splitlines()]
    rel = str(victim.relative_to(data))
    assert {"path": rel, "reason": "truncated"} in lines
    assert (run / "checkpoints" / "last.pt").is_file()


def test_check_data_reads_a_config_with_the_trainers_loader(demo2d, tmp_path, capsys):
    from medgen.cli import main as cli

    data = json.loads(Path("vae_config.json").read_text())
    data.update(data_base_dir=str(demo2d), data_source="both")
    config = tmp_path / "c.json"
    config.write_text(json.dumps(data))
    assert cli(["check-data", str(config)]) == 1  # the demo images (40 px) are smaller than the 256 px patch
    assert "too_small" in capsys.readouterr().out
    data["autoencoder_train"]["patch_size"] = [32, 32]
    config.write_text(json.dumps(data))
    assert cli(["check-data", str(config)]) == 0
    data["autoencoder_def"]["norm_num_groups"] = 48
    config.write_text(json.dumps(data))
    assert cli(["check-data", str(config)]) == 2
    assert "autoencoder_def.norm_num_groups=48" in capsys.readouterr().err
