"""Where do the attention models look? Attention maps of the architectures trained by bench/accuracy.py.

    python bench/attention.py [--images 4] [--json bench/results/attention.json]

For each attention model whose trained run bench/accuracy.py exported into the cache (runs/accuracy-<preset>-<arch>/run:
Attention U-Net and mResUNet gates, Residual Attention masks), the attention coefficients of every gate or mask on the
same few test images of the accuracy protocol (seed 99), chosen to span the axion mass, are written at 32x32 (mean
pooled) beside the images, their true and predicted log10 m, and a summary that needs no figure: the fraction of the
attention that falls on the brightest 10% of the pixels (the Einstein ring) against the 10% that a uniform map would
give there, and the fraction on the axion vortex itself (the pixels within 1.5 pixels of the segment the simulator drew
for that image, rebuilt from the dataset's seed and the image's index) against the same segment turned by 90 degrees
about the lens centre, a control with the same centre and length and about the same overlap with the ring. The
shares are averaged over the first 256 test images (--summary-images). The architectures tutorial draws the maps with
colour bars and the vortex outlined.
"""
import argparse

import numpy as np
import torch
import torch.nn.functional as F

from _results import save

ATTENTION_ARCHS = ("attention_unet", "mresunet_att", "residual_attention_56", "residual_attention_92",
                   "attention_unet_small", "mresunet_att_small", "residual_attention_small")


def pick_images(test, target, k):
    "Indices of k test images whose true values are spread evenly over their range."
    y = test.labels[target].to_numpy()
    return [int(np.nanargmin(np.abs(y - v))) for v in np.linspace(np.nanmin(y), np.nanmax(y), k)]


def ring_fraction(maps, x):
    "Share of each map's attention that falls on the image's brightest 10% of pixels (0.1 for a uniform map)."
    return share_on(maps, x >= torch.quantile(x.flatten(1), 0.9, dim=1)[:, None, None])


def vortex_mask(preset, indices, seed, width_px=1.5, turn=0.):
    """Pixels (B, H, W) within `width_px` pixels of each image's axion vortex: the segment of half-length lambda at the
    lens centre, at the angle the simulator drew for that image (`draw_parameters` again, from the dataset's seed and
    the image indices), on the renderer's own pixel grid. Images without a vortex get an empty mask. `turn` rotates the
    segment about the lens centre (radians): turned by pi/2 it is a control with the same centre and length and about
    the same overlap with the ring, but where the vortex is not."""
    from deeplense_fastai.lensing import pixel_grid
    from deeplense_fastai.simulate import draw_parameters
    par = draw_parameters(preset, indices, seed)
    x, y = pixel_grid(preset.instrument.npix, preset.instrument.pixel_scale, dtype=torch.float64)
    ang = torch.as_tensor(par["vortex_angle"] + turn, dtype=torch.float64)[:, None, None]
    lam = torch.as_tensor(par["vortex_half_length"], dtype=torch.float64)[:, None, None]
    along, across = x * ang.cos() + y * ang.sin(), -x * ang.sin() + y * ang.cos()
    dist = ((along.abs() - lam).clamp(min=0) ** 2 + across ** 2).sqrt()
    return (dist <= width_px * preset.instrument.pixel_scale) & (lam > 0)


def share_on(maps, mask):
    "Share of each map's attention inside `mask` (B, H, W), averaged over the images."
    m = mask.float()
    return [float(((a * m).flatten(1).sum(1) / a.flatten(1).sum(1)).mean()) for a in maps]


def pooled(t, n=32):
    return F.adaptive_avg_pool2d(t[:, None], n)[:, 0].numpy().round(4).tolist()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="model_ii")
    ap.add_argument("--images", type=int, default=4, help="test images whose maps are kept for the figures")
    ap.add_argument("--summary-images", type=int, default=256,
                    help="test images the attention shares are averaged over")
    ap.add_argument("--json", default=None, help="results file (default bench/results/attention.json)")
    a = ap.parse_args()
    import warnings
    warnings.filterwarnings("ignore")
    from deeplense_fastai.core import cache_dir
    from deeplense_fastai.data import open_source
    from deeplense_fastai.inference import load_run, predict_source
    from deeplense_fastai.models import attention_maps
    from deeplense_fastai.simulate import get_preset
    preset, seed = get_preset(a.preset), 99
    test = open_source(cache_dir("bench") / f"{a.preset}-n2000-seed{seed}")
    many = np.arange(min(a.summary_images, len(test)))  # the first test images: masses uniform in the prior
    vortex = vortex_mask(preset, test.labels["index"].to_numpy()[many], seed)
    control = vortex_mask(preset, test.labels["index"].to_numpy()[many], seed, turn=np.pi / 2)
    rows = []
    for arch in ATTENTION_ARCHS:
        run = cache_dir("bench", "runs", f"accuracy-{a.preset}-{arch}", "run")
        if not (run / "weights.safetensors").exists(): continue
        model, cfg = load_run(run)
        idx = pick_images(test, cfg.targets[0], a.images)
        raw = torch.from_numpy(np.stack([test.image(i) for i in idx]))
        x = cfg.normalise(raw)
        maps = attention_maps(model, x)
        with torch.no_grad(): pred = predict_source(model, cfg, test.subset(idx), bs=len(idx))[0][:, 0]
        xs = cfg.normalise(torch.from_numpy(np.stack([test.image(i) for i in many])))
        with torch.no_grad(): mm = attention_maps(model, xs)
        rows.append(dict(arch=arch, indices=idx,
                         truth=[float(v) for v in test.labels[cfg.targets[0]].to_numpy()[idx]],
                         prediction=[float(v) for v in pred], layers=len(maps), summary_images=len(many),
                         ring_fraction=ring_fraction(mm, xs[:, 0]), vortex_fraction=share_on(mm, vortex),
                         control_fraction=share_on(mm, control),
                         vortex_area=float(vortex.float().mean()), images=pooled(x[:, 0]),
                         maps=[pooled(m) for m in maps],
                         vortex_masks=pooled(vortex_mask(preset, test.labels["index"].to_numpy()[idx], seed).double())))
        print(f"{arch}: {len(maps)} attention layers; share of attention on the brightest 10% of pixels: "
              + ", ".join(f"{v:.2f}" for v in rows[-1]["ring_fraction"])
              + f"; on the vortex ({rows[-1]['vortex_area']:.3f} "
              "of the pixels): " + ", ".join(f"{v:.3f}" for v in rows[-1]["vortex_fraction"])
              + "; on the same segment turned 90 degrees: "
              + ", ".join(f"{v:.3f}" for v in rows[-1]["control_fraction"]), flush=True)
    if not rows: raise SystemExit("no trained attention model in the cache: run bench/accuracy.py --small first")
    save("attention", a.json, preset=a.preset,
         table=[{k: v for k, v in r.items() if k not in ("images", "maps", "vortex_masks")} for r in rows],
         maps={r["arch"]: dict(images=r["images"], maps=r["maps"], vortex=r["vortex_masks"]) for r in rows})


if __name__ == "__main__":
    main()
