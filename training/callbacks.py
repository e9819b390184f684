"""Keras callbacks of the training loop (training/train.py).

Keras' own callbacks do the bookkeeping (ModelCheckpoint, EarlyStopping, CSVLogger,
BackupAndRestore); the two here add what they need from this project: the validation
ROC AUC they monitor, and the per-epoch record that training.json keeps.
Imports Keras at module level: import this module inside functions only.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import keras
import numpy as np

from face2hbe.contract import LABELS


class ValidationAUC(keras.callbacks.Callback):
    """Mean ROC AUC over the contract labels on the validation crops, as `logs["val_mean_auc"]`.

    Also `logs["val_auc_<label>"]` per label (NaN where the split lacks a class), so
    ModelCheckpoint, EarlyStopping and CSVLogger can use them like any Keras metric.
    Scores are plain (no mirror averaging) at the working size of this fit().
    """

    def __init__(self, crops: np.ndarray, targets: np.ndarray, size: int):
        super().__init__()
        self.crops, self.targets, self.size = crops, targets, size

    def on_epoch_end(self, epoch, logs=None):
        from .train import label_aucs, predict

        per_label = label_aucs(self.targets, predict(self.model, self.crops, self.size)) if len(self.crops) else {}
        logs["val_mean_auc"] = float(np.mean(list(per_label.values()))) if per_label else float("nan")
        for label in LABELS:
            logs[f"val_auc_{label}"] = per_label.get(label, float("nan"))


class EpochRecord(keras.callbacks.Callback):
    """After every epoch, one record in the run's state file (the history training.json keeps).

    Records the learning rate of the epoch's first step and `optimizer.iterations` at its end:
    one optimizer per stage keeps counting across epochs (and across a resume from
    BackupAndRestore). Place it after BackupAndRestore, so the state never runs ahead of
    the backup.
    """

    def __init__(self, state_file: Path, state: dict, size: int):
        super().__init__()
        self.state_file, self.state, self.size = Path(state_file), state, size

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.monotonic()
        self._lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        val_auc = {
            label: round(float(logs[f"val_auc_{label}"]), 4)
            for label in LABELS
            if not math.isnan(logs.get(f"val_auc_{label}", math.nan))
        }
        record = {
            "epoch": epoch + 1,
            "size": self.size,
            "loss": float(logs["loss"]),
            "val_mean_auc": float(logs.get("val_mean_auc", math.nan)),
            "val_auc": val_auc,
            "lr": self._lr,
            "iterations": int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)),
            "seconds": round(time.monotonic() - self._started, 1),
        }
        # An epoch run again after an interruption replaces its earlier record.
        self.state["history"] = [h for h in self.state["history"] if h["epoch"] != epoch + 1] + [record]
        self.state["epochs_done"] = epoch + 1
        write_json(self.state_file, self.state)


class CarriedEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping whose best value and count of epochs without gain carry over between
    the fit() calls of one run (stages of other sizes, a resumed run)."""

    def __init__(self, best: float | None, wait: int, **kwargs):
        super().__init__(**kwargs)
        self._carried = best, wait

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.best, self.wait = self._carried


def write_json(path: Path, data) -> None:
    """Replace `path` in one step (a kill leaves the old or the new file, never half of one)."""
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)
