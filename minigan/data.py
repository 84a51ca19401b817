"""MNIST from its IDX files, parsed here (raw or gzip), downloaded through torchvision only when missing.

IDX format (LeCun's): a big-endian header ``0x00 0x00 <type> <ndim>``, then ndim big-endian uint32
dimension sizes, then the payload in C order. MNIST uses type 0x08 (uint8): images are (N, 28, 28),
labels (N,). Every problem with a file raises ``DataError`` whose message is one line naming the file.
"""

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

# type byte -> element type (big-endian where it matters), from the IDX specification
IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class DataError(RuntimeError):
    """A data file is missing, truncated or corrupt; the message is one line naming the file."""


def parse_idx(data, name="<bytes>"):
    """Parse the bytes of an IDX file into an array; raise DataError(name: problem) if malformed."""
    if len(data) < 4:
        raise DataError(f"{name}: too short for an IDX header ({len(data)} bytes)")
    zero1, zero2, type_code, ndim = data[0], data[1], data[2], data[3]
    if zero1 != 0 or zero2 != 0 or type_code not in IDX_TYPES:
        raise DataError(f"{name}: not an IDX file (bad magic number 0x{data[:4].hex()})")
    if ndim == 0:
        raise DataError(f"{name}: IDX header declares 0 dimensions")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DataError(f"{name}: truncated IDX header ({len(data)} bytes, need {header_size})")
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    dtype = IDX_TYPES[type_code]
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow on absurd headers
    payload = len(data) - header_size
    if payload != expected:
        what = "truncated" if payload < expected else "trailing bytes after"
        raise DataError(
            f"{name}: {what} payload: dimensions {'x'.join(map(str, shape))} need {expected} bytes, "
            f"file has {payload}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


def read_idx(path):
    """Read an IDX file, raw or gzip-compressed (by content, not by name)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: corrupt or truncated gzip data ({e})") from None
    return parse_idx(data, str(path))


def find_idx(data_dir, stem):
    """The path of IDX file ``stem`` in data_dir or in torchvision's data_dir/MNIST/raw, raw or .gz."""
    data_dir = Path(data_dir)
    for folder in (data_dir, data_dir / "MNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def default_data_dir():
    return Path(os.environ.get("MINIGAN_DATA") or "data")


def load_mnist(data_dir=None, split="train", download=True):
    """Images (N, 784) uint8 and labels (N,) uint8 of MNIST's ``split`` ("train" or "test").

    Looks in data_dir (default: $MINIGAN_DATA, else ./data) and data_dir/MNIST/raw; if the files are
    missing and ``download`` is set, asks torchvision to fetch them into data_dir/MNIST/raw.
    """
    if split not in MNIST_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    data_dir = default_data_dir() if data_dir is None else Path(data_dir)
    stems = MNIST_FILES[split]
    paths = [find_idx(data_dir, stem) for stem in stems]
    if None in paths and download:
        _download_mnist(data_dir, [s for s, p in zip(stems, paths) if p is None])
        paths = [find_idx(data_dir, stem) for stem in stems]
    if None in paths:
        missing = stems[paths.index(None)]
        raise DataError(f"{data_dir / missing}[.gz]: file not found")
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise DataError(f"{paths[0]}: expected uint8 images of shape (N, 28, 28), got {images.dtype} "
                        f"{images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DataError(f"{paths[1]}: expected uint8 labels of shape (N,), got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{paths[1]}: {len(labels)} labels for {len(images)} images in {paths[0]}")
    return images.reshape(len(images), 28 * 28), labels


def _download_mnist(data_dir, missing):
    try:
        from torchvision.datasets import MNIST
    except ImportError:
        raise DataError(
            f"{data_dir}: MNIST files not found ({', '.join(missing)}); put the four *-ubyte.gz files "
            f"there (or set MINIGAN_DATA / --data-dir), or pip install torchvision to download them"
        ) from None
    try:
        MNIST(root=str(data_dir), train=True, download=True)
    except Exception as e:  # torchvision raises RuntimeError/URLError/OSError when offline
        raise DataError(
            f"{data_dir}: MNIST files not found and torchvision could not download them "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); put the four "
            f"*-ubyte.gz files there"
        ) from None


def to_unit_interval(images_uint8, out=None, dtype=np.float32):
    """Pixels uint8 -> [0, 1] as torchvision's ToTensor (a true division by 255, not a product by 1/255)."""
    return np.divide(images_uint8, dtype(255), out=out, dtype=dtype)
