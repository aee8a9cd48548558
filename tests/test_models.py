"""Every registered architecture can fit 16 images: the whole model trains, end to end, on a CPU."""
import time

import pytest
import torch

from deeplense_fastai.models import MODELS, get_model, count_parameters, load_weights
from deeplense_fastai.core import DeepLenseError


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 32, 32, generator=g)
    # targets that depend on the images, so that fitting them means learning from pixels
    y = torch.stack([x.mean((1, 2, 3)), x[:, :, :16].mean((1, 2, 3)) - x[:, :, 16:].mean((1, 2, 3))], 1)
    return x, (y - y.mean(0)) / y.std(0)


@pytest.mark.parametrize("name", list(MODELS))
def test_overfits_16_images(name):
    torch.manual_seed(0)
    x, y = _data()
    model = get_model(name, n_out=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = next(p for p in model.parameters() if p.ndim == 4)      # the first convolution's weights
    torch.nn.functional.mse_loss(model(x), y).backward()
    assert first.grad is not None and first.grad.abs().sum() > 0, f"{name}: no gradient reaches the first layer"
    opt.zero_grad()
    t0, losses = time.time(), []
    for step in range(400):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if loss.item() < 0.02:
            break
    assert min(losses) < 0.02, f"{name}: loss went from {losses[0]:.3f} to only {min(losses):.3f} in {len(losses)} steps"
    print(f"{name}: {count_parameters(model)} params, loss {losses[0]:.3f} -> {losses[-1]:.4f} in {len(losses)} steps, {time.time() - t0:.1f}s")


def test_weights_round_trip_without_pickle(tmp_path):
    from safetensors.torch import save_file
    a, b = get_model("xresnet_small"), get_model("xresnet_small")
    save_file(a.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save(a.state_dict(), tmp_path / "w.pt")
    x = torch.randn(2, 1, 64, 64)
    for f in ("w.safetensors", "w.pt"):
        c = get_model("xresnet_small", weights=tmp_path / f).eval()
        assert torch.allclose(c(x), a.eval()(x))
    with pytest.raises(DeepLenseError, match="does not exist"):
        get_model("resnet18", weights=tmp_path / "missing.pt")
    with pytest.raises(DeepLenseError, match="cannot be loaded"):
        load_weights(get_model("resnet18"), tmp_path / "w.pt")
    with pytest.raises(DeepLenseError, match="unknown architecture"):
        get_model("vit_huge")
