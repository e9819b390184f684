"""The commands that make the model: train (a run) and export (into the Triton model repository)."""

from __future__ import annotations

from pathlib import Path

import click
from click.core import ParameterSource

from face2hbe import contract
from face2hbe.export.repository import BatchingSettings
from face2hbe.paths import CACHE_DIR

from .options import DEFAULT_REPOSITORY, data_option, default, gather

# train's options that TrainConfig takes (the rest: --recipe, --stage, --output-root)
TRAIN_OPTIONS = (
    "data",
    "output",
    "weights",
    "batchnorm",
    "schedule",
    "image_size",
    "epochs",
    "head_epochs",
    "batch_size",
    "learning_rate",
    "lr_schedule",
    "keep_epoch_weights",
    "attributes",
    "limit",
    "cache_dir",
    "patience",
    "augment",
    "init_weights",
    "mirror_average",
    "seed",
    "average",
)
# What a recipe's stages take from the command line (besides the schedule, which --schedule/--image-size/--epochs give)
RECIPE_OVERRIDES = (
    "data",
    "weights",
    "batchnorm",
    "head_epochs",
    "batch_size",
    "learning_rate",
    "lr_schedule",
    "keep_epoch_weights",
    "attributes",
    "limit",
    "cache_dir",
    "patience",
    "augment",
    "mirror_average",
    "seed",
)


def train_default(name: str):
    from face2hbe.training.train import TrainConfig

    return default(TrainConfig, name)


@click.command()
@click.option(
    "--data",
    "data",
    multiple=True,
    metavar="KIND:PATH",
    help="Labeled data, repeatable: celeba:DIR (labels.csv + list_attr_celeba.txt), folders:DIR "
    "(eyewear/ beard/ hat/ none/ sub-folders) or lfw:DIR (labels.csv with soft labels).",
)
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Run folder: checkpoints, model.keras, training.json, curves.png. Rerun to resume.",
)
@click.option(
    "--weights",
    default=train_default("weights"),
    help="Backbone start: 'imagenet' (downloaded by Keras), 'none' (from scratch) or a local VGG16 .h5 file.",
)
@click.option(
    "--batchnorm/--no-batchnorm",
    default=None,
    help="VGG16 with batch-norm after each conv. Default: on with --weights none, off otherwise.",
)
@click.option(
    "--schedule",
    default=None,
    metavar="SIZE:EPOCHS[,...]",
    help="Working image sizes and epochs per stage, e.g. 64:6,96:2 (progressive resizing). Default: --image-size:--epochs.",
)
@click.option(
    "--image-size",
    default=contract.INPUT_SIZE,
    type=click.IntRange(32, 512),
    help="Network working size (crops are resized to it inside the served graph).",
)
@click.option("--epochs", default=10, type=click.IntRange(1), help="Epochs when no --schedule is given.")
@click.option(
    "--head-epochs",
    default=train_default("head_epochs"),
    type=click.IntRange(0),
    help="Pretrained recipe: epochs with the base frozen before fine-tuning block5.",
)
@click.option("--batch-size", default=train_default("batch_size"), type=click.IntRange(1), help="Training batch size.")
@click.option(
    "--learning-rate",
    type=float,
    default=None,
    help="Override the recipe's rate (pretrained: Adam 1e-3 then SGD 5e-5; scratch: AdamW 1e-3 cosine).",
)
@click.option(
    "--lr-schedule",
    type=click.Choice(["cosine", "constant"]),
    default=train_default("lr_schedule"),
    show_default=True,
    help="From scratch: cosine decay over the planned epochs, or a constant rate (for checkpoint averaging).",
)
@click.option(
    "--keep-epoch-weights",
    is_flag=True,
    help="Also keep epoch-NN.weights.h5 after every epoch (inputs for tools/average_checkpoints.py).",
)
@click.option(
    "--attributes/--no-attributes",
    default=train_default("attributes"),
    help="Multi-task: also learn every CelebA attribute the data sets carry.",
)
@click.option(
    "--limit", type=click.IntRange(1), default=None, help="Use only the first N samples of each data set (smoke tests)."
)
@click.option(
    "--cache-dir", type=click.Path(path_type=Path), default=CACHE_DIR, help="Cache for decoded training crops."
)
@click.option(
    "--patience",
    default=train_default("patience"),
    type=click.IntRange(1),
    help="Early stop after this many epochs without validation AUC gain.",
)
@click.option(
    "--augment/--no-augment",
    default=train_default("augment"),
    help="Flips, shifts, zooms, rotations, brightness, contrast, JPEG quality and blur.",
)
@click.option(
    "--init-weights",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Warm start from an earlier run's best.weights.h5 or model.keras, or from a served model.onnx "
    "(same network and targets), e.g. to add data.",
)
@click.option(
    "--mirror-average/--no-mirror-average",
    default=train_default("mirror_average"),
    help="Score each face and its mirror and average (test-time augmentation): thresholds, metrics and the "
    "exported graph use it; twice the backbone compute per face. Rerun a finished run with it to re-evaluate.",
)
@click.option(
    "--seed",
    default=train_default("seed"),
    type=int,
    help="Seed for weights, shuffling, augmentation and the validation split.",
)
@click.option(
    "--average",
    default=None,
    metavar="NAME[,NAME...]",
    help="Final weights: the mean of these checkpoints of the run (epoch-NN, last, init), batch-norm re-measured.",
)
@click.option(
    "--recipe",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Run the stages of a recipe file (e.g. training/recipes/served.yaml) into --output-root/NAME; "
    "train options given on the command line override every stage (e.g. --limit 24 --epochs 1 for a smoke run).",
)
@click.option("--stage", default=None, help="With --recipe: run only this stage (its init stage must be done).")
@click.option(
    "--output-root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs"),
    help="With --recipe: folder of the stages' run folders.",
)
@gather("options", dict, *TRAIN_OPTIONS)
def train(options: dict, recipe, stage, output_root):
    """Train the shared VGG16 + three-sigmoid model and report per-label ROC AUC."""
    from face2hbe.training.train import train as run_training

    def report(summary, where):
        for split in ("validation", "test"):
            row = "  ".join(f"{label} {m.get('roc_auc', float('nan')):.3f}" for label, m in summary[split].items())
            click.echo(f"{split} ROC AUC: {row}")
        click.echo(f"model and metrics in {where}")

    if recipe is not None:
        from face2hbe.training.recipe import run_recipe

        context = click.get_current_context()
        given = {name for name in options if context.get_parameter_source(name) == ParameterSource.COMMANDLINE}
        for name, summary in run_recipe(
            recipe, output_root, only=stage, overrides=recipe_overrides(options, given)
        ).items():
            report(summary, output_root / name)
        return
    if not options["data"] or options["output"] is None:
        raise click.UsageError("give --data and --output (or --recipe)")
    report(run_training(train_config(options)), options["output"])


def _schedule(options: dict) -> list[tuple[int, int]]:
    from face2hbe.training.train import parse_schedule

    return parse_schedule(options["schedule"]) if options["schedule"] else [(options["image_size"], options["epochs"])]


def train_config(options: dict):
    """TrainConfig from the train options (a run without --recipe)."""
    from face2hbe.training.train import TrainConfig

    plain = {
        name: options[name]
        for name in TRAIN_OPTIONS
        if name not in ("data", "schedule", "image_size", "epochs", "average")
    }
    average = options["average"]
    return TrainConfig(
        data=list(options["data"]),
        schedule=_schedule(options),
        average=average.split(",") if average else None,
        **plain,
    )


def recipe_overrides(options: dict, given: set[str]) -> dict:
    """What the options given on the command line change in every stage of a recipe."""
    if given & {"output", "init_weights", "average"}:
        raise click.UsageError("--output, --init-weights and --average come from the recipe (use --output-root)")
    overrides = {
        name: list(options[name]) if name == "data" else options[name] for name in RECIPE_OVERRIDES if name in given
    }
    if given & {"schedule", "image_size", "epochs"}:
        overrides["schedule"] = _schedule(options)
    return overrides


@click.command()
@click.argument("run_dir", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["onnx", "int8", "tensorrt"]),
    default="onnx",
    help="onnx: RUN_DIR -> <repository>/face2hbe (without RUN_DIR: only rewrite its config.pbtxt, keeping thresholds). "
    "int8: <repository>/face2hbe -> face2hbe_int8 (CPU, static INT8). tensorrt: -> face2hbe_trt (FP16 plan; needs a GPU).",
)
@click.option(
    "--repository",
    type=click.Path(path_type=Path),
    default=DEFAULT_REPOSITORY,
    help="Triton model repository to write into.",
)
@click.option(
    "--max-batch-size", default=contract.MAX_BATCH_SIZE, type=click.IntRange(1), help="Triton max_batch_size."
)
@click.option(
    "--queue-delay-us",
    default=default(BatchingSettings, "max_queue_delay_us"),
    type=click.IntRange(0),
    help="Dynamic batcher max_queue_delay_microseconds (chosen by measurement, docs/serving.md).",
)
@click.option(
    "--device",
    type=click.Choice(["gpu", "cpu"]),
    default="gpu",
    help="Instances of the fp32 model: gpu (KIND_GPU + TensorRT FP16 accelerator) or cpu (KIND_CPU). INT8 is always CPU.",
)
@data_option(
    "celeba",
    "int8: CelebA folder for calibration (images 1-300) and the fp32-vs-int8 check (7001-8000); absent: calibrate on the sample photos' faces.",
)
@click.option(
    "--report",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="int8: markdown file whose INT8 section receives the measured table (e.g. docs/serving.md).",
)
@click.option(
    "--add-attributes",
    is_flag=True,
    help="Upgrade the repository's existing face2hbe and face2hbe_int8 graphs in place with the `attributes` output "
    "(a Gather from the head `scores` is sliced from; weights untouched), after checking with onnxruntime on "
    "real crops (CelebA test images from --celeba, else the sample photos' faces) that `scores` stay bit-identical.",
)
def export(run_dir, fmt, repository, max_batch_size, queue_delay_us, device, celeba, report, add_attributes):
    """Export to the Triton model repository: ONNX (preprocessing inside), its INT8 CPU variant, or a TensorRT plan."""
    from face2hbe.export.repository import rewrite_config

    if add_attributes:
        _add_attributes(repository, celeba)
        return

    batching = BatchingSettings(
        max_batch_size=max_batch_size,
        max_queue_delay_us=queue_delay_us,
        preferred_batch_sizes=tuple(
            b for b in default(BatchingSettings, "preferred_batch_sizes") if b <= max_batch_size
        )
        or (max_batch_size,),
        instance_kind="KIND_CPU" if device == "cpu" else "KIND_GPU",
    )
    if fmt == "int8":
        import importlib.util

        from face2hbe.export.quantize import export_int8, write_report

        samples = Path(importlib.util.find_spec("face2hbe.client").origin).parent / "samples"  # bundled photos
        model_dir, result = export_int8(repository, celeba if celeba.is_dir() else None, samples, batching)
        click.echo(
            f"wrote {model_dir} ({(model_dir / contract.MODEL_VERSION / 'model.onnx').stat().st_size / 1e6:.1f} MB)"
        )
        if result is not None:
            click.echo(result.markdown())
            if report:
                write_report(
                    result, report, f"face2hbe export --format int8 --repository {repository} --report {report}"
                )
                click.echo(f"INT8 report written to {report}")
        else:
            click.echo(
                f"{celeba} not found: calibrated on the sample photos' faces; accuracy not measured, no report written"
            )
        return
    if fmt == "tensorrt":
        from face2hbe.export.tensorrt import export_tensorrt

        click.echo(f"wrote {export_tensorrt(repository, batching)}")
        return
    if run_dir is None:
        click.echo(f"rewrote {rewrite_config(Path(repository) / contract.MODEL_NAME, batching)}")
        return
    from face2hbe.export.build import export_repository

    model_dir = export_repository(run_dir, repository, batching)
    click.echo(f"wrote {model_dir}")


def _add_attributes(repository: Path, celeba: Path) -> None:
    import importlib.util

    from face2hbe.export.attributes import CHECK_RANGE, upgrade_repository
    from face2hbe.export.quantize import celeba_crops, sample_crops

    if (celeba / "labels.csv").is_file():
        crops, _ = celeba_crops(celeba, *CHECK_RANGE)
        where = f"CelebA images {CHECK_RANGE[0]}-{CHECK_RANGE[1]}"
    else:
        crops = sample_crops(Path(importlib.util.find_spec("face2hbe.client").origin).parent / "samples")
        where = "the sample photos' faces"
    checks = upgrade_repository(repository, crops)
    if not checks:
        click.echo(f"{repository}: every model already has the {contract.ATTRIBUTES_NAME!r} output; nothing to do")
    for check in checks:
        click.echo(
            f"upgraded {check.model}: scores bit-identical on {check.faces} faces from {where}; "
            f"attributes = head columns {list(contract.ATTRIBUTE_COLUMNS)}"
        )
