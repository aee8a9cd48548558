"""The training machinery: Ranger21's own schedule (recorded LR trace), resuming an interrupted run, Gaussian NLL."""
import json

import numpy as np
import pandas as pd
import pytest
from fastai.callback.core import Callback

from deeplense_fastai.core import DeepLenseError
from deeplense_fastai.data import lens_dataloaders
from deeplense_fastai.learner import regression_learner, fit, LRTrace, export_run
from deeplense_fastai.inference import get_predictions, predict, load_run
from deeplense_fastai.dataset import write_dataset


@pytest.fixture(scope="module")
def dls(tmp_path_factory):
    d = tmp_path_factory.mktemp("data") / "ds"
    write_dataset(d, "model_ii", n=192, seed=0, progress=False)
    return lens_dataloaders(d, bs=32, valid_pct=0.25)


def trace(learn):
    return next(cb for cb in learn.cbs if isinstance(cb, LRTrace)).lrs


def test_ranger21_runs_its_own_schedule_and_no_other(dls, tmp_path):
    learn = regression_learner(dls, "xresnet_small", opt="ranger21", path=tmp_path)
    nominal = []
    class Nominal(Callback):
        def after_step(self): nominal.append(self.learn.opt.hypers[0]["lr"])
    with learn.no_bar(), learn.no_logging():
        fit(learn, 4, 1e-3, log=None, checkpoint=False, save_best=False)
    lrs = trace(learn)
    n = 4 * len(dls.train)
    assert len(lrs) == n
    peak = int(np.argmax(lrs))
    assert lrs[0] < 0.5 * max(lrs), "Ranger21 warms up"
    assert lrs[-1] < 0.5 * max(lrs), "Ranger21 warms down"
    assert 0 < peak < n - 1 and max(lrs) <= 1e-3 * 1.0001
    learn2 = regression_learner(dls, "xresnet_small", opt="ranger21", path=tmp_path)
    learn2.add_cb(Nominal())
    with learn2.no_bar(), learn2.no_logging():
        fit(learn2, 2, 1e-3, log=None, checkpoint=False, save_best=False)
    assert len(set(nominal)) == 1, "no fastai scheduler touches the learning rate under Ranger21"
    with pytest.raises(DeepLenseError, match="goes with opt='ranger21'"):
        fit(learn2, 1, 1e-3, "one_cycle")
    with pytest.raises(DeepLenseError, match="Ranger21"):
        with learn2.no_bar(): learn2.fit_one_cycle(1, 1e-3)


def test_one_cycle_trace_warms_up_and_anneals(dls, tmp_path):
    learn = regression_learner(dls, "xresnet_small", opt="ranger", path=tmp_path)
    with learn.no_bar(), learn.no_logging():
        fit(learn, 2, 3e-3, "one_cycle", log=None, checkpoint=False, save_best=False)
    lrs = trace(learn)
    assert lrs[0] < 3e-3 / 10 and abs(max(lrs) - 3e-3) < 0.05 * 3e-3 and lrs[-1] < 0.1 * max(lrs) and int(np.argmax(lrs)) < len(lrs) // 2


class Interrupt(Callback):
    order = 100     # after the checkpoint of the epoch was written
    def after_epoch(self):
        if self.epoch == 1: raise KeyboardInterrupt


def test_resume_after_interruption(dls, tmp_path):
    learn = regression_learner(dls, "xresnet_small", path=tmp_path)
    learn.add_cb(Interrupt())
    with learn.no_bar(), pytest.raises(KeyboardInterrupt):
        fit(learn, 4, 3e-3)
    assert json.loads((tmp_path / "models" / "checkpoint.json").read_text())["epoch"] == 1
    resumed = regression_learner(dls, "xresnet_small", path=tmp_path)
    with resumed.no_bar():
        fit(resumed, 4, 3e-3, resume=True)
    hist = pd.read_csv(tmp_path / "history.csv")
    assert list(hist.epoch) == [0, 1, 2, 3]
    assert len(trace(resumed)) == 2 * len(dls.train), "the resumed run trains only the missing epochs"


def test_gaussian_nll_predicts_a_width(dls, tmp_path):
    learn = regression_learner(dls, "xresnet_small", loss="gaussian_nll", path=tmp_path)
    with learn.no_bar(), learn.no_logging():
        fit(learn, 2, 3e-3, log=None, checkpoint=False)
    mu, sd, y = get_predictions(learn)
    assert mu.shape == y.shape == sd.shape and (sd > 0).all()
    mu_t, sd_t, _ = get_predictions(learn, tta=True)
    assert (sd_t > 0).all() and not np.allclose(mu_t, mu)
    export_run(learn, tmp_path / "run")
    out = predict(tmp_path / "run", dls.lens_config.source)
    assert {"pred_log10_m_axion", "std_log10_m_axion"} <= set(out.columns)
    model, cfg = load_run(tmp_path / "run")
    assert cfg.n_out == 2 and cfg.loss == "gaussian_nll"


def test_resume_refuses_other_settings(dls, tmp_path):
    learn = regression_learner(dls, "xresnet_small", path=tmp_path)
    learn.add_cb(Interrupt())
    with learn.no_bar(), pytest.raises(KeyboardInterrupt):
        fit(learn, 4, 3e-3)
    before = (tmp_path / "models" / "checkpoint.pth").read_bytes()
    other = regression_learner(dls, "xresnet_small", path=tmp_path)
    with pytest.raises(DeepLenseError, match="fit lr"):
        fit(other, 4, 1e-3, resume=True)
    with pytest.raises(DeepLenseError, match="fit epochs"):
        fit(other, 6, 3e-3, resume=True)
    assert (tmp_path / "models" / "checkpoint.pth").read_bytes() == before, "a refused resume touches nothing"


def test_diverged_training_is_one_error(dls, tmp_path):
    learn = regression_learner(dls, "xresnet_small", path=tmp_path)
    with learn.no_bar(), pytest.raises(DeepLenseError, match="diverged"):
        fit(learn, 2, 1e10)


class InterruptAfterLog(Interrupt):
    "Ctrl-C in epoch 1 after history.csv got its row (order 50) but before the checkpoint (order 70) saved the epoch."
    order = 65


def test_resume_after_an_interruption_between_the_log_and_the_checkpoint(dls, tmp_path):
    learn = regression_learner(dls, "xresnet_small", path=tmp_path)
    learn.add_cb(InterruptAfterLog())
    with learn.no_bar(), pytest.raises(KeyboardInterrupt):
        fit(learn, 3, 3e-3)
    assert list(pd.read_csv(tmp_path / "history.csv").epoch) == [0, 1]         # epoch 1 logged, not checkpointed
    assert json.loads((tmp_path / "models" / "checkpoint.json").read_text())["epoch"] == 0
    resumed = regression_learner(dls, "xresnet_small", path=tmp_path)
    with resumed.no_bar():
        fit(resumed, 3, 3e-3, resume=True)
    assert list(pd.read_csv(tmp_path / "history.csv").epoch) == [0, 1, 2]      # epoch 1 retrained: one row, not two
