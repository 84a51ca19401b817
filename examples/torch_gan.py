"""The reference PyTorch program (the seed), reduced to its model and its training step.

minigan never imports torch; this file is the yardstick it is checked and timed against:
tests/test_torch_parity.py runs one step of both from the same weights, noise and dropout masks, and
examples/benchmark.py --compare-torch times both on the same machine.
"""

import torch
from torch import nn

from minigan.backend import to_host


class Generator(nn.Module):
    def __init__(self, latent_dim=100, img_dim=784):
        super().__init__()
        self.model = nn.Sequential(
            nn.Linear(latent_dim, 256), nn.LeakyReLU(0.2), nn.BatchNorm1d(256),
            nn.Linear(256, 512), nn.LeakyReLU(0.2), nn.BatchNorm1d(512),
            nn.Linear(512, 1024), nn.LeakyReLU(0.2), nn.BatchNorm1d(1024),
            nn.Linear(1024, img_dim), nn.Sigmoid(),
        )

    def forward(self, z):
        return self.model(z)


class Discriminator(nn.Module):
    def __init__(self, img_dim=784):
        super().__init__()
        self.model = nn.Sequential(
            nn.Linear(img_dim, 1024), nn.LeakyReLU(0.2), nn.Dropout(0.3),
            nn.Linear(1024, 512), nn.LeakyReLU(0.2), nn.Dropout(0.3),
            nn.Linear(512, 256), nn.LeakyReLU(0.2), nn.Dropout(0.3),
            nn.Linear(256, 1), nn.Sigmoid(),
        )

    def forward(self, x):
        return self.model(x)


# minigan's parameter names -> PyTorch's, per layer
_NAMES = {"W": "weight", "b": "bias", "gamma": "weight", "beta": "bias",
          "running_mean": "running_mean", "running_var": "running_var"}


def copy_from_minigan(torch_model, minigan_model):
    """Set a Generator/Discriminator's weights and BatchNorm buffers to those of a minigan Sequential."""
    state = {}
    for name, value in minigan_model.named_parameters() + minigan_model.named_buffers():
        index, key = name.split(".")
        state[f"model.{index}.{_NAMES[key]}"] = torch.as_tensor(to_host(value)).clone()
    missing, unexpected = torch_model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"weights do not line up: missing {missing}, unexpected {unexpected}")


def copy_to_minigan(minigan_model, torch_model):
    """The inverse of copy_from_minigan: a minigan Sequential takes a Generator/Discriminator's weights."""
    theirs = torch_model.state_dict()
    for name, value in minigan_model.named_parameters() + minigan_model.named_buffers():
        index, key = name.split(".")
        value[...] = theirs[f"model.{index}.{_NAMES[key]}"].detach().cpu().numpy()


def make_optimizers(G, D, lr=2e-4, beta1=0.5, **options):
    """The seed's two Adams; ``options`` go to both (capturable=True: a step that a CUDA graph can capture)."""
    return (torch.optim.Adam(G.parameters(), lr=lr, betas=(beta1, 0.999), **options),
            torch.optim.Adam(D.parameters(), lr=lr, betas=(beta1, 0.999), **options))


def train_step(G, D, opt_G, opt_D, criterion, real, z, k=1):
    """One step of the seed's loop (K D-steps, then the G step on the last fake), G in train mode.

    ``z`` is a list of K noise batches. Returns (loss_D summed over K, loss_G, mean D(x), mean D(G(z)))
    as tensors, the last two from the final D step, as minigan's GAN.train_step.
    """
    n = real.size(0)
    real_labels = torch.ones(n, 1, dtype=real.dtype, device=real.device)
    fake_labels = torch.zeros(n, 1, dtype=real.dtype, device=real.device)
    G.train()
    D.train()
    loss_D_total = 0
    for i in range(k):
        opt_D.zero_grad()
        p_real = D(real)
        loss_D_real = criterion(p_real, real_labels)
        fake = G(z[i])
        p_fake = D(fake.detach())
        loss_D_fake = criterion(p_fake, fake_labels)
        loss_D = loss_D_real + loss_D_fake
        loss_D.backward()
        opt_D.step()
        loss_D_total = loss_D_total + loss_D.detach()
    opt_G.zero_grad()
    loss_G = criterion(D(fake), real_labels)
    loss_G.backward()
    opt_G.step()
    return loss_D_total, loss_G.detach(), p_real.detach().mean(), p_fake.detach().mean()
