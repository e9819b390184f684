"""Sustained concurrent load on a server in its own process: no failures, bounded memory growth.

Users are threads, each with its own tritonclient gRPC connection, sending
batches of 1-16 crops back to back. Load is a number of requests, never a time
window, so a slow machine does the same work as a fast one (only slower). Memory
is the summed RSS of the server's process tree (the `face2hbe serve` Python
process that runs onnxruntime, tritonserver and its backend stubs), measured
after a warm-up phase of requests and at the end.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pytest

from face2hbe import contract
from face2hbe.serving.process import ServerProcess

from conftest import REPOSITORY

MB = 1024 * 1024
BATCH_SIZES = (1, 4, 8, 16)


@dataclass
class SoakResult:
    requests: int = 0
    crops: int = 0
    failures: list[str] = field(default_factory=list)
    rss_after_warmup: int = 0
    rss_end: int = 0
    seconds: float = 0.0

    @property
    def growth_mb(self) -> float:
        return (self.rss_end - self.rss_after_warmup) / MB


def tree_rss(pid: int) -> int:
    import psutil

    root = psutil.Process(pid)
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def soak(grpc_url: str, pid: int, users: int, requests: int, warmup_requests: int) -> SoakResult:
    """`users` threads send `requests` requests in all; RSS is read after the first `warmup_requests` of them."""
    import tritonclient.grpc as grpcclient

    result, lock = SoakResult(), threading.Lock()
    issued = iter(range(requests))
    warm = threading.Event()

    def user(seed: int) -> None:
        rng = np.random.default_rng(seed)
        client = grpcclient.InferenceServerClient(grpc_url)
        while True:
            with lock:
                if next(issued, None) is None:
                    break
            n = int(rng.choice(BATCH_SIZES))
            batch = rng.integers(0, 256, (n, *contract.INPUT_SHAPE), dtype=np.uint8)
            inp = grpcclient.InferInput(contract.INPUT_NAME, list(batch.shape), contract.INPUT_DTYPE)
            inp.set_data_from_numpy(batch)
            try:
                scores = client.infer(contract.MODEL_NAME, [inp], client_timeout=120).as_numpy(contract.OUTPUT_NAME)
                ok = scores.shape == (n, len(contract.LABELS)) and np.all((scores >= 0) & (scores <= 1))
                error = None if ok else f"bad scores {scores.shape}"
            except Exception as exc:  # every failure is counted, none is retried
                error = " ".join(str(exc).split())[:200]
            with lock:
                result.requests += 1
                result.crops += n
                if error:
                    result.failures.append(error)
                if result.requests == warmup_requests:
                    result.rss_after_warmup = tree_rss(pid)
                    warm.set()
        client.close()

    # Warm-up first: onnxruntime's arena grows to the largest run it has seen (runs of at most
    # graphs.CPU_RUN_ROWS crops), the dynamic batcher merges concurrent requests up to max_batch_size,
    # and the Python backend's shared memory grows with the requests in flight; so every user sends
    # every size at once.
    def warm_up(_):
        client = grpcclient.InferenceServerClient(grpc_url)
        for n in (*BATCH_SIZES, contract.MAX_BATCH_SIZE):
            inp = grpcclient.InferInput(contract.INPUT_NAME, [n, *contract.INPUT_SHAPE], contract.INPUT_DTYPE)
            inp.set_data_from_numpy(np.zeros((n, *contract.INPUT_SHAPE), np.uint8))
            client.infer(contract.MODEL_NAME, [inp], client_timeout=120)
        client.close()

    with ThreadPoolExecutor(users) as pool:
        list(pool.map(warm_up, range(users)))
    started = time.perf_counter()
    with ThreadPoolExecutor(users) as pool:
        list(pool.map(user, range(users)))
    result.rss_end = tree_rss(pid)
    result.seconds = time.perf_counter() - started
    assert warm.is_set()
    return result


@pytest.fixture
def server_process(tmp_path):
    server = ServerProcess(REPOSITORY, tmp_path / "server.log").start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.kill()


def _check(result: SoakResult, bound_mb: float) -> None:
    print(
        f"\nsoak: {result.requests} requests, {result.crops} crops in {result.seconds:.1f}s "
        f"({result.crops / result.seconds:.1f} crops/s), {len(result.failures)} failures, "
        f"server tree RSS {result.rss_after_warmup / MB:.0f} -> {result.rss_end / MB:.0f} MB "
        f"(growth {result.growth_mb:+.1f} MB)"
    )
    assert result.failures == [], result.failures[:5]
    assert result.rss_after_warmup > 100 * MB, "RSS measured on the wrong process"
    assert result.growth_mb < bound_mb


def test_short_soak(server, grpc_url):
    """18 requests from 3 users after the warm-up, on the suite's own server (tritonserver and its model
    processes): part of the normal suite."""
    result = soak(grpc_url, server.process.pid, users=3, requests=18, warmup_requests=6)
    _check(result, bound_mb=150)
    assert server.process.poll() is None


@pytest.mark.slow  # minutes of load on purpose
def test_long_soak(server_process):
    """600 requests from 8 users (a few minutes here): zero failures and < 200 MB RSS growth after warm-up."""
    result = soak(server_process.grpc_url, server_process.proc.pid, users=8, requests=600, warmup_requests=100)
    _check(result, bound_mb=200)
    assert server_process.proc.poll() is None
