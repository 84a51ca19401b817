"""The training recipe (REFERENCE.md): the values that define a run and are fixed once it has started, their
defaults, and what each may be.

The rules are checked where a recipe comes in: on the command line (minigan.train, which names the option) and
in a checkpoint or generator file (minigan.checkpoint, which names the file).
"""

import math

RECIPE = {"batch_size": 128, "lr": 2e-4, "beta1": 0.5, "k": 1, "latent_dim": 100, "seed": 666,
          "train_size": None}
DEFAULT_EPOCHS = 50


def _integer(v):
    return isinstance(v, int) and not isinstance(v, bool)  # JSON's true is not a count


def _number(v):
    return (_integer(v) or isinstance(v, float)) and math.isfinite(v)


# each field of a run's config: (whether a value is allowed, what an allowed value is)
RULES = {
    "epochs": (lambda v: _integer(v) and v >= 1, "at least 1"),
    "batch_size": (lambda v: _integer(v) and v >= 2, "at least 2 (BatchNorm needs 2 rows)"),
    "lr": (lambda v: _number(v) and v > 0, "a positive number"),
    "beta1": (lambda v: _number(v) and 0 <= v < 1, "in [0, 1)"),
    "k": (lambda v: _integer(v) and v >= 1, "at least 1"),
    "latent_dim": (lambda v: _integer(v) and v >= 1, "at least 1"),
    "seed": (lambda v: _integer(v) and v >= 0, "non-negative"),
    "train_size": (lambda v: v is None or (_integer(v) and v >= 2), "at least 2"),
}


def first_broken_rule(config):
    """The first field of ``config`` that is missing or holds a value its rule does not allow; None if all hold."""
    return next((key for key, (allowed, _) in RULES.items() if key not in config or not allowed(config[key])), None)
