"""A training stage on a lent GPU machine: Keras 3 on JAX there, data and weights packed here.

The GPU machine has JAX but no TensorFlow, reaches no network and takes at most 64 MiB per call,
so a stage travels as a pack made here:

    python -m face2hbe.training.gpu pack --output .gpu --size 128        # here (TensorFlow backend)
    python -m face2hbe.training.gpu fit --pack .gpu --output OUT         # there (KERAS_BACKEND=jax)
    python -m face2hbe.training.gpu load OUT --output runs/gpu128        # here: a run for `face2hbe export`

`pack` writes the served model's weights (its batch-norm statistics re-measured at the stage's
working size, training/onnx_weights.py) and the train and validation crops of every data set,
resized exactly as the exported graph resizes and JPEG-encoded, in parts (`part-0`, `part-1`, ...)
that each fit one transfer; a part is a folder the GPU machine copies into one pack folder.
Test splits never leave: they are scored here, through the client's path.

`fit` is the recipe of docs/training.md's GPU stage: AdamW with a cosine schedule, the loss of
training/train.py (masked BCE, positives weighted), more weight on the rare slices the model card
names (grey-haired bearded faces, moustache without goatee), and augmentation aimed at the
measured failures: JPEG quality and blur (made once per crop), then per batch tint and colour
shifts on the eye region of faces with eyewear, flips, small shifts, zooms and rotations,
brightness and contrast (all on the machine's CPUs, so the GPU only trains). After each epoch it scores the
validation crops of each set (face and mirror, like the served graph) and keeps the weights of
the best epoch by mean ROC AUC of the three labels over both sets. It writes those weights in
shards of at most 15 MB (what one returned file may hold) and history.json.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from face2hbe.contract import LABELS, VGG_BGR_MEAN
from face2hbe.errors import DataError
from face2hbe.paths import DEFAULT_DATA

log = logging.getLogger(__name__)

META_FILE = "meta.json"
WEIGHTS_FILE = "weights.npz"
HISTORY_FILE = "history.json"
PARTIAL_FILE = "history-partial.json"  # a fit in progress: its epochs so far and its best one
SHARD_BYTES = 15_000_000
# Rows and columns of a face crop that hold the eyes (fractions of the crop; crop_face's framing).
EYE_BAND = ((0.38, 0.52), (0.18, 0.82))
# (name, condition on targets, extra weight): the slices where the served model fails most (docs/model.md "Slices");
# fit(slice_weight={name: extra}) changes a weight. Stubble without a beard is the hard negative of beard (issue #23),
# off by default (the recipes that predate it stay as they were).
RARE_SLICES = (
    ("grey-haired beard", lambda t: (t["beard"] >= 0.5) & (t["celeba_Gray_Hair"] >= 0.5), 2.0),
    ("moustache without goatee", lambda t: (t["celeba_Mustache"] >= 0.5) & (t["celeba_Goatee"] < 0.5), 2.0),
    (
        "stubble without beard",
        lambda t: (t["celeba_5_o_Clock_Shadow"] >= 0.5) & (t["beard"] < 0.5) & (t["beard"] >= 0),
        0.0,
    ),
)


def _chunks(items: list, sizes: list[int], limit: int, used: int = 0) -> list[list]:
    """Consecutive groups of `items` whose `sizes` add up to at most `limit` (`used` already taken in the first);
    an item larger than the limit gets a group of its own."""
    groups = [[]]
    for item, size in zip(items, sizes):
        if used + size > limit and groups[-1]:
            groups.append([])
            used = 0
        groups[-1].append(item)
        used += size
    return groups


# --- here: pack ---------------------------------------------------------------------


def pack(config, init_onnx: Path, output: Path, size: int, quality: int = 90, part_bytes: int = 58_000_000) -> dict:
    """Write the pack for a `size`-px stage of `config` (a TrainConfig) into `output`/part-N; returns meta."""
    from PIL import Image

    from face2hbe.paths import portable_spec

    from .model import build_model
    from .train import _resized, _warm_start_from_onnx, set_splits

    names, per_set = set_splits(config)
    sets = [name for name, _ in per_set]
    train_all = np.concatenate([splits["train"].crops for _, splits in per_set])
    model = build_model(len(names), weights=None, batchnorm=True)
    _warm_start_from_onnx(model, Path(init_onnx), train_all, size, config.seed)
    del train_all
    weights = model.get_weights()

    records = []  # (split, set index, targets row, jpeg bytes)
    for s, (_, splits) in enumerate(per_set):
        for split in ("train", "val"):
            crops, targets = splits[split].crops, splits[split].targets
            for start in range(0, len(crops), 256):
                batch = np.clip(np.rint(_resized(crops[start : start + 256], size)), 0, 255).astype(np.uint8)
                for image, row in zip(batch, targets[start : start + 256]):
                    buffer = io.BytesIO()
                    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
                    records.append((split, s, row, buffer.getvalue()))

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    weight_bytes = sum(w.astype(np.float16).nbytes for w in weights)
    parts = _chunks(records, [len(r[3]) for r in records], part_bytes, used=weight_bytes)
    for n, items in enumerate(parts):
        folder = output / f"part-{n}"
        folder.mkdir(exist_ok=True)
        if n == 0:
            np.savez(folder / WEIGHTS_FILE, *[w.astype(np.float16) for w in weights])
        blob = b"".join(r[3] for r in items)
        np.savez(
            folder / f"crops-{n}.npz",
            jpeg=np.frombuffer(blob, np.uint8),
            ends=np.cumsum([len(r[3]) for r in items]),
            targets=np.stack([r[2] for r in items]).astype(np.float32),
            set_index=np.asarray([r[1] for r in items], np.int8),
            is_val=np.asarray([r[0] == "val" for r in items]),
        )
    meta = {
        "size": size,
        "target_names": names,
        "sets": sets,
        "seed": config.seed,
        "data": [portable_spec(d) for d in config.data],
        "init": Path(init_onnx).name,
        "jpeg_quality": quality,
        "parts": len(parts),
        "counts": {
            f"{sets[s]}/{split}": sum(1 for r in records if r[0] == split and r[1] == s)
            for s in range(len(sets))
            for split in ("train", "val")
        },
    }
    (output / "part-0" / META_FILE).write_text(json.dumps(meta, indent=1))
    return meta


# --- there: fit ---------------------------------------------------------------------


def read_pack(folder: Path):
    """(meta, float32 weights, uint8 crops [N,S,S,3], targets, set index, is_val) from a pack folder holding every part's files."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    folder = Path(folder)
    if not (folder / META_FILE).is_file():
        raise DataError(f"{folder}: no {META_FILE} (copy every part-N folder's files into one folder)")
    meta = json.loads((folder / META_FILE).read_text())
    found = sorted(folder.glob("crops-*.npz"))
    if len(found) != meta["parts"]:
        raise DataError(f"{folder}: {len(found)} of the pack's {meta['parts']} crop files are here")
    with np.load(folder / WEIGHTS_FILE) as stored:
        weights = [stored[f"arr_{i}"].astype(np.float32) for i in range(len(stored.files))]
    blobs, targets, set_index, is_val = [], [], [], []
    for path in found:
        with np.load(path) as part:
            data, ends = part["jpeg"].tobytes(), part["ends"]
            blobs += [data[a:b] for a, b in zip(np.concatenate([[0], ends[:-1]]), ends)]
            targets.append(part["targets"])
            set_index.append(part["set_index"])
            is_val.append(part["is_val"])

    def decode(blob):
        return np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        crops = np.stack(list(pool.map(decode, blobs)))
    return meta, weights, crops, np.concatenate(targets), np.concatenate(set_index), np.concatenate(is_val)


def degrade(args) -> np.ndarray:
    """training/train.py's _degrade with PIL: a third re-encoded at JPEG quality 30-95, a quarter shrunk to 50-90 % and back."""
    from PIL import Image

    image, seed = args
    u = np.random.default_rng(seed).random(4)
    img = Image.fromarray(image)
    if u[0] < 1 / 3:
        buffer = io.BytesIO()
        img.save(buffer, "JPEG", quality=int(30 + 65 * u[1]))
        img = Image.open(buffer).convert("RGB")
    if u[2] < 0.25:
        w, h = img.size
        f = 0.5 + 0.4 * u[3]
        img = img.resize((max(8, round(w * f)), max(8, round(h * f))), Image.BILINEAR, reducing_gap=None).resize(
            (w, h), Image.BILINEAR
        )
    return np.asarray(img)


def tint_eyes(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Tinted lenses on each image: the eye band scaled by a random colour (darker, shifted hue), soft edges."""
    n, h, w, _ = images.shape
    (r0, r1), (c0, c1) = EYE_BAND
    rows = np.clip(np.minimum(np.arange(h) - r0 * h, r1 * h - np.arange(h)) / (0.03 * h), 0, 1)
    cols = np.clip(np.minimum(np.arange(w) - c0 * w, c1 * w - np.arange(w)) / (0.03 * w), 0, 1)
    mask = (rows[:, None] * cols[None, :])[None, :, :, None]
    darkness = rng.uniform(0.35, 0.9, (n, 1, 1, 1))
    colour = rng.uniform(0.7, 1.15, (n, 1, 1, 3))
    factor = 1 - mask * (1 - np.clip(darkness * colour, 0, 1))
    return np.clip(images * factor, 0, 255)


def slice_members(targets: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """Each RARE_SLICES name -> which samples belong to it (unknown targets belong to none)."""
    columns = {n: targets[:, i] for i, n in enumerate(names)}
    return {name: condition(columns) for name, condition, _ in RARE_SLICES}


def slice_weights(targets: np.ndarray, names: list[str], extra: dict[str, float] | None = None) -> np.ndarray:
    """Per-sample weight: 1 plus each RARE_SLICES weight (or `extra`'s for that name) the sample's targets meet."""
    members = slice_members(targets, names)
    weights = np.ones(len(targets), np.float32)
    for name, weight in resolved_slice_weights(extra).items():
        weights += weight * members[name].astype(np.float32)
    return weights


def resolved_slice_weights(extra: dict[str, float] | None = None) -> dict[str, float]:
    """RARE_SLICES' weights with `extra`'s in their place; an unknown slice name is a DataError."""
    known = {name: weight for name, _, weight in RARE_SLICES}
    unknown = sorted(set(extra or {}) - set(known))
    if unknown:
        raise DataError(f"unknown slices {unknown}; known: {sorted(known)}")
    return known | {name: float(w) for name, w in (extra or {}).items()}


def label_weights(names: list[str], weights: dict[str, float] | None = None) -> np.ndarray:
    """Each target's loss weight: 1, or `weights`' for that target name; an unknown name is a DataError."""
    unknown = sorted(set(weights or {}) - set(names))
    if unknown:
        raise DataError(f"unknown targets {unknown} in label weights")
    return np.asarray([float((weights or {}).get(n, 1.0)) for n in names], np.float32)


def vgg_input(x: np.ndarray) -> np.ndarray:
    """training/model.py's to_vgg_input in numpy: float RGB [0,255] -> BGR minus the ImageNet mean."""
    return np.ascontiguousarray(x[..., ::-1], np.float32) - np.asarray(VGG_BGR_MEAN, np.float32)


def augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flips, shifts up to 6 %, zooms up to 10 %, rotations up to 14° (edges reflected), brightness ±15 %, contrast ±20 %.

    On the CPUs with OpenCV, per batch: Keras' affine layers (RandomRotation, RandomZoom,
    RandomTranslation) on JAX made a step 47x slower on an H200 (985 against 21 ms at batch 64).
    """
    import cv2

    n, h, w, _ = images.shape
    out = np.empty_like(images)
    for k in range(n):
        m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-14, 14), 1 + rng.uniform(-0.1, 0.1))
        m[:, 2] += rng.uniform(-0.06, 0.06, 2) * (w, h)
        image = images[k, :, ::-1] if rng.random() < 0.5 else images[k]
        out[k] = cv2.warpAffine(
            np.ascontiguousarray(image), m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
        )
    mean = out.mean(axis=(1, 2, 3), keepdims=True)
    out = (out - mean) * rng.uniform(0.8, 1.2, (n, 1, 1, 1)) + mean + rng.uniform(-0.15, 0.15, (n, 1, 1, 1)) * 255
    return np.clip(out, 0, 255).astype(images.dtype)


@contextlib.contextmanager
def kept_dtype_policy(name: str | None = None):
    """Keras' global dtype policy, set to `name` (when given) inside the block or decorated call and put back
    after it: a fit in mixed_bfloat16 must not leave a later model of the same process (load()'s, then
    exported to ONNX with bfloat16 casts) built in bfloat16."""
    import keras

    previous = keras.config.dtype_policy()
    if name is not None:
        keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


@kept_dtype_policy()
def fit(
    pack_dir: Path,
    output: Path,
    epochs: int = 20,
    batch_size: int = 64,
    learning_rate: float = 1e-4,
    budget_s: float | None = None,
    max_steps: int | None = None,
    tint: float = 0.35,
    seed: int = 0,
    precision: str = "float32",
    trainable_from: str = "",
    label_weight: dict[str, float] | None = None,
    slice_weight: dict[str, float] | None = None,
) -> dict:
    """Train from the pack's weights; write the best epoch's weights (shards) and history.json to `output`.

    `precision` is a Keras dtype policy ("mixed_bfloat16" about doubles the speed on CPUs with
    AVX-512 BF16 or AMX); `trainable_from` freezes the backbone below that layer name ("block4":
    blocks 1-3 keep the pack's weights, about 2x faster again on a CPU at 128 px). `label_weight` scales
    named targets' loss terms (e.g. {"beard": 3.0}: the loss averages over every attribute, so one of the
    three products' labels is otherwise 1/43 of it); `slice_weight` sets RARE_SLICES' extra weights by name. Rerunning the
    same command after a cut resumes (Keras BackupAndRestore: weights, optimizer, epoch; the
    history and the best epoch's shards are written after every epoch).
    """
    import keras

    from face2hbe.metrics import per_label_metrics

    from .model import build_model, set_backbone_trainable
    from .train import _positive_weights, make_loss

    started = time.monotonic()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    keras.config.set_dtype_policy(precision)  # put back on return (kept_dtype_policy)
    partial = output / PARTIAL_FILE
    resumed = json.loads(partial.read_text()) if partial.is_file() and (output / "backup").is_dir() else None
    meta, weights, crops, targets, set_index, is_val = read_pack(pack_dir)
    names, size = meta["target_names"], meta["size"]
    train_i, val_i = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    log.info(
        "pack read: %d train, %d val crops at %d px (%.0f s)",
        len(train_i),
        len(val_i),
        size,
        time.monotonic() - started,
    )

    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(os.cpu_count()) as pool:
        degraded = np.stack(list(pool.map(degrade, [(crops[i], seed * 1_000_003 + i) for i in train_i], chunksize=64)))
    x_train, y_train = crops[train_i], targets[train_i]
    sample_weight = slice_weights(y_train, names, slice_weight)
    eyewear = y_train[:, names.index("eyewear")] >= 0.5
    log.info(
        "degraded copies made; slice weights: %s (%.0f s)",
        {n: int(m.sum()) for n, m in slice_members(y_train, names).items()},
        time.monotonic() - started,
    )

    class Batches(keras.utils.PyDataset):
        """Shuffled batches; each batch's random choices come from (seed, epoch, index), so threads may fetch in any order."""

        def __init__(self, epoch: int):
            super().__init__(workers=4)
            self.epoch = epoch
            self.order = np.random.default_rng([seed, epoch]).permutation(len(x_train))

        def __len__(self):
            n = len(x_train) // batch_size
            return min(n, max_steps) if max_steps else n

        def __getitem__(self, i):
            rng = np.random.default_rng([seed, self.epoch, i, 1])
            idx = self.order[i * batch_size : (i + 1) * batch_size]
            pick = rng.random(len(idx)) < 0.5
            x = np.where(pick[:, None, None, None], degraded[idx], x_train[idx]).astype(np.float32)
            lens = eyewear[idx] & (rng.random(len(idx)) < tint)
            if lens.any():
                x[lens] = tint_eyes(x[lens], rng)
            return vgg_input(augment(x, rng)), y_train[idx], sample_weight[idx]

        def on_epoch_end(self):
            self.epoch += 1
            self.order = np.random.default_rng([seed, self.epoch]).permutation(len(x_train))

    model = build_model(len(names), weights=None, batchnorm=True)
    model.set_weights(weights)
    set_backbone_trainable(model, trainable_from)
    history, best = (resumed["history"], resumed["best"]) if resumed else ([], {"score": -np.inf, "epoch": None})
    batches = Batches(len(history))
    steps = len(batches) * epochs
    model.compile(
        optimizer=keras.optimizers.AdamW(
            keras.optimizers.schedules.CosineDecay(learning_rate, steps), weight_decay=1e-4
        ),
        loss=make_loss(_positive_weights(y_train), label_weights(names, label_weight)),
    )

    x_val = vgg_input(crops[val_i].astype(np.float32))
    x_val_mirror = np.ascontiguousarray(x_val[:, :, ::-1])

    def val_aucs() -> dict:
        scores = (
            np.asarray(model.predict(x_val, batch_size=256, verbose=0))
            + np.asarray(model.predict(x_val_mirror, batch_size=256, verbose=0))
        ) / 2
        out = {}
        for s, set_name in enumerate(meta["sets"]):
            rows = set_index[val_i] == s
            found = per_label_metrics(targets[val_i][rows], scores[rows], names)
            out.update({f"{set_name}/{name}": r["roc_auc"] for name, r in found.items() if "roc_auc" in r})
        return out

    def write_best() -> None:
        for old in output.glob("weights-*.npz"):
            old.unlink()
        kept = list(enumerate(np.asarray(w, np.float32) for w in model.get_weights()))
        for n, shard in enumerate(_chunks(kept, [w.nbytes for _, w in kept], SHARD_BYTES)):
            np.savez(output / f"weights-{n}.npz", **{f"w{i:03d}": w for i, w in shard})

    class Track(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            aucs = val_aucs()
            record = {
                "epoch": epoch + 1,
                "loss": float(logs["loss"]),
                "val_score": score(aucs, logs["loss"]),
                "seconds": round(time.monotonic() - started, 1),
                "val_auc": aucs,
            }
            history.append(record)
            print(
                json.dumps(
                    {k: v for k, v in record.items() if k != "val_auc"}
                    | {k: round(v, 4) for k, v in aucs.items() if k.split("/")[1] in LABELS}
                ),
                flush=True,
            )
            if record["val_score"] > best["score"]:
                best.update(score=record["val_score"], epoch=epoch + 1)
                write_best()
            partial.write_text(json.dumps({"history": history, "best": best, "start_val": start}))
            if budget_s and (time.monotonic() - started) * (1 + 1 / len(history)) > budget_s:
                print(f"stopping after epoch {epoch + 1}: the next would pass the {budget_s:.0f} s budget", flush=True)
                self.model.stop_training = True

    def score(aucs: dict, loss: float | None = None) -> float:
        """Mean validation ROC AUC of the three labels over the sets; without any (tiny smoke packs), minus the loss."""
        main = [aucs[f"{s}/{label}"] for s in meta["sets"] for label in LABELS if f"{s}/{label}" in aucs]
        return float(np.mean(main)) if main else -float(loss if loss is not None else np.inf)

    if resumed:
        start = resumed["start_val"]
        log.info("resuming after epoch %d (best so far: epoch %s)", len(history), best["epoch"])
    else:
        start_aucs = val_aucs()
        start = {"val_score": score(start_aucs), "val_auc": start_aucs}
        print(json.dumps({"epoch": 0, "val_score": start["val_score"]}), flush=True)
    backup = keras.callbacks.BackupAndRestore(str(output / "backup"), delete_checkpoint=False)
    model.fit(batches, epochs=epochs, callbacks=[backup, Track()], verbose=2)
    shutil.rmtree(output / "backup", ignore_errors=True)
    partial.unlink(missing_ok=True)

    summary = {
        "pack": meta,
        "epochs_planned": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "tint": tint,
        "rare_slices": list(resolved_slice_weights(slice_weight).items()),
        "label_weight": label_weight or {},
        "seed": seed,
        "precision": precision,
        "trainable_from": trainable_from or "block1",
        "start_val": start,
        "best_epoch": best["epoch"],
        "best_val_score": best["score"],
        "history": history,
        "seconds": round(time.monotonic() - started, 1),
        "backend": keras.backend.backend(),
    }
    (output / HISTORY_FILE).write_text(json.dumps(summary, indent=1))
    return summary


# --- here: load ---------------------------------------------------------------------


def load(result_dir: Path, output: Path) -> dict:
    """The GPU stage's weights (shards in `result_dir`) as a training run in `output` for `face2hbe export`.

    Writes model.keras, training.json (working size, mirror averaging, targets, the device's history)
    and gpu-stage.json. Thresholds and test metrics are left to `face2hbe thresholds` on the exported
    graph (onnxruntime, every served label, both domains): training.json carries the contract's
    default threshold until then.
    """
    from face2hbe.contract import DEFAULT_THRESHOLD
    from face2hbe.paths import portable as portable_path
    from face2hbe.paths import portable_spec

    from .model import build_model

    result_dir = Path(result_dir)
    summary_file = result_dir / HISTORY_FILE
    if not summary_file.is_file():
        raise DataError(f"{result_dir}: no {HISTORY_FILE} (not a finished `fit` output)")
    summary = json.loads(summary_file.read_text())
    stored = {}
    for path in sorted(result_dir.glob("weights-*.npz")):
        with np.load(path) as shard:
            stored.update({int(k[1:]): shard[k] for k in shard.files})
    names = summary["pack"]["target_names"]
    with kept_dtype_policy("float32"):  # served in float32, whatever the fit trained in
        model = build_model(len(names), weights=None, batchnorm=True)
    if sorted(stored) != list(range(len(model.get_weights()))):
        raise DataError(f"{result_dir}: {len(stored)} weight arrays, the network has {len(model.get_weights())}")
    model.set_weights([stored[i] for i in range(len(stored))])
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "model.keras")
    run = {
        "labels": list(LABELS),
        "target_names": names,
        "working_size": int(summary["pack"]["size"]),
        "mirror_average": True,
        "weights": "none",
        "batchnorm": True,
        "thresholds": {label: DEFAULT_THRESHOLD for label in LABELS},
        "threshold_rule": "not chosen here: `face2hbe thresholds --write` on the exported graph",
        "config": {
            "data": [portable_spec(d) for d in summary["pack"]["data"]],
            "output": portable_path(out),
            "recipe": "GPU stage (training/gpu.py), docs/training.md",
        },
        "history": summary["history"],
        "best_epoch": summary["best_epoch"],
        "final_weights": f"epoch {summary['best_epoch']}",
    }
    (out / "training.json").write_text(json.dumps(run, indent=1))
    (out / "gpu-stage.json").write_text(json.dumps(summary, indent=1))
    return run


RECIPE_PACK = ("init", "size", "data", "quality", "seed")
RECIPE_FIT = (
    "epochs",
    "batch_size",
    "learning_rate",
    "budget_s",
    "tint",
    "seed",
    "precision",
    "trainable_from",
    "label_weight",
    "slice_weight",
)


def run_recipe(recipe: Path, output: Path, cache_dir: Path | None = None) -> dict:
    """A stage from a recipe file (training/recipes/cpu128.yaml) on this machine: pack, fit, load, in `output`.

    `output`/pack, `output`/fit and `output`/run (the run for `face2hbe promote`); a cut-off fit resumes, a finished
    pack or fit is kept. The file's `pack:` and `fit:` sections take pack()'s and fit()'s arguments.
    """
    import yaml

    from .train import TrainConfig

    recipe = Path(recipe)
    if not recipe.is_file():
        raise DataError(f"{recipe}: recipe not found")
    doc = yaml.safe_load(recipe.read_text()) or {}
    pack_args, fit_args = doc.get("pack") or {}, doc.get("fit") or {}
    unknown = sorted(set(pack_args) - set(RECIPE_PACK)) + sorted(set(fit_args) - set(RECIPE_FIT))
    if unknown or "init" not in pack_args:
        raise DataError(f"{recipe}: needs pack.init; unknown fields {unknown} (pack: {RECIPE_PACK}, fit: {RECIPE_FIT})")
    output = Path(output)
    pack_dir, fit_dir = output / "pack", output / "fit"
    if not (pack_dir / "part-0" / META_FILE).is_file():
        config = TrainConfig(
            data=list(pack_args.get("data", DEFAULT_DATA)),
            output=output,
            weights="none",
            attributes=True,
            seed=pack_args.get("seed", 0),
            cache_dir=cache_dir,
        )
        pack(
            config,
            Path(pack_args["init"]),
            pack_dir,
            pack_args.get("size", 128),
            pack_args.get("quality", 90),
            part_bytes=1 << 40,
        )
    if not (fit_dir / HISTORY_FILE).is_file():
        fit(pack_dir / "part-0", fit_dir, **fit_args)
    return load(fit_dir, output / "run")


def main(argv=None):
    import click

    from face2hbe.paths import CACHE_DIR

    @click.group(help=__doc__.split("\n\n")[0])
    def cli():
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    @cli.command("pack", help="Here: the served model's weights and the train/val crops, in parts for the GPU machine.")
    @click.option("--output", type=click.Path(path_type=Path), required=True)
    @click.option("--size", type=int, default=128, show_default=True, help="The stage's working size.")
    @click.option(
        "--init",
        "init_onnx",
        type=click.Path(path_type=Path),
        default=Path("model_repository/face2hbe/1/model.onnx"),
        show_default=True,
    )
    @click.option("--data", multiple=True, default=DEFAULT_DATA, show_default=True)
    @click.option("--quality", type=int, default=90, show_default=True, help="JPEG quality of the packed crops.")
    @click.option("--part-mb", type=float, default=58.0, show_default=True, help="Largest part (one transfer).")
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option(
        "--cache-dir",
        type=click.Path(path_type=Path),
        default=CACHE_DIR,
        help="Cache for detected training-data crops (never users' photos).",
    )
    def pack_cmd(output, size, init_onnx, data, quality, part_mb, seed, cache_dir):
        from .train import TrainConfig

        config = TrainConfig(
            data=list(data), output=output, weights="none", attributes=True, seed=seed, cache_dir=cache_dir
        )
        meta = pack(config, init_onnx, output, size, quality, int(part_mb * 1e6))
        click.echo(json.dumps({k: meta[k] for k in ("size", "parts", "counts")}))

    @cli.command("fit", help="There (KERAS_BACKEND=jax): train from a pack folder, best epoch's weights to OUTPUT.")
    @click.option("--pack", "pack_dir", type=click.Path(path_type=Path), required=True)
    @click.option("--output", type=click.Path(path_type=Path), required=True)
    @click.option("--epochs", type=int, default=20, show_default=True)
    @click.option("--batch-size", type=int, default=64, show_default=True)
    @click.option("--learning-rate", type=float, default=1e-4, show_default=True)
    @click.option(
        "--budget-s", type=float, default=None, help="Stop before an epoch that would end past this many seconds."
    )
    @click.option("--max-steps", type=int, default=None, help="Steps per epoch at most (a smoke run).")
    @click.option(
        "--tint", type=float, default=0.35, show_default=True, help="Share of eyewear faces with tinted lenses."
    )
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option(
        "--precision",
        type=click.Choice(["float32", "mixed_bfloat16", "mixed_float16"]),
        default="float32",
        show_default=True,
        help="Keras dtype policy (mixed_bfloat16 on CPUs with AVX-512 BF16 or AMX).",
    )
    @click.option(
        "--trainable-from",
        default="",
        metavar="LAYER",
        help="Freeze the backbone below this layer (e.g. block4); default: everything trains.",
    )
    @click.option(
        "--label-weight",
        "label_weight",
        multiple=True,
        metavar="TARGET=W",
        help="Scale a target's loss term (e.g. beard=3; recipes' label_weight).",
    )
    @click.option(
        "--slice-weight",
        "slice_weight",
        multiple=True,
        metavar="SLICE=W",
        help='A RARE_SLICES extra weight by name (e.g. "stubble without beard=2"; recipes\' slice_weight).',
    )
    def fit_cmd(label_weight, slice_weight, **options):
        def pairs(values, option):
            try:
                return {name.strip(): float(w) for name, w in (v.rsplit("=", 1) for v in values)}
            except ValueError:
                raise click.BadParameter(f"{values}: give NAME=WEIGHT", param_hint=option) from None

        summary = fit(
            **options,  # the options are named as fit()'s parameters
            label_weight=pairs(label_weight, "--label-weight"),
            slice_weight=pairs(slice_weight, "--slice-weight"),
        )
        click.echo(json.dumps({k: summary[k] for k in ("best_epoch", "best_val_score", "seconds")}))

    @cli.command(
        "load", help="Here: a fit output as a training run (model.keras, training.json) for `face2hbe export`."
    )
    @click.argument("result_dir", type=click.Path(path_type=Path))
    @click.option("--output", type=click.Path(path_type=Path), required=True)
    def load_cmd(result_dir, output):
        run = load(result_dir, output)
        click.echo(json.dumps({k: run[k] for k in ("working_size", "best_epoch")}))

    @cli.command("run", help="Here: a recipe file's stage end to end (pack, fit, load) into OUTPUT; rerun to resume.")
    @click.option("--recipe", type=click.Path(path_type=Path), required=True)
    @click.option("--output", type=click.Path(path_type=Path), required=True)
    @click.option(
        "--cache-dir",
        type=click.Path(path_type=Path),
        default=CACHE_DIR,
        help="Cache for detected training-data crops (never users' photos).",
    )
    def run_cmd(recipe, output, cache_dir):
        run = run_recipe(recipe, output, cache_dir)
        click.echo(json.dumps({k: run[k] for k in ("working_size", "best_epoch")}))

    cli.main(args=argv, prog_name="python -m face2hbe.training.gpu", standalone_mode=True)


if __name__ == "__main__":
    main()
