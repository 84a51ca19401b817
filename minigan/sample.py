"""Sample images from a trained generator: ``examples/sample.py --checkpoint PATH --out FILE``.

PATH is a run's ``checkpoint.npz`` or ``generator.npz`` (a run folder works too). FILE ending in ``.png``
gets a grid, 8 per row; ending in ``.npy`` gets the N images as uint8 (N, 784). G runs in eval mode
(running BatchNorm statistics), as for the training run's sample grids.
"""

import io
import sys
from pathlib import Path

import numpy as np

from minigan import checkpoint as ckpt
from minigan.backend import BACKENDS, BackendError, get_backend
from minigan.cli import ArgumentParser, UsageError
from minigan.fileio import atomic_write_bytes
from minigan.gan import make_generator
from minigan.images import save_grid


def load_generator(path, backend):
    """The generator stored at ``path`` (a checkpoint, a generator file or a run folder), in eval mode."""
    path = Path(path)
    if path.is_dir():
        candidates = [path / "generator.npz", path / "checkpoint.npz"]
        path = next((c for c in candidates if c.exists()), candidates[-1])
    arrays = ckpt.load_npz(path)
    config = ckpt.read_config(arrays, path)
    G = make_generator(config["latent_dim"], np.random.default_rng(0), backend.xp)
    ckpt.load_model(arrays, "G", G, path)
    return G.eval(), config


def to_uint8(images):
    return np.clip(np.asarray(images) * 255 + 0.5, 0, 255).astype(np.uint8)


def main(argv=None):
    prog = "sample.py"
    p = ArgumentParser(prog=prog, description="Sample images from a trained minigan generator.")
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint.npz, generator.npz or a run folder")
    p.add_argument("--n", type=int, default=64, help="number of images (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")
    p.add_argument("--out", type=Path, required=True, help="a .png grid or a .npy array of uint8 (N, 784)")
    p.add_argument("--backend", default="numpy", help=f"one of {', '.join(BACKENDS)} (default numpy)")
    try:
        args = p.parse_args(argv)
        if args.backend not in BACKENDS:
            raise UsageError(f"unknown backend {args.backend!r}: choose one of {', '.join(BACKENDS)}")
        if args.n < 1:
            raise UsageError(f"--n must be at least 1, got {args.n}")
        if args.seed < 0:
            raise UsageError(f"--seed must be non-negative, got {args.seed}")
        if args.out.suffix not in (".png", ".npy"):
            raise UsageError(f"--out must end in .png or .npy, got {args.out}")
        if not args.out.parent.is_dir():
            raise UsageError(f"{args.out.parent}: folder does not exist")
        backend = get_backend(args.backend)
        G, config = load_generator(args.checkpoint, backend)
        z = np.random.default_rng(args.seed).standard_normal((args.n, config["latent_dim"]), dtype=np.float32)
        images = backend.to_numpy(G.forward(backend.asarray(z)))
        if args.out.suffix == ".png":
            save_grid(args.out, images)
        else:
            buffer = io.BytesIO()
            np.save(buffer, to_uint8(images))
            atomic_write_bytes(args.out, buffer.getvalue())
        print(f"minigan: {args.n} samples written to {args.out}")
        return 0
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except (BackendError, ckpt.CheckpointError, OSError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except MemoryError as e:  # --n beyond the machine's or the GPU's memory
        print(f"{prog}: error: out of memory ({e})", file=sys.stderr)
        return 1
