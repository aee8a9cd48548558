"""Where do the networks look? Occlusion of the axion vortex against the same segment turned, for every seed run.

    OMP_NUM_THREADS=1 nice -n 19 python bench/attribution.py [--images 512] [--json bench/results/attribution.json]

Question. bench/attention.py showed that the attention gates put no more weight on the vortex than on a turned copy of
it; gate coefficients are not attributions, so that cannot say whether a network's prediction depends on the vortex.
Occlusion asks it directly: replace some pixels by what their surroundings suggest and see how far the predicted
log10 m moves.

Method. For every run of bench/seeds.py (Model II, 8,000 training images, each architecture at three training seeds;
the weights of its best epoch, runs/seeds-<preset>-<arch>-seed<s>/models/best.pth) and the first --images test images
of that protocol (dataset seed 99), `deeplense_fastai.interpret.occlusion_effect` (fill: `inpaint_fill`, a Gaussian of
--sigma pixels over the unmasked pixels around the mask) gives the change of the predicted log10 m when it occludes
- the vortex: the pixels within 1.5 px of the segment the simulator drew for that image (bench/attention.py's
  `vortex_mask`);
- the control: the same region turned by 90 degrees about the lens centre: the same number of pixels at the same
  distances from the centre, so about the same overlap with the Einstein ring;
- the profile: the region turned by 22.5, 45 and 67.5 degrees (each averaged with its mirror turn, 157.5, 135, 112.5).
Every region is cut to two radial parts, each compared on its own: `beyond_centre`, the pixels further than
1.5 * sqrt(2) px from the lens centre (nearer, the vortex and its 90-degree turn overlap), and `outer`, the pixels
beyond half the Einstein radius, where the vortex crosses or nears the ring. Images whose vortex does not reach a part
(the heavier axions) have an empty region there and are left out of that part.

Reported per run and part: the mean absolute change on the vortex and on the control, their ratio, and the mean
paired difference |vortex| - |control| with its standard error over the images; per architecture the mean and sd of
these over the seeds. The same contrast for the image itself is the reference: the share of |image with the vortex -
image with the vortex's mass at the lens centre| (noiseless renders) that falls on the vortex region and on the control,
i.e. where the vortex's shape changes the picture at all; beside it, how much brighter the extended vortex leaves the
middle of the lens (flux within 3 px of the centre), and how much the fill itself changes the light within half the
Einstein radius of the centre (`fill_middle_change`, median relative change). For three example lenses the seed-0
model of each architecture also gets an occlusion map (--patch px squares, inpainted one at a time), and the file
keeps the normalised images and their two regions for the tutorial's figure.

Checks: the lenses re-rendered from the dataset's seed must match the stored test images (median correlation >= 0.99),
so that the vortex regions are those of the images; every reloaded model must reproduce its seed file's test
predictions (within 1e-3) before it is occluded.
Forward passes only; about half a minute per run at 512 images on one CPU thread.
"""
import argparse
import json
from functools import partial
from types import SimpleNamespace

import numpy as np
import torch

from _results import RESULTS, save
from attention import vortex_mask
from seeds import ARCHS, learner

TURNS = (0., 22.5, 45., 67.5, 90., 112.5, 135., 157.5)     # degrees; 0 is the vortex, 90 the control
CENTRE_PX = 1.5 * np.sqrt(2)                                # where the vortex and its 90-degree turn overlap


def regions(preset, indices, seed, inner_px, width_px=1.5):
    "The vortex region turned by each of TURNS (K, B, H, W), beyond `inner_px` pixels from the lens centre."
    from deeplense_fastai.lensing import pixel_grid
    x, y = pixel_grid(preset.instrument.npix, preset.instrument.pixel_scale, dtype=torch.float64)
    outside = (x**2 + y**2).sqrt() > inner_px * preset.instrument.pixel_scale
    return torch.stack([vortex_mask(preset, indices, seed, width_px, np.deg2rad(t)) & outside for t in TURNS])


def contrast(v, c):
    "Mean |change| on the vortex and on the control, their ratio, and the paired difference with its standard error."
    av, ac = np.abs(v), np.abs(c)
    d = av - ac
    se = float(d.std(ddof=1) / np.sqrt(len(d)))
    return dict(n=int(len(d)), vortex=float(av.mean()), control=float(ac.mean()), ratio=float(av.mean() / ac.mean()),
                diff=float(d.mean()), diff_se=se, diff_z=float(d.mean() / se) if se > 0 else None,
                vortex_signed=float(np.mean(v)), control_signed=float(np.mean(c)))


def profile(per_turn):
    "Values at 0, 22.5, 45, 67.5 and 90 degrees from the vortex (mirror turns averaged)."
    k = len(TURNS)
    mirrored = [float((per_turn[j] + per_turn[k - j]) / 2) for j in range(1, k // 2)]
    return [float(per_turn[0])] + mirrored + [float(per_turn[k // 2])]


def physics_reference(data):
    """Where the vortex's shape changes the image: the share of |image(vortex) - image(its mass at the lens centre)|
    (noiseless renders) on the vortex region and on the control; and how much brighter the extended vortex leaves the
    middle of the lens (flux within 3 px of the centre, extended over compact, median over the images)."""
    from deeplense_fastai.lensing import pixel_grid
    from deeplense_fastai.simulate import draw_parameters, render
    par = draw_parameters(data.preset, data.indices, data.seed)
    ext = render(data.preset, par).double()
    com = render(data.preset, dict(par, vortex_half_length=np.where(par["vortex_half_length"] > 0, 1e-9, 0.))).double()
    a, b = ext.flatten(1) - ext.flatten(1).mean(1, keepdim=True), data.raw.double().flatten(1)
    b = b - b.mean(1, keepdim=True)
    corr = float(((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).median())
    if corr < 0.99:
        raise SystemExit(f"the re-rendered lenses do not match the stored test images (median correlation {corr:.3f}): "
                         "the simulator changed since the dataset was written, and the vortex regions would be wrong")
    d = (ext - com).abs()
    out = dict(render_correlation=corr)
    for part, masks in data.masks.items():
        s = torch.as_tensor(data.keep[part])
        share = [float((d * m)[s].sum() / d[s].sum()) for m in masks]
        out[part] = dict(images=int(s.sum()), vortex_share=share[0], control_share=share[4], ratio=share[0] / share[4],
                         profile=profile(share))
    x, y = pixel_grid(data.preset.instrument.npix, data.preset.instrument.pixel_scale, dtype=torch.float64)
    mid = (x**2 + y**2).sqrt() < 3 * data.preset.instrument.pixel_scale
    ratio = (ext[:, mid].sum(1) / com[:, mid].sum(1)).numpy()
    short = data.lam < 3 * data.preset.instrument.pixel_scale
    out["central_flux_ratio"] = dict(reaches_ring=float(np.median(ratio[data.reach])),
                                     within_3px=float(np.median(ratio[short])),
                                     images_reaching=int(data.reach.sum()), images_within_3px=int(short.sum()))
    return out


def fill_change(x, data):
    "Median relative change of the light within half the Einstein radius of the centre when a region is inpainted."
    from deeplense_fastai.lensing import pixel_grid
    gx, gy = pixel_grid(data.preset.instrument.npix, data.preset.instrument.pixel_scale, dtype=torch.float64)
    mid = (gx**2 + gy**2).sqrt() < data.theta_E / 2
    flux = lambda im: im[:, 0].double()[:, mid].sum(1)
    out = {}
    for part, masks in data.masks.items():
        k = data.keep[part]
        base = flux(x[k])
        out[part] = {name: float(((flux(data.fill(x[k], masks[j, k])) - base) / base).median())
                     for name, j in (("vortex", 0), ("control", 4))}
    return out


def load(arch, a, train_dir, seed):
    "The best epoch of seed run `seed` of `arch` (bench/seeds.py), as a model and its run configuration."
    learn = learner(arch, a, train_dir, seed, f"seed{seed}")
    learn.load("best", with_opt=False)
    return learn.model.cpu().eval(), learn.lens_config


def occlusion_map(model, cfg, x, patch, fill):
    "Change of the prediction (n, H/patch, W/patch) when each patch x patch square is occluded, one at a time."
    from deeplense_fastai.interpret import occlusion_effect
    n, h, w = x.shape[0], x.shape[-2] // patch, x.shape[-1] // patch
    sq = torch.zeros(h * w, n, x.shape[-2], x.shape[-1], dtype=torch.bool)
    for k in range(h * w):
        r, c = divmod(k, w)
        sq[k, :, r * patch:(r + 1) * patch, c * patch:(c + 1) * patch] = True
    return occlusion_effect(model, x, sq, fill, cfg.decode)[..., 0].T.reshape(n, h, w)


def run(arch, seed, a, data, doc):
    "Occlusion contrasts of one seed run; checks that the reloaded model reproduces its recorded predictions."
    from deeplense_fastai.interpret import occlusion_effect
    model, cfg = load(arch, a, data.train_dir, seed)
    x = cfg.normalise(data.raw)
    with torch.no_grad(): pred = cfg.decode(model(x))[:, 0].numpy()
    recorded = np.asarray(doc["predictions"]["pred"][:len(pred)])
    if not np.allclose(pred, recorded, atol=1e-3):
        raise SystemExit(f"{arch} seed {seed}: reloaded predictions differ from the seed file's by "
                         f"{np.abs(pred - recorded).max():.2g}: not the trained weights")
    row = dict(arch=arch, seed=seed, lr=doc["lr"], test_mae=doc["test"]["mae"])
    for part, masks in data.masks.items():
        k = data.keep[part]
        eff = occlusion_effect(model, x[k], masks[:, k], data.fill, cfg.decode)[..., 0].numpy()     # (turns, images)
        row[part] = dict(contrast(eff[0], eff[4]), profile=profile(np.abs(eff).mean(1)),
                         vortex_change=np.round(eff[0], 5).tolist(), control_change=np.round(eff[4], 5).tolist())
    if seed == min(a.seeds):
        row["maps"] = np.round(occlusion_map(model, cfg, x[data.examples], a.patch, data.fill).numpy(), 5).tolist()
    return row, x


def over_seeds(rows, parts):
    "Per architecture: mean and sd over its seeds of the vortex, control, ratio and paired difference, and the profile."
    out = []
    for arch in dict.fromkeys(r["arch"] for r in rows):
        rs = [r for r in rows if r["arch"] == arch]
        agg = dict(arch=arch, seeds=[r["seed"] for r in rs], test_mae_mean=float(np.mean([r["test_mae"] for r in rs])))
        sd = lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else None
        for part in parts:
            for k in ("vortex", "control", "ratio", "diff"):
                v = [r[part][k] for r in rs]
                agg[f"{part}_{k}_mean"], agg[f"{part}_{k}_sd"] = float(np.mean(v)), sd(v)
            prof = np.array([r[part]["profile"] for r in rs])
            agg[f"{part}_profile_mean"] = prof.mean(0).tolist()
            agg[f"{part}_profile_sd"] = prof.std(0, ddof=1).tolist() if len(rs) > 1 else None
        out.append(agg)
    return out


def prepare(a):
    "Test images, their regions (beyond the central disc; beyond half the Einstein radius), and three example lenses."
    from deeplense_fastai.core import cache_dir
    from deeplense_fastai.data import open_source
    from deeplense_fastai.interpret import inpaint_fill
    from deeplense_fastai.simulate import draw_parameters, get_preset, preset_physics
    preset, seed = get_preset(a.preset), 99
    test = open_source(cache_dir("bench") / f"{a.preset}-n{a.n_test}-seed{seed}")
    n = min(a.images, len(test))
    indices = test.labels["index"].to_numpy()[:n]
    theta_E = float(preset_physics(preset)["theta_E"])
    inner = dict(beyond_centre=CENTRE_PX, outer=theta_E / preset.instrument.pixel_scale / 2)
    masks = {part: regions(preset, indices, seed, px) for part, px in inner.items()}
    keep = {part: (m[0].flatten(1).any(1) & m[4].flatten(1).any(1)).numpy() for part, m in masks.items()}
    lam = draw_parameters(preset, indices, seed)["vortex_half_length"]
    reach = lam >= theta_E
    examples = [int(i) for i in np.flatnonzero(reach & keep["outer"])[:3]]
    raw = torch.from_numpy(np.stack([test.image(i) for i in range(n)]))
    return SimpleNamespace(preset=preset, seed=seed, indices=indices, masks=masks, keep=keep, reach=reach, lam=lam,
                           theta_E=theta_E, inner_px=inner, examples=examples, raw=raw,
                           fill=partial(inpaint_fill, sigma=a.sigma),
                           log10_m=test.labels["log10_m_axion"].to_numpy()[:n],
                           train_dir=cache_dir("bench") / f"{a.preset}-n{a.n_train}-seed0")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default=ARCHS)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--images", type=int, default=512, help="the first test images of the seeds protocol")
    ap.add_argument("--patch", type=int, default=4, help="side (px) of the squares of the example occlusion maps")
    ap.add_argument("--sigma", type=float, default=2., help="width (px) of the Gaussian of the inpainting fill")
    ap.add_argument("--preset", default="model_ii")
    ap.add_argument("--n-train", type=int, default=8000)
    ap.add_argument("--n-test", type=int, default=2000)
    ap.add_argument("--bs", type=int, default=64)
    ap.add_argument("--json", default=None, help="results file (default bench/results/attribution.json)")
    a = ap.parse_args()
    a.seeds = [int(s) for s in a.seeds.split(",")]
    import warnings
    warnings.filterwarnings("ignore")
    data = prepare(a)
    ref = physics_reference(data)
    print(f"# {len(data.indices)} test images; regions beyond the central disc in "
          f"{int(data.keep['beyond_centre'].sum())}, "
          f"beyond half the Einstein radius in {int(data.keep['outer'].sum())}. Where the vortex changes the image, "
          f"vortex/control: {ref['beyond_centre']['ratio']:.2f} and {ref['outer']['ratio']:.2f}", flush=True)
    rows = []
    for arch in a.archs.split(","):
        files = [RESULTS / "seeds" / f"{a.preset}-{arch}-seed{s}.json" for s in a.seeds]
        if not all(f.exists() for f in files):
            print(f"{arch}: not every seed run is finished, left out", flush=True)
            continue
        for s, f in zip(a.seeds, files):
            row, x = run(arch, s, a, data, json.loads(f.read_text()))
            rows.append(row)
            print(f"{arch} seed {s}: mean |change of log10 m| on vortex/control "
                  + "; ".join(f"{p}: {row[p]['vortex']:.4f}/{row[p]['control']:.4f}, ratio {row[p]['ratio']:.2f}, "
                              f"paired difference {row[p]['diff']:+.4f} +- {row[p]['diff_se']:.4f}"
                              for p in data.masks), flush=True)
    if not rows: raise SystemExit("no architecture has all its seed runs: run bench/seeds.py first")
    pick = lambda m: [int(p) for p in np.flatnonzero(m.flatten().numpy())]
    examples = dict(images=np.round(x[data.examples, 0].numpy(), 3).tolist(), test_index=data.examples,
                    log10_m=[float(data.log10_m[i]) for i in data.examples],
                    vortex=[pick(data.masks["beyond_centre"][0, i]) for i in data.examples],
                    control=[pick(data.masks["beyond_centre"][4, i]) for i in data.examples])
    save("attribution", a.json, preset=a.preset, images=len(data.indices), turns_deg=list(TURNS),
         profile_deg=[0, 22.5, 45, 67.5, 90],
         parts={p: dict(inner_px=float(px), images=int(data.keep[p].sum()),
                        reaching_ring=int((data.keep[p] & data.reach).sum()),
                        log10_m=np.round(data.log10_m[data.keep[p]], 4).tolist()) for p, px in data.inner_px.items()},
         settings=dict(fill="inpaint_fill", sigma_px=a.sigma, width_px=1.5, patch_px=a.patch,
                       theta_E_arcsec=data.theta_E,
                       pixel_scale_arcsec=data.preset.instrument.pixel_scale),
         physics=ref, fill_middle_change=fill_change(x, data), table=over_seeds(rows, list(data.masks)), runs=rows,
         examples=examples)


if __name__ == "__main__":
    main()
