"""Every `deeplense` command on every input kind it accepts, run as a user runs it: a subprocess without a TTY,
default flags (progress bars on), tiny sizes. What a command cannot take must exit 2 with one line naming it.

The inputs are built here from their published layouts (not through the library's writers, except where the
command under test is `simulate` itself): DeepLense per-file directories with class folders, where `no_sub`/`cdm`
files hold a bare image array (as DeepLenseSim writes them) and axion files hold `[image, mass]`; the DeepLense
2022 memmap pair; `.npy` + CSV; unlabelled stacks (N,H,W), (N,1,H,W), a single (H,W) image, a folder of `.npy`
images; FITS files and a folder of them.
"""
import io
import json
import os
import re
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import deeplense as run, ok, refused, user_env

N_PIX = 64


def lens_like(rng, n, npix=N_PIX):
    "Ring-like positive images with noise (enough structure for min-max scaling)."
    y, x = np.mgrid[:npix, :npix] - (npix - 1) / 2
    r = np.hypot(x, y)
    ring = np.exp(-0.5 * ((r - npix / 4) / 1.5) ** 2)
    return (ring[None] * rng.uniform(5, 20, (n, 1, 1)) + rng.normal(0, 0.3, (n, npix, npix))).astype(np.float32)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("matrix")
    return root, user_env(root, PYTHONWARNINGS=None)


@pytest.fixture(scope="module")
def inputs(env):
    "Every input kind, written directly in its published layout."
    root, _ = env
    rng = np.random.default_rng(0)
    d = {}
    # DeepLense per-file layout: bare arrays for no_sub/cdm (DeepLenseSim), [image, mass] for axion
    dl = root / "deeplense"
    for cls in ("no_sub", "cdm", "axion"):
        (dl / cls).mkdir(parents=True)
    imgs = lens_like(rng, 80)                     # no_sub 0-19, cdm 20-39, axion 40-79: every file a different lens
    masses = 10 ** rng.uniform(-24, -22, 60)
    for i in range(20):
        np.save(dl / "no_sub" / f"no_sub_sim_{i}.npy", imgs[i].astype(np.float64))
        np.save(dl / "cdm" / f"cdm_sim_{i}.npy", imgs[20 + i].astype(np.float64))
    for i in range(40):
        np.save(dl / "axion" / f"axion_sim_{i}.npy", np.array([imgs[40 + i].astype(np.float64), masses[i]], dtype=object),
                allow_pickle=True)
    d["deeplense"] = dl
    # the DeepLense 2022 memmap pair (raw int16 images, float32 masses) with a shape sidecar
    mm = root / "memmap"; mm.mkdir()
    (np.clip(imgs[:40], 0, None) * 100).astype(np.int16).tofile(mm / "images_mmep.npy")
    masses[:40].astype(np.float32).tofile(mm / "masses_mmep.npy")
    (mm / "images_mmep.npy.json").write_text(json.dumps({"shape": [40, N_PIX, N_PIX], "dtype": "int16"}))
    d["memmap"] = mm
    # .npy + CSV
    np.save(root / "mine.npy", imgs[:40])
    pd.DataFrame({"log10_m_axion": np.log10(masses[:40])}).to_csv(root / "mine.csv", index=False)
    d["npy_csv"] = root / "mine.npy"
    # unlabelled inputs
    np.save(root / "stack.npy", imgs[:5]); d["stack"] = root / "stack.npy"
    np.save(root / "stack4.npy", imgs[:3, None]); d["stack4"] = root / "stack4.npy"
    np.save(root / "single.npy", imgs[0]); d["single"] = root / "single.npy"
    folder = root / "folder"; folder.mkdir()
    for i in range(4): np.save(folder / f"lens_{i}.npy", imgs[i])
    d["folder"] = folder
    from astropy.io import fits
    fits.PrimaryHDU(imgs[0]).writeto(root / "one.fits"); d["fits"] = root / "one.fits"
    fits.PrimaryHDU(imgs[:3]).writeto(root / "cube.fits"); d["fits_cube"] = root / "cube.fits"
    ff = root / "fits_folder"; ff.mkdir()
    for i in range(3): fits.PrimaryHDU(imgs[i]).writeto(ff / f"lens_{i}.fits")
    d["fits_folder"] = ff
    return d


@pytest.fixture(scope="module")
def native(env, tiny_data):
    "`deeplense simulate` with default flags: one part (conftest's tiny_data), two shards, and the DeepLense layout."
    root, e = env
    for s in ("0/2", "1/2"): ok(run("simulate", "--n", 48, "--shard", s, "--out", root / "shards", env=e))
    r = ok(run("simulate", "--n", 12, "--format", "deeplense", "--classes", "no_sub,cdm,axion", "--out", root / "sim_dl", env=e))
    assert "wrote" in r.stdout
    return dict(native=tiny_data.data, shards=root / "shards", sim_deeplense=root / "sim_dl")


def test_simulate_outputs(native):
    assert (native["native"] / "images.npy").exists() and (native["native"] / "manifest.json").exists()
    assert len(list(native["shards"].glob("manifest*.json"))) == 2
    assert {p.name for p in native["sim_deeplense"].iterdir()} >= {"axion", "cdm", "no_sub"}


LABELLED = ["native", "shards", "sim_deeplense", "deeplense", "memmap", "npy_csv"]
UNLABELLED = ["stack", "stack4", "single", "folder", "fits", "fits_cube", "fits_folder"]


def path_of(kind, inputs, native):
    return native[kind] if kind in native else inputs[kind]


@pytest.mark.parametrize("kind", LABELLED + UNLABELLED)
def test_info(kind, inputs, native, env):
    r = ok(run("info", path_of(kind, inputs, native), env=env[1]))
    assert re.search(r"\b1 image of |\b\d+ images of ", r.stdout), r.stdout     # the count agrees with its noun


@pytest.fixture(scope="module")
def model(tiny_run):
    "A tiny model trained on the native set with default flags (progress bars on): conftest's tiny_run."
    out, r = tiny_run
    assert "MAE" in r.stdout and "baseline" in r.stdout
    return out


@pytest.mark.parametrize("kind", ["shards", "deeplense", "memmap", "npy_csv"])
def test_train_on_every_labelled_kind(kind, inputs, native, env):
    root, e = env
    out = root / f"train_{kind}"
    r = ok(run("train", "--data", path_of(kind, inputs, native), "--arch", "xresnet_small", "--epochs", 1, "--bs", 8,
               "--out", out, env=e))
    assert "test images" in r.stdout and (out / "weights.safetensors").exists()


@pytest.mark.parametrize("kind", ["stack", "folder", "fits"])
def test_train_refuses_unlabelled(kind, inputs, native, env):
    root, e = env
    refused(run("train", "--data", path_of(kind, inputs, native), "--out", root / f"no_{kind}", env=e), "no labels")
    assert not (root / f"no_{kind}").exists()


@pytest.mark.parametrize("kind", ["native", "shards", "sim_deeplense", "deeplense", "memmap", "npy_csv"])
def test_evaluate_on_labelled_kinds(kind, inputs, native, env, model, tmp_path):
    r = ok(run("evaluate", "--model", model, "--data", path_of(kind, inputs, native), "--json", tmp_path / "m.json",
               env=env[1]))
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["n"] > 0 and "MAE" in r.stdout


def test_evaluate_refuses_unlabelled(inputs, env, model):
    refused(run("evaluate", "--model", model, "--data", inputs["stack"], env=env[1]), "no labels")


PREDICT_COUNTS = dict(native=48, shards=48, sim_deeplense=12, deeplense=80, npy_csv=40, memmap=40, stack=5, stack4=3,
                      single=1, folder=4, fits=1, fits_cube=3, fits_folder=3)


def test_predict_every_kind_to_stdout(inputs, native, env, model):
    "One `deeplense predict` over every input kind at once: the CSV on stdout has one row per image of each."
    paths = {k: path_of(k, inputs, native) for k in PREDICT_COUNTS}
    r = ok(run("predict", "--model", model, *paths.values(), env=env[1]))
    df = pd.read_csv(io.StringIO(r.stdout))               # stdout is the CSV and nothing else
    assert list(df.columns) == ["source", "index", "file", "status", "pred_log10_m_axion", "ood_score", "ood", "in_prior"]   # fixed
    assert df["pred_log10_m_axion"].notna().all() and (df["status"] == "ok").all()
    counts = df.groupby("source").size()
    for k, p in paths.items():
        assert counts[str(p)] == PREDICT_COUNTS[k], k
    for k in ("folder", "deeplense", "fits_folder"):
        assert df.loc[df["source"] == str(paths[k]), "file"].notna().all()


def test_predict_several_inputs_to_file_and_resize_notice(inputs, native, env, model, tmp_path):
    big = tmp_path / "small.npy"
    np.save(big, np.load(inputs["stack"])[:, ::2, ::2])                                     # 32x32 images
    r = ok(run("predict", "--model", model, inputs["stack"], big, "--out", tmp_path / "p.csv", env=env[1]))
    df = pd.read_csv(tmp_path / "p.csv")
    assert len(df) == 10 and set(df["source"]) == {str(inputs["stack"]), str(big)}
    assert "never resized" in r.stderr and "32x32" in r.stderr
    r = ok(run("predict", "--model", model, big, "--pixel-scale", 0.2, env=env[1]))   # said: 2x wider pixels than the run's
    assert "resampled from 0.2 to 0.101" in r.stderr and json.loads((model / "config.json").read_text())["pixel_scale"] == 0.101


def test_predict_bad_pixels_skip_mask_refuse(inputs, env, model, tmp_path):
    "A FITS cutout with NaN borders among good ones: by default its row says why and has no numbers, the rest are predicted."
    import shutil
    from astropy.io import fits
    folder = tmp_path / "cutouts"; shutil.copytree(inputs["fits_folder"], folder)
    img = np.asarray(fits.getdata(sorted(folder.glob("*.fits"))[0]), dtype=np.float32).copy(); img[:4] = np.nan
    fits.writeto(folder / "zz_border.fits", img)
    r = ok(run("predict", "--model", model, folder, env=env[1]))
    df = pd.read_csv(io.StringIO(r.stdout))
    bad = df["file"].str.contains("zz_border")
    assert bad.sum() == 1 and df.loc[bad, "status"].iloc[0].startswith("skipped: 256 of") and df.loc[bad, "pred_log10_m_axion"].isna().all()
    assert (df.loc[~bad, "status"] == "ok").all() and df.loc[~bad, "pred_log10_m_axion"].notna().all()
    assert "note: 1 of 4 images have NaN or Inf pixels" in r.stderr
    df = pd.read_csv(io.StringIO(ok(run("predict", "--model", model, folder, "--bad-pixels", "mask", env=env[1])).stdout))
    assert df["pred_log10_m_axion"].notna().all() and df.loc[df["file"].str.contains("zz_border"), "status"].iloc[0].startswith("masked: 256")
    refused(run("predict", "--model", model, folder, "--bad-pixels", "refuse", env=env[1]), "zz_border.fits", "NaN")
    nan = tmp_path / "nan.npy"; a = np.load(inputs["stack"]); a[2, 3, 3] = np.nan; np.save(nan, a)
    refused(run("predict", "--model", model, nan, "--bad-pixels", "refuse", env=env[1]), "index 2", "NaN")


def test_predict_refuses_bad_images(inputs, env, model, tmp_path):
    cplx = tmp_path / "c.npy"; np.save(cplx, np.load(inputs["stack"]) + 1j)
    refused(run("predict", "--model", model, cplx, env=env[1]), "complex")
    junk = tmp_path / "junk.npy"; junk.write_bytes(os.urandom(300))
    r = run("predict", "--model", model, junk, env=env[1])
    refused(r, "junk.npy", "no NumPy header"); assert "pickle" not in r.stderr
    refused(run("predict", "--model", model, inputs["stack"], "--out", tmp_path, env=env[1]), "is a directory")


def test_bad_run_directories(env, model, inputs, tmp_path):
    import shutil
    for change, words in [(lambda c: c.pop("arch"), ("missing the key 'arch'",)),
                          (lambda c: c.update(arch="vgg99"), ("unknown architecture",))]:
        bad = tmp_path / f"bad{len(list(tmp_path.iterdir()))}"
        shutil.copytree(model, bad)
        cfg = json.loads((bad / "config.json").read_text()); change(cfg)
        (bad / "config.json").write_text(json.dumps(cfg))
        refused(run("predict", "--model", bad, inputs["stack"], env=env[1]), "config.json", *words)


def test_simulate_refuses_more_than_the_disk_holds(env):
    root, e = env
    r = run("simulate", "--n", 100_000_000_000, "--out", root / "huge", env=e)
    refused(r, "GB free")
    assert not (root / "huge").exists()


def test_fine_tune_from_a_run(env, model, inputs):
    root, e = env
    out = root / "ft"
    r = ok(run("train", "--data", inputs["deeplense"], "--init", model, "--freeze-epochs", 1, "--arch", "xresnet_small",
               "--epochs", 1, "--bs", 8, "--out", out, env=e))
    assert json.loads((out / "config.json").read_text())["init"] == str(model)
    refused(run("train", "--data", inputs["deeplense"], "--init", model, "--arch", "resnet18", "--out", root / "ft2", env=e),
            "its arch is")


def test_fits_without_astropy_names_the_extra(inputs, monkeypatch):
    from deeplense_fastai.core import DeepLenseError
    from deeplense_fastai.data import read_fits
    for m in ("astropy", "astropy.io", "astropy.io.fits"): monkeypatch.setitem(sys.modules, m, None)
    with pytest.raises(DeepLenseError, match=r'pip install "deeplense_fastai\[fits\]"'): read_fits(inputs["fits"])


def test_train_online_from_the_cli(env, native):
    "`deeplense train --online`: new simulated training images every batch, nothing written but the run."
    root, e = env
    out = root / "online_run"
    before = set((root / "cache").rglob("*")) if (root / "cache").exists() else set()
    r = ok(run("train", "--online", "--epoch-size", 128, "--test", native["native"], "--arch", "xresnet_small", "--epochs", 1,
               "--bs", 16, "--out", out, env=e))
    assert "online model_ii" in r.stdout and "test images: 48" in r.stdout
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["kind"] == "online"
    new = {p for p in set((root / "cache").rglob("*")) - before if p.is_file()}
    assert not new, new                                           # no training data on disk
    refused(run("train", "--online", "--data", root / "online_run", "--out", root / "o2", env=e), "--online")


# --- posteriors: train --loss flow, predict quantiles and samples, calibrate, combine (issue 13) -------------------

QCOLS = ["q05_log10_m_axion", "q16_log10_m_axion", "q50_log10_m_axion", "q84_log10_m_axion", "q95_log10_m_axion"]


@pytest.fixture(scope="module")
def flow_model(tiny_flow):
    "A tiny posterior model trained on the native set with default flags and --loss flow: conftest's tiny_flow."
    out, r = tiny_flow
    assert "coverage 68%" in r.stdout and "90%" in r.stdout
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["loss"] == "flow" and len(cfg["target_range"][0]) == 2
    assert "posterior calibration on the test set" in r.stdout and (out / "calibration_log10_m_axion.png").exists()
    cal = json.loads((out / "metrics.json").read_text())["calibration"]
    assert len(cal["coverage"]["log10_m_axion"]) == len(cal["levels"]) == 19
    return out


def test_predict_posterior_quantiles_on_every_kind(inputs, native, env, flow_model):
    paths = {k: path_of(k, inputs, native) for k in PREDICT_COUNTS}
    r = ok(run("predict", "--model", flow_model, *paths.values(), "--samples", 3, env=env[1]))
    df = pd.read_csv(io.StringIO(r.stdout))
    assert set(QCOLS) <= set(df.columns) and {f"sample{k}_log10_m_axion" for k in range(3)} <= set(df.columns)
    q = df[QCOLS].to_numpy()
    assert (np.diff(q, axis=1) >= -1e-6).all()                            # quantiles in order
    assert np.allclose(df["pred_log10_m_axion"], df["q50_log10_m_axion"])  # the point summary is the median
    lo, hi = json.loads((flow_model / "config.json").read_text())["target_range"][0]
    assert ((q >= lo - 1e-6) & (q <= hi + 1e-6)).all()                    # inside the prior's range
    assert df.groupby("source").size()[str(paths["fits_cube"])] == PREDICT_COUNTS["fits_cube"]


def test_predict_samples_needs_a_flow_run(inputs, env, model):
    refused(run("predict", "--model", model, inputs["stack"], "--samples", 2, env=env[1]), "--samples", "not a flow run")


def test_calibrate_then_predict(inputs, native, env, flow_model, tmp_path):
    import shutil
    run_dir = tmp_path / "flow"; shutil.copytree(flow_model, run_dir)
    before = pd.read_csv(io.StringIO(ok(run("predict", "--model", run_dir, inputs["stack"], env=env[1])).stdout))
    r = ok(run("calibrate", "--model", run_dir, "--data", inputs["deeplense"], env=env[1]))
    assert "wrote" in r.stdout and (run_dir / "calibration.json").exists()
    knots = json.loads((run_dir / "calibration.json").read_text())["knots"]
    assert knots[0][0] == 0 and knots[0][-1] == 1 and all(a < b for a, b in zip(knots[0], knots[0][1:]))
    refused(run("calibrate", "--model", run_dir, "--data", inputs["deeplense"], env=env[1]), "already recalibrated")
    after = pd.read_csv(io.StringIO(ok(run("predict", "--model", run_dir, inputs["stack"], env=env[1])).stdout))
    assert not np.allclose(before[QCOLS].to_numpy(), after[QCOLS].to_numpy())   # the recalibration is used
    refused(run("calibrate", "--model", run_dir, "--data", inputs["stack"], "--force", env=env[1]), "no labels")
    (run_dir / "calibration.json").write_text(json.dumps(dict(knots=[[0, 0.7, 0.5, 1]])))
    refused(run("predict", "--model", run_dir, inputs["stack"], env=env[1]), "calibration.json", "knots")


def test_combine_every_kind(inputs, native, env, flow_model, tmp_path):
    "Every input kind as lenses, each holding other images (one image given twice is refused: it would count twice)."
    rng = np.random.default_rng(7)
    np.save(tmp_path / "stack.npy", lens_like(rng, 5))
    folder = tmp_path / "folder"; folder.mkdir()
    for i, im in enumerate(lens_like(rng, 4)): np.save(folder / f"lens_{i}.npy", im)
    from astropy.io import fits
    fits.PrimaryHDU(lens_like(rng, 3)).writeto(tmp_path / "cube.fits")
    paths = [native["native"], inputs["deeplense"], tmp_path / "stack.npy", folder, tmp_path / "cube.fits"]
    # lens_like images are stand-ins, not the training world: combine refuses them (see the next test) unless told
    r = ok(run("combine", "--model", flow_model, *paths, "--json", tmp_path / "j.json", "--plot", tmp_path / "j.png",
               "--allow-ood", env=env[1]))
    j = json.loads((tmp_path / "j.json").read_text())["log10_m_axion"]
    assert j["n"] == 48 + 80 + 5 + 4 + 3 and j["lo95"] <= j["lo68"] <= j["median"] <= j["hi68"] <= j["hi95"]
    assert "from 140 lenses" in r.stdout and (tmp_path / "j.png").stat().st_size > 1000
    refused(run("combine", "--model", flow_model, inputs["stack"], "--json", tmp_path / "j.json", env=env[1]), "--json", "exists")
    refused(run("combine", "--model", flow_model, inputs["stack"], "--target", "f_sub", env=env[1]), "--target f_sub")


def test_lenses_unlike_the_training_images_are_flagged_and_not_combined(env, flow_model, tmp_path):
    "Sky noise is nothing like a lens: predict flags every image, combine refuses in one line, --allow-ood combines with a note."
    np.save(tmp_path / "noise.npy", np.random.default_rng(0).normal(size=(6, 64, 64)).astype(np.float32))
    r = ok(run("predict", "--model", flow_model, tmp_path / "noise.npy", env=env[1]))
    df = pd.read_csv(io.StringIO(r.stdout))
    assert "note: 6 of 6 images are unlike the run's training images" in r.stderr
    assert df["ood"].all() and (df["ood_score"] > 0).all() and df["in_prior"].isin([True, False]).all()
    refused(run("combine", "--model", flow_model, tmp_path / "noise.npy", env=env[1]), "6 of 6 lenses are unlike", "--allow-ood")
    r = ok(run("combine", "--model", flow_model, tmp_path / "noise.npy", "--allow-ood", env=env[1]))
    assert "note: 6 of 6 lenses are unlike" in r.stderr and "from 6 lenses" in r.stdout


def test_combine_needs_a_flow_run(inputs, env, model):
    refused(run("combine", "--model", model, inputs["stack"], env=env[1]), "loss 'flow'")


def test_joint_calibration_then_combine(inputs, native, env, flow_model, tmp_path):
    """calibrate --populations (default trials and lenses) fits the joint calibration that combine then applies
    (to lenses of the run's own world: lens_like stand-ins would be refused as unlike the training images)."""
    import shutil
    run_dir = tmp_path / "flow"; shutil.copytree(flow_model, run_dir)
    r = ok(run("combine", "--model", run_dir, native["native"], env=env[1]))
    assert "no joint calibration" in r.stdout + r.stderr and "(no joint calibration)" in r.stdout
    refused(run("calibrate", "--model", run_dir, "--data", inputs["deeplense"], "--populations", "fsub", env=env[1]), "only log10_m_axion")
    refused(run("calibrate", "--model", run_dir, "--data", inputs["deeplense"], "--populations", "model_9", env=env[1]), "model_9")
    assert not (run_dir / "calibration.json").exists()                  # refused before any work: nothing written
    refused(run("calibrate", "--model", run_dir, "--data", inputs["deeplense"], "--populations", "model_ii", "--bank", -1,
                env=env[1]), "--bank")
    refused(run("calibrate", "--model", run_dir, "--data", inputs["deeplense"], "--populations", "model_ii", "--bank", 50,
                env=env[1]), "bank", "200")
    r = ok(run("calibrate", "--model", run_dir, "--data", inputs["deeplense"], "--populations", "model_ii", "--bank", 400, env=env[1]))
    assert "systematic floor" in r.stdout and "50 lenses' 68% and 95% intervals" in r.stdout
    assert "combine uses the summary likelihood" in r.stdout and "checked in-sample" in r.stdout and "up to 50 lenses" in r.stdout
    assert "[-24, -23.5): " in r.stdout
    joint = json.loads((run_dir / "calibration.json").read_text())["joint"]["log10_m_axion"]
    assert joint["populations"] == dict(preset="model_ii", trials=200, lenses=50, seed=20000)
    assert 0 <= joint["systematic"] <= 0.2 and len(joint["log_aggregate"]) == 512 and joint["method"] == "aggregate+floor"
    sl = joint["summary_likelihood"]
    assert sl["method"] == "summary_likelihood" and sl["bank"] == dict(preset="model_ii", n=400, seed=20000 + 1 + 200)
    from deeplense_fastai.posterior import SUMMARY_MEMBERS         # an ensemble of flows, each fitted and recorded
    assert sl["members"] == SUMMARY_MEMBERS == len(sl["member_validation_losses"]) and SUMMARY_MEMBERS >= 5
    assert sl["validation_loss"] == pytest.approx(np.mean(sl["member_validation_losses"]))
    assert f"{SUMMARY_MEMBERS} flows (their joints mixed) fitted on 400 lenses" in r.stdout and sl["ensemble"] == "mixture_of_joints" and f"an ensemble of {SUMMARY_MEMBERS} flows" in r.stderr
    assert 0 <= sl["systematic"] <= 0.05 and sl["validated"]["n_max"] == 50 and sl["validated"]["mass_range"] == [-24.0, -22.0]
    assert "simulating 400 lenses from the prior of model_ii" in r.stderr              # the bank's cost is announced
    from deeplense_fastai.posterior import SUMMARY_FLOORS
    assert sl["at_cap"] == (sl["systematic"] >= float(SUMMARY_FLOORS[-1]))            # recorded, and said exactly when true
    assert ("floor reached the largest candidate" in r.stderr) == sl["at_cap"]
    assert {c["n"] for c in sl["validated"]["coverage"]} == {10, 25, 50}
    assert sum(c["trials"] for c in sl["validated"]["coverage"] if c["n"] == 50) == 200     # every population, in 4 bins
    r = ok(run("combine", "--model", run_dir, native["native"], "--json", tmp_path / "j.json", env=env[1]))
    assert f"(summary_likelihood: its ensemble's joints mixed, systematic floor {sl['systematic']:.4f})" in r.stdout
    assert "no joint calibration" not in r.stderr
    j = json.loads((tmp_path / "j.json").read_text())["log10_m_axion"]
    assert j["method"] == "summary_likelihood" and j["validated"] == sl["validated"] and j["systematic"] == sl["systematic"]
    assert j["ensemble"] == sl["ensemble"] == "mixture_of_joints"
    cal = json.loads((run_dir / "calibration.json").read_text())
    cal["joint"]["log10_m_axion"]["systematic"] = -1
    (run_dir / "calibration.json").write_text(json.dumps(cal))
    refused(run("combine", "--model", run_dir, native["native"], env=env[1]), "calibration.json", "'joint'")


def test_calibrate_floors_by_mass_range(inputs, native, env, flow_model, tmp_path):
    """calibrate --shift-populations measures a floor per quarter of the prior on a shift set (bagged members); combine
    applies the floor of the quarter its joint's median falls in, says so and records the floors; bad shift sets are
    refused before any work."""
    import shutil
    run_dir = tmp_path / "flow"; shutil.copytree(flow_model, run_dir)
    base = ("calibrate", "--model", run_dir, "--data", inputs["deeplense"])
    refused(run(*base, "--populations", "model_ii", "--bank", 0, "--shift-populations", 10, env=env[1]),
            "--shift-populations goes with --populations and a bank")
    refused(run(*base, "--populations", "model_ii", "--shift-populations", 3, env=env[1]), "shift set", "at least 10")
    refused(run(*base, "--populations", "model_ii", "--shift-populations", -1, env=env[1]), "--shift-populations")
    assert not (run_dir / "calibration.json").exists()                  # refused before any work: nothing written
    r = r_cal = ok(run(*base, "--populations", "model_ii", "--trials", 20, "--lenses", 10, "--bank", 400,
                       "--shift-populations", 10, "--shift-lenses", 5, env=env[1]))
    assert "a shift set of 200 lenses (10 populations of 5 in each quarter of the prior)" in r.stderr
    assert "each on its own bootstrap resample" in r.stdout and "floors by mass range [-24, -23.5): " in r.stdout
    assert "measured on 40 populations of 5 lenses" in r.stdout
    sl = json.loads((run_dir / "calibration.json").read_text())["joint"]["log10_m_axion"]["summary_likelihood"]
    sh = sl["shift"]
    assert sh["edges"] == [-24.0, -23.5, -23.0, -22.5, -22.0] and len(sh["floors"]) == 4 and min(sh["floors"]) >= 0
    assert (sh["populations"], sh["lenses"], sh["seed"]) == (10, 5, 20000 + 1 + 20) and sl["fit"]["bootstrap"] is True
    assert sl["joint_check"]["floor"] == sh["floors"]
    r = ok(run("combine", "--model", run_dir, native["native"], "--json", tmp_path / "j.json", env=env[1]))
    j = json.loads((tmp_path / "j.json").read_text())["log10_m_axion"]
    # one quarter's floor, that of the range it says it applied (which range, by the floor-free joint's median, is
    # tested against an oracle in 05e_combine)
    assert (j["floors"]["edges"], j["floors"]["floors"]) == (sh["edges"], sh["floors"])
    a = j["floors"]["applied"]; k = sh["edges"].index(a[0])
    assert a == sh["edges"][k:k + 2] and j["systematic"] == sh["floors"][k]
    assert set(j["floors"]["straddles"]) <= set(sh["edges"][1:-1])
    assert "the floors were measured on the shift set's populations of 5 lenses" in r_cal.stdout
    assert f"systematic floor {j['systematic']:.4f}, that of its mass range)" in r.stdout
