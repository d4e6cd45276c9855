"""How well `lenet5 predict` reads MNIST test digits saved as the image files people make.

    python bench/predict_forms.py RUN_DIR [--digits 10000] [--backend torch|onnx]

Each test digit is written in seven forms (below), read back through the full preprocessing
(`lenet5.predict`), and the recognition rate per form is printed beside the network's rate on
the MNIST tensors themselves. tests/test_predict.py uses the same forms on fewer digits.
Set LENET5_DATA_DIR (or pass --data-dir) to point at MNIST.
"""

from __future__ import annotations

import argparse
import io
import os

import numpy as np
import torch
from PIL import Image

from lenet5 import data, predict


def encode(image: Image.Image, format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


def forms(digit: np.ndarray) -> dict[str, bytes]:
    """One MNIST digit (uint8 28x28, light on black) as files people make."""
    dark_on_white = Image.fromarray(255 - digit)
    canvas = np.full((120, 90), 255, np.uint8)
    canvas[70:98, 8:36] = 255 - digit  # low and to the left in a larger page
    blue_ink = np.stack([255 - digit, 255 - digit // 2, np.full_like(digit, 255)], axis=-1)
    transparent = np.zeros((28, 28, 4), np.uint8)
    transparent[..., 3] = digit  # black ink whose coverage is the alpha channel
    return {
        "plain": encode(Image.fromarray(digit)),
        "inverted": encode(dark_on_white),
        "scaled 3x": encode(dark_on_white.resize((84, 84), Image.Resampling.BICUBIC)),
        "off-centre": encode(Image.fromarray(canvas)),
        "RGB": encode(Image.fromarray(blue_ink)),
        "RGBA": encode(Image.fromarray(transparent)),
        "JPEG": encode(dark_on_white.resize((56, 56)), "JPEG", quality=75),
    }


def rates(predictor: predict.Predictor, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """Recognition rate on the tensors themselves ("MNIST tensors") and per form."""
    with torch.no_grad():
        network_input = predict.network_input(images, predictor.info.input)
        raw = predictor.scores(network_input).argmax(1)
    result = {"MNIST tensors": float((raw == labels).float().mean())}
    per_form: dict[str, list[bytes]] = {}
    for digit in images.numpy():
        for form, payload in forms(digit).items():
            per_form.setdefault(form, []).append(payload)
    for form, payloads in per_form.items():
        predictions = predictor.predict(payloads)
        right = [int(p.label) == int(y) for p, y in zip(predictions, labels, strict=True)]
        result[form] = float(np.mean(right))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--digits", type=int, default=10_000)
    parser.add_argument("--backend", choices=["torch", "onnx"])
    parser.add_argument("--data-dir", default=os.environ.get("LENET5_DATA_DIR"))
    args = parser.parse_args()
    test = data.load_split("mnist", "test", args.data_dir)
    predictor = predict.load_predictor(args.run_dir, backend=args.backend)
    measured = rates(predictor, test.images[: args.digits], test.labels[: args.digits])
    print("| " + " | ".join(measured) + " |")
    print("|" + " --- |" * len(measured))
    print("| " + " | ".join(f"{100 * r:.2f}%" for r in measured.values()) + " |")


if __name__ == "__main__":
    main()
