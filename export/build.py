"""Turn a training run's output into a Triton model repository entry."""

from __future__ import annotations

import json
from pathlib import Path

from face2hbe import contract
from face2hbe.errors import ModelRepositoryError
from face2hbe.repository import ONNX_FILE, validate_model_dir

from .onnx_export import export_onnx
from .repository import BatchingSettings, build_config, graph_has_attributes, write_config, write_photo_config


def load_training_run(run_dir: str | Path):
    """(keras model, training summary) from a `face2hbe train` output folder."""
    import keras

    run_dir = Path(run_dir)
    summary_file, model_file = run_dir / "training.json", run_dir / "model.keras"
    for f in (summary_file, model_file):
        if not f.is_file():
            raise ModelRepositoryError(f"{f}: not found (is {run_dir} a finished training run?)")
    summary = json.loads(summary_file.read_text())
    return keras.models.load_model(model_file, compile=False), summary


def export_repository(
    run_dir: str | Path, repository: str | Path, batching: BatchingSettings = BatchingSettings()
) -> Path:
    """Write <repository>/face2hbe/{config.pbtxt, labels files, 1/model.onnx}; return the model folder.

    A photo model folder already in `repository` gets its config regenerated, so it publishes the new thresholds.
    """
    model, summary = load_training_run(run_dir)
    model_dir = Path(repository) / contract.MODEL_NAME
    onnx_path = model_dir / contract.MODEL_VERSION / ONNX_FILE
    export_onnx(
        model, int(summary["working_size"]), onnx_path, mirror_average=bool(summary.get("mirror_average", False))
    )
    write_config(build_config(summary["thresholds"], batching, attributes=graph_has_attributes(model_dir)), model_dir)
    validate_model_dir(model_dir)
    if (Path(repository) / contract.PHOTO_MODEL_NAME).is_dir():
        write_photo_config(repository)
    return model_dir
