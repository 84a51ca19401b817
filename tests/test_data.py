"""The IDX reader on files the tests write, on corrupt ones (and fuzzed headers), and on real MNIST."""

import gzip
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minigan.data import DataError, load_mnist, parse_idx, read_idx, to_unit_interval


def idx_bytes(array):
    codes = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}
    code = codes[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_mnist(folder, n=20, split="train", gz=True, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    stem = {"train": "train", "test": "t10k"}[split]
    for name, array in ((f"{stem}-images-idx3-ubyte", images), (f"{stem}-labels-idx1-ubyte", labels)):
        data = idx_bytes(array)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return images, labels


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_parse_idx_round_trips_every_type(dtype):
    a = (np.arange(24) - 5).astype(dtype).reshape(2, 3, 4)
    b = parse_idx(idx_bytes(a))
    assert b.dtype == np.dtype(dtype) and b.dtype.isnative
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("gz", [True, False])
def test_load_mnist_from_a_folder_and_torchvision_layout(tmp_path, gz):
    images, labels = write_mnist(tmp_path, gz=gz)
    x, y = load_mnist(tmp_path, download=False)
    np.testing.assert_array_equal(x, images.reshape(-1, 784))
    np.testing.assert_array_equal(y, labels)
    raw = tmp_path / "tv" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    write_mnist(raw, split="test", gz=gz, seed=1)
    x, _ = load_mnist(tmp_path / "tv", split="test", download=False)
    assert x.shape == (20, 784)


def test_data_dir_defaults_to_the_environment_variable(tmp_path, monkeypatch):
    write_mnist(tmp_path, n=3)
    monkeypatch.setenv("MINIGAN_DATA", str(tmp_path))
    assert load_mnist(download=False)[0].shape == (3, 784)


def test_missing_files_name_the_file_and_how_to_get_them(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*not found"):
        load_mnist(tmp_path, download=False)
    # download=True without torchvision (or offline) says what to do instead of a traceback
    import builtins

    real_import = builtins.__import__

    def no_torchvision(name, *args, **kwargs):
        if name.startswith("torchvision"):
            raise ImportError("No module named 'torchvision'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchvision)
    with pytest.raises(DataError, match="pip install torchvision"):
        load_mnist(tmp_path)


def test_download_goes_through_torchvision_into_its_raw_layout(tmp_path, monkeypatch):
    """The real download path is torchvision's MNIST(root, download=True); stand in for the network only."""
    import sys
    import types

    calls = []

    class FakeMNIST:
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            raw = tmp_path / "MNIST" / "raw"
            raw.mkdir(parents=True)
            write_mnist(raw, n=4)

    datasets = types.ModuleType("torchvision.datasets")
    datasets.MNIST = FakeMNIST
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setitem(sys.modules, "torchvision.datasets", datasets)
    x, _ = load_mnist(tmp_path)
    assert calls == [(str(tmp_path), True, True)] and x.shape == (4, 784)


def corrupt_cases(good):
    header = good[:16]
    return {
        "wrong magic": b"\x01\x02" + good[2:],
        "first byte not zero": b"\x01" + good[1:],
        "second byte not zero": good[:1] + b"\x01" + good[2:],
        "unknown type": good[:2] + b"\x07" + good[3:],
        "short payload": good[:-1],
        "trailing bytes": good + b"\x00",
        "truncated header": header[:10],
        "empty": b"",
        "wrong dimensions": good[:4] + struct.pack(">I", 21) + good[8:],
    }


@pytest.mark.parametrize("case", list(corrupt_cases(idx_bytes(np.zeros((20, 28, 28), np.uint8)))))
def test_corrupt_idx_gives_one_line_naming_the_file(tmp_path, case):
    data = corrupt_cases(idx_bytes(np.zeros((20, 28, 28), np.uint8)))[case]
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(data)
    with pytest.raises(DataError) as err:
        read_idx(path)
    message = str(err.value)
    assert message.startswith(str(path)) and "\n" not in message


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_bad_gzip_gives_one_line(tmp_path, damage):
    data = gzip.compress(idx_bytes(np.arange(1000, dtype=np.uint8)))
    data = data[: len(data) // 2] if damage == "truncate" else data[:20] + bytes([data[20] ^ 0xFF]) + data[21:]
    path = tmp_path / "x.gz"
    path.write_bytes(data)
    with pytest.raises(DataError, match=r"x\.gz: corrupt or truncated gzip") as err:
        read_idx(path)
    assert "\n" not in str(err.value)


def test_labels_that_do_not_match_images(tmp_path):
    write_mnist(tmp_path, n=5)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(4, np.uint8))))
    with pytest.raises(DataError, match="4 labels for 5 images"):
        load_mnist(tmp_path, download=False)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_fuzz_random_bytes_parse_or_fail_cleanly(data):
    try:
        a = parse_idx(data)
    except DataError as e:
        assert "\n" not in str(e)
    else:
        assert data[:2] == b"\x00\x00" and a.ndim == data[3]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 35), st.integers(0, 255)), max_size=6), st.integers(-3, 3))
def test_fuzz_mutated_headers_parse_or_fail_cleanly(mutations, length_change):
    good = bytearray(idx_bytes(np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)))
    for position, value in mutations:
        good[position % len(good)] = value
    data = bytes(good[: len(good) + length_change]) if length_change < 0 else bytes(good) + b"\x00" * length_change
    try:
        a = parse_idx(data)
    except DataError as e:
        assert "\n" not in str(e)
    else:
        # a parse that succeeds is the array its header describes
        ndim = data[3]
        shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
        assert a.shape == shape and a.size * a.dtype.itemsize == len(data) - 4 - 4 * ndim


def test_pixels_scale_as_torchvision_to_tensor():
    x = np.arange(256, dtype=np.uint8)
    y = to_unit_interval(x)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, np.arange(256, dtype=np.float32) / np.float32(255))


def test_real_mnist(shared_mnist):
    x, y = load_mnist(shared_mnist, download=False)
    assert x.shape == (60000, 784) and x.dtype == np.uint8
    assert list(y[:8]) == [5, 0, 4, 1, 9, 2, 1, 3]  # the first training labels, as published
    assert np.bincount(y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    xt, yt = load_mnist(shared_mnist, split="test", download=False)
    assert xt.shape == (10000, 784) and list(yt[:5]) == [7, 2, 1, 0, 4]
