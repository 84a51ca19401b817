"""Sample from a trained generator:

    python examples/sample.py --checkpoint runs/my-run/generator.npz --n 64 --out samples.png
    python examples/sample.py --checkpoint runs/my-run --n 1000 --out samples.npy   # uint8 (N, 784)
"""

import sys

from minigan.sample import main

if __name__ == "__main__":
    sys.exit(main())
