"""INT8 variant of the served ONNX graph for CPU-only hosts (onnxruntime static quantization).

The fp32 graph takes raw uint8 crops and preprocesses inside (Cast, Resize, channel
reverse, mean subtraction). Only the network's Conv/MatMul/Gemm are quantized
(QDQ format, per-channel weights), calibrated on real face crops, so the
preprocessing stays exact. The head's last layer (the MatMul/Gemm whose logits feed
the Sigmoid) stays in float: quantizing its output to 8 bits left the scores few
distinct values, so ties near a threshold decided the ranking (issue #27,
docs/serving.md "INT8 ties"). The result is served as its own model, `face2hbe_int8`,
with the same tensors, labels and thresholds as `face2hbe`.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from face2hbe import contract
from face2hbe.errors import DataError, ModelRepositoryError
from face2hbe.graphs import cpu_session, score_crops
from face2hbe.imaging import IMAGE_SUFFIXES
from face2hbe.metrics import roc_aucs
from face2hbe.repository import ONNX_FILE, labels_and_thresholds, read_config, validate_model_dir

from .repository import BatchingSettings, cpu_batching, rewrite_config

log = logging.getLogger(__name__)

INT8_MODEL_NAME = contract.INT8_MODEL_NAME
QUANTIZED_OPS = ["Conv", "MatMul", "Gemm"]  # never the uint8 preprocessing nodes
CALIBRATION_IMAGES = 300  # CelebA images 1..300 (disjoint from the evaluation range)
EVAL_RANGE = (7001, 8000)  # CelebA images used for the fp32-vs-int8 comparison (1-based, inclusive)
REPORT_START, REPORT_END = "<!-- int8-report:start -->", "<!-- int8-report:end -->"


# --- face crops ----------------------------------------------------------------------


def celeba_crops(celeba_dir: Path, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 crops and contract-label targets for CelebA images first..last (1-based), in memory only."""
    from face2hbe.training.data import build_crops, load_celeba

    dataset = load_celeba(celeba_dir, limit=last)
    if len(dataset) < last:
        raise DataError(f"{celeba_dir}: has {len(dataset)} images, need {last}")
    subset = dataset.subset(np.arange(first - 1, last))
    # cache_dir=None: crops stay in memory (no face crops written to disk).
    crops, kept = build_crops(subset, cache_dir=None, progress=False)
    return crops, subset.targets[kept, : len(contract.LABELS)]


def sample_crops(samples_dir: Path) -> np.ndarray:
    """Fallback calibration set: faces the client's detector finds in the bundled sample photos."""
    from face2hbe.detection import photo_face_crops

    crops = photo_face_crops(sorted(p for p in Path(samples_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
    if not len(crops):
        raise DataError(f"{samples_dir}: no faces found for INT8 calibration")
    return crops


def calibration_crops(
    celeba_dir: Path | None, samples_dir: Path, count: int = CALIBRATION_IMAGES
) -> tuple[np.ndarray, str]:
    """Real face crops for calibration: CelebA when present, else the sample photos' faces."""
    if celeba_dir is not None and (Path(celeba_dir) / "labels.csv").is_file():
        crops, _ = celeba_crops(Path(celeba_dir), 1, count)
        return crops, f"CelebA images 1-{count} ({len(crops)} crops)"
    crops = sample_crops(samples_dir)
    return crops, f"faces in {samples_dir} ({len(crops)} crops; CelebA not found)"


# --- quantization ----------------------------------------------------------------------


def _reader(crops: np.ndarray, batch: int = 16):
    from onnxruntime.quantization import CalibrationDataReader

    class CropReader(CalibrationDataReader):
        def __init__(self):
            self._batches = iter([crops[i : i + batch] for i in range(0, len(crops), batch)])

        def get_next(self):
            chunk = next(self._batches, None)
            return None if chunk is None else {contract.INPUT_NAME: chunk}

    return CropReader()


def head_nodes(model) -> list[str]:
    """Names of the nodes that compute the logits of the graph's Sigmoid outputs: the MatMul/Gemm feeding each
    Sigmoid, directly or through one bias Add (the head's last layer, however the graph optimiser fused it)."""
    producers = {out: node for node in model.graph.node for out in node.output}
    names = []
    for sigmoid in (n for n in model.graph.node if n.op_type == "Sigmoid"):
        node = producers.get(sigmoid.input[0])
        if node is not None and node.op_type == "Add":
            names.append(node.name)
            node = next(
                (producers[i] for i in node.input if i in producers and producers[i].op_type in ("MatMul", "Gemm")),
                None,
            )
        if node is not None and node.op_type in ("MatMul", "Gemm"):
            names.append(node.name)
    return names


def quantize_int8(fp32_path: Path, int8_path: Path, crops: np.ndarray, float_head: bool = True) -> Path:
    """Static QDQ quantization: per-channel int8 weights, uint8 activations, MinMax calibration.

    With `float_head` (the default) the head's last layer (head_nodes) is left in float, so the logits, and the
    scores after the Sigmoid, are not rounded to 256 levels.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    int8_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference + graph optimisation first, as onnxruntime recommends for quantization.
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        # Named after pre-processing (it fuses MatMul + Add into Gemm and renames it).
        excluded = head_nodes(onnx.load(str(prepared), load_external_data=False)) if float_head else []
        if float_head and not excluded:
            raise ModelRepositoryError(f"{fp32_path}: no MatMul/Gemm feeding a Sigmoid found to keep in float")
        quantize_static(
            str(prepared),
            str(int8_path),
            _reader(crops),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            # No VNNI on many x86 CPUs: 7-bit weights avoid u8s8 saturation (onnxruntime docs).
            reduce_range=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=QUANTIZED_OPS,
            nodes_to_exclude=excluded,
            calibrate_method=CalibrationMethod.MinMax,
        )
    return int8_path


def record_source(fp32_path: Path, int8_path: Path) -> None:
    """Give the INT8 graph the fp32 graph's metadata plus the fp32 file's sha256 (checked when the repository is
    read: face2hbe.repository.check_quantized_source)."""
    import onnx

    from face2hbe.repository import SOURCE_SHA256_KEY, file_sha256

    props = {p.key: p.value for p in onnx.load(str(fp32_path), load_external_data=False).metadata_props}
    model = onnx.load(str(int8_path))
    onnx.helper.set_model_props(model, {**props, SOURCE_SHA256_KEY: file_sha256(fp32_path)})
    onnx.save(model, str(int8_path))


# --- comparison --------------------------------------------------------------------------


def faces_per_second(sessions: dict, crops: np.ndarray, batch: int = 32, rounds: int = 5) -> dict[str, float]:
    """Faces/s at `batch` for each session, interleaved round by round (fair under a shared CPU), median."""
    x = crops[:batch] if len(crops) >= batch else np.resize(crops, (batch, *crops.shape[1:]))
    times = {name: [] for name in sessions}
    for s in sessions.values():
        s.run(None, {contract.INPUT_NAME: x})  # warm-up
    for _ in range(rounds):
        for name, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, {contract.INPUT_NAME: x})
            times[name].append(time.perf_counter() - t0)
    return {name: batch / float(np.median(t)) for name, t in times.items()}


@dataclass
class Int8Report:
    calibration: str
    evaluation: str
    faces: int
    mean_abs_diff: float
    max_abs_diff: float
    auc_fp32: dict = field(default_factory=dict)
    auc_int8: dict = field(default_factory=dict)
    faces_per_s_fp32: float = 0.0
    faces_per_s_int8: float = 0.0
    size_mb_fp32: float = 0.0
    size_mb_int8: float = 0.0
    distinct_int8: dict = field(default_factory=dict)  # per label: distinct INT8 score values / faces (ties: issue #27)

    @property
    def speedup(self) -> float:
        return self.faces_per_s_int8 / self.faces_per_s_fp32 if self.faces_per_s_fp32 else float("nan")

    def markdown(self) -> str:
        lines = [
            f"Calibration: {self.calibration}. Evaluation: {self.evaluation} ({self.faces} faces).",
            "",
            "| label | ROC AUC fp32 | ROC AUC int8 | drop | distinct int8 scores |",
            "|---|---:|---:|---:|---:|",
        ]
        for label in contract.LABELS:
            a, b = self.auc_fp32.get(label), self.auc_int8.get(label)
            drop = f"{a - b:+.4f}" if a is not None and b is not None else "n/a"
            distinct = f"{self.distinct_int8[label]:.0%}" if label in self.distinct_int8 else "n/a"
            lines.append(
                f"| {label} | {a if a is None else f'{a:.4f}'} | {b if b is None else f'{b:.4f}'} | {drop} | {distinct} |"
            )
        lines += [
            "",
            "| | fp32 | int8 | ratio |",
            "|---|---:|---:|---:|",
            f"| faces/s (onnxruntime CPU, batch 32) | {self.faces_per_s_fp32:.1f} | {self.faces_per_s_int8:.1f} | {self.speedup:.2f}x |",
            f"| model.onnx size (MB) | {self.size_mb_fp32:.1f} | {self.size_mb_int8:.1f} | {self.size_mb_int8 / self.size_mb_fp32:.2f}x |",
            "",
            f"Scores: mean |fp32 - int8| = {self.mean_abs_diff:.4f}, max = {self.max_abs_diff:.4f}.",
        ]
        return "\n".join(lines)


def compare(
    fp32_path: Path, int8_path: Path, crops: np.ndarray, targets: np.ndarray | None, evaluation: str, calibration: str
) -> Int8Report:
    """Scores, per-label ROC AUC and speed of both graphs on the same crops, in one run."""
    # onnxruntime's defaults (spinning threads): the files are compared, not servers
    sessions = {"fp32": cpu_session(fp32_path, spin=True), "int8": cpu_session(int8_path, spin=True)}
    s32, s8 = score_crops(sessions["fp32"], crops), score_crops(sessions["int8"], crops)
    speed = faces_per_second(sessions, crops)
    diff = np.abs(s32 - s8)
    report = Int8Report(
        calibration=calibration,
        evaluation=evaluation,
        faces=len(crops),
        mean_abs_diff=float(diff.mean()),
        max_abs_diff=float(diff.max()),
        faces_per_s_fp32=speed["fp32"],
        faces_per_s_int8=speed["int8"],
        size_mb_fp32=fp32_path.stat().st_size / 1e6,
        size_mb_int8=int8_path.stat().st_size / 1e6,
        distinct_int8={label: len(np.unique(s8[:, k])) / len(s8) for k, label in enumerate(contract.LABELS)}
        if len(s8)
        else {},
    )
    if targets is not None:
        report.auc_fp32 = roc_aucs(targets, s32, contract.LABELS)
        report.auc_int8 = roc_aucs(targets, s8, contract.LABELS)
    return report


def write_report(report: Int8Report, markdown_file: Path, command: str) -> None:
    """Replace the INT8 section between the report markers in `markdown_file` (append if absent)."""
    from face2hbe.paths import write_marked_section

    write_marked_section(markdown_file, REPORT_START, REPORT_END, command, report.markdown())


# --- repository entry ------------------------------------------------------------------------


def export_int8(
    repository: Path,
    celeba_dir: Path | None,
    samples_dir: Path,
    batching: BatchingSettings = BatchingSettings(),
    calibration_images: int = CALIBRATION_IMAGES,
    eval_range: tuple[int, int] | None = EVAL_RANGE,
) -> tuple[Path, Int8Report | None]:
    """<repository>/face2hbe/1/model.onnx -> <repository>/face2hbe_int8/{config.pbtxt, labels.txt, 1/model.onnx}.

    Returns the new model folder and, when CelebA is available and eval_range is
    set, the fp32-vs-int8 comparison on that held-out range.
    """
    repository = Path(repository)
    source_dir = repository / contract.MODEL_NAME
    _, fp32_path = validate_model_dir(source_dir)
    _, thresholds = labels_and_thresholds(read_config(source_dir))
    crops, calibration = calibration_crops(celeba_dir, samples_dir, calibration_images)
    log.info("calibrating on %s", calibration)
    target_dir = repository / INT8_MODEL_NAME
    int8_path = quantize_int8(fp32_path, target_dir / contract.MODEL_VERSION / ONNX_FILE, crops)
    record_source(fp32_path, int8_path)
    rewrite_config(target_dir, cpu_batching(batching), name=INT8_MODEL_NAME, thresholds=thresholds)
    validate_model_dir(target_dir)
    report = None
    if eval_range and celeba_dir is not None and (Path(celeba_dir) / "labels.csv").is_file():
        first, last = eval_range
        eval_crops, targets = celeba_crops(Path(celeba_dir), first, last)
        report = compare(fp32_path, int8_path, eval_crops, targets, f"CelebA images {first}-{last}", calibration)
        log.info("int8 report: %s", json.dumps(asdict(report)))
    return target_dir, report
