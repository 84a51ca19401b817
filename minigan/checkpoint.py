"""Checkpoints: everything a run needs to continue exactly, in one ``.npz`` read with allow_pickle=False.

Layout (all plain arrays; text fields are 0-d unicode arrays holding JSON):

    format_version        int, checked on load
    config                JSON: the run's recipe (latent_dim, lr, betas, k, seed, batch_size, ...)
    G/params, D/params    the flat parameter buffers
    G/<i>.running_mean, G/<i>.running_var    BatchNorm buffers
    opt_G/m, opt_G/v, opt_G/t, opt_D/...     Adam state
    rng                   JSON: the state of the run's random stream (noise, masks, shuffle)
    fixed_z               the fixed noise of the sample grids
    epoch                 completed epochs
    step, perm, sums      position inside the current epoch (step 0 = at an epoch boundary), that
                          epoch's shuffle, and its partial sums (a checkpoint written on SIGINT/SIGTERM)
    history               JSON list of per-epoch metrics (is_history: each epoch's number and METRICS)

A generator-only file (``generator.npz``) has format_version, config and the G/ entries.
Files are written atomically (temporary file, fsync, rename), so a killed run leaves the previous
checkpoint intact. Every entry is checked as it is read: a file that is not what minigan writes is a
CheckpointError naming the file and the entry, never a crash further on.
"""

import json
import zipfile

import numpy as np

from minigan.backend import to_host
from minigan.fileio import atomic_write
from minigan.recipe import RULES, first_broken_rule

FORMAT_VERSION = 1
METRICS = ("loss_D", "loss_G", "D_x", "D_G_z")  # an epoch's means, in the history and in a run's metrics.jsonl


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not fit; the message is one line naming the file."""


def save_npz(path, arrays):
    def write(f):
        np.savez(f, **arrays)

    atomic_write(path, write)


def load_npz(path):
    """All arrays of a checkpoint file, checked for format version; CheckpointError on any problem."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise CheckpointError(f"{path}: not a readable minigan checkpoint ({e})") from None
    if "format_version" not in arrays:
        raise CheckpointError(f"{path}: not a minigan checkpoint (no format_version)")
    version = count(arrays, "format_version", path)
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version}, this minigan reads {FORMAT_VERSION}")
    return arrays


KINDS = {"f": "floats", "iu": "integers", "U": "text"}  # numpy's dtype kinds, as the messages name them


def array(arrays, key, path, shape, kinds="f"):
    """The array stored under ``key``, of the given shape and of the given dtype kinds (a key of KINDS)."""
    a = arrays.get(key)
    if a is None:
        raise CheckpointError(f"{path}: no {key!r}")
    if a.shape != tuple(shape) or a.dtype.kind not in kinds:
        raise CheckpointError(f"{path}: {key!r} is {a.dtype} of shape {a.shape}, not {KINDS[kinds]} of shape "
                              f"{tuple(shape)}")
    return a


def count(arrays, key, path):
    """The non-negative integer stored under ``key``."""
    n = int(array(arrays, key, path, (), "iu"))
    if n < 0:
        raise CheckpointError(f"{path}: {key!r} is {n}, not a count")
    return n


def json_entry(arrays, key, path, kind):
    """The JSON value of type ``kind`` (dict or list) stored under ``key`` as text."""
    try:
        value = json.loads(str(array(arrays, key, path, (), "U")))
    except ValueError:
        value = None
    if not isinstance(value, kind):
        raise CheckpointError(f"{path}: {key!r} is not a JSON {'object' if kind is dict else 'list'}")
    return value


def is_history(records):
    """Whether ``records`` is a run's history: a list of one JSON object an epoch, with its number and METRICS."""
    return isinstance(records, list) and all(
        isinstance(r, dict) and all(isinstance(r.get(k), (int, float)) for k in ("epoch", *METRICS)) for r in records)


def text(value):
    return np.array(json.dumps(value))


def gan_arrays(gan):
    """Weights, buffers and both optimizers' state of a GAN, as host arrays keyed as in the layout above."""
    arrays = {**model_arrays("G", gan.G), **model_arrays("D", gan.D)}
    arrays.update(optimizer_arrays("opt_G", gan.opt_G))
    arrays.update(optimizer_arrays("opt_D", gan.opt_D))
    arrays["rng"] = text(gan.backend.rng_state(gan.rng))
    return arrays


def load_gan(arrays, gan, path="checkpoint"):
    """The inverse of gan_arrays; the random stream is restored only if it comes from the same backend."""
    load_model(arrays, "G", gan.G, path)
    load_model(arrays, "D", gan.D, path)
    load_optimizer(arrays, "opt_G", gan.opt_G, path)
    load_optimizer(arrays, "opt_D", gan.opt_D, path)
    rng_state = json_entry(arrays, "rng", path, dict)
    if rng_state.get("backend") == gan.backend.name:
        try:
            gan.backend.set_rng_state(gan.rng, rng_state)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: 'rng' is not a state of {gan.backend.name}'s random stream ({e})") from None


def model_arrays(prefix, model):
    return {f"{prefix}/{k}": v for k, v in model.state().items()}


def load_model(arrays, prefix, model, path="checkpoint"):
    state = {k[len(prefix) + 1 :]: v for k, v in arrays.items() if k.startswith(prefix + "/")}
    try:
        model.load_state(state)
    except ValueError as e:
        raise CheckpointError(f"{path}: {prefix} does not fit this model ({e})") from None


def optimizer_arrays(prefix, opt):
    """Copies of the optimizer's state (never views: training may go on while a checkpoint is written)."""
    return {f"{prefix}/{k}": np.array(to_host(v)) for k, v in opt.state().items()}


def load_optimizer(arrays, prefix, opt, path="checkpoint"):
    state = {k: array(arrays, f"{prefix}/{k}", path, opt.m.shape) for k in ("m", "v")}
    opt.load_state({**state, "t": count(arrays, f"{prefix}/t", path)})


def read_config(arrays, path="checkpoint"):
    """The run's recipe, every field of it checked against its rule (minigan.recipe)."""
    config = json_entry(arrays, "config", path, dict)
    key = first_broken_rule(config)
    if key is None:
        return config
    if key not in config:
        raise CheckpointError(f"{path}: the recipe has no {key}")
    raise CheckpointError(f"{path}: the recipe's {key} must be {RULES[key][1]}, not {config[key]!r}")


def describe(path):
    """A one-line summary (for messages): the epoch a checkpoint holds."""
    if not path.exists():
        return "none yet (no epoch has finished)"
    try:
        with np.load(path, allow_pickle=False) as npz:
            return f"{path} (epoch {int(npz['epoch'])})"
    except Exception:
        return str(path)

