"""Average checkpoints of a face2hbe training run into one weights file (see training/averaging.py).

How the served stage-5 model was made (docs/model.md, docs/training.md): stage 4 started from the
stage-3 model, served from commit 7a44c45 until stage 5 replaced it:

    git show 7a44c45:model_repository/face2hbe/1/model.onnx > runs/stage3.onnx
    DATA="--data celeba:../shared/data/celeba --data lfw:../shared/data/lfw --attributes --cache-dir runs/cache"
    python tools/average_checkpoints.py $DATA --output runs/stage4_avg/best.weights.h5 \
        runs/stage4/epoch-01.weights.h5 runs/stage4/epoch-02.weights.h5 runs/stage4/epoch-03.weights.h5
    python tools/average_checkpoints.py $DATA --size 96 --output runs/stage5_final/best.weights.h5 \
        runs/stage5/epoch-03.weights.h5 runs/stage5/epoch-04.weights.h5

A checkpoint is a run's *.weights.h5 or a served model.onnx (warm-start loader,
BN statistics from training crops). Prints the validation ROC AUC of every
input and of the average (plain scores), then writes the average. Rerun
`face2hbe train` with the same arguments on a copy of the run folder holding
the average as best.weights.h5 to get thresholds, metrics and model.keras.
"""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np


@click.command()
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--data", "data", multiple=True, required=True, metavar="KIND:PATH", help="As for face2hbe train.")
@click.option("--attributes/--no-attributes", default=False, help="As for face2hbe train (same targets).")
@click.option("--cache-dir", type=click.Path(path_type=Path), required=True)
@click.option("--size", default=64, help="Working size of the checkpoints.")
@click.option("--calibration-images", default=1024, help="Training crops to re-measure batch-norm statistics on.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
def main(checkpoints, data, attributes, cache_dir, size, calibration_images, output):
    from face2hbe.training.averaging import average_weights, recalibrate_batchnorm
    from face2hbe.training.model import build_model, to_vgg_input
    from face2hbe.training.train import TrainConfig, _resized, _warm_start_from_onnx, label_aucs, predict, prepare_splits

    config = TrainConfig(data=list(data), output=output.parent, weights="none", attributes=attributes, cache_dir=cache_dir)
    names, splits = prepare_splits(config)
    train, val = splits["train"], splits["val"]
    model = build_model(len(names), weights=None, batchnorm=True)

    def report(tag):
        aucs = label_aucs(val.targets, predict(model, val.crops, size))
        row = "  ".join(f"{k} {v:.4f}" for k, v in aucs.items())
        click.echo(f"{tag}: validation ROC AUC {row}  mean {np.mean(list(aucs.values())):.4f}")

    weight_sets = []
    for path in checkpoints:
        if path.suffix == ".onnx":
            _warm_start_from_onnx(model, path, train.crops, size, seed=0)
        else:
            model.load_weights(path)
        weight_sets.append([np.array(w) for w in model.get_weights()])
        report(str(path))
    model.set_weights(average_weights(weight_sets))
    pick = np.sort(np.random.default_rng(1).permutation(len(train.crops))[:calibration_images])
    recalibrate_batchnorm(model, np.asarray(to_vgg_input(_resized(train.crops[pick], size))))
    report("average")
    output.parent.mkdir(parents=True, exist_ok=True)
    model.save_weights(output)
    click.echo(f"wrote {output}")


if __name__ == "__main__":
    main()
