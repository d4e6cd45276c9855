"""data.py: real MNIST against its published facts, every bad input, a fuzz of the parser."""

from __future__ import annotations

import gzip
import hashlib
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import idx_bytes, make_tiny_dataset, write_files
from lenet5 import data

# Published in ../shared/mnist/README.md
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# --- real MNIST ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_train(mnist_dir):
    return data.load_split("mnist", "train", mnist_dir)


def test_real_mnist_counts_and_statistics(mnist_dir, mnist_train):
    test = data.load_split("mnist", "test", mnist_dir)
    assert mnist_train.images.shape == (60_000, 28, 28)
    assert mnist_train.images.dtype == torch.uint8
    assert test.images.shape == (10_000, 28, 28)
    assert torch.bincount(mnist_train.labels).tolist() == TRAIN_COUNTS
    assert torch.bincount(test.labels).tolist() == TEST_COUNTS
    stats = data.split_stats(mnist_train)
    assert stats.pixel_mean == pytest.approx(33.3184, abs=1e-4)
    assert stats.pixel_std == pytest.approx(78.5675, abs=1e-4)
    assert stats.pixel_mean / 255 == pytest.approx(data.DATASETS["mnist"].mean, abs=1e-4)
    assert stats.pixel_std / 255 == pytest.approx(data.DATASETS["mnist"].std, abs=1e-4)


def test_real_mnist_verifies(mnist_dir):
    statuses = data.verify("mnist", mnist_dir)
    assert [s.ok for s in statuses] == [True] * 4, [s.problem for s in statuses]


def test_padding_and_resizing_real_mnist(mnist_train):
    images = mnist_train.images[:1000]
    padded = data.prepare(images, data.InputSpec(geometry="pad"))
    assert padded.shape == (1000, 32, 32) and padded.dtype == torch.uint8
    assert torch.equal(padded[:, 2:30, 2:30], images)  # the digit itself is untouched
    assert padded[:, :2].sum() == 0 and padded[:, :, 30:].sum() == 0  # background border
    resized = data.prepare(images, data.InputSpec(geometry="resize"))
    assert resized.shape == (1000, 32, 32) and resized.dtype == torch.uint8
    # Resizing magnifies the digit: more ink pixels than the 28x28 original.
    assert (resized > 0).sum() > (images > 0).sum()

    paper = data.to_float(padded, data.InputSpec(values="paper"))
    assert paper.shape == (1000, 1, 32, 32) and paper.dtype == torch.float32
    assert paper.min().item() == pytest.approx(-0.1)
    assert paper.max().item() == pytest.approx(1.175)
    unit = data.to_float(resized, data.InputSpec(geometry="resize", values="unit"))
    assert unit.min().item() == 0.0 and unit.max().item() == pytest.approx(1.0)
    full = data.to_float(mnist_train.images, data.InputSpec(values="standard"))
    assert full.mean().item() == pytest.approx(0.0, abs=1e-3)
    assert full.std().item() == pytest.approx(1.0, abs=1e-3)


def test_resize_matches_pillow_bilinear():
    """The reference pipeline resizes with Pillow; ours agrees to one grey level inside the
    image (Pillow's edge handling differs only at the outermost pixels)."""
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    ours = data.prepare(torch.from_numpy(images), data.InputSpec(geometry="resize")).numpy()
    for img, mine in zip(images, ours, strict=True):
        theirs = np.asarray(Image.fromarray(img).resize((32, 32), Image.BILINEAR))
        diff = np.abs(mine.astype(int) - theirs.astype(int))
        assert diff[1:-1, 1:-1].max() <= 1


def test_value_maps_follow_their_formulas():
    pixels = torch.tensor([[0, 255, 51]], dtype=torch.uint8).reshape(1, 1, 3)
    paper = data.to_float(pixels, data.InputSpec(values="paper")).flatten()
    assert paper.tolist() == pytest.approx([-0.1, 1.175, -0.1 + 1.275 * 51 / 255])
    std = data.to_float(pixels, data.InputSpec(values="standard", mean=0.2, std=0.5)).flatten()
    expected = [(0 - 0.2) / 0.5, (1 - 0.2) / 0.5, (0.2 - 0.2) / 0.5]
    assert std.tolist() == pytest.approx(expected, abs=1e-6)


def test_input_spec_rejects_unknown_choices():
    with pytest.raises(ValueError, match="geometry"):
        data.InputSpec(geometry="crop")
    with pytest.raises(ValueError, match="values"):
        data.InputSpec(values="bytes")


# --- locating files --------------------------------------------------------------------------


def test_lookup_order_explicit_env_cache(tmp_path, monkeypatch, isolated_env, tiny):
    explicit, env = tmp_path / "explicit", tmp_path / "env"
    write_files(explicit, tiny)
    write_files(env / "tiny", tiny)  # a sub-folder named after the dataset is found too
    assert data.resolve_dir("tiny") == (isolated_env / "lenet5" / "tiny", "cache")
    monkeypatch.setenv("LENET5_DATA_DIR", str(env))
    assert data.resolve_dir("tiny") == (env / "tiny", "LENET5_DATA_DIR")
    assert data.resolve_dir("tiny", explicit) == (explicit, "--data-dir")


def test_raw_and_gz_files_load_alike(tmp_path, tiny):
    write_files(tmp_path / "gz", tiny, compress=True)
    write_files(tmp_path / "raw", tiny, compress=False)
    a = data.load_split("tiny", "train", tmp_path / "gz")
    b = data.load_split("tiny", "train", tmp_path / "raw")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.images.shape == (20, 28, 28) and a.labels.dtype == torch.int64


def test_recompressed_file_with_same_content_is_valid(tmp_path, tiny):
    """Checksums cover the payload, not the .gz bytes (see ../shared/mnist/README.md)."""
    write_files(tmp_path, tiny)
    name = data.FILES["train"][0]
    (tmp_path / f"{name}.gz").write_bytes(gzip.compress(tiny[name], compresslevel=1, mtime=7))
    assert all(s.ok for s in data.verify("tiny", tmp_path))


# --- bad input: one clear message naming the file and what is wrong ---------------------------


def _corrupt_and_load(tmp_path, tiny, name, payload):
    files = dict(tiny)
    files[name] = payload
    write_files(tmp_path, files)
    # Bypass the checksum so that the parser's own validation is what answers.
    data.DATASETS["tiny"].sha256[name] = hashlib.sha256(payload).hexdigest()
    split = "train" if name.startswith("train") else "test"
    with pytest.raises(data.DataError) as caught:
        data.load_split("tiny", split, tmp_path)
    return str(caught.value)


def test_truncated_file(tmp_path, tiny):
    name = data.FILES["train"][0]
    message = _corrupt_and_load(tmp_path, tiny, name, tiny[name][:-100])
    assert name in message and "truncated" in message


def test_wrong_magic(tmp_path, tiny):
    name = data.FILES["train"][0]
    message = _corrupt_and_load(tmp_path, tiny, name, b"\x1f\x8b" + tiny[name][2:])
    assert name in message and "magic" in message


def test_wrong_dtype(tmp_path, tiny):
    name = data.FILES["train"][0]
    payload = idx_bytes(np.zeros((20, 28, 28), np.uint8), dtype_code=0x0D)
    assert "dtype" in _corrupt_and_load(tmp_path, tiny, name, payload)


def test_wrong_dimensions(tmp_path, tiny):
    name = data.FILES["train"][0]
    payload = idx_bytes(np.zeros((20, 32, 32), np.uint8))
    message = _corrupt_and_load(tmp_path, tiny, name, payload)
    assert name in message and "32x32" in message and "28x28" in message


def test_image_and_label_counts_differ(tmp_path, tiny):
    name = data.FILES["train"][1]
    message = _corrupt_and_load(tmp_path, tiny, name, idx_bytes(np.zeros(19, np.uint8)))
    assert "20 images" in message and "19 labels" in message


def test_label_out_of_range(tmp_path, tiny):
    name = data.FILES["test"][1]
    labels = np.zeros(10, np.uint8)
    labels[7] = 10
    message = _corrupt_and_load(tmp_path, tiny, name, idx_bytes(labels))
    assert name in message and "label 10 at index 7" in message


def test_not_gzip(tmp_path, tiny):
    write_files(tmp_path, tiny)
    name = data.FILES["test"][0]
    (tmp_path / f"{name}.gz").write_bytes(b"this is not gzip")
    with pytest.raises(data.DataError, match=f"{name}.gz: not a valid gzip"):
        data.load_split("tiny", "test", tmp_path)


def test_checksum_mismatch(tmp_path, tiny):
    files = dict(tiny)
    name = data.FILES["train"][0]
    files[name] = make_tiny_dataset(seed=5)[name]  # valid IDX, other content
    write_files(tmp_path, files)
    with pytest.raises(data.DataError, match=f"{name}.gz: checksum mismatch"):
        data.load_split("tiny", "train", tmp_path)
    statuses = {s.name: s for s in data.verify("tiny", tmp_path)}
    assert not statuses[name].ok and "checksum mismatch" in statuses[name].problem
    assert sum(s.ok for s in statuses.values()) == 3


def test_missing_file(tmp_path, tiny):
    files = dict(tiny)
    del files[data.FILES["test"][1]]
    write_files(tmp_path, files)
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte.*missing"):
        data.load_split("tiny", "test", tmp_path)
    assert data.load_split("tiny", "train", tmp_path).images.shape == (20, 28, 28)


def test_unknown_dataset_and_split():
    with pytest.raises(data.DataError, match="unknown dataset"):
        data.load_split("cifar", "train")
    with pytest.raises(data.DataError, match="unknown split"):
        data.load_split("mnist", "validation")


# --- property-based fuzz of the parser ----------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.integers(1, 3))
def test_parser_never_crashes_on_random_bytes(payload, ndim):
    try:
        array = data.parse_idx(payload, ndim)
    except data.DataError:
        return
    assert array.ndim == ndim


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(0, 6), min_size=3, max_size=3),
    st.integers(-40, 40),
    st.integers(0, 5),
    st.integers(0, 255),
)
def test_parser_on_mutated_valid_files(shape, length_delta, position, value):
    """Valid headers with a changed byte or a wrong length: a clean array or a DataError."""
    payload = bytearray(idx_bytes(np.zeros(shape, np.uint8)))
    if position < len(payload):
        payload[position] = value
    payload = bytes(payload[: max(0, len(payload) + length_delta)]) + b"\0" * max(0, length_delta)
    try:
        array = data.parse_idx(payload, 3)
    except data.DataError:
        return
    magic = struct.unpack(">HBB", payload[:4])
    assert magic == (0, 0x08, 3)
    assert len(payload) == 16 + array.size
