"""MNIST-family data: locate, download, verify, parse and preprocess IDX files.

Follows the IDX format of the MNIST database (LeCun, Cortes and Burges): a big-endian header of
a magic number (two zero bytes, a dtype code, the number of dimensions), one 32-bit size per
dimension, then the raw array. MNIST and Fashion-MNIST share the four file names, so one code
path serves both.

Trust comes from the payload: every file is checked against the SHA-256 of its *decompressed*
content, so a recompressed .gz of the same bytes is as good as the mirror's. Downloads stream to
a temporary file beside the target and are renamed into place only once verified, so a good file
is never replaced by a bad one and no partial file is ever left behind.

Preprocessing works on whole splits at once and keeps images as uint8 (a 60,000-image split
costs 61 MB at 32x32): `prepare` maps 28x28 to 32x32 once, `to_float` maps values per batch.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import struct
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

NUM_CLASSES = 10
IMAGE_SIDE = 28  # MNIST's field: a 20x20 digit centred by centre of mass in 28x28
INPUT_SIDE = 32  # LeNet-5's input (paper, section II-B)
PAD = (INPUT_SIDE - IMAGE_SIDE) // 2  # 2 pixels of background on each side
SPLITS = ("train", "test")

# IDX header: magic = 0x00 0x00 <dtype> <ndim>. 0x08 is unsigned byte, the only dtype MNIST uses.
IDX_UBYTE = 0x08
IMAGES_NDIM, LABELS_NDIM = 3, 1

# File names shared by MNIST and Fashion-MNIST, per split: (images, labels).
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class DatasetInfo:
    """What is known of one MNIST-family dataset before reading any file."""

    name: str
    sha256: dict[str, str]  # file name (without .gz) -> SHA-256 of the decompressed content
    mirrors: tuple[str, ...]  # base URLs, tried in turn; each serves '<file name>.gz'
    counts: dict[str, int]  # split -> number of samples
    mean: float  # training-pixel mean and standard deviation on the 0..1 scale,
    std: float  # for the "standard" value mapping
    system_dirs: tuple[str, ...] = ()  # where an OS package may have installed the files


DATASETS = {
    "mnist": DatasetInfo(
        name="mnist",
        sha256={
            "train-images-idx3-ubyte": (
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"
            ),
            "train-labels-idx1-ubyte": (
                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"
            ),
            "t10k-images-idx3-ubyte": (
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"
            ),
            "t10k-labels-idx1-ubyte": (
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"
            ),
        },
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        counts={"train": 60_000, "test": 10_000},
        mean=0.1307,
        std=0.3081,
    ),
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        sha256={
            "train-images-idx3-ubyte": (
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"
            ),
            "train-labels-idx1-ubyte": (
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"
            ),
            "t10k-images-idx3-ubyte": (
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"
            ),
            "t10k-labels-idx1-ubyte": (
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"
            ),
        },
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
        ),
        counts={"train": 60_000, "test": 10_000},
        mean=0.2860,
        std=0.3530,
        system_dirs=("/usr/share/datasets/fashion-mnist",),  # Debian's dataset-fashion-mnist
    ),
}


class DataError(Exception):
    """A data file is missing, unreadable or not what it claims to be. The message names it."""


class DownloadError(DataError):
    """No mirror delivered a verified copy of a file."""


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}") from None


# ---------------------------------------------------------------------------------------------
# Locating files


def cache_dir(dataset: str) -> Path:
    """The per-user cache: $XDG_CACHE_HOME/lenet5/<dataset>, else ~/.cache/lenet5/<dataset>."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lenet5" / dataset


def resolve_dir(dataset: str, data_dir: str | os.PathLike | None = None) -> tuple[Path, str]:
    """Where to read `dataset` from, and why: explicit argument, then $LENET5_DATA_DIR, then
    the per-user cache, then a system directory that holds all four files.

    An explicit or environment directory may hold the files directly or in a sub-folder named
    after the dataset (so one LENET5_DATA_DIR can hold both datasets).
    """
    info = dataset_info(dataset)
    for given, source in ((data_dir, "--data-dir"), (os.environ.get("LENET5_DATA_DIR"), "env")):
        if given:
            root = Path(given).expanduser()
            sub = root / dataset
            if not _has_any_file(root) and _has_any_file(sub):
                root = sub
            return root, ("LENET5_DATA_DIR" if source == "env" else source)
    cache = cache_dir(dataset)
    if not _has_all_files(cache):
        for system in info.system_dirs:
            if _has_all_files(Path(system)):
                return Path(system), "system"
    return cache, "cache"


def _has_any_file(root: Path) -> bool:
    return any(find_file(root, name) for name in _all_names())


def _has_all_files(root: Path) -> bool:
    return all(find_file(root, name) for name in _all_names())


def _all_names() -> list[str]:
    return [name for pair in FILES.values() for name in pair]


def find_file(root: Path, name: str) -> Path | None:
    """The raw file `name` or its `name.gz` in `root` (raw first: it is cheaper to read)."""
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


# ---------------------------------------------------------------------------------------------
# Reading and parsing


def read_payload(path: Path, compressed: bool | None = None) -> bytes:
    """The decompressed content of an IDX file, .gz or raw (by its suffix unless told)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if not (path.suffix == ".gz" if compressed is None else compressed):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a valid gzip file ({exc})") from exc


def parse_idx(payload: bytes, ndim: int, source: str = "<bytes>") -> np.ndarray:
    """Parse an unsigned-byte IDX array of `ndim` dimensions, validating everything.

    Checks the magic number, the dtype, the number of dimensions and that the file length is
    exactly header + product of sizes. Returns a read-only view on `payload`.
    """
    header = 4 + 4 * ndim
    if len(payload) < 4:
        raise DataError(f"{source}: truncated: {len(payload)} bytes, too short for an IDX header")
    zero, dtype, got_ndim = struct.unpack(">HBB", payload[:4])
    magic = int.from_bytes(payload[:4], "big")
    if zero != 0:
        raise DataError(f"{source}: wrong magic number 0x{magic:08x}: not an IDX file")
    if dtype != IDX_UBYTE:
        raise DataError(
            f"{source}: wrong magic number 0x{magic:08x}: dtype code 0x{dtype:02x}, "
            f"expected 0x{IDX_UBYTE:02x} (unsigned byte)"
        )
    if got_ndim != ndim:
        raise DataError(
            f"{source}: wrong magic number 0x{magic:08x}: {got_ndim} dimensions, expected {ndim}"
        )
    if len(payload) < header:
        raise DataError(
            f"{source}: truncated: header needs {header} bytes, file has {len(payload)}"
        )
    shape = struct.unpack(f">{ndim}I", payload[4:header])
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(payload) != expected:
        kind = "truncated" if len(payload) < expected else "too long"
        raise DataError(
            f"{source}: {kind}: dimensions {'x'.join(map(str, shape))} need {expected} bytes, "
            f"file has {len(payload)}"
        )
    return np.frombuffer(payload, dtype=np.uint8, offset=header).reshape(shape)


def parse_split(
    images_payload: bytes,
    labels_payload: bytes,
    images_source: str = "images",
    labels_source: str = "labels",
) -> tuple[np.ndarray, np.ndarray]:
    """Parse and cross-check one split: 28x28 images, as many labels as images, labels 0-9."""
    images = parse_idx(images_payload, IMAGES_NDIM, images_source)
    labels = parse_idx(labels_payload, LABELS_NDIM, labels_source)
    if images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise DataError(
            f"{images_source}: wrong dimensions {images.shape[1]}x{images.shape[2]}, "
            f"expected {IMAGE_SIDE}x{IMAGE_SIDE}"
        )
    if len(images) != len(labels):
        raise DataError(
            f"{images_source} has {len(images)} images but {labels_source} has {len(labels)} labels"
        )
    if len(labels) and labels.max() >= NUM_CLASSES:
        bad = int(np.argmax(labels >= NUM_CLASSES))
        raise DataError(
            f"{labels_source}: label {labels[bad]} at index {bad} is outside 0-{NUM_CLASSES - 1}"
        )
    return images, labels


def sha256_hex(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def read_verified(root: Path, name: str, info: DatasetInfo) -> tuple[Path, bytes]:
    """Find `name` in `root`, decompress it and check its SHA-256; return path and payload."""
    path = find_file(root, name)
    if path is None:
        raise DataError(
            f"{root / name}(.gz): missing; run `lenet5 data download --dataset {info.name}` "
            f"or point --data-dir / LENET5_DATA_DIR at a directory that holds it"
        )
    payload = read_payload(path)
    digest = sha256_hex(payload)
    if digest != info.sha256[name]:
        raise DataError(
            f"{path}: checksum mismatch: content SHA-256 {digest}, "
            f"expected {info.sha256[name]} for {info.name}"
        )
    return path, payload


@dataclass(frozen=True)
class Split:
    """One split of a dataset, whole, as tensors: images uint8 [N, 28, 28], labels int64 [N]."""

    dataset: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


def load_split(
    dataset: str = "mnist",
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    download_missing: bool = True,
    on_progress: ProgressFn | None = None,
) -> Split:
    """Load one verified split. Files missing from the per-user cache are downloaded first
    (when `download_missing`); an explicit or environment directory is never written to."""
    if split not in FILES:
        raise DataError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    info = dataset_info(dataset)
    root, source = resolve_dir(dataset, data_dir)
    if source == "cache" and download_missing and not all(find_file(root, n) for n in FILES[split]):
        download(dataset, root, names=FILES[split], on_progress=on_progress)
    (images_path, images_payload), (labels_path, labels_payload) = (
        read_verified(root, name, info) for name in FILES[split]
    )
    images, labels = parse_split(images_payload, labels_payload, str(images_path), str(labels_path))
    # Copies: np.frombuffer views are read-only, and torch wants writable memory.
    return Split(
        dataset=dataset,
        split=split,
        images=torch.from_numpy(images.copy()),
        labels=torch.from_numpy(labels.astype(np.int64)),
    )


@dataclass(frozen=True)
class FileStatus:
    """The outcome of verifying one file: `ok` or a one-line `problem`."""

    name: str
    path: Path | None
    sha256: str | None
    problem: str | None

    @property
    def ok(self) -> bool:
        return self.problem is None


def verify(dataset: str = "mnist", data_dir: str | os.PathLike | None = None) -> list[FileStatus]:
    """Check every file of `dataset`: present, decompressible, known checksum, valid IDX."""
    info = dataset_info(dataset)
    root, _ = resolve_dir(dataset, data_dir)
    statuses = []
    for images_name, labels_name in FILES.values():
        payloads = {}
        for name in (images_name, labels_name):
            path = find_file(root, name)
            if path is None:
                statuses.append(FileStatus(name, None, None, f"missing in {root}"))
                continue
            try:
                payload = read_payload(path)
            except DataError as exc:
                statuses.append(FileStatus(name, path, None, str(exc)))
                continue
            digest = sha256_hex(payload)
            problem = None
            if digest != info.sha256[name]:
                problem = f"checksum mismatch: expected {info.sha256[name]}"
            else:
                payloads[name] = payload
            statuses.append(FileStatus(name, path, digest, problem))
        if len(payloads) == 2:  # both checksums good: the structure must be too, but check
            try:
                parse_split(payloads[images_name], payloads[labels_name], images_name, labels_name)
            except DataError as exc:  # pragma: no cover - only if the known digests were wrong
                statuses[-1] = FileStatus(labels_name, statuses[-1].path, None, str(exc))
    return statuses


# ---------------------------------------------------------------------------------------------
# Downloading

ProgressFn = Callable[[str, int, "int | None"], None]  # (file name, bytes so far, total or None)
CHUNK = 1 << 16
TIMEOUT_S = 30


def download(
    dataset: str = "mnist",
    target_dir: str | os.PathLike | None = None,
    names: Sequence[str] | None = None,
    mirrors: Sequence[str] | None = None,
    on_progress: ProgressFn | None = None,
    timeout: float = TIMEOUT_S,
) -> list[Path]:
    """Fetch the dataset's files into `target_dir` (default: the per-user cache).

    A file already there with the right content is kept. Otherwise each mirror is tried in
    turn: the .gz is streamed to a temporary file, its decompressed content checked against the
    known SHA-256, and only then renamed into place. Raises DownloadError naming the file and
    each mirror's failure when none delivers.
    """
    info = dataset_info(dataset)
    root = Path(target_dir).expanduser() if target_dir is not None else cache_dir(dataset)
    mirrors = tuple(mirrors) if mirrors is not None else info.mirrors
    _ensure_writable(root)
    done = []
    for name in names or _all_names():
        existing = find_file(root, name)
        if existing is not None:
            try:
                read_verified(root, name, info)
                done.append(existing)
                continue
            except DataError:
                pass  # a bad local copy: fetch a verified one, which then replaces it
        done.append(_download_file(name, root, mirrors, info, on_progress, timeout))
    return done


def _ensure_writable(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".lenet5-write-test-"):
            pass
    except OSError as exc:
        raise DataError(
            f"{root}: cannot write the data directory ({exc.strerror or exc}); "
            "choose another with --data-dir or LENET5_DATA_DIR"
        ) from exc


def _download_file(
    name: str,
    root: Path,
    mirrors: Sequence[str],
    info: DatasetInfo,
    on_progress: ProgressFn | None,
    timeout: float,
) -> Path:
    failures = []
    for base in mirrors:
        url = base.rstrip("/") + f"/{name}.gz"
        fd, tmp_name = tempfile.mkstemp(dir=root, prefix=f".{name}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                _stream(url, out, name, on_progress, timeout)
            digest = sha256_hex(read_payload(tmp, compressed=True))
            if digest != info.sha256[name]:
                raise DataError(f"checksum mismatch: content SHA-256 {digest}")
            final = root / f"{name}.gz"
            tmp.chmod(0o644)  # mkstemp's 0600 would hide a shared cache from other users
            os.replace(tmp, final)
            raw = root / name  # a stale raw copy would shadow the verified .gz
            if raw.exists() and sha256_hex(read_payload(raw)) != info.sha256[name]:
                raw.unlink()
            return final
        except (DataError, OSError, http.client.HTTPException, ValueError) as exc:
            failures.append(f"{url}: {_describe(exc)}")
        finally:
            tmp.unlink(missing_ok=True)
    raise DownloadError(
        f"{root / name}.gz: no mirror delivered a verified copy:\n  " + "\n  ".join(failures)
    )


def _stream(url: str, out, name: str, on_progress: ProgressFn | None, timeout: float) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - https mirrors
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        received = 0
        while chunk := response.read(CHUNK):
            out.write(chunk)
            received += len(chunk)
            if on_progress:
                on_progress(name, received, total)
        if total is not None and received != total:
            raise DataError(f"connection dropped: received {received} of {total} bytes")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"cannot connect ({exc.reason})"
    if isinstance(exc, http.client.IncompleteRead):
        return f"connection dropped after {len(exc.partial)} bytes of this read"
    if isinstance(exc, DataError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------------------------------
# Preprocessing, on whole tensors

GEOMETRIES = ("pad", "resize")
VALUE_MAPS = ("paper", "unit", "standard")
PAPER_BACKGROUND, PAPER_FOREGROUND = -0.1, 1.175  # paper, section II-B: mean ~0, variance ~1


@dataclass(frozen=True)
class InputSpec:
    """How 28x28 uint8 images become the network's 32x32 float input.

    geometry: "pad" (the paper: 2 pixels of background each side) or "resize" (bilinear 28 to
    32, as the widely copied PyTorch version does through torchvision's Resize).
    values: "paper" (background -0.1, ink 1.175), "unit" ([0, 1]) or "standard" ((p - mean)/std
    with the training set's statistics).
    """

    geometry: str = "pad"
    values: str = "paper"
    mean: float = DATASETS["mnist"].mean
    std: float = DATASETS["mnist"].std

    def __post_init__(self) -> None:
        if self.geometry not in GEOMETRIES:
            raise ValueError(f"geometry must be one of {GEOMETRIES}, got {self.geometry!r}")
        if self.values not in VALUE_MAPS:
            raise ValueError(f"values must be one of {VALUE_MAPS}, got {self.values!r}")
        if not self.std > 0:
            raise ValueError(f"std must be positive, got {self.std}")

    @classmethod
    def for_dataset(cls, dataset: str, geometry: str = "pad", values: str = "paper") -> InputSpec:
        info = dataset_info(dataset)
        return cls(geometry=geometry, values=values, mean=info.mean, std=info.std)

    def affine(self) -> tuple[float, float]:
        """(scale, offset) such that input = pixel * scale + offset, pixel in 0..255."""
        if self.values == "paper":
            return (PAPER_FOREGROUND - PAPER_BACKGROUND) / 255, PAPER_BACKGROUND
        if self.values == "unit":
            return 1 / 255, 0.0
        return 1 / (255 * self.std), -self.mean / self.std


def prepare(images: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """uint8 [N, 28, 28] -> uint8 [N, 32, 32], the whole split at once.

    Resizing rounds back to uint8 as Pillow does in the reference pipeline, so images stay
    one byte per pixel until a batch needs floats.
    """
    if images.dtype != torch.uint8 or images.dim() != 3:
        raise ValueError(
            f"expected uint8 images [N, H, W], got {images.dtype} {tuple(images.shape)}"
        )
    if spec.geometry == "pad":
        return F.pad(images, (PAD, PAD, PAD, PAD))  # N x 32 x 32, background is 0
    out = torch.empty(len(images), INPUT_SIDE, INPUT_SIDE, dtype=torch.uint8)
    for start in range(0, len(images), 10_000):  # chunks keep the float copy small
        chunk = images[start : start + 10_000].unsqueeze(1).float()  # n x 1 x 28 x 28
        big = F.interpolate(chunk, size=(INPUT_SIDE, INPUT_SIDE), mode="bilinear")
        out[start : start + 10_000] = big.squeeze(1).round_().clamp_(0, 255).to(torch.uint8)
    return out


def to_float(batch: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """uint8 [B, 32, 32] (or [B, 1, 32, 32]) -> float32 [B, 1, 32, 32] by the value mapping."""
    if batch.dim() == 3:
        batch = batch.unsqueeze(1)  # B x 1 x 32 x 32
    scale, offset = spec.affine()
    return batch.float().mul_(scale).add_(offset)


@dataclass(frozen=True)
class SplitStats:
    count: int
    shape: tuple[int, ...]
    class_counts: list[int]
    pixel_mean: float
    pixel_std: float
    pixel_min: int
    pixel_max: int


def split_stats(split: Split) -> SplitStats:
    """Counts, shape, label histogram and pixel statistics (0..255 scale)."""
    pixels = split.images.double()
    return SplitStats(
        count=len(split),
        shape=tuple(split.images.shape[1:]),
        class_counts=torch.bincount(split.labels, minlength=NUM_CLASSES).tolist(),
        pixel_mean=pixels.mean().item(),
        pixel_std=pixels.std(unbiased=False).item(),
        pixel_min=int(split.images.min()),
        pixel_max=int(split.images.max()),
    )
