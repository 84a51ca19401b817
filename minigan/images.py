"""Sample grids as the reference saves them (torchvision's make_grid + save_image), written as PNG."""

import struct
import zlib

import numpy as np

from minigan.fileio import atomic_write_bytes


def image_grid(images, nrow=8, padding=2, normalize=True):
    """Tile images (N, 784) or (N, 28, 28) into one uint8 (H, W) picture, rows of ``nrow``.

    As torchvision's ``make_grid(..., nrow, padding, normalize=True)`` then ``save_image``: the whole
    batch is min-max scaled to [0, 1] (when ``normalize``), tiles are separated by ``padding`` zero pixels,
    and values become uint8 as round-half-up of 255 v.
    """
    images = np.asarray(images, dtype=np.float64)
    n = images.shape[0]
    side = int(round(np.sqrt(images[0].size)))
    images = images.reshape(n, side, side)
    if normalize:
        low, high = images.min(), images.max()
        images = (images.clip(low, high) - low) / max(high - low, 1e-5)
    ncol = min(nrow, n)
    nrows = -(-n // ncol)
    cell = side + padding
    grid = np.zeros((nrows * cell + padding, ncol * cell + padding))
    for i, image in enumerate(images):
        r, c = divmod(i, ncol)
        grid[padding + r * cell : padding + r * cell + side, padding + c * cell : padding + c * cell + side] = image
    return np.clip(grid * 255 + 0.5, 0, 255).astype(np.uint8)


def png_bytes(gray):
    """Encode a uint8 (H, W) grayscale image as PNG (8-bit, colour type 0, filter 0 on every row)."""
    gray = np.ascontiguousarray(gray, dtype=np.uint8)
    h, w = gray.shape
    raw = np.hstack([np.zeros((h, 1), np.uint8), gray]).tobytes()

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def save_grid(path, images, nrow=8):
    atomic_write_bytes(path, png_bytes(image_grid(images, nrow)))
