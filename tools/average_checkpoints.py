"""Average checkpoints of a face2hbe training run into one weights file (see training/averaging.py).

A recipe stage does this itself (`average: [epoch-03, epoch-04]` in training/recipes/served.yaml,
or `face2hbe train --average epoch-03,epoch-04`); this tool is for trying other combinations
and reporting each member's validation AUC first, e.g. after `make train-served`:

    DATA="--data celeba:../shared/data/celeba --data lfw:../shared/data/lfw --attributes --cache-dir runs/cache"
    python tools/average_checkpoints.py $DATA --output runs/try/best.weights.h5 \
        runs/stage5/epoch-02.weights.h5 runs/stage5/epoch-03.weights.h5 runs/stage5/epoch-04.weights.h5

A checkpoint is a run's *.weights.h5 or a served model.onnx (warm-start loader,
BN statistics from training crops). The working size comes from the checkpoints' run
(training.json / state.json: the epoch's size) or the ONNX metadata; --size overrides it.
Prints the validation ROC AUC of every input and of the average (plain scores), then
writes the average.
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
@click.option(
    "--size",
    type=click.IntRange(32),
    default=None,
    help="Working size of the checkpoints. Default: the size their run recorded.",
)
@click.option("--calibration-images", default=1024, help="Training crops to re-measure batch-norm statistics on.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
def main(checkpoints, data, attributes, cache_dir, size, calibration_images, output):
    from face2hbe.training.averaging import average_weights, recalibrate_batchnorm
    from face2hbe.training.model import build_model, to_vgg_input
    from face2hbe.training.train import (
        TrainConfig,
        _resized,
        _warm_start_from_onnx,
        label_aucs,
        predict,
        prepare_splits,
    )

    size = size or checkpoint_size(checkpoints)
    click.echo(f"working size {size} px")
    config = TrainConfig(
        data=list(data), output=output.parent, weights="none", attributes=attributes, cache_dir=cache_dir
    )
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


def checkpoint_size(checkpoints) -> int:
    """The working size the checkpoints were trained at, from their runs' records; one size or an error."""
    import json
    import re

    sizes = set()
    for path in checkpoints:
        if path.suffix == ".onnx":
            from face2hbe.repository import onnx_build_info

            found = onnx_build_info(path).get("working_size")
        else:
            found = None
            for record in (path.parent / "training.json", path.parent / "state.json"):
                if not record.is_file():
                    continue
                run = json.loads(record.read_text())
                epoch = re.fullmatch(r"epoch-(\d+)\.weights\.h5", path.name)
                by_epoch = {h["epoch"]: h["size"] for h in run.get("history", [])}
                found = by_epoch.get(int(epoch.group(1))) if epoch else run.get("working_size")
                if found:
                    break
        if not found:
            raise click.UsageError(
                f"{path}: no training.json/state.json (or ONNX metadata) records its size; pass --size"
            )
        sizes.add(int(found))
    if len(sizes) > 1:
        raise click.UsageError(f"the checkpoints were trained at different sizes {sorted(sizes)}; pass --size")
    return sizes.pop()


if __name__ == "__main__":
    main()
