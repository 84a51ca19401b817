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
    history               JSON list of per-epoch metrics

A generator-only file (``generator.npz``) has format_version, config and the G/ entries.
Files are written atomically (temporary file, fsync, rename), so a killed run leaves the previous
checkpoint intact.
"""

import json
import zipfile

import numpy as np

from minigan.backend import to_host
from minigan.fileio import atomic_write

FORMAT_VERSION = 1


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
    version = int(arrays["format_version"])
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version}, this minigan reads {FORMAT_VERSION}")
    return arrays


def text(value):
    return np.array(json.dumps(value))


def from_text(array):
    return json.loads(str(array))


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
    try:
        load_optimizer(arrays, "opt_G", gan.opt_G)
        load_optimizer(arrays, "opt_D", gan.opt_D)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: optimizer state missing or does not fit ({e})") from None
    rng_state = from_text(arrays["rng"])
    if rng_state.get("backend") == gan.backend.name:
        gan.backend.set_rng_state(gan.rng, rng_state)


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


def load_optimizer(arrays, prefix, opt):
    opt.load_state({k: arrays[f"{prefix}/{k}"] for k in ("m", "v", "t")})


def read_config(arrays):
    return from_text(arrays["config"])


def describe(path):
    """A one-line summary (for messages): the epoch a checkpoint holds."""
    if not path.exists():
        return "none yet (no epoch has finished)"
    try:
        with np.load(path, allow_pickle=False) as npz:
            return f"{path} (epoch {int(npz['epoch'])})"
    except Exception:
        return str(path)

