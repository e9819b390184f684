"""Train the shared VGG16 + multi-label sigmoid head on labeled face crops.

Two recipes:
- pretrained (`--weights imagenet` or a .h5 file): frozen base and Adam for the
  head, then fine-tune block5 with SGD lr 5e-5 momentum 0.9 (the prototype's recipe);
- from scratch (`--weights none`): the batch-norm VGG16 variant, AdamW with a
  cosine schedule, optionally progressive sizes (cheap small epochs first).

One `fit()` per stage (a working size of the schedule, or a phase of the
pretrained recipe), the optimizer compiled once per phase so its moments and step
count carry across epochs, and Keras callbacks for the rest: validation ROC AUC
(training/callbacks.py), ModelCheckpoint (best/last/epoch-NN.weights.h5),
EarlyStopping, CSVLogger (history.csv) and BackupAndRestore (rerunning the same
command resumes a cut-off run). Outputs go to `--output`: model.keras (best epoch
by mean validation ROC AUC), training.json (recipe, working size, thresholds,
metrics, per-epoch history) and curves.png.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from face2hbe import metrics
from face2hbe.contract import LABELS
from face2hbe.errors import DataError
from face2hbe.paths import portable as portable_path
from face2hbe.paths import portable_spec

from . import data as datasets

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    data: list[str]  # "celeba:PATH", "folders:PATH" or "lfw:PATH"
    output: Path
    weights: str = "imagenet"
    batchnorm: bool | None = None  # None: on exactly when training from scratch
    schedule: list[tuple[int, int]] = field(default_factory=lambda: [(150, 10)])  # (size, epochs) stages
    head_epochs: int = 2  # pretrained recipe: epochs with the base frozen
    batch_size: int = 32
    learning_rate: float | None = None
    attributes: bool = False  # multi-task: also learn every CelebA attribute the data has
    limit: int | None = None  # use only the first N samples of each set (smoke tests)
    cache_dir: Path | None = None
    patience: int = 4
    seed: int = 0
    augment: bool = True
    progress: bool = True
    init_weights: Path | None = None  # warm start: a previous run's best.weights.h5 or model.keras, same targets
    mirror_average: bool = False  # final scores (thresholds, metrics, export) average each face and its mirror
    lr_schedule: str = "cosine"  # from scratch: "cosine" over the planned epochs or "constant" (for weight averaging)
    keep_epoch_weights: bool = (
        False  # also keep epoch-NN.weights.h5 after every epoch (inputs for checkpoint averaging)
    )
    average: list[str] | None = (
        None  # final weights: the mean of these checkpoints ("epoch-NN", "last", "init"), BN re-measured
    )

    @property
    def from_scratch(self) -> bool:
        return str(self.weights).lower() == "none"

    @property
    def use_batchnorm(self) -> bool:
        return self.from_scratch if self.batchnorm is None else self.batchnorm


@dataclass
class Split:
    crops: np.ndarray  # uint8 [N,150,150,3]
    targets: np.ndarray  # float32 [N,K], -1 unknown


def parse_schedule(text: str) -> list[tuple[int, int]]:
    """'64:3,96:2' -> [(64, 3), (96, 2)]."""
    stages = []
    for part in text.split(","):
        size, _, epochs = part.partition(":")
        stages.append((int(size), int(epochs or 1)))
    if not stages or any(s < 32 or e < 1 for s, e in stages):
        raise ValueError(f"bad schedule {text!r}: use SIZE:EPOCHS[,SIZE:EPOCHS...], sizes >= 32")
    return stages


def load_sets(specs: list[str], attributes: bool, limit: int | None) -> list[datasets.LabeledSet]:
    sets = []
    for spec in specs:
        kind, _, path = spec.partition(":")
        if kind == "celeba":
            sets.append(datasets.load_celeba(path, with_attributes=attributes, limit=limit))
        elif kind == "folders":
            sets.append(datasets.load_folders(path))
        elif kind == "lfw":
            s = datasets.load_lfw(path, with_attributes=attributes)
            sets.append(s.subset(np.arange(min(limit, len(s)))) if limit else s)
        else:
            raise DataError(f"unknown data kind {kind!r} in {spec!r}: use celeba:, folders: or lfw:")
    return sets


def set_splits(config: TrainConfig) -> tuple[list[str], list[tuple[str, dict[str, Split]]]]:
    """Per data set (in `config.data` order): its name and its train/val/test crops on the common target list."""
    sets = load_sets(config.data, config.attributes, config.limit)
    names = list(LABELS)
    for s in sets:
        names += [n for n in s.target_names if n not in names]
    out = []
    for s in sets:
        crops, kept = datasets.build_crops(s, config.cache_dir, progress=config.progress)
        targets = np.full((len(s), len(names)), datasets.UNKNOWN, np.float32)
        for j, n in enumerate(s.target_names):
            targets[:, names.index(n)] = s.targets[:, j]
        targets = targets[kept]
        groups = [s.groups[i] for i in kept]
        parts = datasets.split_by_group(groups, seed=config.seed)
        out.append((s.name, {k: Split(crops[i], targets[i]) for k, i in zip(("train", "val", "test"), parts)}))
    return names, out


def prepare_splits(config: TrainConfig) -> tuple[list[str], dict[str, Split]]:
    """Crops and targets of train/val/test, merged across sets on a common target list."""
    names, per_set = set_splits(config)
    merged = {
        k: Split(np.concatenate([s[k].crops for _, s in per_set]), np.concatenate([s[k].targets for _, s in per_set]))
        for k in ("train", "val", "test")
    }
    if len(merged["train"].crops) == 0:
        raise DataError("no training crops: check the data paths")
    return names, merged


def _augmenter(seed: int):
    """Augmentations a face pipeline meets: flips, small shifts/zooms/rotations, colour (per batch)."""
    import keras
    from keras import layers

    return keras.Sequential(
        [
            layers.RandomFlip("horizontal", seed=seed),
            layers.RandomTranslation(0.06, 0.06, fill_mode="reflect", seed=seed),
            layers.RandomZoom((-0.1, 0.1), fill_mode="reflect", seed=seed),
            layers.RandomRotation(0.03, fill_mode="reflect", seed=seed),
            layers.RandomBrightness(0.15, value_range=(0, 255), seed=seed),
            layers.RandomContrast(0.2, value_range=(0, 255), seed=seed),
        ],
        name="augment",
    )


def _degrade(image, seed: int):
    """Per-image quality loss the client meets on real photos: JPEG artefacts and soft focus.

    A third of the images are re-encoded at JPEG quality 30-95; a quarter are
    blurred by shrinking to 50-90 % and scaling back (small faces in big photos
    reach the network up-sampled, so they look like this).
    """
    import tensorflow as tf

    size = tf.shape(image)[:2]
    u = tf.random.uniform([4], seed=seed)
    image = tf.cond(
        u[0] < 1 / 3,
        lambda: tf.cast(
            tf.image.adjust_jpeg_quality(
                tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8), tf.cast(30 + 65 * u[1], tf.int32)
            ),
            tf.float32,
        ),
        lambda: image,
    )
    small = tf.maximum(tf.cast(tf.cast(size, tf.float32) * (0.5 + 0.4 * u[3]), tf.int32), 8)
    return tf.cond(
        u[2] < 0.25,
        lambda: tf.image.resize(tf.image.resize(image, small, antialias=True), size),
        lambda: image,
    )


def _dataset(x: np.ndarray, y: np.ndarray, batch: int, train: bool, seed: int, augment: bool):
    import tensorflow as tf

    from .model import to_vgg_input

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if train:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        if augment:
            ds = ds.map(lambda a, b: (_degrade(a, seed), b), num_parallel_calls=2)
    ds = ds.batch(batch)
    if train and augment:
        aug = _augmenter(seed)
        ds = ds.map(lambda a, b: (tf.clip_by_value(aug(a, training=True), 0.0, 255.0), b), num_parallel_calls=2)
    ds = ds.map(lambda a, b: (to_vgg_input(a), b))
    return ds.prefetch(2)


def _resized(crops: np.ndarray, size: int) -> np.ndarray:
    """Float RGB crops at the working size, resized exactly like the exported graph does."""
    from .model import resize

    out = [np.asarray(resize(crops[i : i + 256], size)) for i in range(0, len(crops), 256)]
    return np.concatenate(out) if out else np.zeros((0, size, size, 3), np.float32)


def predict(model, crops: np.ndarray, size: int, batch: int = 64, mirror_average: bool = False) -> np.ndarray:
    """Scores for uint8 crops through the same preprocessing the served graph applies."""
    from .model import mirror_averaged, preprocess

    def scores(x):
        return mirror_averaged(model, x) if mirror_average else model(x, training=False)

    out = [np.asarray(scores(preprocess(crops[i : i + batch], size))) for i in range(0, len(crops), batch)]
    return np.concatenate(out) if out else np.zeros((0, model.output_shape[-1]), np.float32)


def label_aucs(targets: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """ROC AUC of each contract label that has both classes in `targets`."""
    rows = metrics.per_label_metrics(targets[:, : len(LABELS)], scores[:, : len(LABELS)], LABELS)
    return {label: float(r["roc_auc"]) for label, r in rows.items() if "roc_auc" in r}


def _positive_weights(targets: np.ndarray) -> np.ndarray:
    """sqrt(neg/pos) per target, capped at 10: rare labels (hat) pull harder without exploding."""
    known = targets >= 0
    pos = ((targets >= 0.5) & known).sum(0)
    neg = ((targets < 0.5) & known).sum(0)
    return np.clip(np.sqrt(neg / np.maximum(pos, 1)), 1.0, 10.0).astype(np.float32)


def make_loss(pos_weight: np.ndarray, label_weight: np.ndarray | None = None):
    """Masked BCE with positives of each target weighted by `pos_weight`; `label_weight` scales each target's term."""
    from keras import ops

    from .model import masked_binary_crossentropy

    w = ops.convert_to_tensor(pos_weight)
    scale = ops.convert_to_tensor(np.ones_like(pos_weight) if label_weight is None else label_weight)

    def weighted_masked_bce(y_true, y_pred):
        # Positive targets count pos_weight times; unknown targets are masked inside.
        weights = (1.0 + (w - 1.0) * ops.clip(y_true, 0.0, 1.0)) * scale
        return masked_binary_crossentropy(y_true, y_pred, weights)

    return weighted_masked_bce


def train(config: TrainConfig, callbacks: list | None = None) -> dict:
    """Run the whole recipe; returns the summary also written to training.json.

    One `fit()` per stage (see `plan_stages`), Keras callbacks for validation AUC,
    checkpoints, early stopping, the CSV log and BackupAndRestore. Rerunning the same
    command resumes: finished stages are skipped and the stage that was cut off continues
    from its backup (weights, optimizer moments and iteration count, epoch). A finished
    run is only evaluated again. `callbacks` are added to every fit() (after this
    module's own), e.g. to stop a run from a test.
    """
    import keras

    from .callbacks import CarriedEarlyStopping, EpochRecord, ValidationAUC, write_json
    from .model import build_model, resolve_weights

    keras.utils.set_random_seed(config.seed)
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    names, splits = prepare_splits(config)
    train_split, val_split, test_split = splits["train"], splits["val"], splits["test"]
    log.info(
        "samples: train %d, val %d, test %d; targets %d",
        len(train_split.crops),
        len(val_split.crops),
        len(test_split.crops),
        len(names),
    )

    weights = resolve_weights(config.weights)
    model = build_model(len(names), weights=weights, batchnorm=config.use_batchnorm)
    stages = plan_stages(config)
    total = stages[-1].end
    state_file, last_ckpt, best_ckpt = out / "state.json", out / "last.weights.h5", out / "best.weights.h5"
    state = {"epochs_done": 0, "stopped_early": False, "history": []}
    if state_file.is_file() and last_ckpt.is_file():
        state = {**state, **json.loads(state_file.read_text())}
        log.info("resuming after epoch %d of %d", state["epochs_done"], total)
        model.load_weights(last_ckpt)  # BackupAndRestore below brings the optimizer state back too
    elif config.init_weights and Path(config.init_weights).suffix == ".onnx":
        _warm_start_from_onnx(model, Path(config.init_weights), train_split.crops, stages[0].size, config.seed)
    elif config.init_weights:
        load_init_weights(model, config.init_weights, names)
    loss = make_loss(_positive_weights(train_split.targets))
    steps_per_epoch = math.ceil(len(train_split.crops) / config.batch_size)
    has_val_auc = _has_both_classes(val_split.targets)
    if not has_val_auc:
        log.warning("validation split has no label with both classes: no validation AUC, the last epoch is kept")

    compiled = None
    for stage in stages:
        if state["stopped_early"] or stage.end <= state["epochs_done"]:
            continue
        if stage.phase != compiled:
            phase_epochs = sum(s.end - s.start for s in stages if s.phase == stage.phase)
            optimizer = compile_phase(model, config, stage.phase, loss, steps_per_epoch * phase_epochs)
            compiled = stage.phase
            done = state["epochs_done"] - min(s.start for s in stages if s.phase == stage.phase)
            if done > 0 and not (out / "backup" / stage.phase).is_dir():
                # e.g. a finished run rerun with more epochs: its backup is gone. The rate schedule
                # goes on from the step count; the optimizer's moments start again.
                log.warning("no backup of the optimizer state: training on from %s with a new optimizer", last_ckpt)
                optimizer.iterations.assign(done * steps_per_epoch)
        history = state["history"]
        best = max((h["val_mean_auc"] for h in history if h["val_mean_auc"] == h["val_mean_auc"]), default=None)
        best_at = max((h["epoch"] for h in history if h["val_mean_auc"] == best), default=state["epochs_done"])
        checkpoints = [ValidationAUC(val_split.crops, val_split.targets, stage.size)]
        if has_val_auc:
            checkpoints.append(
                keras.callbacks.ModelCheckpoint(
                    best_ckpt,
                    monitor="val_mean_auc",
                    mode="max",
                    save_best_only=True,
                    save_weights_only=True,
                    initial_value_threshold=best,
                )
            )
        checkpoints.append(keras.callbacks.ModelCheckpoint(last_ckpt, save_weights_only=True))
        if config.keep_epoch_weights:
            checkpoints.append(
                keras.callbacks.ModelCheckpoint(str(out / "epoch-{epoch:02d}.weights.h5"), save_weights_only=True)
            )
        stopping = None
        if has_val_auc:  # the best value and the epochs without gain so far carry over from earlier stages
            stopping = CarriedEarlyStopping(
                best, state["epochs_done"] - best_at, monitor="val_mean_auc", mode="max", patience=config.patience
            )
        run_callbacks = [
            *checkpoints,
            keras.callbacks.CSVLogger(str(out / "history.csv"), append=True),
            # One backup per optimizer phase: shared by that phase's stages, removed when the run is done.
            keras.callbacks.BackupAndRestore(str(out / "backup" / stage.phase), delete_checkpoint=False),
            EpochRecord(state_file, state, stage.size),
            *([stopping] if stopping else []),
            *(callbacks or []),
        ]
        log.info("stage: epochs %d-%d at %d px (%s)", stage.start + 1, stage.end, stage.size, stage.phase)
        x_train = _resized(train_split.crops, stage.size)
        model._initial_epoch = None  # BackupAndRestore leaves a restored epoch on the model; each fit() starts clean
        model.fit(
            _dataset(x_train, train_split.targets, config.batch_size, True, config.seed + stage.start, config.augment),
            initial_epoch=max(stage.start, state["epochs_done"]),
            epochs=stage.end,
            callbacks=run_callbacks,
            verbose=1 if config.progress else 0,
        )
        del x_train
        if model.stop_training and stopping is not None and stopping.stopped_epoch:
            log.info(
                "early stop after epoch %d: no validation gain for %d epochs",
                stopping.stopped_epoch + 1,
                config.patience,
            )
            state["stopped_early"] = True
            write_json(state_file, state)
    shutil.rmtree(out / "backup", ignore_errors=True)

    if not best_ckpt.is_file() or not has_val_auc:
        shutil.copyfile(last_ckpt, best_ckpt)
    model.load_weights(best_ckpt)
    best_record = _best_record(state["history"])
    state["best_epoch"] = best_record["epoch"]
    size = best_record["size"]
    if config.average:
        size = average_run(model, config, names, train_split.crops, state["history"])
        model.save_weights(out / "average.weights.h5")
    summary = evaluate_and_save(model, names, size, val_split, test_split, out, config, state)
    return summary


def average_run(
    model,
    config: TrainConfig,
    names: list[str],
    train_crops: np.ndarray,
    history: list[dict],
    calibration_images: int = 1024,
) -> int:
    """Set `model` to the mean of the run's checkpoints named in `config.average` (training/averaging.py).

    "epoch-NN" and "last" are the run's *.weights.h5, "init" its --init-weights. Batch-norm
    statistics are measured again on training crops at the members' working size, which is returned.
    """
    from .averaging import average_weights, recalibrate_batchnorm
    from .model import to_vgg_input

    out = Path(config.output)
    sizes_by_epoch = {f"epoch-{h['epoch']:02d}": h["size"] for h in history}
    sizes = {sizes_by_epoch[name] for name in config.average if name in sizes_by_epoch} or {history[-1]["size"]}
    if len(sizes) > 1:
        raise DataError(
            f"checkpoints {config.average} were trained at different sizes {sorted(sizes)}: average one size"
        )
    (size,) = sizes
    weight_sets = []
    for name in config.average:
        path = Path(config.init_weights) if name == "init" and config.init_weights else out / f"{name}.weights.h5"
        if name == "init" and not config.init_weights:
            raise DataError("'init' in the checkpoints to average, but the run has no --init-weights")
        if not path.is_file():
            raise DataError(f"{path}: checkpoint to average not found (epoch-NN needs --keep-epoch-weights)")
        if path.suffix == ".onnx":
            _warm_start_from_onnx(model, path, train_crops, size, config.seed)
        else:
            load_init_weights(model, path, names)
        weight_sets.append([np.array(w) for w in model.get_weights()])
    model.set_weights(average_weights(weight_sets))
    pick = np.sort(np.random.default_rng(1).permutation(len(train_crops))[:calibration_images])
    recalibrate_batchnorm(model, np.asarray(to_vgg_input(_resized(train_crops[pick], size))))
    log.info("final weights: the mean of %s, batch-norm re-measured at %d px", ", ".join(config.average), size)
    return size


@dataclass
class Stage:
    """Epochs [start, end) of the run trained by one `fit()`: one working size, one optimizer phase."""

    phase: str  # "scratch" (AdamW), "head" (frozen base, Adam) or "fine-tune" (block5, SGD)
    size: int
    start: int
    end: int


def plan_stages(config: TrainConfig) -> list[Stage]:
    """The run's epochs cut into stages wherever the working size or the optimizer changes.

    `--schedule 64:3,96:2` from scratch is two stages with one AdamW between them (its
    moments and step count carry over); the pretrained recipe also cuts after
    `--head-epochs`, where the trainable layers and the optimizer change.
    """
    stages: list[Stage] = []
    for size, epochs in config.schedule:
        for epoch in range(stages[-1].end if stages else 0, (stages[-1].end if stages else 0) + epochs):
            phase = "scratch" if config.from_scratch else ("head" if epoch < config.head_epochs else "fine-tune")
            if stages and (stages[-1].phase, stages[-1].size, stages[-1].end) == (phase, size, epoch):
                stages[-1].end = epoch + 1
            else:
                stages.append(Stage(phase, size, epoch, epoch + 1))
    return stages


def compile_phase(model, config: TrainConfig, phase: str, loss, steps: int):
    """Compile with the optimizer and trainable layers of `phase`; `steps`: the phase's planned steps."""
    import keras

    from .model import set_backbone_trainable

    if phase == "head":
        set_backbone_trainable(model, None)
        optimizer = keras.optimizers.Adam(config.learning_rate or 1e-3)
    elif phase == "fine-tune":
        set_backbone_trainable(model, "block5")
        optimizer = keras.optimizers.SGD(config.learning_rate or 5e-5, momentum=0.9)
    else:
        set_backbone_trainable(model, "")
        base = config.learning_rate or 1e-3
        # Cosine decay over the planned steps, first step at full rate; constant keeps the same rate
        # throughout so that averaging epochs' weights samples one basin evenly (stochastic weight averaging).
        if config.lr_schedule == "constant":
            rate = base
        else:
            rate = keras.optimizers.schedules.CosineDecay(base, decay_steps=max(steps, 1))
        optimizer = keras.optimizers.AdamW(rate, weight_decay=1e-4)
    model.compile(optimizer=optimizer, loss=loss)
    return optimizer


def _has_both_classes(targets: np.ndarray) -> bool:
    """Whether some contract label has known positives and negatives (so validation ROC AUC exists)."""
    columns = range(min(len(LABELS), targets.shape[1] if targets.ndim == 2 else 0))
    return any(metrics.has_both_classes(metrics.known_binary(targets[:, j])[1]) for j in columns)


def _best_record(history: list[dict]) -> dict:
    """The kept epoch: highest validation mean AUC (first of equals); the last one without any."""
    scored = [h for h in history if h["val_mean_auc"] == h["val_mean_auc"]]
    return max(scored, key=lambda h: h["val_mean_auc"]) if scored else history[-1]


def load_init_weights(model, path: Path, names: list[str]) -> None:
    """Warm start from an earlier run (new data, same network and targets).

    Typed errors instead of Keras' shape tracebacks when the run does not fit.
    """
    path = Path(path)
    run_dir = path.parent
    summary = run_dir / "training.json"
    if not path.is_file():
        raise DataError(f"{path}: initial weights not found (use a run's best.weights.h5 or model.keras)")
    if summary.is_file():
        earlier = json.loads(summary.read_text()).get("target_names")
        if earlier and earlier != names:
            raise DataError(
                f"{path}: trained on {len(earlier)} targets {earlier[:5]}..., this run has {len(names)} {names[:5]}...; "
                "use the same data kinds and --attributes setting"
            )
    try:
        model.load_weights(path)
    except ValueError as error:
        raise DataError(f"{path}: does not fit this network ({str(error).splitlines()[0]})") from error
    log.info("warm start from %s", path)


def _warm_start_from_onnx(model, path: Path, crops: np.ndarray, size: int, seed: int, samples: int = 1024) -> None:
    """Start from a served model (model_repository/face2hbe/1/model.onnx): its BN statistics come from training crops."""
    from face2hbe.repository import onnx_build_info

    from .model import to_vgg_input
    from .onnx_weights import load_onnx_weights

    built_at = onnx_build_info(path).get("working_size")
    if built_at and built_at != size:  # allowed (a larger-size stage), but worth seeing in the log
        log.info("%s was trained at %d px; this run starts at %d px", path, built_at, size)
    pick = np.random.default_rng(seed).permutation(len(crops))[:samples]
    load_onnx_weights(model, path, np.asarray(to_vgg_input(_resized(crops[np.sort(pick)], size))))


def evaluate_and_save(
    model, names, size, val_split: Split, test_split: Split, out: Path, config: TrainConfig, state: dict
) -> dict:
    """Thresholds on validation, metrics on validation and test, files in `out`."""
    k = len(LABELS)
    mirror = config.mirror_average
    val_scores = (
        predict(model, val_split.crops, size, mirror_average=mirror)[:, :k]
        if len(val_split.crops)
        else np.zeros((0, k))
    )
    test_scores = (
        predict(model, test_split.crops, size, mirror_average=mirror)[:, :k]
        if len(test_split.crops)
        else np.zeros((0, k))
    )
    thresholds = metrics.choose_thresholds(val_split.targets[:, :k], val_scores, LABELS)
    summary = {
        "labels": list(LABELS),
        "target_names": names,
        "working_size": int(size),
        "mirror_average": bool(mirror),
        "weights": config.weights if config.weights.lower() in ("imagenet", "none") else portable_path(config.weights),
        "batchnorm": config.use_batchnorm,
        "thresholds": thresholds,
        "threshold_rule": metrics.THRESHOLD_RULE,
        "validation": metrics.per_label_metrics(val_split.targets[:, :k], val_scores, LABELS, thresholds),
        "test": metrics.per_label_metrics(test_split.targets[:, :k], test_scores, LABELS, thresholds),
        "config": {
            **asdict(config),
            "data": [portable_spec(d) for d in config.data],
            "output": portable_path(config.output),
            "cache_dir": portable_path(config.cache_dir) if config.cache_dir else None,
            "init_weights": portable_path(config.init_weights) if config.init_weights else None,
            "weights": config.weights
            if config.weights.lower() in ("imagenet", "none")
            else portable_path(config.weights),
        },
        "history": state["history"],
        "best_epoch": state.get("best_epoch"),
        "final_weights": f"mean of {', '.join(config.average)}"
        if config.average
        else f"epoch {state.get('best_epoch')}",
    }
    model.save(out / "model.keras")
    if len(test_split.crops):
        metrics.plot_curves(test_split.targets[:, :k], test_scores, LABELS, out / "curves.png", "(test split)")
    (out / "training.json").write_text(json.dumps(summary, indent=1))
    return summary
