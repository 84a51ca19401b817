"""One full training step (D step and G step) in minigan and in the reference PyTorch program, from the same
weights, batch, noise and dropout masks: the same losses and the same parameters afterwards."""

import numpy as np
import pytest
from conftest import RecordingRng

torch = pytest.importorskip("torch")
import torch_gan  # noqa: E402  (examples/, on sys.path via conftest)

from minigan.backend import get_backend  # noqa: E402
from minigan.layers import Dropout  # noqa: E402

# In float64 both programs agree to rounding. In float32, Adam amplifies rounding differences of near-zero
# gradients (its first steps move every parameter by about lr = 2e-4 whatever the gradient's size), so a
# few entries differ by a few 1e-6; a semantic slip (bias correction, eps, dropout scale, BCE clamp)
# moves most entries by a sizeable fraction of lr.
TOLERANCES = {np.float64: (1e-10, 1e-9), np.float32: (1e-5, 2e-5)}  # dtype: (loss rtol, parameter atol)


class ReplayDropout(torch.nn.Module):
    """nn.Dropout(p) with its masks given in advance, in call order."""

    def __init__(self, masks):
        super().__init__()
        self.masks = list(masks)

    def forward(self, x):
        return x * self.masks.pop(0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("k", [1, 2])
def test_one_training_step_matches_pytorch(k, dtype):
    from minigan.gan import GAN

    torch.manual_seed(0)
    torch.set_num_threads(2)
    n, steps = 16, 3
    loss_rtol, param_atol = TOLERANCES[dtype]
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    gan = GAN(get_backend("numpy"), k=k, seed=5, dtype=dtype)
    rec = RecordingRng(11)
    gan.rng = rec
    dropouts = [layer for layer in gan.D.layers if isinstance(layer, Dropout)]
    for layer in dropouts:
        layer.rng = rec

    G, D = torch_gan.Generator().to(tdtype), torch_gan.Discriminator().to(tdtype)
    torch_gan.copy_from_minigan(G, gan.G)
    torch_gan.copy_from_minigan(D, gan.D)
    opt_G, opt_D = torch_gan.make_optimizers(G, D)
    criterion = torch.nn.BCELoss()
    data = np.random.default_rng(12).random((steps, n, 784)).astype(dtype)

    worst = {"loss": 0.0, "G": 0.0, "D": 0.0}
    for step in range(steps):
        rec.draws.clear()
        stats = gan.train_step(data[step])
        # minigan drew, per D step: z, then one uniform array per dropout layer over the 2n rows [real; fake];
        # then for the G step one per dropout layer over n rows. Replay them in the reference's call order:
        # D(real), D(fake) in each D step, then D(fake) for G.
        draws = [a for _, a in rec.draws]
        per_d_step = 1 + len(dropouts)
        zs, masks = [], [[] for _ in dropouts]
        for i in range(k):
            block = draws[i * per_d_step:(i + 1) * per_d_step]
            zs.append(torch.from_numpy(block[0]))
            for j, u in enumerate(block[1:]):
                keep = torch.from_numpy((u >= 0.3).astype(dtype) / dtype(0.7))
                masks[j] += [keep[:n], keep[n:]]
        for j, u in enumerate(draws[k * per_d_step:]):
            masks[j].append(torch.from_numpy((u >= 0.3).astype(dtype) / dtype(0.7)))
        for j, index in enumerate(i for i, m in enumerate(D.model) if isinstance(m, torch.nn.Dropout)
                                  or isinstance(m, ReplayDropout)):
            D.model[index] = ReplayDropout(masks[j])

        loss_D, loss_G, d_x, d_g_z = torch_gan.train_step(G, D, opt_G, opt_D, criterion, torch.from_numpy(data[step]), zs, k)
        np.testing.assert_allclose(stats, [loss_D.item(), loss_G.item(), d_x.item(), d_g_z.item()], rtol=loss_rtol)
        worst["loss"] = max(worst["loss"], float(np.max(np.abs(stats[:2] - [loss_D.item(), loss_G.item()]))))
        for name, model, ours in (("G", G, gan.G), ("D", D, gan.D)):
            theirs = dict(model.state_dict())
            for key, value in ours.named_parameters() + ours.named_buffers():
                index, pname = key.split(".")
                ref = theirs[f"model.{index}.{torch_gan._NAMES[pname]}"].numpy()
                diff = float(np.max(np.abs(value - ref)))
                worst[name] = max(worst[name], diff)
                np.testing.assert_allclose(value, ref, rtol=0, atol=param_atol, err_msg=f"{name} {key} step {step}")
    print(f"\nminigan vs PyTorch, {np.dtype(dtype).name}, k={k}, {steps} steps: max |loss diff| "
          f"{worst['loss']:.2e} (rtol {loss_rtol}), max |param diff| G {worst['G']:.2e} D {worst['D']:.2e} "
          f"(atol {param_atol})")
