"""Pick the dynamic batcher's max_queue_delay by measurement on the embedded server.

For each delay, start the real embedded Triton server (loopback, free ports) with that
delay, run C concurrent gRPC clients sending one face each for D seconds, and print
p50/p95 latency and throughput as a markdown table (docs/serving.md has the result).

    .venv/bin/python tools/bench_queue_delay.py --delays 0,500,2000,5000 --clients 8 --seconds 8
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from pathlib import Path

import numpy as np

from face2hbe import contract
from face2hbe.net import free_port


def _client_loop(url: str, batch: np.ndarray, stop: threading.Event, latencies: list[float]) -> None:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    inp = grpcclient.InferInput(contract.INPUT_NAME, list(batch.shape), contract.INPUT_DTYPE)
    inp.set_data_from_numpy(batch)
    while not stop.is_set():
        t0 = time.perf_counter()
        client.infer(contract.MODEL_NAME, [inp])
        latencies.append(time.perf_counter() - t0)
    client.close()


def measure(repository: Path, delay_us: int, clients: int, seconds: float, faces: int) -> dict:
    from face2hbe.serving.embedded import EmbeddedServer, ServerSettings

    settings = ServerSettings(
        repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), max_queue_delay_us=delay_us
    )
    batch = np.random.default_rng(0).integers(0, 256, (faces, *contract.INPUT_SHAPE), dtype=np.uint8)
    with EmbeddedServer(settings):
        url = f"127.0.0.1:{settings.grpc_port}"
        stop = threading.Event()
        per_client: list[list[float]] = [[] for _ in range(clients)]
        threads = [threading.Thread(target=_client_loop, args=(url, batch, stop, lat)) for lat in per_client]
        for t in threads:
            t.start()
        time.sleep(1.0)  # ramp-up, not counted
        for lat in per_client:
            lat.clear()
        t0 = time.perf_counter()
        time.sleep(seconds)
        counted = [list(lat) for lat in per_client]
        elapsed = time.perf_counter() - t0
        stop.set()
        for t in threads:
            t.join()
    lat = np.asarray([x for c in counted for x in c]) * 1000
    return {
        "delay_us": delay_us,
        "requests": len(lat),
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "faces_per_s": len(lat) * faces / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument(
        "--delays", default="0,500,2000,5000", help="max_queue_delay_microseconds values, comma-separated"
    )
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--faces", type=int, default=1, help="faces per request")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per delay")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = [measure(args.repository, int(d), args.clients, args.seconds, args.faces) for d in args.delays.split(",")]
    print(
        f"| max_queue_delay_us | requests | p50 ms | p95 ms | faces/s |  ({args.clients} clients x {args.faces} face(s)/request, {args.seconds:.0f} s each)"
    )
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['delay_us']} | {r['requests']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['faces_per_s']:.1f} |")


if __name__ == "__main__":
    main()
