"""Export a trained run to ONNX, and prove the file computes what the run computes.

Follows the ONNX conventions for a self-describing model: one .onnx file (no external data)
whose `metadata_props` say what the graph expects and returns, checked by `onnx.checker`, then
run by ONNX Runtime on the run's whole test split and compared with PyTorch. A file is written
only once that check passes; it goes through a temporary file and `os.replace`, so a failed
export leaves nothing behind and never replaces an earlier good file.

The graph: input "images", float32 [batch, 1, 32, 32] with a dynamic batch dimension, mapped
the run's way (`lenet5.data.InputSpec`, recorded in the metadata); output "scores", float32
[batch, classes], whose argmax predicts. For classic those are the negated RBF penalties, as
its `forward` returns them.

Exporter: `torch.onnx.export(..., dynamo=True)`, the torch.export-based exporter that PyTorch
maintains and makes the default from 2.9 (it needs onnxscript, in the `export` extra). The
older TorchScript exporter also exports these three networks with the same parity today, but
it is deprecated, warns on every call and is slated for removal. The dynamo exporter writes
opset 18 natively, so that is the default; ONNX Runtime runs it from 1.14 on. Another opset
goes through the ONNX version converter, and when that fails the exporter silently keeps 18:
`export_run` checks the opset it got and refuses a mismatch. Exporting needs torch >= 2.5.

onnx and onnxruntime are imported inside the functions that use them, so `import lenet5`
stays light.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from lenet5 import __version__, data, experiment, runs

DEFAULT_OPSET = 18
PARITY_TOLERANCE = 1e-4  # largest |ONNX Runtime score - PyTorch score| accepted
PARITY_BATCH = 1000  # images per batch in the parity check (exercises the dynamic batch)
INPUT_NAME, OUTPUT_NAME = "images", "scores"
DEFAULT_FILE = "model.onnx"  # inside the run directory, unless told otherwise

# The metadata keys. MARKER's presence (with a format we know) is what makes a file ours.
PREFIX = "lenet5."
MARKER, FORMAT = PREFIX + "format", "1"

# What each dataset's class indices mean. Fashion-MNIST's names as Zalando's README gives them.
CLASS_NAMES = {
    "mnist": tuple(str(digit) for digit in range(10)),
    "fashion-mnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
}

# How scores become probabilities (see probability_rule): softmax, or the class probabilities
# of the paper's MAP criterion (eq. 9, lenet5.losses.map_probabilities), which leave some
# probability to "none of these".
PROBABILITY_RULES = ("softmax", "map")


def probability_rule(spec: experiment.RunSpec) -> tuple[str, float | None]:
    """(rule, j) for a run. Twin and modern: softmax of their logits. Classic: eq. 9 on its
    penalties with the run's j, when it was trained by the paper's criteria (map, plain). A
    classic trained by cross-entropy was trained by eq. 9 with j -> infinity (see
    lenet5.losses), where eq. 9 is the softmax of its scores: so it gets softmax, not eq. 9 with
    a j its training never saw (which would give "none of these" ~100% to every image)."""
    if spec.arch == "classic" and spec.train.loss in ("map", "plain"):
        return "map", float(spec.train.map_j)
    return "softmax", None


class ExportError(Exception):
    """The export could not produce a correct file; nothing was written."""


class ParityError(ExportError):
    """ONNX Runtime's scores disagree with PyTorch's; `parity` says by how much."""

    def __init__(self, message: str, parity: ParityResult) -> None:
        super().__init__(message)
        self.parity = parity


class ModelFileError(Exception):
    """A file is unreadable, not ONNX, or not a model exported by lenet5; the message names it."""


@dataclass(frozen=True)
class ModelInfo:
    """What a consumer must know to use a network: stored in the ONNX file's metadata_props,
    or derived from a run directory."""

    arch: str
    dataset: str
    input: data.InputSpec  # 28x28 -> 32x32 geometry and the value mapping
    classes: tuple[str, ...]
    probabilities: str  # "softmax" or "map" (see probability_rule)
    map_j: float | None  # the MAP criterion's j, for "map"
    test_accuracy: float | None  # the run's, from its metrics.json, if it has one
    lenet5_version: str
    input_size: int = data.INPUT_SIDE

    def to_metadata(self) -> dict[str, str]:
        """The metadata_props entries, all strings as ONNX requires."""
        entries = {
            MARKER: FORMAT,
            "lenet5.version": self.lenet5_version,
            "lenet5.arch": self.arch,
            "lenet5.dataset": self.dataset,
            "lenet5.input_size": str(self.input_size),
            "lenet5.input_spec": json.dumps(asdict(self.input)),
            "lenet5.classes": json.dumps(list(self.classes)),
            "lenet5.probabilities": self.probabilities,
            "lenet5.map_j": "" if self.map_j is None else repr(self.map_j),
            "lenet5.test_accuracy": "" if self.test_accuracy is None else repr(self.test_accuracy),
        }
        return entries

    @classmethod
    def from_metadata(cls, props: dict[str, str], source: str) -> ModelInfo:
        """Parse and validate what to_metadata wrote; ModelFileError names `source` if it is
        not a lenet5 model or its metadata does not hold together."""

        def refuse(problem: str) -> ModelFileError:
            return ModelFileError(f"{source}: not a lenet5 model: {problem}")

        if MARKER not in props:
            raise refuse(
                f"its metadata has no {MARKER!r} entry (was it exported by `lenet5 export`?)"
            )
        if props[MARKER] != FORMAT:
            raise refuse(f"unknown {MARKER} {props[MARKER]!r} (this lenet5 reads {FORMAT!r})")
        try:
            from lenet5 import models

            arch = props["lenet5.arch"]
            if arch not in models.ARCHITECTURES:
                raise ValueError(f"unknown architecture {arch!r}")
            input_size = int(props["lenet5.input_size"])
            if input_size != data.INPUT_SIDE:
                raise ValueError(f"input size {input_size}, expected {data.INPUT_SIDE}")
            classes = json.loads(props["lenet5.classes"])
            if not (
                isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)
            ):
                raise ValueError("lenet5.classes is not a list of names")
            rule = props["lenet5.probabilities"]
            if rule not in PROBABILITY_RULES:
                raise ValueError(f"unknown probability rule {rule!r}")
            map_j = float(props["lenet5.map_j"]) if props["lenet5.map_j"] else None
            if rule == "map" and (map_j is None or not math.isfinite(map_j)):
                raise ValueError("the MAP rule needs a finite lenet5.map_j")
            accuracy = props.get("lenet5.test_accuracy") or None
            return cls(
                arch=arch,
                dataset=props["lenet5.dataset"],
                input=data.InputSpec(**json.loads(props["lenet5.input_spec"])),
                classes=tuple(classes),
                probabilities=rule,
                map_j=map_j,
                test_accuracy=None if accuracy is None else float(accuracy),
                lenet5_version=props["lenet5.version"],
                input_size=input_size,
            )
        except KeyError as exc:
            raise refuse(f"its metadata lacks {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
            raise refuse(f"malformed metadata ({exc})") from None


def model_info(spec: experiment.RunSpec, summary: dict | None = None) -> ModelInfo:
    """The ModelInfo of a run, from its spec and (optionally) its metrics.json."""
    rule, map_j = probability_rule(spec)
    accuracy = None if summary is None else summary.get("test_accuracy")
    return ModelInfo(
        arch=spec.arch,
        dataset=spec.dataset,
        input=spec.input,
        classes=CLASS_NAMES.get(spec.dataset, tuple(map(str, range(data.NUM_CLASSES)))),
        probabilities=rule,
        map_j=map_j,
        test_accuracy=None if accuracy is None else float(accuracy),
        lenet5_version=__version__,
    )


def read_run_info(run_dir: str | os.PathLike) -> tuple[experiment.RunSpec, nn.Module, ModelInfo]:
    """A run's spec, its model (eval mode, CPU) and ModelInfo; metrics.json is optional."""
    spec, model = experiment.load_run(run_dir)
    try:
        summary = runs.read_summary(run_dir)
    except runs.RunDirError:
        summary = None  # an interrupted run has weights but no final metrics
    return spec, model, model_info(spec, summary if isinstance(summary, dict) else None)


# ---------------------------------------------------------------------------------------------
# Export


@dataclass(frozen=True)
class ParityResult:
    """ONNX Runtime against PyTorch on the same images."""

    max_abs_diff: float  # over every score of every image
    agree: int  # images whose predicted class is the same
    n: int  # images compared
    tolerance: float
    onnx_accuracy: float  # fraction of the images ONNX Runtime classifies correctly

    @property
    def ok(self) -> bool:
        return self.agree == self.n and self.max_abs_diff < self.tolerance


@dataclass(frozen=True)
class ExportResult:
    path: Path
    info: ModelInfo
    parity: ParityResult
    opset: int


def export_run(
    run_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    data_dir: str | os.PathLike | None = None,
    tolerance: float | None = None,
) -> ExportResult:
    """Export `run_dir`'s model to `out` (default RUN_DIR/model.onnx) and check it.

    Steps: export (dynamic batch), add the metadata, `onnx.checker` (full check), then ONNX
    Runtime against PyTorch on the run's whole test split: every prediction must agree and
    every score differ by less than `tolerance` (default PARITY_TOLERANCE). Raises ParityError
    or ExportError, having written nothing, if any step fails.
    """
    tolerance = PARITY_TOLERANCE if tolerance is None else tolerance
    _, model, info = read_run_info(run_dir)
    test = data.load_split(info.dataset, "test", data_dir)
    images = data.to_float(data.prepare(test.images, info.input), info.input)  # N x 1 x 32 x 32
    proto = to_onnx(model, info, opset)
    payload = proto.SerializeToString()
    parity = check_parity(model, payload, images, test.labels, tolerance)
    if not parity.ok:
        raise ParityError(
            f"ONNX Runtime disagrees with PyTorch on {info.dataset} test images: "
            f"{parity.agree} of {parity.n} predictions agree, max |score difference| "
            f"{parity.max_abs_diff:.3g} (tolerance {tolerance:g}); nothing written",
            parity,
        )
    path = Path(out) if out is not None else Path(run_dir) / DEFAULT_FILE
    runs.atomic_write_bytes(path, payload)
    return ExportResult(path=path, info=info, parity=parity, opset=opset)


def to_onnx(model: nn.Module, info: ModelInfo, opset: int = DEFAULT_OPSET):
    """The checked onnx.ModelProto of `model` (CPU, eval mode) with `info` in its metadata."""
    onnx = _require("onnx")

    proto = _export_graph(model, opset)
    got = [entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")]
    if got != [opset]:
        raise ExportError(
            f"asked for ONNX opset {opset} but the exporter produced {got}; opsets below "
            f"{DEFAULT_OPSET} need a version conversion that failed: try --opset {DEFAULT_OPSET}"
        )
    for key, value in info.to_metadata().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = (
        f"LeNet-5 ({info.arch}) trained on {info.dataset}, exported by lenet5 {info.lenet5_version}"
    )
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"the exported graph fails onnx.checker: {exc}") from exc
    return proto


def _export_graph(model: nn.Module, opset: int):
    """torch.onnx's dynamo exporter, quietly: its progress lines and warnings are not ours to
    print (cli.py is the only module that prints)."""
    if not hasattr(torch.onnx, "ONNXProgram"):  # pragma: no cover - older torch
        raise ExportError(f"exporting needs torch >= 2.5 (this is {torch.__version__})")
    example = torch.zeros(2, 1, data.INPUT_SIDE, data.INPUT_SIDE)  # batch 2: torch.export
    batch = torch.export.Dim("batch")  # specialises sizes 0 and 1, so the example has two
    try:
        with _quiet():
            program = torch.onnx.export(
                model.eval(),
                (example,),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamo=True,
                dynamic_shapes=({0: batch},),
                verbose=False,
            )
    except ImportError as exc:
        raise ExportError(
            f"exporting needs onnx and onnxscript ({exc}); pip install 'lenet5[export]'"
        ) from exc
    except Exception as exc:  # the exporter's own error types vary across torch versions
        raise ExportError(f"torch.onnx.export failed: {type(exc).__name__}: {exc}") from exc
    return program.model_proto


def _require(name: str):
    """Import an optional dependency of the `export` extra, or say how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:  # pragma: no cover - the export extra is missing
        raise ExportError(
            f"{name} is needed for ONNX ({exc}); pip install 'lenet5[export]'"
        ) from exc


@contextlib.contextmanager
def _quiet():
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def onnx_session(payload: bytes, source: str = "<onnx>"):
    """An ONNX Runtime CPU session on a serialised model."""
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings are not ours to print
    try:
        return ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise ModelFileError(f"{source}: ONNX Runtime cannot load it ({exc})") from exc


def run_session(session, images: Tensor, batch_size: int = PARITY_BATCH) -> Tensor:
    """Scores of float32 images [N, 1, 32, 32] from an ONNX Runtime session, batch by batch."""
    chunks = [
        session.run([OUTPUT_NAME], {INPUT_NAME: images[i : i + batch_size].numpy()})[0]
        for i in range(0, len(images), batch_size)
    ]
    return torch.from_numpy(np.concatenate(chunks))


def check_parity(
    model: nn.Module,
    payload: bytes,
    images: Tensor,
    labels: Tensor,
    tolerance: float = PARITY_TOLERANCE,
) -> ParityResult:
    """Run `images` through PyTorch and through ONNX Runtime on `payload`; compare."""
    session = onnx_session(payload)
    with torch.no_grad():
        expected = torch.cat(
            [model(images[i : i + PARITY_BATCH]) for i in range(0, len(images), PARITY_BATCH)]
        )
    got = run_session(session, images)
    if got.shape != expected.shape:
        raise ExportError(f"ONNX Runtime returned {tuple(got.shape)}, PyTorch {expected.shape}")
    difference = (got.double() - expected.double()).abs().max().item()
    if not math.isfinite(difference):
        difference = math.inf
    predicted = got.argmax(dim=1)
    return ParityResult(
        max_abs_diff=difference,
        agree=int((predicted == expected.argmax(dim=1)).sum()),
        n=len(images),
        tolerance=tolerance,
        onnx_accuracy=float((predicted == labels).double().mean()),
    )


# ---------------------------------------------------------------------------------------------
# Reading an exported file back


def read_model(path: str | os.PathLike) -> tuple[bytes, ModelInfo]:
    """The bytes and ModelInfo of an ONNX file exported by lenet5; ModelFileError otherwise.

    Besides the metadata, the graph must have the input and output export_run gives it."""
    onnx = _require("onnx")

    path = Path(path)
    try:
        payload = path.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    try:
        proto = onnx.load_model_from_string(payload)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ModelFileError(f"{path}: not an ONNX model ({type(exc).__name__})") from exc
    if not proto.graph.node:
        raise ModelFileError(f"{path}: not an ONNX model (no graph)")
    info = ModelInfo.from_metadata({p.key: p.value for p in proto.metadata_props}, str(path))
    _check_signature(proto, info, str(path))
    return payload, info


def _check_signature(proto, info: ModelInfo, source: str) -> None:
    def dims(value_info) -> list:
        shape = value_info.type.tensor_type.shape.dim
        return [d.dim_value if d.HasField("dim_value") else None for d in shape]

    side = info.input_size
    inputs = {v.name: dims(v) for v in proto.graph.input}
    outputs = {v.name: dims(v) for v in proto.graph.output}
    if inputs.get(INPUT_NAME, [])[1:] != [1, side, side]:
        raise ModelFileError(
            f"{source}: not a lenet5 model: expected input {INPUT_NAME!r} [batch, 1, {side}, "
            f"{side}], found {inputs}"
        )
    if outputs.get(OUTPUT_NAME, [])[1:] != [len(info.classes)]:
        raise ModelFileError(
            f"{source}: not a lenet5 model: expected output {OUTPUT_NAME!r} [batch, "
            f"{len(info.classes)}], found {outputs}"
        )
