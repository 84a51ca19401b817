"""The sample grid as torchvision's make_grid(normalize=True) + save_image lay it out, and its PNG encoding read
back by Pillow (matplotlib's own dependency)."""

import io

import numpy as np

from minigan.images import image_grid, png_bytes


def test_the_grid_scales_the_batch_to_0_1_pads_with_zeros_and_rounds_half_up():
    k = np.arange(12.0)
    images = (k / 11 * 4 - 1).reshape(3, 4)  # three 2x2 images, values from -1 to 3
    grid = image_grid(images, nrow=2, padding=1)
    expected = np.zeros((7, 7), np.uint8)  # 2 rows of 2 tiles, each 2 pixels and 1 of padding, 1 more at the end
    for i in range(3):
        row, col = divmod(i, 2)
        tile = np.floor(k[4 * i : 4 * i + 4] / 11 * 255 + 0.5).reshape(2, 2)  # min-max scaled, then 255 v + 0.5
        expected[1 + 3 * row : 3 + 3 * row, 1 + 3 * col : 3 + 3 * col] = tile
    np.testing.assert_array_equal(grid, expected)
    assert grid.dtype == np.uint8 and grid[1, 1] == 0 and grid[5, 2] == 255  # the batch's min and max
    # fewer images than a row: one row as wide as the images; a constant batch is all zeros, not a division by 0
    assert image_grid(images[:1], nrow=8, padding=2).shape == (6, 6)
    np.testing.assert_array_equal(image_grid(np.full((2, 4), 0.7)), np.zeros((6, 10), np.uint8))
    # MNIST-sized rows, the training program's 32 samples: 4 rows of 8
    assert image_grid(np.zeros((32, 784))).shape == (4 * 30 + 2, 8 * 30 + 2)


def test_png_bytes_reads_back_as_the_same_grey_picture():
    from PIL import Image

    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (5, 9), dtype=np.uint8)
    picture = Image.open(io.BytesIO(png_bytes(gray)))
    picture.load()
    assert picture.mode == "L" and picture.size == (9, 5)
    np.testing.assert_array_equal(np.asarray(picture), gray)
