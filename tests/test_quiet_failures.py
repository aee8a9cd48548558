"""Failures that used to pass in silence: a joint calibration whose coverage check failed (calibrate and combine say so
in one warning and calibration.json records it), evaluate leaving out images with no target value, and evaluate on
images the run's OOD reference flags. Each runs `deeplense` as a user's script does, on the tiny shared runs."""
import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import deeplense, ok


def _binomial_rule(c68: float, c95: float, k: int) -> bool:
    "The check as documented: both coverages within 2 binomial standard errors of 0.68 and 0.95 over k populations."
    return abs(c68 - 0.68) <= 2 * np.sqrt(0.68 * 0.32 / k) and abs(c95 - 0.95) <= 2 * np.sqrt(0.95 * 0.05 / k)


@pytest.fixture(scope="module")
def calibrated(tiny_data, tiny_flow, tmp_path_factory):
    "A copy of the tiny flow run calibrated as the user did (--bank 0, 20 populations of 10): (run, the command)."
    run = tmp_path_factory.mktemp("quiet") / "run"
    shutil.copytree(tiny_flow[0], run)
    r = ok(deeplense("calibrate", "--model", run, "--data", tiny_data.data, "--force", "--populations", "model_ii",
                     "--bank", 0, "--trials", 20, "--lenses", 10, env=tiny_data.env))
    return run, r


def _warnings(text: str, start: str) -> list:
    return [l for l in text.splitlines() if l.startswith(start)]


def test_calibrate_records_and_says_a_failed_joint_check(calibrated):
    run, r = calibrated
    chk = json.loads((run / "calibration.json").read_text())["joint"]["log10_m_axion"]["joint_check"]
    assert chk["populations"] == 20 and chk["floor"] >= 0 and "2 binomial standard errors" in chk["rule"]
    # the oracle: the coverage calibrate printed for its 10-lens populations, judged by the stated rule
    line = next(l for l in r.stdout.splitlines() if l.startswith("aggregate+floor"))
    c68, c95 = (int(v) / 100 for v in line.split("held the truth in ")[1].rstrip("%").split("% and "))
    assert chk["passed"] == _binomial_rule(c68, c95, 20)
    said = _warnings(r.stderr, "warning: the joint intervals are not calibrated")
    assert len(said) == (0 if chk["passed"] else 1), r.stderr
    if said:
        assert f"{c68:.0%} and 95% in {c95:.0%} of 20 populations of 10 lenses" in said[0], said[0]
        assert "combine's joint intervals will be" in said[0]


def test_combine_repeats_a_failed_check_and_old_files_stay_quiet(calibrated, tiny_data, tmp_path):
    run, _ = calibrated
    lenses = tmp_path / "lenses.npy"            # eight training-like lenses, nothing out of distribution
    np.save(lenses, np.load(tiny_data.data / "images.npy")[:8].astype(np.float32).reshape(8, 64, 64))
    f = run / "calibration.json"
    full = json.loads(f.read_text())
    rec = full["joint"]["log10_m_axion"]

    def combine_warnings(check):
        cal = json.loads(json.dumps(full))
        if check is None: cal["joint"]["log10_m_axion"].pop("joint_check")      # a calibration.json from before
        else: cal["joint"]["log10_m_axion"]["joint_check"] = check
        f.write_text(json.dumps(cal))
        out = tmp_path / "joint.json"
        out.unlink(missing_ok=True)
        r = ok(deeplense("combine", "--model", run, lenses, "--json", out, env=tiny_data.env))
        assert "(aggregate+floor, systematic floor" in r.stdout
        assert json.loads(out.read_text())["log10_m_axion"]["check"] == check     # --json records the check used
        return _warnings(r.stderr, "warning:")

    failed = combine_warnings(dict(rec["joint_check"], passed=False))
    assert len(failed) == 1 and "failed its check in calibrate" in failed[0] and "of 20 populations" in failed[0]
    assert combine_warnings(dict(rec["joint_check"], passed=True)) == []
    assert combine_warnings(None) == []
    f.write_text(json.dumps(full))


def test_evaluate_says_which_images_it_left_out(tiny_run, tiny_data, tmp_path):
    "9 images of three classes: only the 3 axion lenses have a mass; the 6 others are counted, with why, in one note."
    ok(deeplense("simulate", "--n", 9, "--seed", 5, "--classes", "no_sub,cdm,axion", "--out", tmp_path / "mixed",
                 env=tiny_data.env))
    r = ok(deeplense("evaluate", "--model", tiny_run[0], "--data", tmp_path / "mixed", "--json", tmp_path / "m.json",
                     env=tiny_data.env))
    assert "test images: 3" in r.stdout
    said = [l for l in r.stderr.splitlines() if "left out" in l]
    assert said == ["note: 6 of 9 images have no value of log10_m_axion (cdm 3, no_sub 3: NaN or empty in the labels) "
                    "and are left out: these metrics are on the other 3"], r.stderr
    assert json.loads((tmp_path / "m.json").read_text())["left_out"] == 6


def test_evaluate_counts_the_images_predict_flags_ood(tiny_flow, tiny_data, tmp_path):
    "Four lenses and four frames of noise: evaluate counts the images the OOD reference flags, as predict does."
    lenses = np.load(tiny_data.data / "images.npy")[:4].astype(np.float32).reshape(4, 64, 64)
    noise = np.random.default_rng(0).normal(size=(4, 64, 64)).astype(np.float32)
    np.save(tmp_path / "mix.npy", np.concatenate([lenses, noise]))
    pd.read_csv(tiny_data.data / "labels.csv")[["log10_m_axion"]][:8].to_csv(tmp_path / "mix.csv", index=False)
    p = ok(deeplense("predict", "--model", tiny_flow[0], tmp_path / "mix.npy", env=tiny_data.env))
    k = int(pd.read_csv(io.StringIO(p.stdout))["ood"].sum())
    assert k >= 4                                # the oracle: predict's own flags (noise is nothing like a lens)
    r = ok(deeplense("evaluate", "--model", tiny_flow[0], "--data", tmp_path / "mix.npy", "--json", tmp_path / "m.json",
                     env=tiny_data.env))
    said = [l for l in r.stderr.splitlines() if "unlike the run's training images" in l]
    assert len(said) == 1 and said[0].startswith(f"note: {k} of 8 images are unlike"), r.stderr
    assert json.loads((tmp_path / "m.json").read_text())["ood"] == k
