"""Training recipes: named stages of `face2hbe train` in one YAML file, each starting from the last.

`training/recipes/served.yaml` is the recipe of the served model. The format:

    defaults:                      # settings every stage shares (any field of TrainConfig)
      data: [celeba:../shared/data/celeba, lfw:../shared/data/lfw]
      weights: none
    stages:
      - name: celeba64             # output folder OUTPUT_ROOT/celeba64
        schedule: "64:7"           # SIZE:EPOCHS[,SIZE:EPOCHS...], as --schedule
        learning_rate: 1.0e-3      # ... and any other TrainConfig field
      - name: mixed64
        init: celeba64             # warm start from that stage's model.keras
        average: [epoch-03, epoch-04]   # final weights: their mean, batch-norm re-measured

`face2hbe train --recipe FILE --output-root runs` runs every stage in order (a finished
stage is only evaluated again, a cut-off one resumes); `--stage NAME` runs one.
Data paths are relative to the working directory (run from the repository root).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from face2hbe.errors import Face2hbeError

from .train import TrainConfig, parse_schedule, train

DATA_KINDS = ("celeba", "folders", "lfw")
# Set by the recipe runner, not by the file: where a stage writes and what it starts from.
RUNNER_FIELDS = ("output", "init_weights", "progress")


class RecipeError(Face2hbeError):
    """A recipe file is missing or malformed."""


@dataclass
class RecipeStage:
    name: str
    settings: dict  # TrainConfig fields
    init: str | None = None  # an earlier stage's name


def load_recipe(path) -> list[RecipeStage]:
    """Stages of a recipe file, defaults merged in; validated."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe not found")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise RecipeError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(doc, dict) or not isinstance(doc.get("stages"), list) or not doc["stages"]:
        raise RecipeError(f"{path}: needs a non-empty 'stages' list")
    defaults = doc.get("defaults") or {}
    stages = []
    for raw in doc["stages"]:
        if not isinstance(raw, dict) or not raw.get("name"):
            raise RecipeError(f"{path}: every stage needs a name")
        entry = {**defaults, **raw}
        name, init = str(entry.pop("name")), entry.pop("init", None)
        stages.append(RecipeStage(name, entry, str(init) if init is not None else None))
    validate(stages, str(path))
    return stages


def validate(stages: list[RecipeStage], where: str = "recipe") -> None:
    """Names unique, fields known, data kinds, sizes and epochs sane, init an earlier stage, averages kept epochs."""
    seen: list[str] = []
    for stage in stages:
        validate_stage(stage, seen, f"{where}, stage {stage.name!r}")
        seen.append(stage.name)


def validate_stage(stage: RecipeStage, earlier: list[str], at: str) -> None:
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - set(RUNNER_FIELDS)
    if stage.name in earlier or "/" in stage.name:
        raise RecipeError(f"{at}: stage names must be unique folder names")
    unknown = set(stage.settings) - fields
    if unknown:
        raise RecipeError(f"{at}: unknown settings {sorted(unknown)} (known: {sorted(fields)})")
    data = stage.settings.get("data")
    if not data or not isinstance(data, list):
        raise RecipeError(f"{at}: 'data' must be a list of KIND:PATH")
    for spec in data:
        kind, sep, place = str(spec).partition(":")
        if kind not in DATA_KINDS or not sep or not place:
            raise RecipeError(f"{at}: data {spec!r} is not KIND:PATH with KIND one of {DATA_KINDS}")
    try:
        schedule = _schedule(stage.settings.get("schedule", "150:10"))
    except ValueError as error:
        raise RecipeError(f"{at}: {error}") from error
    if stage.settings.get("lr_schedule", "cosine") not in ("cosine", "constant"):
        raise RecipeError(f"{at}: lr_schedule must be cosine or constant")
    if stage.init is not None and stage.init not in earlier:
        raise RecipeError(f"{at}: init {stage.init!r} is not an earlier stage ({earlier or 'none before it'})")
    _validate_average(stage, schedule, at)


def _validate_average(stage: RecipeStage, schedule: list[tuple[int, int]], at: str) -> None:
    members = stage.settings.get("average")
    if members is None:
        return
    if not isinstance(members, list) or not members:
        raise RecipeError(f"{at}: 'average' must be a list of checkpoints (init, last, epoch-NN)")
    sizes = [size for size, epochs in schedule for _ in range(epochs)]
    for member in members:
        if member == "init":
            if stage.init is None:
                raise RecipeError(f"{at}: averages 'init' but has no init stage")
        elif member.startswith("epoch-"):
            epoch = int(member.removeprefix("epoch-")) if member.removeprefix("epoch-").isdigit() else 0
            if not 1 <= epoch <= len(sizes):
                raise RecipeError(f"{at}: {member} is not one of its {len(sizes)} epochs")
            if not stage.settings.get("keep_epoch_weights"):
                raise RecipeError(f"{at}: averaging {member} needs keep_epoch_weights: true")
            if sizes[epoch - 1] != sizes[-1]:
                raise RecipeError(
                    f"{at}: {member} was trained at {sizes[epoch - 1]} px, the stage ends at {sizes[-1]} px"
                )
        elif member != "last":
            raise RecipeError(f"{at}: cannot average {member!r} (init, last or epoch-NN)")


def _schedule(value) -> list[tuple[int, int]]:
    return [tuple(s) for s in value] if isinstance(value, list) else parse_schedule(str(value))


def stage_config(stage: RecipeStage, output_root: Path, progress: bool = True) -> TrainConfig:
    """The TrainConfig of one stage: output OUTPUT_ROOT/NAME, init from the earlier stage's model.keras."""
    settings = dict(stage.settings)
    settings["schedule"] = _schedule(settings.get("schedule", "150:10"))
    settings.setdefault("cache_dir", Path(output_root) / "cache")
    settings["cache_dir"] = Path(settings["cache_dir"])
    settings["weights"] = str(settings.get("weights", "imagenet"))  # YAML's `none` is the string 'none' here
    init = Path(output_root) / stage.init / "model.keras" if stage.init else None
    return TrainConfig(output=Path(output_root) / stage.name, init_weights=init, progress=progress, **settings)


def run_recipe(
    path, output_root, only: str | None = None, overrides: dict | None = None, progress: bool = True
) -> dict:
    """Run the recipe's stages in order (or only the stage named `only`); returns each stage's summary.

    `overrides` (TrainConfig fields, e.g. a small `limit` and `schedule` for a smoke run) replace
    the recipe's settings in every stage run; the stage must still be valid with them.
    """
    stages = load_recipe(path)
    names = [s.name for s in stages]
    if only is not None and only not in names:
        raise RecipeError(f"{path}: no stage {only!r} (stages: {', '.join(names)})")
    summaries = {}
    for stage in stages:
        if only is not None and stage.name != only:
            continue
        stage = RecipeStage(stage.name, {**stage.settings, **(overrides or {})}, stage.init)
        validate_stage(stage, names[: names.index(stage.name)], f"{path}, stage {stage.name!r} with the overrides")
        config = stage_config(stage, Path(output_root), progress)
        if config.init_weights and not config.init_weights.is_file():
            raise RecipeError(f"stage {stage.name!r} starts from {config.init_weights}: run stage {stage.init!r} first")
        summaries[stage.name] = train(config)
    return summaries
