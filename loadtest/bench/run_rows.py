"""Memory and faces/s of the served face model by rows per onnxruntime run (graphs.CPU_RUN_ROWS).

    python -m face2hbe.loadtest.bench.run_rows --output docs/bench/run-rows.json

onnxruntime's CPU arena keeps the peak of the largest run for the session's life, so how a gathered batch of up
to MAX_BATCH_SIZE crops is cut into runs decides the server's resident memory. Each setting runs in a fresh
process (its own arena): the same gathered batches (32, 7, 12, 32, 20 real crops, three rounds) cut into runs of
at most N rows; reported: resident memory after the batches over the session's after one crop, and faces/s.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import click

from face2hbe import contract
from face2hbe.paths import DATA_DIR

from .common import SAMPLES

GATHERED = (32, 7, 12, 32, 20)  # batches as the dynamic batcher gathers them (up to MAX_BATCH_SIZE)


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _measure(args) -> dict:
    import numpy as np

    from face2hbe.graphs import cpu_session, score_crops

    graph, crops, rows, rounds = args
    session = cpu_session(graph)
    score_crops(session, crops[:1])
    idle = _rss_mb()
    start, faces = time.perf_counter(), 0
    for _ in range(rounds):
        for size in GATHERED:
            batch = np.resize(crops, (size, *crops.shape[1:]))
            score_crops(session, batch, (contract.OUTPUT_NAME, contract.ATTRIBUTES_NAME), batch=rows)
            faces += size
    return {
        "rows": rows,
        "faces_per_s": round(faces / (time.perf_counter() - start), 2),
        "mb_over_idle": round(_rss_mb() - idle),
    }


@click.command()
@click.option(
    "--graph",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=Path("model_repository") / contract.INT8_MODEL_NAME / contract.MODEL_VERSION / "model.onnx",
    show_default=True,
)
@click.option("--celeba", type=click.Path(path_type=Path), default=DATA_DIR / "celeba", show_default=True)
@click.option("--rows", "settings", multiple=True, type=int, default=(32, 16, 8, 4), show_default=True)
@click.option("--rounds", default=3, show_default=True)
@click.option("--output", type=click.Path(path_type=Path), default=None, help="Write the figures as JSON here.")
def main(graph, celeba, settings, rounds, output):
    from face2hbe.export.quantize import calibration_crops
    from face2hbe.paths import portable

    from .common import machine_info

    crops, source = calibration_crops(celeba if celeba.is_dir() else None, SAMPLES, count=32)
    found = []
    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        for rows in settings:
            found.append(pool.apply(_measure, ((graph, crops, rows, rounds),)))
            click.echo(
                f"runs of {rows:>2} rows: +{found[-1]['mb_over_idle']} MB over idle, {found[-1]['faces_per_s']} faces/s"
            )
    result = {
        "graph": portable(str(graph)),
        "crops": source,
        "gathered_batches": GATHERED,
        "rounds": rounds,
        "machine": machine_info(),
        "settings": found,
    }
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
