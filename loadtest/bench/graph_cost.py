"""faces/s of two or more ONNX graphs of the face model side by side: one run, interleaved, same crops.

    git show REV:model_repository/face2hbe/1/model.onnx > /tmp/before.onnx
    python -m face2hbe.loadtest.bench.graph_cost /tmp/before.onnx model_repository/face2hbe/1/model.onnx \
        --name "REV:model_repository/face2hbe/1/model.onnx" --name "model_repository/face2hbe/1/model.onnx"

For a change to the served graph (an added output, a variant, a working size): each graph runs
every output it has, at batch 1, 8 and 32, round by round (median of `--rounds`), on real CelebA
crops when ../shared/data is there (else the sample photos' faces), so the ratios (each graph's
faces/s over the first graph's) hold on a busy machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from face2hbe.export.quantize import faces_per_second
from face2hbe.paths import DATA_DIR

from .common import SAMPLES
from .cpu_variants import BATCHES


@click.command()
@click.argument("graphs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--celeba", type=click.Path(path_type=Path), default=DATA_DIR / "celeba", show_default=True)
@click.option("--rounds", default=9, show_default=True, help="Timed runs per graph and batch size (median kept).")
@click.option("--output", type=click.Path(path_type=Path), default=None, help="Write the figures as JSON here.")
@click.option(
    "--name",
    "given",
    multiple=True,
    help="What each graph is (once per graph, in order), e.g. the git revision it came from.",
)
def main(graphs, celeba, rounds, output, given):
    from face2hbe.export.quantize import calibration_crops
    from face2hbe.graphs import cpu_session
    from face2hbe.paths import portable

    from .common import machine_info

    if len(graphs) < 2:
        raise click.UsageError("give at least two graphs to compare")
    if given and (len(given) != len(graphs) or len(set(given)) != len(given)):
        raise click.UsageError("give --name once per graph, each different, or not at all")
    unique = len({path.name for path in graphs}) == len(graphs)
    names = list(given) or [path.name if unique else f"{i + 1}: {path.name}" for i, path in enumerate(graphs)]
    crops, source = calibration_crops(celeba if celeba.is_dir() else None, SAMPLES, count=64)
    runs = {name: cpu_session(path, spin=True) for name, path in zip(names, graphs)}
    result = {
        "graphs": dict(zip(names, (portable(str(p)) for p in graphs))),
        "outputs": {n: [o.name for o in s.get_outputs()] for n, s in runs.items()},
        "crops": source,
        "rounds": rounds,
        "machine": machine_info(),
        "faces_per_second": {},
    }
    for batch in BATCHES:
        fps = faces_per_second(runs, crops, batch=batch, rounds=rounds)
        result["faces_per_second"][str(batch)] = {n: round(v, 2) for n, v in fps.items()}
        click.echo(
            f"batch {batch:>2}: "
            + ", ".join(
                f"{n} {v:6.1f} faces/s" + (f" ({v / fps[names[0]]:.3f}x)" if n != names[0] else "")
                for n, v in fps.items()
            )
        )
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
