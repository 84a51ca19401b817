"""Pictures of a run, written into its folder: loss curves, the sample grids as a GIF, a latent interpolation.

    losses.png         Loss_D and Loss_G per epoch, and the mean D(x), D(G(z))
    samples.gif        the fixed-noise grid of every epoch, one frame each
    interpolation.png  G (eval mode) along great circles between pairs of noise vectors, one pair a row

``write_plots(run_dir)`` makes all three from the run folder alone (metrics.jsonl, samples/,
generator.npz or checkpoint.npz); the training program calls it at the end, and
``examples/plots.py RUN_DIR`` calls it any time. Each file is written atomically, as the run's others are: a
reader sees the old picture or the new one, never half of one.
"""

import json
from pathlib import Path

import numpy as np

from minigan.backend import get_backend
from minigan.checkpoint import is_history
from minigan.fileio import atomic_write
from minigan.images import save_grid


class PlotError(Exception):
    """A run folder whose metrics.jsonl is not a run's history; reported in one line."""


def plot_losses(history, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(epochs, [h["loss_D"] for h in history], label="Loss_D")
    ax1.plot(epochs, [h["loss_G"] for h in history], label="Loss_G")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("BCE, mean over the epoch")
    ax1.set_yscale("log")
    ax1.legend()
    ax2.plot(epochs, [h["D_x"] for h in history], label="mean D(x)")
    ax2.plot(epochs, [h["D_G_z"] for h in history], label="mean D(G(z))")
    ax2.axhline(0.5, color="gray", lw=0.5)
    ax2.set_ylim(0, 1)
    ax2.set_xlabel("epoch")
    ax2.legend()
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def animate_samples(sample_paths, path, seconds_per_frame=0.25):
    """One GIF frame per epoch's grid, with the last frame held for a second."""
    from PIL import Image  # Pillow comes with matplotlib

    frames = [Image.open(p).convert("L") for p in sample_paths]
    if not frames:
        return
    durations = [int(seconds_per_frame * 1000)] * (len(frames) - 1) + [1000]
    atomic_write(path, lambda f: frames[0].save(f, format="GIF", save_all=True, append_images=frames[1:],
                                                duration=durations, loop=0))


def slerp(z0, z1, t):
    """Spherical interpolation: for Gaussian z, the path keeps a typical norm (the straight line dips toward 0)."""
    cos = np.sum(z0 * z1) / (np.linalg.norm(z0) * np.linalg.norm(z1))
    omega = np.arccos(np.clip(cos, -1, 1))
    if omega < 1e-6:
        return (1 - t) * z0 + t * z1
    return (np.sin((1 - t) * omega) * z0 + np.sin(t * omega) * z1) / np.sin(omega)


def interpolation_grid(G, latent_dim, path, backend, rows=8, steps=10, seed=0):
    rng = np.random.default_rng(seed)
    ends = rng.standard_normal((rows, 2, latent_dim))
    z = np.stack([slerp(a, b, t) for a, b in ends for t in np.linspace(0, 1, steps)]).astype(np.float32)
    G.eval()
    save_grid(path, backend.to_numpy(G.forward(backend.asarray(z))), nrow=steps)


def write_plots(run_dir, backend=None):
    from minigan.sample import load_generator

    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        try:
            history = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        except json.JSONDecodeError:
            history = None
        if not is_history(history):
            raise PlotError(f"{metrics}: not one JSON object of an epoch's metrics a line")
        if history:
            plot_losses(history, run_dir / "losses.png")
    animate_samples(sorted((run_dir / "samples").glob("epoch_*.png")), run_dir / "samples.gif")
    backend = get_backend("numpy") if backend is None else backend
    G, config = load_generator(run_dir, backend)
    interpolation_grid(G, config["latent_dim"], run_dir / "interpolation.png", backend)
