"""Recognise digits in ordinary image files with a trained run or an exported ONNX model.

Preprocessing follows how MNIST itself was made (LeCun, Cortes and Burges, "The MNIST database
of handwritten digits"): the NIST digits were "size normalized to fit in a 20x20 pixel box
while preserving their aspect ratio", which anti-aliasing turned into grey levels, and then
"centered in a 28x28 image by computing the center of mass of the pixels, and translating the
image so as to position this point at the center of the 28x28 field". `mnist_digit` does the
same to any PNG, JPEG, BMP or GIF, after turning it into MNIST's polarity:

1. decode the first frame (EXIF orientation applied); alpha is composited over white, colour
   becomes ITU-R 601 luma; 16-bit greys are scaled to 8 bits;
2. the background is the median of the border pixels: a light one means dark ink on paper,
   which is inverted, since MNIST is light ink on a dark field;
3. the background level is subtracted and the strongest ink scaled to 255 (so a faint pencil
   stroke on grey paper looks like MNIST's 0-255); an image with too little contrast is blank;
4. the digit's bounding box is that of the pixels above INK_THRESHOLD of the ink range; the
   fainter, anti-aliased edge around it (FRINGE) is kept;
5. the box is scaled to fit DIGIT_BOX x DIGIT_BOX keeping its aspect ratio, with Pillow's
   anti-aliased Lanczos filter (of the filters Pillow offers, the best on our test forms);
6. it is placed in the 28x28 field with its centre of mass on pixel CENTRE, by a whole-pixel
   shift (MNIST's own centres of mass lie within half a pixel of (14, 14)).

The network's own InputSpec (padding or resizing to 32x32, and the value mapping) then applies,
exactly as for the training data. A 28x28 MNIST digit goes through unchanged, or, when its
brightest pixel is below 255, within one grey level.

Probabilities (lenet5.export.probability_rule): softmax of the scores for twin and modern,
whose scores are logits. For classic trained by the paper's criteria, whose scores are negated
RBF penalties y_i, the probabilities that the paper's MAP criterion (eq. 9) implies,
exp(-y_i) / (exp(-j) + sum_k exp(-y_k)) with the run's j (lenet5.losses.map_probabilities):
they sum to less than one, and the rest is the probability of "none of these", reported as
`Prediction.none_of_these`. With the paper's small j that rest is large unless the best
penalty is well under j. A classic trained by cross-entropy was trained by eq. 9 with
j -> infinity, where eq. 9 is the softmax of its scores, so it gets softmax.

Bad input (a non-image, an empty or truncated file, an image over MAX_PIXELS, a blank image,
an unreadable path) raises ImageError naming the input; `Predictor.predict_each` returns those
errors in place, so a caller can report them and go on with the other images. Pillow is
imported inside the functions that use it.
"""

from __future__ import annotations

import io
import math
import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lenet5 import data, export, losses

FORMATS = ("PNG", "JPEG", "BMP", "GIF")  # what Pillow may decode here; nothing more exotic
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")  # image files in a folder, for the CLI
# Decompression-bomb guard: refuse, from the header alone, images over 40 megapixels (Pillow's
# own limit, Image.MAX_IMAGE_PIXELS, is about 89 and only warns below twice that).
MAX_PIXELS = 40_000_000
MAX_FILE_BYTES = 256 * 1024 * 1024  # no legitimate digit picture comes near this
WORKING_SIDE = 1024  # larger images are box-averaged down to this first (speed, memory)

DIGIT_BOX = 20  # MNIST: the digit fits a 20x20 box
FIELD = data.IMAGE_SIDE  # in a 28x28 field
CENTRE = 14.0  # where MNIST's centres of mass lie (mean 14.0, std 0.3 on the test set)
INK_THRESHOLD = 0.15  # of the ink range: what counts as ink for the bounding box
FIT_FILTER = "LANCZOS"  # Pillow's anti-aliased Lanczos-3 (a windowed sinc) for the 20x20 fit
FRINGE = 2  # pixels of the fitted digit kept around its box: the anti-aliased edge
MIN_CONTRAST = 32  # of 255: less between background and the strongest ink is a blank image


class PredictError(Exception):
    """Base of the errors this module raises about its inputs."""


class ImageError(PredictError):
    """One input image cannot be used; `source` names it and `problem` says why."""

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(f"{source}: {problem}")
        self.source = source
        self.problem = problem


# ---------------------------------------------------------------------------------------------
# Reading images


def source_name(source: Any, index: int = 0) -> str:
    """How messages name an input: its path, or its kind and position."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<bytes #{index}>"
    return f"<image #{index}>"


def read_image(source: Any, name: str | None = None):
    """Decode a path, bytes or PIL image into a loaded PIL image, or raise ImageError.

    Only FORMATS are decoded, and only after the header shows at most MAX_PIXELS pixels."""
    Image, ImageOps, UnidentifiedImageError = _pillow()
    name = name or source_name(source)
    if isinstance(source, Image.Image):
        _check_size(source.size, name)
        return source
    if isinstance(source, (str, os.PathLike)):
        payload = _read_file(Path(source), name)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        payload = bytes(source)
    else:
        raise ImageError(name, f"expected a path, bytes or a PIL image, got {type(source)}")
    if not payload:
        raise ImageError(name, "empty (0 bytes)")
    kinds = ", ".join(FORMATS[:-1]) + f" or {FORMATS[-1]}"
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice it: make that an error too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(payload), formats=FORMATS)
    except UnidentifiedImageError:
        raise ImageError(name, f"not an image this can read ({kinds})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        pixels = re.search(r"\((\d+) pixels\)", str(exc))  # Pillow's message has the size
        raise ImageError(name, _too_big_message(int(pixels[1]) if pixels else None)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(name, f"truncated or corrupt image header ({exc})") from None
    _check_size(image.size, name)
    try:
        image.load()  # first frame of an animation
        image = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
        raise ImageError(name, f"truncated or corrupt {image.format} data ({exc})") from None
    return image


def _pillow():
    try:
        from PIL import Image, ImageOps, UnidentifiedImageError
    except ImportError as exc:  # pragma: no cover - Pillow comes with the plots extra
        raise PredictError(f"reading images needs Pillow ({exc}); pip install pillow") from exc
    return Image, ImageOps, UnidentifiedImageError


def _read_file(path: Path, name: str) -> bytes:
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise ImageError(name, "is a directory, not an image file")
        if size > MAX_FILE_BYTES:
            raise ImageError(
                name,
                f"{size / 2**20:.0f} MiB file, over the {MAX_FILE_BYTES / 2**20:.0f} MiB limit",
            )
        return path.read_bytes()
    except OSError as exc:
        raise ImageError(name, f"cannot read ({exc.strerror or exc})") from None


def _check_size(size: tuple[int, int], name: str) -> None:
    width, height = size
    if width * height > MAX_PIXELS:
        raise ImageError(name, _too_big_message(width * height, f"{width}x{height} "))
    if width < 1 or height < 1:
        raise ImageError(name, f"empty image ({width}x{height} pixels)")


def _too_big_message(pixels: int | None, dimensions: str = "") -> str:
    size = "" if pixels is None else f" ({pixels / 1e6:.0f} megapixels)"
    return (
        f"{dimensions}image{size} over the {MAX_PIXELS / 1e6:g}-megapixel limit: refused "
        "as a possible decompression bomb"
    )


def greyscale(image) -> np.ndarray:
    """float32 [H, W] luma in 0..255 (255 white), alpha composited over white, and box-averaged
    down when the longer side exceeds WORKING_SIDE."""
    from PIL import Image

    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        wide = np.asarray(image, dtype=np.float32)
        peak = 255.0 if image.mode == "F" or wide.max(initial=0) <= 255 else 65535.0
        image = Image.fromarray(np.clip(wide * (255 / peak), 0, 255).round().astype(np.uint8))
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    if image.mode != "L":
        image = image.convert("RGB").convert("L")  # ITU-R 601-2 luma
    longest = max(image.size)
    if longest > WORKING_SIDE:
        image = image.reduce(-(-longest // WORKING_SIDE))  # box average by a whole factor
    return np.asarray(image, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# MNIST's own normalisation


def mnist_digit(image, name: str = "<image>") -> Tensor:
    """Any decoded image -> uint8 [28, 28] as MNIST was made: light ink on black, the digit's
    ink fitted to a 20x20 box (aspect kept, anti-aliased) and centred by centre of mass.

    Raises ImageError when the image has no ink (too little contrast)."""
    from PIL import Image

    grey = greyscale(image)
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    background = float(np.median(border))
    if background > 127.5:  # light paper, dark ink: invert to MNIST's light ink on dark
        grey, background = 255.0 - grey, 255.0 - background
    ink = grey - background
    peak = float(ink.max())
    if peak < MIN_CONTRAST:
        raise ImageError(
            name,
            f"no ink: the image is blank (strongest contrast {max(peak, 0):.0f} of 255, "
            f"need {MIN_CONTRAST})",
        )
    ink = np.clip(ink / peak, 0.0, 1.0)  # background 0, the strongest ink 1

    rows = np.flatnonzero((ink > INK_THRESHOLD).any(axis=1))
    cols = np.flatnonzero((ink > INK_THRESHOLD).any(axis=0))
    height, width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1  # the digit's bounding box
    scale = DIGIT_BOX / max(height, width)
    # Crop a little beyond the box, so that the faint anti-aliased edge below the threshold
    # stays (MNIST's box is its binary digit's; the grey edge it gained lies around that box).
    margin = math.ceil(FRINGE / scale)
    r0, c0 = max(rows[0] - margin, 0), max(cols[0] - margin, 0)
    crop = ink[r0 : rows[-1] + 1 + margin, c0 : cols[-1] + 1 + margin]
    if scale != 1:
        size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
        fitted = Image.fromarray(crop.astype(np.float32))  # mode F
        crop = np.asarray(fitted.resize(size, Image.Resampling[FIT_FILTER]), dtype=np.float32)
        crop = np.clip(crop, 0.0, 1.0)  # Lanczos rings slightly outside 0..1
    height, width = crop.shape

    mass = crop.sum()
    if mass <= 0:  # pragma: no cover - the box holds ink above the threshold
        raise ImageError(name, "no ink left after scaling")
    com_y = float((crop.sum(axis=1) * np.arange(height)).sum() / mass)
    com_x = float((crop.sum(axis=0) * np.arange(width)).sum() / mass)
    # A whole-pixel shift puts the centre of mass on CENTRE. Deviation, for shapes whose mass
    # sits far to one side (MNIST would cut them): the shift is limited so the ink stays in.
    strong = crop > INK_THRESHOLD
    ink_rows, ink_cols = np.flatnonzero(strong.any(axis=1)), np.flatnonzero(strong.any(axis=0))
    if not len(ink_rows):  # pragma: no cover - a fitted digit keeps ink above the threshold
        ink_rows, ink_cols = np.arange(height), np.arange(width)
    top = min(max(round(CENTRE - com_y), -ink_rows[0]), FIELD - 1 - ink_rows[-1])
    left = min(max(round(CENTRE - com_x), -ink_cols[0]), FIELD - 1 - ink_cols[-1])
    field = np.zeros((FIELD, FIELD), dtype=np.float32)
    y0, x0 = max(top, 0), max(left, 0)  # the part of the crop inside the field
    y1, x1 = min(top + height, FIELD), min(left + width, FIELD)
    field[y0:y1, x0:x1] = crop[y0 - top : y1 - top, x0 - left : x1 - left]
    return torch.from_numpy(np.round(field * 255).astype(np.uint8))  # 28 x 28


def network_input(digits: Tensor, spec: data.InputSpec) -> Tensor:
    """uint8 [N, 28, 28] MNIST-like digits -> float32 [N, 1, 32, 32], the run's own way."""
    return data.to_float(data.prepare(digits, spec), spec)


def load_digit(source: Any, name: str | None = None) -> Tensor:
    """A path, bytes or PIL image -> uint8 [28, 28], or ImageError naming it."""
    name = name or source_name(source)
    return mnist_digit(read_image(source, name), name)


# ---------------------------------------------------------------------------------------------
# Predicting


@dataclass(frozen=True)
class Guess:
    index: int
    name: str
    probability: float


@dataclass(frozen=True)
class Prediction:
    """The top classes for one image, most probable first."""

    source: str
    top: tuple[Guess, ...]
    none_of_these: float | None  # classic (MAP rule): the probability left to no class

    @property
    def label(self) -> str:
        return self.top[0].name


class Predictor:
    """A network ready to classify images: a run's PyTorch model or an ONNX Runtime session."""

    def __init__(
        self,
        info: export.ModelInfo,
        score: Callable[[Tensor], Tensor],
        backend: str,
        source: str,
    ) -> None:
        self.info = info
        self.backend = backend
        self.source = source
        self._score = score

    def scores(self, inputs: Tensor) -> Tensor:
        """float32 [N, 1, 32, 32] network inputs -> scores [N, classes]."""
        return self._score(inputs)

    def probabilities(self, scores: Tensor) -> Tensor:
        """[N, classes]: softmax, or for classic the MAP rule (see the module docstring)."""
        if self.info.probabilities == "map":
            return losses.map_probabilities(scores.double(), self.info.map_j)
        return torch.softmax(scores.double(), dim=1)

    def describe_probabilities(self) -> str:
        if self.info.probabilities == "map":
            return (
                f"the paper's MAP criterion (eq. 9) on the RBF penalties y, j={self.info.map_j:g}: "
                "exp(-y_i) / (exp(-j) + sum_k exp(-y_k)); the rest is 'none of these'"
            )
        if self.info.arch == "classic":
            return (
                "softmax of the scores, the negated RBF penalties (eq. 9 with j -> infinity, "
                "the criterion its cross-entropy training used)"
            )
        return "softmax of the scores"

    def predict(
        self, images: Sequence[Any], top: int = 3, names: Sequence[str] | None = None
    ) -> list[Prediction]:
        """Predictions for every image; raises the first image's ImageError, if any."""
        results = self.predict_each(images, top, names)
        for result in results:
            if isinstance(result, ImageError):
                raise result
        return results

    def predict_each(
        self, images: Sequence[Any], top: int = 3, names: Sequence[str] | None = None
    ) -> list[Prediction | ImageError]:
        """One result per image, in order: a Prediction, or the ImageError that image raised
        (so a caller can report it and carry on). `names` name the images in both."""
        if top < 1:
            raise ValueError(f"top must be at least 1, got {top}")
        if names is not None and len(names) != len(images):
            raise ValueError(f"{len(names)} names for {len(images)} images")
        names = names or [source_name(image, i) for i, image in enumerate(images)]
        results: list[Prediction | ImageError | None] = []
        digits, where = [], []
        for i, (image, name) in enumerate(zip(images, names, strict=True)):
            try:
                digits.append(load_digit(image, name))
                where.append(i)
                results.append(None)
            except ImageError as error:
                results.append(error)
        if digits:
            inputs = network_input(torch.stack(digits), self.info.input)  # n x 1 x 32 x 32
            probabilities = self.probabilities(self.scores(inputs))  # n x classes
            k = min(top, probabilities.shape[1])
            best_p, best_i = probabilities.topk(k, dim=1)
            rest = 1 - probabilities.sum(dim=1)  # "none of these" under the MAP rule
            for row, i in enumerate(where):
                results[i] = Prediction(
                    source=names[i],
                    top=tuple(
                        Guess(int(c), self.info.classes[int(c)], float(p))
                        for p, c in zip(best_p[row], best_i[row], strict=True)
                    ),
                    none_of_these=float(rest[row]) if self.info.probabilities == "map" else None,
                )
        return results


BACKENDS = ("torch", "onnx")


def load_predictor(model: str | os.PathLike, backend: str | None = None) -> Predictor:
    """A Predictor from a run directory or a .onnx file exported by lenet5.

    backend: "torch" (a run directory's weights), "onnx" (ONNX Runtime on a .onnx file, or on
    RUN_DIR/model.onnx as `lenet5 export` writes it), or None for the model's own kind.
    Raises export.ModelFileError for a file that is not one of ours."""
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    path = Path(model)
    if path.is_dir():
        if backend in (None, "torch"):
            _, network, info = export.read_run_info(path)

            def score(inputs: Tensor) -> Tensor:
                with torch.no_grad():
                    return network(inputs)

            return Predictor(info, score, "torch", str(path))
        onnx_file = path / export.DEFAULT_FILE
        if not onnx_file.is_file():
            raise export.ModelFileError(
                f"{path}: no {export.DEFAULT_FILE} in this run directory for the onnx backend; "
                f"run `lenet5 export {path}` first"
            )
        path = onnx_file
    elif not path.exists():
        raise export.ModelFileError(f"{path}: no such run directory or ONNX file")
    if backend == "torch":
        raise export.ModelFileError(
            f"{path}: an ONNX file runs with the onnx backend; give its run directory for torch"
        )
    payload, info = export.read_model(path)
    session = export.onnx_session(payload, str(path))
    return Predictor(info, lambda inputs: export.run_session(session, inputs), "onnx", str(path))
