"""Draw a run's pictures into its folder: losses.png, samples.gif, interpolation.png.

    python examples/plots.py runs/my-run
"""

import sys
from pathlib import Path

from minigan import checkpoint as ckpt
from minigan.cli import ArgumentParser
from minigan.plots import PlotError, write_plots


def main(argv=None):
    p = ArgumentParser(prog="plots.py", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run folder (train_mnist.py --out)")
    args = p.parse_args(argv)
    try:
        write_plots(args.run_dir)
    except (ckpt.CheckpointError, OSError, PlotError) as e:  # a run folder that is not one, or is damaged
        print(f"plots.py: error: {e}", file=sys.stderr)
        return 1
    print(f"plots written to {args.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
