"""Shared fixtures: the real-data directory, an isolated environment, small IDX files."""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from lenet5 import data

# Read once at import: tests that isolate the environment remove the variable itself.
REAL_DATA_DIR = os.environ.get("LENET5_DATA_DIR")


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST directory, from LENET5_DATA_DIR (CI sets it to ../shared/mnist)."""
    if not REAL_DATA_DIR:
        pytest.skip("real MNIST needed: set LENET5_DATA_DIR to a directory holding the IDX files")
    return Path(REAL_DATA_DIR)


@pytest.fixture(scope="session")
def test_split(mnist_dir) -> data.Split:
    """The real MNIST test split, loaded once for every test that needs it."""
    return data.load_split("mnist", "test", mnist_dir)


@pytest.fixture
def isolated_env(tmp_path, monkeypatch) -> Path:
    """No LENET5_DATA_DIR, and a per-user cache inside tmp_path; returns the cache root."""
    monkeypatch.delenv("LENET5_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def idx_bytes(array: np.ndarray, dtype_code: int = 0x08) -> bytes:
    """Encode a uint8 array as IDX: magic (0, 0, dtype, ndim), big-endian sizes, data."""
    header = struct.pack(">HBB", 0, dtype_code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def make_tiny_dataset(n_train: int = 20, n_test: int = 10, seed: int = 0) -> dict[str, bytes]:
    """Payloads of the four MNIST file names, random but valid."""
    rng = np.random.default_rng(seed)
    payloads = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images_name, labels_name = data.FILES[split]
        payloads[images_name] = idx_bytes(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        payloads[labels_name] = idx_bytes(rng.integers(0, 10, (n,), dtype=np.uint8))
    return payloads


@pytest.fixture
def tiny(monkeypatch):
    """Register a dataset 'tiny' whose checksums match make_tiny_dataset()'s payloads."""
    payloads = make_tiny_dataset()
    info = data.DatasetInfo(
        name="tiny",
        sha256={name: hashlib.sha256(p).hexdigest() for name, p in payloads.items()},
        mirrors=(),
        counts={"train": 20, "test": 10},
        mean=0.5,
        std=0.29,
    )
    monkeypatch.setitem(data.DATASETS, "tiny", info)
    return payloads


def write_files(root: Path, payloads: dict[str, bytes], compress: bool = True) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, payload in payloads.items():
        if compress:
            (root / f"{name}.gz").write_bytes(gzip.compress(payload))
        else:
            (root / name).write_bytes(payload)
