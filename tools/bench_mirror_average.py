"""Cost of --mirror-average: faces/s of one trained model exported plain and mirror-averaged, one run.

    python tools/bench_mirror_average.py runs/stage3_avg

Both graphs come from RUN_DIR/model.keras at the run's working size; they are
timed interleaved (onnxruntime CPU, real CelebA crops when ../shared/data is
there), so the ratio holds on a noisy machine even when the absolute numbers move.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import click


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--celeba", type=click.Path(path_type=Path), default=Path("../shared/data/celeba"))
@click.option("--rounds", default=7, help="Timed runs per graph and batch size (median kept).")
def main(run_dir, celeba, rounds):
    import keras

    from face2hbe.export.onnx_export import export_onnx
    from face2hbe.export.quantize import calibration_crops, faces_per_second
    from face2hbe.graphs import cpu_session

    size = int(json.loads((run_dir / "training.json").read_text())["working_size"])
    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    crops, source = calibration_crops(celeba, Path(__file__).resolve().parents[1] / "client" / "samples", count=64)
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {
            name: cpu_session(
                export_onnx(model, size, Path(tmp) / f"{name}.onnx", mirror_average=name == "mirror"), spin=True
            )
            for name in ("plain", "mirror")
        }
        click.echo(f"crops: {source}; working size {size} px")
        for batch in (1, 8, 32):
            fps = faces_per_second(sessions, crops, batch=batch, rounds=rounds)
            click.echo(
                f"batch {batch:>2}: plain {fps['plain']:6.1f} faces/s, mirror-averaged {fps['mirror']:6.1f} faces/s, "
                f"ratio {fps['mirror'] / fps['plain']:.2f}"
            )


if __name__ == "__main__":
    main()
