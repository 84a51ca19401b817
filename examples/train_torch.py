"""Train the reference PyTorch program with minigan's recipe, for the results table in README.md.

    python examples/train_torch.py --data-dir ../shared/data/mnist --out runs/torch-50

The model and step are the seed's (examples/torch_gan.py), with G kept in train mode for the whole step
as minigan does (the seed's G.eval() quirk is not copied); data come from minigan's IDX reader instead of
torchvision. The run folder has the same layout as minigan's (metrics.jsonl, samples/, generator.npz in
minigan's format), so examples/evaluate.py and examples/plots.py work on it unchanged.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np

from minigan import checkpoint as ckpt
from minigan.cli import ArgumentParser
from minigan.data import DataError, load_mnist, to_unit_interval
from minigan.fileio import atomic_write_bytes
from minigan.gan import make_generator
from minigan.images import save_grid
from minigan.train import RECIPE, format_epoch, write_metrics


def main(argv=None):
    p = ArgumentParser(prog="train_torch.py", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--device", help="torch's device (default cuda where torch sees a GPU, else cpu)")
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error(f"--epochs must be at least 1, got {args.epochs}")
    try:
        return train(args)
    except ImportError as e:
        print(f"train_torch.py: error: it trains the PyTorch program, which needs torch ({e})", file=sys.stderr)
        return 1
    except (DataError, OSError) as e:
        print(f"train_torch.py: error: {e}", file=sys.stderr)
        return 1


def train(args):
    images = to_unit_interval(load_mnist(args.data_dir)[0])
    import torch

    import torch_gan

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    config = {**RECIPE, "epochs": args.epochs, "implementation": f"torch {torch.__version__} {args.device}"}
    torch.manual_seed(config["seed"])
    images = torch.from_numpy(images).to(args.device)
    n, bs = len(images), config["batch_size"]
    G, D = torch_gan.Generator().to(args.device), torch_gan.Discriminator().to(args.device)
    opt_G, opt_D = torch_gan.make_optimizers(G, D, config["lr"], config["beta1"])
    criterion = torch.nn.BCELoss()
    fixed_z = torch.randn(32, config["latent_dim"], device=args.device)
    (args.out / "samples").mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "config.json", (json.dumps(config, indent=2) + "\n").encode())
    history = []
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        sums = torch.zeros(4, device=args.device)
        for idx in torch.randperm(n, device=args.device).split(bs):
            real = images[idx]
            z = [torch.randn(len(idx), config["latent_dim"], device=args.device) for _ in range(config["k"])]
            stats = torch_gan.train_step(G, D, opt_G, opt_D, criterion, real, z, config["k"])
            sums += torch.stack(stats) * len(idx)
        seconds = time.perf_counter() - start
        record = {"epoch": epoch, **dict(zip(("loss_D", "loss_G", "D_x", "D_G_z"), (sums / n).tolist())),
                  "seconds": round(seconds, 3), "images_per_s": round(n / seconds, 1)}
        history.append(record)
        G.eval()
        with torch.no_grad():
            save_grid(args.out / "samples" / f"epoch_{epoch:03d}.png", G(fixed_z).cpu().numpy())
        G.train()
        write_metrics(args.out / "metrics.jsonl", history)
        print(format_epoch(record, args.epochs), flush=True)
    G_minigan = make_generator(config["latent_dim"], np.random.default_rng(0))
    torch_gan.copy_to_minigan(G_minigan, G.cpu())
    ckpt.save_npz(args.out / "generator.npz", {"format_version": np.int64(ckpt.FORMAT_VERSION),
                                               "config": ckpt.text(config), "epoch": np.int64(args.epochs),
                                               **ckpt.model_arrays("G", G_minigan)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
