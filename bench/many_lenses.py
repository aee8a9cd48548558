"""Many lenses, done right (issue 23): joint posteriors of one axion mass shared by N lenses, validated per mass bin.

    OMP_NUM_THREADS=1 nice -n 19 python bench/many_lenses.py images      # simulate every image once (resumable)
    OMP_NUM_THREADS=1 nice -n 19 python bench/many_lenses.py posteriors  # each run's raw grid posteriors (resumable)
    OMP_NUM_THREADS=1 nice -n 19 python bench/many_lenses.py fits --seeds 0 --members 0,1  # optional: the ensemble's
        # members fitted ahead, in parallel processes (each cached; `score` fits the missing ones; --bagged: the bagged
        # ensemble's)
    python bench/many_lenses.py restore  # optional, on a fresh machine: the cells of runs retrained to the recorded
        # weights (the same SHA-256) taken from the results file instead of scored again
    OMP_NUM_THREADS=1 python bench/many_lenses.py score --recheck  # every method -> bench/results/many_lenses.json

Protocol (CPU; Model II, target log10 m_axion, prior U[-24, -22]). The per-lens networks are three flow runs trained by
the user's command, one per seed (seed 0 is bench/robustness.py's `model_ii` run, the same command):

    deeplense train --preset model_ii --n 8000 --arch xresnet_small --loss flow --epochs 8 --seed S --out RUN

(xresnet_small: the cheapest architecture that learns this task in 8 CPU epochs, bench/results/seeds_summary.json.)
Images, simulated once and shared by the three runs (seeds disjoint from training and from each other):
- a bank of 30,000 lenses from the prior (seed 30,000): its first 1,000 are the calibration split whose average
  posterior the aggregate methods divide by; all of it trains the summary-likelihood estimators (25,000 to fit, 5,000
  held out: the flows keep their best held-out epoch, the ratio estimator stops on it);
- 200 populations of 50 lenses (seed 20,000): the systematic floor, exactly as `calibrate(populations=...)` fits it;
- the test trials: four true-mass bins [-24, -23.5), [-23.5, -23), [-23, -22.5), [-22.5, -22], 100 trials each, a true
  log10 m uniform in the bin, 200 lenses simulated with it (seed 100,001 + 200 x trial). N in {1, 10, 50, 200} takes the
  first N lenses of each trial;
- the shift set: 100 populations of 200 lenses per bin in two rounds of 50, a true log10 m uniform in the bin (round r:
  seed 300,000 + r; population k, counted over the rounds, simulated with seed 300,001 + 200 x k, no trial's): what
  `summary_nle_bag+shift` measures its floors on (the first round alone left a floor of 0 in the lightest bin at one
  seed where the trials show one: 50 masses per bin were too few).
Methods (each gives a joint posterior on the run's 512-point grid; the prior is flat on it):
- `product`: the plain product of the raw per-lens posteriors, the training prior divided out (exact for an exact
  network);
- `aggregate`: the product divided by the network's own prior (the mean posterior of the calibration split) instead;
- `floor`: `product` widened by a systematic floor fitted on the populations;
- `aggregate+floor`: both: the joint calibration `calibrate(populations='model_ii')` fitted before (now `bank=0`);
- `summary_nle`: a neural likelihood of each lens's posterior summary s = (median, log 68% half-width) given the mass,
  q(s | m), a zuko neural spline flow fitted on the bank (the library's `fit_summary_likelihood`: 100 epochs on a
  one-cycle schedule, the best held-out epoch kept; member 0 of what `calibrate` fits); log q(s_i | m) adds over
  lenses exactly whatever the network's bias (the bias is part of what q models);
- `summary_nle+floor`: the same likelihood, widened by a floor fitted on the populations as the aggregate's floor is
  (candidate floors 0 to 0.05 dex, 0.001 apart): what `calibrate(populations=...)` fitted with its default bank of
  30,000 until the ensemble below;
- `summary_nle_ens`, `summary_nle_ens+floor`: a deep ensemble of K = 5 such likelihoods (member 0 is `summary_nle`'s
  fit; the others differ only in their fitting seed), per lens the mean of their densities; with and without its own
  floor fitted on the populations (what `calibrate(populations=...)` fitted until the mixture below). The hypothesis
  tested: the single fit's own errors are part of what adds up over 200 lenses, and averaging members that err
  differently damps them;
- `summary_nle_mix`, `summary_nle_mix+floor`: the same five members, each member's joint of the N lenses first, then
  the mean of their normalised joints (the library's `mixture_of_joints`): a member's fitting error is shared by every
  lens it reads, so the members' disagreement must not shrink like 1/sqrt(N) as a per-lens mean density makes it
  shrink; with and without its own floor (`summary_nle_mix+floor` is what `calibrate(populations=...)` now fits and
  `combine` reports as method 'summary_likelihood', recorded as ensemble='mixture_of_joints');
- `summary_nle_bag`, `summary_nle_bag+floor`: five members fitted as above but each on its own bootstrap resample of
  the bank's fitting split (bagging, `fit_summary_likelihood(bootstrap=True)`; fitting seeds as above), their joints
  mixed: seeded members all read one bank, so an error its draw puts into every fit is shared by all and hidden from
  the mixture; bagged members differ by the draw too (the hypothesis tested: the remaining misses come from it);
- `summary_nle_bag+shift`, `summary_nle_bag+shift_mean`: the bagged mixture widened by a floor per bin of the truth,
  each measured on the shift set by the library's `shared_shift` from the joints of its 200-lens populations (`shift`:
  the floor s that gives (median - truth)^2 / (half-width^2 + s^2) the median of a chi-square with one degree of
  freedom; `shift_mean`: s^2 the mean of (median - truth)^2 - half-width^2, which a few far-off populations carry
  away), applied by the bin the trial's own floor-free joint median lies in. The hypothesis tested: the misses left
  are a shift shared by the lenses of one mass that no smooth likelihood models (it varies with the mass faster than
  the bank resolves), largest in the lightest bin; a floor fitted on 50-lens populations cannot see it per bin (their
  joints are as wide as it), 200-lens populations can. What `calibrate --shift-populations 100` fits (the library's
  `binned_shift` and `BinnedFloor`, which this bench calls);
- `summary_nle_mix+shift`, `summary_nle_mix+shift_mean`: the same floors per bin, measured and applied on the seeded
  mixture (what `calibrate` fits without a shift set): the ablation that says whether the shift needs bagged members
  (scored only with `score --seeded-shift`, once every run has its seeded members' terms on the shift set);
- `summary_bnre`: a balanced neural ratio estimator of the same summaries (a classifier of joint against shuffled pairs
  with the balancing term of Delaunoy et al. 2022, lambda 100); its log-ratios add over lenses.
Per (method, seed, N, bin): the share of trials whose joint 68% and 95% central intervals hold the truth (binomial
error sqrt(p(1 - p) / trials)), the median 68% half-width and the mean bias of the joint median. Then the mean and sd
over the three seeds, and the issue's targets checked for each method. The joint quantiles are the library's
`joint_quantiles` (what `combine` reports: the joint log density refined by a cubic, since at 200 lenses a joint spans
a grid step or two); the same figures by the trapezoid rule on the grid itself are kept as `*_grid`, comparable with
bench/results/many_lenses_early_stopped.json: this bench before the one-cycle fits (every member early-stopped, grid
quantiles), kept as that ablation.
The exact-posterior reference (`reference` in the results): a world in which member 0 of each run's ensemble is the
true likelihood; every trial's lenses are summaries drawn from it at the trial's truth, their joint under it is exact,
and its coverage per cell is what a perfect estimator reaches (so a miss the reference shares is a property of central
intervals in that bin, not of the method).

The varied world (issue 23 item 3), `--world model_ii_nuisance`: the same protocol (bank, populations, bins, trials, N)
with every lens drawn from `model_ii_nuisance`: each lens's main lens (theta_E, SIE ellipticity), external shear and
source (size, index, shape, magnitude, position) drawn per lens by `population_images`, only the axion mass shared and
fixed within a trial. The per-lens network is the one run of that world that learned, bench/robustness.py's
`model_ii_nuisance@init_online` (seed 0; fine-tuned from the fixed world's seed-0 run with online simulation):

    deeplense train --preset model_ii_nuisance --init MODEL_II_RUN --online --epoch-size 8000 --epochs 32 --seed 0 \\
        --out RUN

One training seed only: the seed spread is not measured there. Results: bench/results/many_lenses_nuisance.json; its
caches live in the `model_ii_nuisance` subfolder of this bench's cache (the fixed world's files are not touched).

    OMP_NUM_THREADS=1 nice -n 19 python bench/many_lenses.py images --world model_ii_nuisance
    OMP_NUM_THREADS=1 nice -n 19 python bench/many_lenses.py posteriors --world model_ii_nuisance
    OMP_NUM_THREADS=1 nice -n 19 python bench/many_lenses.py score --world model_ii_nuisance

Caches: DEEPLENSE_CACHE or ~/.cache/deeplense_fastai/bench/many_lenses (images, posteriors, runs, fits, cells). The
members (fits/) are tied to the run's weights and the library's fitting recipe, the cells (cells/) to those and their
fields; neither is tied to the scoring code itself: after a change of how joints are read, delete cells/ to rescore
(the members' log likelihoods on the trials and populations are cached beside the posteriors, so a rescore costs
minutes, not the half hour of evaluating the flows).
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _results import mean_sd, save, versus

SEEDS = (0, 1, 2)
TRAIN = "deeplense train --preset model_ii --n 8000 --arch xresnet_small --loss flow --epochs 8 --seed {seed} --out RUN"
BINS = (-24., -23.5, -23., -22.5, -22.)
TRIALS, LENSES, NS = 100, 200, (1, 10, 50, 200)
BANK, BANK_SEED, CAL_N, FIT_N = 30_000, 30_000, 1_000, 25_000
POP_TRIALS, POP_LENSES, POP_SEED = 200, 50, 20_000
# trial k simulates with seed TRIAL_SEED + 200 k + 1: no seed shared with the populations or the bank
TRIAL_SEED = 100_000
# the shift set: SHIFT_ROUNDS rounds of SHIFT_POPS populations of LENSES lenses per bin, truths uniform in the bin
# (round r: seed SHIFT_SEED + r), population k (counted over the rounds) simulated with seed SHIFT_SEED + 200 k + 1
# (disjoint from the trials' 100,001..180,000): what `shared_shift` reads. One file per round, so a round can be added.
SHIFT_POPS, SHIFT_ROUNDS, SHIFT_SEED = 50, 2, 300_000
# The worlds (each is also its preset's name): results file, training seeds, the training command of seed S, and the run
# of seed 0 in the robustness bench's cache. The fixed world keeps its cache layout; the others live in a subfolder.
WORLDS = {"model_ii": {"results": "many_lenses", "seeds": SEEDS, "train": TRAIN, "robustness_run": "model_ii"},
          "model_ii_nuisance": {"results": "many_lenses_nuisance", "seeds": (0,),
                                "robustness_run": "model_ii_nuisance@init_online",
                                "train": "deeplense train --preset model_ii_nuisance --init MODEL_II_RUN --online "
                                         "--epoch-size 8000 --epochs 32 --seed {seed} --out RUN"}}
WORLD = "model_ii"       # set by --world
METHODS = ("product", "aggregate", "floor", "aggregate+floor", "summary_nle", "summary_nle+floor", "summary_bnre",
           "summary_nle_ens", "summary_nle_ens+floor", "summary_nle_mix", "summary_nle_mix+floor", "summary_nle_bag",
           "summary_nle_bag+floor", "summary_nle_bag+shift", "summary_nle_bag+shift_mean", "summary_nle_mix+shift",
           "summary_nle_mix+shift_mean")
SHIFTED = ("summary_nle_bag+shift", "summary_nle_bag+shift_mean", "summary_nle_mix+shift",
           "summary_nle_mix+shift_mean")   # need the shift set (the fixed world's only)
# scored only with `score --seeded-shift` (the seeded members' terms on the shift set cost about 40 CPU minutes a run,
# not yet spent on every seed): until then the results leave them out, whatever a run's cached cells hold
SEEDED_SHIFT = ("summary_nle_mix+shift", "summary_nle_mix+shift_mean")
WITH_SEEDED_SHIFT = False   # set by --seeded-shift


def _shift_rounds() -> int:
    "The shift set's rounds in this world: SHIFT_ROUNDS in the fixed world, none elsewhere."
    return SHIFT_ROUNDS if WORLD == "model_ii" else 0


def methods() -> tuple:
    """The methods scored in this world: the shift floors only where there is a shift set (the fixed world), the
    seeded members' ones only when asked for (--seeded-shift)."""
    return tuple(m for m in METHODS if (_shift_rounds() or m not in SHIFTED)
                 and (WITH_SEEDED_SHIFT or m not in SEEDED_SHIFT))


def _shift_key() -> list:
    "What the shift methods' cells are tied to besides the run: the shift set's rounds, populations, lenses and seed."
    return [SHIFT_ROUNDS, SHIFT_POPS, LENSES, SHIFT_SEED]


ENSEMBLE = 5             # members of the summary likelihoods' ensemble (the issue's K >= 5)


def cache(*parts) -> Path:
    from deeplense_fastai.core import cache_dir
    return cache_dir("bench", "many_lenses", *(() if WORLD == "model_ii" else (WORLD,)), *parts)


def run_dir(seed: int) -> Path:
    "Seed 0 is the robustness bench's run of the world (the same command); the others live in this bench's cache."
    if seed == 0:
        from deeplense_fastai.core import cache_dir
        return cache_dir("bench", "robustness") / WORLDS[WORLD]["robustness_run"]
    return cache() / f"{WORLD}-xresnet_small-flow-seed{seed}"


def weights_digest(seed: int) -> str:
    "SHA-256 of a run's weights: what every cached posterior and cell of that run is tied to."
    from deeplense_fastai.core import file_digest
    return file_digest(run_dir(seed) / "weights.safetensors")


def _save_atomic(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, arr)
    tmp.replace(path)


def trial_truths() -> np.ndarray:
    "The true log10 m of every test trial: TRIALS uniform draws in each bin, bin by bin."
    rng = np.random.default_rng(TRIAL_SEED)
    return np.concatenate([rng.uniform(lo, hi, TRIALS) for lo, hi in zip(BINS[:-1], BINS[1:])])


def shift_truths(r: int) -> np.ndarray:
    "Round r of the shift set's masses: SHIFT_POPS uniform draws in each bin, bin by bin (apart from the trials')."
    rng = np.random.default_rng(SHIFT_SEED + r)
    return np.concatenate([rng.uniform(lo, hi, SHIFT_POPS) for lo, hi in zip(BINS[:-1], BINS[1:])])


def _shift_name(r: int) -> str:
    return "shift" if r == 0 else f"shift_{r}"


def pop_truths() -> np.ndarray:
    "The populations' masses, drawn as `calibrate` draws them."
    from deeplense_fastai.simulate import get_preset
    return np.random.default_rng(POP_SEED).uniform(*get_preset(WORLD).axion.log10_m, POP_TRIALS)


def images() -> None:
    "Simulate the bank, the populations and the trials once (each file written whole, then kept)."
    from deeplense_fastai.combine import population_images
    from deeplense_fastai.simulate import get_preset, simulate
    p, d = get_preset(WORLD), cache("images")
    if not (d / "bank.npy").exists():
        x, lab = simulate(p, BANK, seed=BANK_SEED, batch_size=256)
        _save_atomic(d / "bank_y.npy", lab["log10_m_axion"].to_numpy())
        _save_atomic(d / "bank.npy", x[:, 0].numpy())
    print("bank: done", flush=True)
    if not (d / "populations.npy").exists():
        _save_atomic(d / "populations.npy", population_images(p, pop_truths(), POP_LENSES, POP_SEED))
    print("populations: done", flush=True)
    truths = trial_truths()
    for b in range(len(BINS) - 1):            # one file per bin, so a stopped run resumes bin by bin
        f = d / f"trials_bin{b}.npy"
        if f.exists(): continue
        t0 = time.time()
        ks = range(b * TRIALS, (b + 1) * TRIALS)
        x = np.concatenate([population_images(p, [truths[k]], LENSES, TRIAL_SEED + LENSES * k) for k in ks])
        _save_atomic(f, x)
        print(f"trials bin {b}: {len(x)} images in {time.time() - t0:.0f} s", flush=True)
    for r in range(_shift_rounds()):                                    # the shift set: the fixed world's only
        f, k0 = d / f"{_shift_name(r)}.npy", r * SHIFT_POPS * (len(BINS) - 1)
        if f.exists(): continue
        t0 = time.time()
        _save_atomic(f, np.concatenate([population_images(p, [t], LENSES, SHIFT_SEED + LENSES * (k0 + k))
                                        for k, t in enumerate(shift_truths(r))]))
        print(f"shift set, round {r}: {len(shift_truths(r)) * LENSES} images in {time.time() - t0:.0f} s", flush=True)


def image_sets() -> dict:
    d = cache("images")
    sets = dict(bank=d / "bank.npy", populations=d / "populations.npy")
    sets.update({f"trials_bin{b}": d / f"trials_bin{b}.npy" for b in range(len(BINS) - 1)})
    return dict(sets, **{_shift_name(r): d / f"{_shift_name(r)}.npy" for r in range(_shift_rounds())})


def raw_posteriors(run: Path, x: np.ndarray) -> np.ndarray:
    "Run `run`'s raw grid posteriors (N, 512) of images `x` (N, H, W; may be memory-mapped), float32, 4,000 at a time."
    from deeplense_fastai.inference import run_posteriors
    parts = [run_posteriors(run, np.ascontiguousarray(x[i:i + 4000]), bs=256, raw=True,
                            notice=lambda *_: None)[1][:, 0].numpy() for i in range(0, len(x), 4000)]
    return np.concatenate(parts).astype(np.float32)


def posteriors(seeds) -> None:
    "Each run's raw grid posteriors (N, 512) of every image set, float32, cached per (seed, set)."
    for s in seeds:
        run = run_dir(s)
        if not (run / "weights.safetensors").exists():
            print(f"seed {s}: no trained run at {run} yet", flush=True)
            continue
        d, digest = cache("posteriors", f"seed{s}"), weights_digest(s)
        if (d / "weights.sha256").exists() and (d / "weights.sha256").read_text() != digest:
            raise SystemExit(f"{d}: posteriors of other weights than {run}'s; delete the folder and rerun")
        (d / "weights.sha256").write_text(digest)
        for name, f in image_sets().items():
            out = d / f"{name}.npy"
            if out.exists(): continue
            t0, x = time.time(), np.load(f, mmap_mode="r")
            _save_atomic(out, raw_posteriors(run, x))
            print(f"seed {s} {name}: {len(x)} posteriors in {time.time() - t0:.0f} s", flush=True)


# ---- the estimators -------------------------------------------------------------------------------------------------
class Standard:
    "Standardise summaries and masses with the fitting set's mean and sd."
    def __init__(self, s, m): self.s_mu, self.s_sd, self.m_mu, self.m_sd = s.mean(0), s.std(0), m.mean(), m.std()
    def s(self, s): return (s - self.s_mu) / self.s_sd
    def m(self, m): return ((m - self.m_mu) / self.m_sd)[..., None]


def member_seed(seed: int, k: int) -> int:
    "The fitting seed of member k of run `seed`'s ensemble: member 0 is the single fit (seed = the run's seed)."
    return seed + 1000 * k


def nle_member(seed: int, k: int, s=None, m=None, bootstrap: bool = False, n_fit: int = FIT_N):
    """Member k of run `seed`'s ensemble of summary likelihoods: the library's `fit_summary_likelihood` (what
    `calibrate` fits) on the bank's split with fitting seed `member_seed(seed, k)` (`bootstrap`: on a bootstrap
    resample of the fitting split drawn with that seed), cached as safetensors beside the run's posteriors (tied to the
    run's weights digest), so that members fit in parallel processes and resume. `n_fit`: the first so many pairs of
    `s` are fitted, the rest held out (bench/bank_size.py's other bank sizes; the default is this bench's split)."""
    from safetensors.torch import load_file, save_file
    from deeplense_fastai.posterior import SUMMARY_FLOW, SummaryLikelihood, fit_summary_likelihood
    f = cache("fits", f"seed{seed}") / f"{'bag' if bootstrap else 'nle'}{k}{_sized(n_fit)}.safetensors"
    digest, how = weights_digest(seed), fit_recipe(bootstrap, n_fit)
    if f.exists():
        from safetensors import safe_open
        with safe_open(str(f), "pt") as h: meta = h.metadata()
        if meta["weights_sha256"] == digest and meta.get("recipe") == how:
            q = SummaryLikelihood(**SUMMARY_FLOW)
            q.load_state_dict(load_file(str(f)))
            q.validation_loss, q.seconds = float(meta["validation_loss"]), float(meta["seconds"])
            return q.eval()
    if s is None: s, m = bank_summaries(seed)
    t0 = time.time()
    q = fit_summary_likelihood(s, m, seed=member_seed(seed, k), holdout=(len(s) - n_fit) / len(s),
                               bootstrap=bootstrap)
    q.seconds = round(time.time() - t0, 1)
    tmp = f.with_suffix(".tmp")
    save_file(q.state_dict(), str(tmp), metadata=dict(weights_sha256=digest, recipe=how,
                                                      validation_loss=repr(q.validation_loss),
                                                      seconds=repr(q.seconds), fitting_seed=str(member_seed(seed, k))))
    tmp.replace(f)
    print(f"seed {seed} {'bagged ' if bootstrap else ''}member {k}: fitted in {q.seconds:.0f} s (held-out loss "
          f"{q.validation_loss:.4f})", flush=True)
    return q


def _sized(n_fit: int) -> str:
    "The cache names' suffix of members fitted on `n_fit` pairs: none for this bench's own split."
    return "" if n_fit == FIT_N else f"_fit{n_fit}"


def fit_recipe(bootstrap: bool = False, n_fit: int = FIT_N) -> str:
    """How a member is fitted, as the library fits it (flow settings, epochs, schedule, bank split, `n_fit` pairs
    fitted and the bank's held-out tail; a bagged member: on a bootstrap resample): a cached member fitted otherwise is
    refitted."""
    import inspect
    from deeplense_fastai.posterior import SUMMARY_FLOW, fit_summary_likelihood
    d = {k: v.default for k, v in inspect.signature(fit_summary_likelihood).parameters.items()
         if k in ("epochs", "bs", "patience")}
    bag = {"bootstrap": "posterior.bootstrap_indices(n_fit, seed)"} if bootstrap else {}
    return json.dumps(dict(flow=SUMMARY_FLOW, **d, bank=BANK - FIT_N + n_fit, fit=n_fit, **bag), sort_keys=True)


def bank_summaries(seed: int) -> tuple:
    "The bank's posterior summaries (float32) under run `seed`, and its true masses: what the likelihoods fit."
    from deeplense_fastai.inference import load_run
    from deeplense_fastai.posterior import posterior_summaries, target_grid
    g = target_grid(load_run(run_dir(seed), calibration=False)[1])[0].double()
    bank = torch.from_numpy(np.load(cache("posteriors", f"seed{seed}") / "bank.npy")).double()
    return (posterior_summaries(bank, g).float(),
            torch.from_numpy(np.load(cache("images") / "bank_y.npy")).float())


def fit_nle_ensemble(s, m, seed, k=ENSEMBLE, bootstrap=False, n_fit=FIT_N):
    """The deep ensemble of K summary likelihoods (Lakshminarayanan et al. 2017; for simulation-based inference Hermans
    et al. 2022): per lens, the mean of the members' densities, log(1/K sum_k q_k(s | m)); its logarithm adds over
    lenses. Members differ only in their fitting seed (initialisation, batch order; `bootstrap`: also in the bootstrap
    resample of the bank they fit, bagging); all share the standardisation of the same bank split, so their densities
    are on one scale (`n_fit`: as `nle_member`)."""
    from deeplense_fastai.posterior import SummaryEnsemble
    qs = [nle_member(seed, j, s, m, bootstrap, n_fit) for j in range(k)]
    ens = SummaryEnsemble(k, **qs[0].hparams)            # the library's averaging (what calibrate fits), cached members
    for e, q in zip(ens.members, qs): e.load_state_dict(q.state_dict())
    return ens.eval(), [q.validation_loss for q in qs], [q.seconds for q in qs]


def fit_bnre(s, m, seed, lam=100.):
    "A balanced neural ratio estimator log r(s, m) (Delaunoy et al. 2022): joint pairs against shuffled ones."
    torch.manual_seed(seed)
    st = Standard(s[:FIT_N], m[:FIT_N])
    net = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.SiLU(), torch.nn.Linear(64, 64), torch.nn.SiLU(),
                              torch.nn.Linear(64, 1))
    S, M, g = st.s(s), st.m(m), torch.Generator().manual_seed(seed + 1)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    def loss(i, tr):
        j = i[torch.randperm(len(i), generator=g)] if tr else i.roll(1)
        d1, d0 = net(torch.cat([S[i], M[i]], 1))[:, 0], net(torch.cat([S[i], M[j]], 1))[:, 0]
        balance = (torch.sigmoid(d1).mean() + torch.sigmoid(d0).mean() - 1) ** 2
        return bce(d1, torch.ones_like(d1)) + bce(d0, torch.zeros_like(d0)) + lam * balance
    from deeplense_fastai.posterior import fit_early_stopped
    t0 = time.time()
    val = fit_early_stopped(net, loss, (FIT_N, len(s) - FIT_N), seed, bs=256, what='the ratio estimator')
    seconds = round(time.time() - t0, 1)
    def loglik(s_test, grid):          # (B, G): log r(s_i, m_g)
        with torch.no_grad():
            G, mg = len(grid), st.m(grid)
            return torch.cat([net(torch.cat([st.s(c)[:, None].expand(-1, G, -1),
                                             mg[None].expand(len(c), -1, -1)], -1))[..., 0]
                              for c in s_test.split(500)])
    return loglik, val, seconds


# ---- scoring --------------------------------------------------------------------------------------------------------
LEVELS = [0.5, 0.16, 0.84, 0.025, 0.975]


def _joint_summary(joint: torch.Tensor, grid: torch.Tensor, width: float) -> tuple:
    """Median, 68% and 95% bounds (K, 5) of unnormalised joint log densities (K, G), widened by a floor of `width`:
    by the library's `joint_quantiles` (what combine reports: the log density refined by a cubic, so a joint narrower
    than a few grid steps is integrated right), and by the trapezoid rule on the grid itself (`grid_quantiles`, what
    this bench measured before: too wide, and covering too often, once the joint spans a grid step or two)."""
    from deeplense_fastai.posterior import BinnedFloor, grid_quantiles, joint_quantiles, widened_joint
    # a floor per bin: each joint widened by that of the bin its floor-free median lies in (what combine applies)
    w = widened_joint(joint, grid, BinnedFloor(BINS, tuple(width)) if isinstance(width, (tuple, list)) else width)
    return joint_quantiles(w, grid, LEVELS), grid_quantiles(w, grid, LEVELS)


def _cells(qs: tuple, truth: np.ndarray) -> dict:
    """Coverage (with binomial errors), median 68% half-width and bias of one bin's trials; the same with the grid's
    trapezoid quantiles as `*_grid`."""
    out = {}
    for q, tail in zip(qs, ("", "_grid")):
        q, t = q.double().numpy(), truth
        c68, c95 = float(((q[:, 1] <= t) & (t <= q[:, 2])).mean()), float(((q[:, 3] <= t) & (t <= q[:, 4])).mean())
        k = len(t)
        out.update({f"{key}{tail}": v for key, v in dict(
            coverage68=c68, coverage68_err=(c68 * (1 - c68) / k) ** 0.5, coverage95=c95,
            coverage95_err=(c95 * (1 - c95) / k) ** 0.5, halfwidth68=float(np.median((q[:, 2] - q[:, 1]) / 2)),
            bias=float((q[:, 0] - t).mean()), mae=float(np.abs(q[:, 0] - t).mean())).items()})
    return out


def _per_lens_terms(seed, grid, methods=METHODS):
    """Each of `methods`' per-lens log terms on the trials (bins, K, L, G) and its floor: what adds up over lenses
    (floors, the ratio estimator and the summary likelihoods fitted and evaluated only when asked for)."""
    from deeplense_fastai.posterior import aggregate_log_posterior, fit_systematic, posterior_summaries, SUMMARY_FLOORS
    P = lambda name: torch.from_numpy(np.load(cache("posteriors", f"seed{seed}") / f"{name}.npy")).double()
    bank, pop = P("bank"), P("populations").reshape(POP_TRIALS, POP_LENSES, -1)
    trials = torch.stack([P(f"trials_bin{b}") for b in range(len(BINS) - 1)])      # (bins, K*L, G)
    g = grid.double()
    agg = aggregate_log_posterior(bank[:CAL_N], g)
    terms, info = dict(product=(trials, 0.), aggregate=(trials - agg, 0.)), {}
    for name, key, base, own in (("floor", "floor", "product", None), ("aggregate+floor", "floor_with_aggregate",
                                                                       "aggregate", agg)):
        if name in methods:
            info[key] = float(fit_systematic(pop, pop_truths(), g, own)[0])
            terms[name] = (terms[base][0], info[key])
    if not any(x.startswith("summary") for x in methods): return {k: terms[k] for k in methods}, info
    m = torch.from_numpy(np.load(cache("images") / "bank_y.npy")).double()
    s_bank = posterior_summaries(bank, g)
    s_trials = posterior_summaries(trials.reshape(-1, len(g)), g)
    s_pop = posterior_summaries(pop.reshape(-1, len(g)), g)
    if "summary_bnre" in methods:
        loglik, val, seconds = fit_bnre(s_bank.float(), m.float(), seed)
        terms["summary_bnre"] = (loglik(s_trials.float(), g.float()).double().reshape(trials.shape), 0.)
        info["summary_bnre"] = dict(validation_loss=val, seconds=seconds)
    # the ensemble's members evaluated once (and cached): member 0 alone is the single likelihood, their mean density
    # the ensemble's per-lens likelihood, the mixture of their joints the ensemble's joint (`mixture_of_joints`)
    for name, bagged in (("summary_nle_mix", False), ("summary_nle_bag", True)):
        _mixture_terms(seed, (name, bagged), methods, (s_bank, m, s_trials, s_pop, trials.shape, pop), g, (terms, info))
    if not {"summary_nle", "summary_nle+floor", "summary_nle_ens", "summary_nle_ens+floor"} & set(methods):
        return {k: terms[k] for k in methods}, info
    ens, val, seconds = fit_nle_ensemble(s_bank.float(), m.float(), seed)   # seconds: of each fit (cached: then)
    on_trials = member_terms(seed, ens, s_trials, g, "trials")
    on_pops = member_terms(seed, ens, s_pop, g, "populations")
    for name, pick in (("summary_nle", lambda t: t[0]), ("summary_nle_ens", ens.mean_density)):
        if not {name, f"{name}+floor"} & set(methods): continue
        terms[name] = (pick(on_trials).double().reshape(trials.shape), 0.)
        info[name] = dict(validation_loss=val[0] if name == "summary_nle" else val,
                          seconds=seconds[0] if name == "summary_nle" else seconds)
        # the same likelihood, widened by a floor fitted on the populations as the aggregate's is
        floor, _ = fit_systematic(pick(on_pops).double().reshape(pop.shape), pop_truths(), g, widths=SUMMARY_FLOORS)
        terms[f"{name}+floor"], info[f"floor_{name}"] = (terms[name][0], float(floor)), float(floor)
    return {k: terms[k] for k in methods}, info


def _mixture_terms(seed, which, methods, data, g, out) -> None:
    """Into `out` = (terms, info), for `which` = (name, bagged): an ensemble's members' terms on the trials (M, bins,
    K*L, G; score_seed mixes the members' joints, as the floor's fit does here), with its floor fitted on the
    populations and its floors per bin measured on the shift set (where `methods` asks for them); nothing unless
    `methods` asks for one of them. `data`: the bank's summaries and masses, the trials' and populations' summaries,
    the trials' shape and the populations' posteriors."""
    from deeplense_fastai.posterior import fit_systematic, SUMMARY_FLOORS
    (name, bagged), (s_bank, m, s_trials, s_pop, trials_shape, pop), (terms, info) = which, data, out
    shifted = {f"{name}+shift", f"{name}+shift_mean"}
    if not ({name, f"{name}+floor"} | shifted) & set(methods): return
    ens, val, seconds = fit_nle_ensemble(s_bank.float(), m.float(), seed, bootstrap=bagged)  # seconds: each fit's
    on_trials = member_terms(seed, ens, s_trials, g, "trials", bagged)
    on_pops = member_terms(seed, ens, s_pop, g, "populations", bagged)
    terms[name] = (on_trials.double().reshape(len(on_trials), *trials_shape), 0.)
    floor, _ = fit_systematic(on_pops.double().reshape(len(on_pops), *pop.shape), pop_truths(), g,
                              widths=SUMMARY_FLOORS)
    terms[f"{name}+floor"], info[f"floor_{name}"] = (terms[name][0], float(floor)), float(floor)
    info[name] = dict(validation_loss=val, seconds=seconds)
    if shifted & set(methods):
        info[f"shift_{name}"] = shifts = shift_floors(seed, ens, g, bagged)
        for method, key in ((f"{name}+shift", "shift"), (f"{name}+shift_mean", "shift_mean")):
            terms[method] = (terms[name][0], tuple(r[key] for r in shifts))


def shift_floors(seed: int, ens, grid: torch.Tensor, bagged: bool) -> list:
    """The ensemble's floor per bin, measured on the shift set (SHIFT_ROUNDS x SHIFT_POPS populations of LENSES lenses
    per bin, none of them a trial's): each population's joint of all its lenses (the members' joints mixed), then
    `binned_shift` (`shared_shift` over each bin's populations, as calibrate measures): the sd of the error the joints
    do not account for. Populations of 200 lenses, whose joints are narrow beside the shift, see it where
    `fit_systematic`'s 50-lens populations do not."""
    from deeplense_fastai.posterior import binned_shift, mixture_of_joints, posterior_summaries
    joints, truths = [], []
    for r in range(SHIFT_ROUNDS):
        P = torch.from_numpy(np.load(cache("posteriors", f"seed{seed}") / f"{_shift_name(r)}.npy")).double()
        terms = member_terms(seed, ens, posterior_summaries(P, grid.double()), grid, _shift_name(r), bagged)
        joints.append(mixture_of_joints(terms.double().reshape(len(terms), -1, LENSES, terms.shape[-1]).sum(2)))
        truths.append(shift_truths(r))
    _, rows = binned_shift(torch.cat(joints), np.concatenate(truths), grid.double(), BINS)   # what calibrate measures
    return [dict(bin=b, bin_range=[BINS[b], BINS[b + 1]], **{k: v for k, v in r.items() if k != "bin"})
            for b, r in enumerate(rows)]


def member_terms(seed: int, ens, s: torch.Tensor, grid: torch.Tensor, name: str, bagged: bool = False,
                 n_fit: int = FIT_N) -> torch.Tensor:
    """Each member's log q_k(s_i | m_g) (M, B, G) on the trials or the populations, float32, cached beside the run's
    posteriors (tied to its weights and the members' fitting recipe, `n_fit` pairs): the costly step of scoring (about
    3 s per thousand lenses per member on one thread)."""
    f = cache("posteriors", f"seed{seed}") / f"{'bagged' if bagged else 'members'}{_sized(n_fit)}_{name}.npy"
    key = json.dumps(dict(weights_sha256=weights_digest(seed), recipe=fit_recipe(bagged, n_fit)))
    stamp = f.with_suffix(".json")
    if f.exists() and stamp.exists() and stamp.read_text() == key: return torch.from_numpy(np.load(f))
    out = ens.member_logliks(s.float(), grid.float())
    _save_atomic(f, out.numpy())
    stamp.write_text(key)
    return out


def score_seed(seed: int, methods=METHODS) -> tuple[list, dict]:
    "Every (method, N, bin) cell of one run, for `methods`."
    from deeplense_fastai.inference import load_run
    from deeplense_fastai.posterior import target_grid
    stamp = cache("posteriors", f"seed{seed}") / "weights.sha256"
    if not stamp.exists() or stamp.read_text() != weights_digest(seed):
        raise SystemExit(f"{stamp.parent}: posteriors of other weights than {run_dir(seed)}'s; delete the folder and "
                         "rerun `posteriors`")
    grid = target_grid(load_run(run_dir(seed), calibration=False)[1])[0]
    terms, info = _per_lens_terms(seed, grid, methods)
    uses = {}                                          # a method and its floored twin share their terms: summed once
    for method, (t, width) in terms.items(): uses.setdefault(id(t), (t, []))[1].append((method, width))
    rows = []
    for t, ms in uses.values():
        members = t.shape[:-3]                         # (M,) for the terms of each member of an ensemble, else ()
        cum = t.reshape(*members, len(BINS) - 1, TRIALS, LENSES, -1).cumsum(-2)
        rows += [r for method, width in ms for r in _rows(method, seed, cum, grid, width, mixed=bool(members))]
    return sorted(rows, key=lambda r: list(terms).index(r["method"])), info


def _rows(method: str, seed: int, cum: torch.Tensor, grid: torch.Tensor, width: float, mixed: bool = False) -> list:
    """The (N, bin) cells of one method from its running sums over the lenses (bins, trials, L, G), or each member's
    ((M, bins, trials, L, G), `mixed`: their joints mixed by `mixture_of_joints`), widened by a floor of `width`."""
    from deeplense_fastai.posterior import mixture_of_joints
    truths, rows = trial_truths().reshape(len(BINS) - 1, TRIALS), []
    for n in NS:
        for b in range(len(BINS) - 1):
            joint = mixture_of_joints(cum[:, b, :, n - 1].double()) if mixed else cum[b, :, n - 1]
            by_bin = isinstance(width, (tuple, list))    # floors per bin: the largest as `floor`, all as `floor_by_bin`
            rows.append(dict(method=method, seed=seed, n=n, bin=b, bin_range=[BINS[b], BINS[b + 1]], trials=TRIALS,
                             floor=max(width) if by_bin else width, **({"floor_by_bin": list(width)} if by_bin else {}),
                             **_cells(_joint_summary(joint, grid.double(), width), truths[b])))
    return rows


def _within(c: dict, tail: str = "") -> bool:
    "Does a cell's 68% coverage (tail '_grid': by the grid's trapezoid quantiles) lie within twice the binomial error?"
    return abs(c[f"coverage68{tail}"] - 0.68) <= 2 * (0.68 * 0.32 / c["trials"]) ** 0.5


def _targets(cells: list) -> dict:
    """The issue's targets for one method: 68% coverage within 2 sigma in every bin at N = 10, 50, 200 (cells counted
    per seed, then mean +- sd over seeds); below -23 the N = 200 half-width <= 0.01 dex and >= 1.6x narrower than
    N = 50; any floor there <= 0.01 dex (`light_floor`: with floors per bin, the light bins' largest). Also the
    light-mass |bias| at N = 200 (mean over the two bins, per seed)."""
    seeds = sorted({c["seed"] for c in cells})
    cov = [c for c in cells if c["n"] in (10, 50, 200)]
    light = lambda n: [c["halfwidth68"] for c in cells if c["n"] == n and c["bin"] in (0, 1)]
    w50, w200 = np.array(light(50)), np.array(light(200))
    bias = lambda tail="": [np.mean([abs(c[f"bias{tail}"]) for c in cells if c["n"] == 200 and c["bin"] in (0, 1)
                                     and c["seed"] == s]) for s in seeds]
    floors = [next(c["floor"] for c in cells if c["seed"] == s) for s in seeds]
    # the floor below -23 (the target's "there"): a method with floors per bin is judged by its light bins' floors
    light_floor = [next(max(c["floor_by_bin"][:2]) if "floor_by_bin" in c else c["floor"] for c in cells
                        if c["seed"] == s) for s in seeds]
    return dict(coverage_cells=len(cov), coverage_cells_within_2sigma=int(sum(map(_within, cov))),
                cells_per_seed=len(cov) // len(seeds),
                within_2sigma_per_seed=mean_sd([sum(_within(c) for c in cov if c["seed"] == s) for s in seeds]),
                within_2sigma_per_seed_grid=mean_sd([sum(_within(c, "_grid") for c in cov if c["seed"] == s)
                                                     for s in seeds]),
                light_abs_bias200=mean_sd(bias()), light_abs_bias200_grid=mean_sd(bias("_grid")), floor=mean_sd(floors),
                light_floor=mean_sd(light_floor),
                halfwidth200_light_max=float(w200.max()), narrowing_50_to_200_light_min=float((w50 / w200).min()),
                meets=bool(all(map(_within, cov)) and w200.max() <= 0.01 and (w50 / w200).min() >= 1.6
                           and max(light_floor) <= 0.01))


def _over_seeds(rows: list) -> list:
    "Mean and sd over the seeds of each (method, N, bin) cell."
    order = lambda m: METHODS.index(m) if m in METHODS else len(METHODS)     # the reference last
    keys = sorted({(r["method"], r["n"], r["bin"]) for r in rows}, key=lambda k: (order(k[0]), k[1], k[2]))
    out = []
    for m, n, b in keys:
        cell = [r for r in rows if (r["method"], r["n"], r["bin"]) == (m, n, b)]
        out.append(dict(method=m, n=n, bin=b, bin_range=cell[0]["bin_range"], seeds=[r["seed"] for r in cell],
                        **{k: mean_sd([r[k] for r in cell])
                           for k in ("coverage68", "coverage95", "halfwidth68", "bias", "floor")}))
    return out


def choose(targets: dict) -> dict:
    """The method with the most coverage cells within 2 sigma per seed (then the narrowest light-mass N = 200 width),
    the methods it is not separated from (a mean count within twice the larger seed sd of its own), and `versus` calls
    of its light-mass |bias| at N = 200 against each other method's (lower is better)."""
    key = lambda m: (-targets[m]["within_2sigma_per_seed"]["mean"], targets[m]["halfwidth200_light_max"])
    best = min(targets, key=key)
    b = targets[best]["within_2sigma_per_seed"]
    tied = [m for m, t in targets.items() if m != best and
            b["mean"] - t["within_2sigma_per_seed"]["mean"]
            <= 2 * max(b["sd"] or 0, t["within_2sigma_per_seed"]["sd"] or 0)]
    bias = {m: versus(targets[best]["light_abs_bias200"], t["light_abs_bias200"]) for m, t in targets.items()
            if m != best}
    return dict(method=best, not_separated_from=tied, any_meets_targets=any(t["meets"] for t in targets.values()),
                light_bias_calls=bias)


def _commit() -> str:
    "The library's git commit (with '+changes' when its tree differs from it), or why not known."
    import subprocess
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "deeplense_fastai"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError): return "unknown (not a git checkout)"
    return head + ("+changes" if dirty else "")


def _cells_key() -> dict:
    "What a run's cached cells are tied to besides its weights: the members' fitting recipe and the cells' fields."
    return dict(recipe=fit_recipe(), grid=True)


def _reference_key(seed: int) -> dict:
    "What a run's cached reference cells are tied to: its weights, the members' fitting recipe, the draws' seed."
    return dict(weights_sha256=weights_digest(seed), recipe=fit_recipe(), seed=REFERENCE_SEED)


def cells_of(seed: int) -> dict:
    """One run's cells and fits, cached (cells/seed<S>.json) so that runs can be scored in parallel processes; tied to
    the run's weights, the members' fitting recipe and the cells' fields (a cache scored otherwise is scored again)."""
    from _results import write_json
    f, digest, key = cache("cells") / f"seed{seed}.json", weights_digest(seed), _cells_key()
    if not (f.exists() and {k: json.loads(f.read_text()).get(k) for k in ("weights_sha256", "key")}
            == dict(weights_sha256=digest, key=key)):
        rows, info = score_seed(seed)
        write_json(f, dict(rows=rows, info=info, weights_sha256=digest, key=key, scored_with=_commit()))
        print(f"seed {seed}: scored ({info})", flush=True)
    doc = json.loads(f.read_text())
    if doc.get("shift_key") != _shift_key():           # the shift set changed since: its methods scored again
        doc["rows"] = [r for r in doc["rows"] if r["method"] not in SHIFTED]
    if (missing := [m for m in methods() if m not in {r["method"] for r in doc["rows"]}]):   # methods added since
        rows, info = score_seed(seed, missing)
        doc["rows"] += rows
        doc["info"].update(info)
        doc.setdefault("methods_scored_with", {}).update({m: _commit() for m in missing})
        doc["shift_key"] = _shift_key()
        write_json(f, doc)
        print(f"seed {seed}: scored {missing} ({info})", flush=True)
    return doc


def restore(seeds) -> None:
    """Seed the cells caches (cells/seed<S>.json and the reference's) from the committed results file, for each run
    whose retrained weights have the SHA-256 the results record (`deeplense train` is deterministic on the CPU): the
    cells were scored from exactly these weights, so a fresh machine need not score them again. `score --recheck`
    then scores the first seed's flow-free methods again from the new posteriors and records how far the restored
    cells are from them. Nothing is restored when the results were scored with another fitting recipe or protocol
    (bins, trials, lenses, N, seeds); a run whose weights differ, or whose cells are cached already, is left alone."""
    from _results import write_json
    res = json.loads((Path(__file__).parent / "results" / f"{WORLDS[WORLD]['results']}.json").read_text())
    st = res["settings"]
    ours = dict(fit_recipe=json.loads(fit_recipe()), bins=list(BINS), trials=TRIALS, lenses=LENSES, ns=list(NS),
                bank=BANK, bank_seed=BANK_SEED, calibration=CAL_N, fit=FIT_N, trial_seed=TRIAL_SEED,
                populations=[POP_TRIALS, POP_LENSES, POP_SEED], draws_seed=REFERENCE_SEED,
                shift_set=_shift_key() if _shift_rounds() else None)
    theirs = dict({k: st.get(k) for k in ours}, draws_seed=res.get("reference", {}).get("draws_seed"))
    if (differ := [k for k in ours if theirs[k] != ours[k]]):
        raise SystemExit(f"restore: the results were scored with other {', '.join(differ)}; score instead")
    for s in seeds:
        if not (run_dir(s) / "weights.safetensors").exists():
            print(f"seed {s}: no trained run at {run_dir(s)} yet", flush=True)
            continue
        d, f = weights_digest(s), cache("cells") / f"seed{s}.json"
        if res["runs"].get(str(s), {}).get("weights_sha256") != d:
            print(f"seed {s}: weights {d[:12]} are not those the results were scored with; left to be scored",
                  flush=True)
            continue
        if f.exists():
            print(f"seed {s}: cells cached already ({f}); left as they are", flush=True)
            continue
        rows = [r for r in res["cells"] if r["seed"] == s]
        doc = dict(rows=rows, info=res["fits"][str(s)], weights_sha256=d, key=_cells_key(),
                   scored_with=st["cells_scored_with"][str(s)], restored_from=f"bench/results/{res['benchmark']}.json "
                   f"of {res['date']}")
        if (since := st.get("methods_scored_since", {}).get(str(s))): doc["methods_scored_with"] = since
        if _shift_rounds(): doc["shift_key"] = _shift_key()    # checked above against the results' shift set
        write_json(f, doc)
        ref = [r for r in res["reference"]["cells"] if r["seed"] == s]
        write_json(cache("cells") / f"seed{s}_reference.json",
                   dict(rows=ref, key=_reference_key(s),
                        scored_with=st["cells_scored_with"][str(s)], restored_from=doc["restored_from"]))
        print(f"seed {s}: {len(rows)} cells and {len(ref)} reference cells restored", flush=True)


REFERENCE_SEED = 7   # seed of the reference world's draws


def reference_cells(seed: int) -> list:
    """The exact-posterior reference of run `seed`: a world in which member 0 of its ensemble is the true likelihood.
    Each trial's lenses are summaries drawn from q(s | m_true) (`SummaryLikelihood.sample`), with the same truths,
    bins and N as the real trials; their joint under q and a flat prior is then the exact posterior, and its coverage
    in each cell is what a perfect estimator reaches there. A method that misses a cell the reference meets misses
    by its own error; a cell the reference misses too is a property of central intervals in that bin (the prior's edge,
    images that hardly tell masses apart), not of the estimator. Cached in cells/seed<S>_reference.json."""
    from _results import write_json
    from deeplense_fastai.inference import load_run
    from deeplense_fastai.posterior import target_grid
    f, key = cache("cells") / f"seed{seed}_reference.json", _reference_key(seed)
    if f.exists() and json.loads(f.read_text()).get("key") == key: return json.loads(f.read_text())["rows"]
    grid = target_grid(load_run(run_dir(seed), calibration=False)[1])[0]
    q, truths = nle_member(seed, 0), trial_truths()
    s = q.sample(torch.from_numpy(truths), LENSES, seed=REFERENCE_SEED)              # (bins * trials, L, 2)
    cum = q.loglik(s.reshape(-1, 2), grid.float()).double().reshape(len(BINS) - 1, TRIALS, LENSES, -1).cumsum(2)
    rows = _rows("exact_reference", seed, cum, grid, 0.)
    write_json(f, dict(rows=rows, key=key, scored_with=_commit()))
    print(f"seed {seed}: reference scored", flush=True)
    return rows


def recheck(seed: int) -> dict:
    """The cached cells against today's library, where that is cheap: the flow-free methods (`product`, `aggregate`)
    of run `seed` scored again, and the largest difference of each field over their cells. The cells cache is not
    tied to the scoring code (module docstring): this says how far a change of it since the cells were scored moves
    them."""
    methods, worst = ["product", "aggregate"], {}
    cached = {(r["method"], r["n"], r["bin"]): r for r in cells_of(seed)["rows"]}
    for c in score_seed(seed, methods)[0]:
        o = cached[(c["method"], c["n"], c["bin"])]
        for k in ("coverage68", "coverage95", "halfwidth68", "bias"):
            worst[k] = max(worst.get(k, 0.), abs(c[k] - o[k]))
    return dict(seed=seed, methods=methods, largest_difference=worst)


def score(seeds, cells_only=False, check=False) -> None:
    w = WORLDS[WORLD]
    rows, info, docs = [], {}, {}
    for s in seeds:
        doc = docs[str(s)] = cells_of(s)
        rows, info[str(s)] = rows + [r for r in doc["rows"] if r["method"] in methods()], doc["info"]
    ref = [r for s in seeds for r in reference_cells(s)]
    if cells_only: return
    targets = {m: _targets([r for r in rows if r["method"] == m]) for m in methods()}
    for m, t in targets.items(): print(m, t, flush=True)
    ch = choose(targets)
    print("chosen:", ch, flush=True)
    # the rule of the ensemble's joint, head to head (cells missed per seed: lower is better), with and without floor
    missed = lambda t: dict(t["within_2sigma_per_seed"], mean=t["cells_per_seed"] - t["within_2sigma_per_seed"]["mean"])
    rules = {f"{a} vs {b}": versus(missed(targets[a]), missed(targets[b]))
             for a, b in (("summary_nle_mix", "summary_nle_ens"), ("summary_nle_mix+floor", "summary_nle_ens+floor"))}
    bagging = {f"{a} vs {b}": versus(missed(targets[a]), missed(targets[b]))
               for a, b in (("summary_nle_bag", "summary_nle_mix"), ("summary_nle_bag+floor", "summary_nle_mix+floor"))}
    others = ("summary_nle_bag", "summary_nle_bag+floor", "summary_nle_mix", "summary_nle_mix+floor",
              "summary_nle_bag+shift_mean", "summary_nle_mix+shift")
    shift = {f"summary_nle_bag+shift vs {o}": versus(missed(targets["summary_nle_bag+shift"]), missed(targets[o]))
             for o in others if "summary_nle_bag+shift" in targets and o in targets}
    shift.update({f"summary_nle_mix+shift vs {o}": versus(missed(targets["summary_nle_mix+shift"]), missed(targets[o]))
                  for o in ("summary_nle_mix", "summary_nle_mix+floor") if "summary_nle_mix+shift" in targets})
    save(w["results"], table=_over_seeds(rows), cells=rows, targets=targets, chosen=ch["method"], choice=ch, fits=info,
         mixture_vs_mean_density=rules, bagged_vs_seeded=bagging, shift_vs_others=shift,
         shift_by_bin=_shift_by_bin(info),
         **({"shift_by_bin_seeded": _shift_by_bin(info, "summary_nle_mix")} if WITH_SEEDED_SHIFT else {}),
         library=_library_record(),
         reference=dict(table=_over_seeds(ref), cells=ref, targets=_targets(ref), about=reference_cells.__doc__.split(
             "Cached")[0].strip(), draws_seed=REFERENCE_SEED, member=0),
         **({"ablation": ab} if (ab := _against_early_stopped(targets)) else {}),
         **({"recheck": recheck(seeds[0])} if check else {}),
         runs={str(s): dict(command=w["train"].format(seed=s), weights_sha256=weights_digest(s)) for s in seeds},
         settings=dict(**_world_settings(seeds, docs), nominal=[0.68, 0.95], n_bins=len(BINS) - 1, bins=BINS,
                       trials=TRIALS, lenses=LENSES, ns=NS, bank=BANK, bank_seed=BANK_SEED, calibration=CAL_N,
                       fit=FIT_N, populations=[POP_TRIALS, POP_LENSES, POP_SEED], trial_seed=TRIAL_SEED,
                       shift_set=_shift_key() if _shift_rounds() else None))


def _shift_by_bin(info: dict, ensemble: str = "summary_nle_bag") -> list:
    """The shift set's measured floor (`shared_shift`) per bin of an ensemble's joints (default: the bagged one's):
    mean +- sd over the seeds (each seed's: in `fits`)."""
    per = {s: i[f"shift_{ensemble}"] for s, i in info.items() if f"shift_{ensemble}" in i}
    if not per: return []
    return [dict(bin=b, bin_range=[BINS[b], BINS[b + 1]], seeds=[int(s) for s in per],
                 **{k: mean_sd([p[b][k] for p in per.values()]) for k in ("shift", "shift_mean", "shift_sq_mean",
                                                                         "shift_sq_err", "rms_error", "rms_halfwidth")})
            for b in range(len(BINS) - 1)]


# The user's path at this bench's scale: a labelled calibration split simulated by the user's command (a seed no run
# trains or tests on), then `deeplense calibrate` with a shift set of the bench's size, on a copy of run LIBRARY_RUN
LIBRARY_RUN = 0
LIBRARY_SPLIT = "deeplense simulate --preset model_ii --n 1000 --seed 50000 --out SPLIT"
LIBRARY_CALIBRATE = ("deeplense calibrate --model RUN --data SPLIT --populations model_ii "
                     "--shift-populations 100")


def _library_command(cmd: str, d: Path) -> list:
    "A command line of LIBRARY_* with its RUN and SPLIT placeholders set to folder `d`'s."
    return [str(d / "run") if w == "RUN" else str(d / "split") if w == "SPLIT" else w for w in cmd.split()]


def _library_record() -> dict | None:
    "The `library` stage's record, where it ran on today's weights of its run (None otherwise, or in another world)."
    f = cache("library", f"seed{LIBRARY_RUN}") / "record.json"
    if not (WORLD == "model_ii" and f.exists()): return None
    rec = json.loads(f.read_text())
    return rec if rec.get("weights_sha256") == weights_digest(LIBRARY_RUN) else None


def _library_inputs(seed: int, digest: str) -> Path:
    """The `library` stage's folder for run `seed`: a copy of the run (without its calibration) and a calibration split
    made by LIBRARY_SPLIT; wiped first when the run was retrained since (its copy's weights differ)."""
    import shutil
    import subprocess
    from deeplense_fastai.core import file_digest
    d = cache("library", f"seed{seed}")
    copy = d / "run" / "weights.safetensors"
    if copy.exists() and file_digest(copy) != digest:        # the run was retrained since: everything here is stale
        shutil.rmtree(d)
        d = cache("library", f"seed{seed}")
    stamp = cache("posteriors", f"seed{seed}") / "weights.sha256"
    if not stamp.exists() or stamp.read_text() != digest:
        raise SystemExit(f"{stamp.parent}: posteriors of other weights than {run_dir(seed)}'s; rerun `posteriors`")
    if not copy.exists():
        shutil.rmtree(d / "run.tmp", ignore_errors=True)
        shutil.copytree(run_dir(seed), d / "run.tmp",
                        ignore=shutil.ignore_patterns("calibration.json", "summary_likelihood*.safetensors"))
        (d / "run.tmp").rename(d / "run")
    if not (d / "split" / "images.npy").exists():
        shutil.rmtree(d / "split", ignore_errors=True)
        subprocess.run(_library_command(LIBRARY_SPLIT, d), check=True, capture_output=True, text=True)
    return d


def _library_calibrate(d: Path) -> dict:
    """LIBRARY_CALIBRATE run once in folder `d` (a subprocess, as a user runs it): its CPU and wall seconds, its
    output lines and notes (cached in calibrate.json; the members' terms of an earlier calibration dropped)."""
    import resource
    import subprocess
    from _results import write_json
    cal_f = d / "calibrate.json"
    if cal_f.exists(): return json.loads(cal_f.read_text())
    (d / "run" / "calibration.json").unlink(missing_ok=True)
    (d / "terms_trials.npy").unlink(missing_ok=True)
    before, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
    r = subprocess.run(_library_command(LIBRARY_CALIBRATE, d), capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode: raise SystemExit(f"calibrate failed ({r.returncode}): {r.stderr[-2000:]}")
    write_json(cal_f, dict(calibrated_with=_commit(),
                           cpu_seconds=round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime),
                           wall_seconds=round(time.time() - t0), stdout=r.stdout.splitlines(),
                           notes=[ln for ln in r.stderr.splitlines() if ln.startswith(("calibrate:", "note", "warn"))]))
    return json.loads(cal_f.read_text())


def library(seed: int = LIBRARY_RUN) -> dict:
    """`deeplense calibrate --shift-populations 100` run as a user runs it (a subprocess, every other flag at its
    default) on a copy of run `seed`, its CPU time taken; then the calibration it wrote (bagged members, a floor per
    quarter of the prior) scored on this bench's trials exactly as `combine` applies it (each trial's joint widened by
    the floor of the quarter its floor-free median falls in), beside the same members widened by their one fitted
    floor. Cached in library/seed<S>/ (the run's copy, the split, the record; the members' terms on the trials), so a
    rerun resumes; tied to the run's weights."""
    from _results import write_json
    from deeplense_fastai.inference import load_run
    from deeplense_fastai.posterior import posterior_summaries, target_grid
    if WORLD != "model_ii": raise SystemExit("library: the fixed world's only (its commands name model_ii)")
    digest = weights_digest(seed)
    rec_f = cache("library", f"seed{seed}") / "record.json"
    if rec_f.exists() and json.loads(rec_f.read_text()).get("weights_sha256") == digest:
        return json.loads(rec_f.read_text())
    d = _library_inputs(seed, digest)
    ran = _library_calibrate(d)
    sl = load_run(d / "run")[1].joint_calibration["log10_m_axion"]["summary_likelihood"]
    if tuple(sl["shift"]["edges"]) != BINS: raise SystemExit(f"library: ranges {sl['shift']['edges']}, not {BINS}")
    grid = target_grid(load_run(d / "run", calibration=False)[1])[0]
    f = d / "terms_trials.npy"
    if not f.exists():
        P = torch.cat([torch.from_numpy(np.load(cache("posteriors", f"seed{seed}") / f"trials_bin{b}.npy"))
                       for b in range(len(BINS) - 1)]).double()
        _save_atomic(f, sl["model"].member_logliks(posterior_summaries(P, grid.double()).float(), grid.float()).numpy())
    t = torch.from_numpy(np.load(f)).double()
    cum = t.reshape(len(t), len(BINS) - 1, TRIALS, LENSES, -1).cumsum(-2)
    cells = {"calibrate --shift-populations 100": _rows("library_shift", seed, cum, grid, tuple(sl["shift"]["floors"]),
                                                        mixed=True),
             "the same members, one floor": _rows("library_one_floor", seed, cum, grid, float(sl["systematic"]),
                                                  mixed=True)}
    here = lambda lines: [ln.replace(str(d / "run"), "RUN").replace(str(d / "split"), "SPLIT") for ln in lines]
    rec = dict(weights_sha256=digest, run=seed, split_command=LIBRARY_SPLIT, command=LIBRARY_CALIBRATE,
               calibrated_with=ran.get("calibrated_with", "not recorded"),
               cpu_seconds=ran["cpu_seconds"], wall_seconds=ran["wall_seconds"], stdout=here(ran["stdout"]),
               notes=here(ran["notes"]), floors=sl["shift"]["floors"], edges=sl["shift"]["edges"],
               one_floor=sl["systematic"], joint_check=sl["joint_check"], bootstrap=sl["fit"]["bootstrap"],
               targets={k: _targets(v) for k, v in cells.items()}, cells=cells)
    write_json(rec_f, rec)
    return rec


def _against_early_stopped(targets: dict) -> dict:
    """The fit recipe's ablation: each summary likelihood's figures against those of the early-stopped fits kept in
    bench/results/many_lenses_early_stopped.json (same runs, bank, populations and trials; grid quantiles), with
    `versus` calls (lower is better) of the light-mass |bias| and of the cells missed per seed (both read by grid
    quantiles on both sides, so that only the fit differs; the floors were fitted by each side's own reading). Empty
    for a world without that file."""
    f = Path(__file__).parent / "results" / f"{WORLDS[WORLD]['results']}_early_stopped.json"
    if not f.exists(): return {}
    before = json.loads(f.read_text())["targets"]
    missed = lambda t, k: dict(t[k], mean=t["cells_per_seed"] - t[k]["mean"])
    grid_call = lambda m, t: versus(missed(t, "within_2sigma_per_seed_grid"),
                                    missed(before[m], "within_2sigma_per_seed"))
    return {m: dict(cells_before=before[m]["within_2sigma_per_seed"], cells_now_grid=t["within_2sigma_per_seed_grid"],
                    cells_now=t["within_2sigma_per_seed"], cells_call=grid_call(m, t),
                    light_bias_before=before[m]["light_abs_bias200"], light_bias_now=t["light_abs_bias200"],
                    light_bias_now_grid=t["light_abs_bias200_grid"],
                    light_bias_call=versus(t["light_abs_bias200_grid"], before[m]["light_abs_bias200"]),
                    floor_before=before[m]["floor"], floor_now=t["floor"])
            for m, t in targets.items() if m.startswith("summary_nle") and m in before}


def _world_settings(seeds, docs) -> dict:
    """What the results say about where they came from: how the flows were fitted, how joints were read, the ensemble,
    the floors' candidates, the library commit that scored each seed's cells; for the varied world its run and
    lenses."""
    from deeplense_fastai.posterior import SUMMARY_FLOORS
    how = dict(fit_recipe=json.loads(fit_recipe()), quantiles="joint_quantiles (and the grid's trapezoid as *_grid)",
               ensemble=ENSEMBLE, summary_floor_candidates=[float(SUMMARY_FLOORS[0]), float(SUMMARY_FLOORS[-1])],
               cells_scored_with={s: d.get("scored_with", "not recorded (scored before the bench recorded it; see "
                                           "recheck)") for s, d in docs.items()},
               methods_scored_since={s: d["methods_scored_with"] for s, d in docs.items()
                                     if d.get("methods_scored_with")},
               cells_restored_from={s: d["restored_from"] for s, d in docs.items() if d.get("restored_from")})
    if WORLD == "model_ii": return how
    return dict(how, world=WORLD, run=f"bench/robustness.py's {WORLDS[WORLD]['robustness_run']}", seeds=list(seeds),
                seed_spread="not measured: one training seed", per_lens="main lens, shear and source drawn per lens; "
                "the axion mass fixed within a trial and shared by its lenses")


def main():
    global WORLD, WITH_SEEDED_SHIFT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["images", "posteriors", "fits", "restore", "score", "library"])
    ap.add_argument("--world", choices=list(WORLDS), default="model_ii",
                    help="the lenses' world: the fixed lens (default) or every nuisance drawn per lens")
    ap.add_argument("--seeds", default=None, help="training seeds (default: the world's)")
    ap.add_argument("--cells-only", action="store_true", help="score: only compute and cache these seeds' cells")
    ap.add_argument("--recheck", action="store_true",
                    help="score: also score the first seed's flow-free methods again with today's library and record "
                         "how far the cached cells are from them")
    ap.add_argument("--members", default=None,
                    help=f"fits: which members of the summary likelihoods' ensemble to fit (default: all {ENSEMBLE})")
    ap.add_argument("--bagged", action="store_true", help="fits: the bagged ensemble's members instead")
    ap.add_argument("--seeded-shift", action="store_true",
                    help="score: also the seeded members' floors per bin (summary_nle_mix+shift; about 40 CPU minutes "
                         "a run to read the shift set)")
    a = ap.parse_args()
    WORLD, WITH_SEEDED_SHIFT = a.world, a.seeded_shift
    seeds = [int(s) for s in a.seeds.split(",")] if a.seeds else list(WORLDS[WORLD]["seeds"])
    torch.set_num_threads(1)
    if a.stage == "images": images()
    elif a.stage == "posteriors": posteriors(seeds)
    elif a.stage == "fits":
        for s in seeds:
            for k in ([int(k) for k in a.members.split(",")] if a.members else range(ENSEMBLE)):
                nle_member(s, k, bootstrap=a.bagged)
    elif a.stage == "restore": restore(seeds)
    elif a.stage == "library": library()
    else: score(seeds, a.cells_only, a.recheck)


if __name__ == "__main__":
    main()
