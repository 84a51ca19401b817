"""Train the MLP GAN of Goodfellow et al. (2014) on MNIST, as the reference PyTorch program does.

    python examples/train_mnist.py --backend numpy --data-dir ../shared/data/mnist --epochs 5

See ``python examples/train_mnist.py --help`` and README.md (run folder, resume, sampling).
"""

import sys

from minigan.train import main

if __name__ == "__main__":
    sys.exit(main())
