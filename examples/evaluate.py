"""Measure a trained generator: FID-MNIST, the class histogram and its KL from uniform, precision/recall.

    python examples/evaluate.py --checkpoint runs/my-run --data-dir ../shared/data/mnist

Prints one JSON line (with the number of samples used: the figures depend on it). The feature classifier
is trained with minigan on first use and cached in $MINIGAN_CACHE (default ~/.cache/minigan).
"""

import sys

from minigan.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
