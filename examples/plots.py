"""Draw a run's pictures into its folder: losses.png, samples.gif, interpolation.png.

    python examples/plots.py runs/my-run
"""

import sys

from minigan.plots import write_plots

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: plots.py RUN_DIR")
    write_plots(sys.argv[1])
    print(f"plots written to {sys.argv[1]}")
