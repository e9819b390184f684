"""Locust users that score real face crops on the face2hbe Triton server.

Run through `face2hbe loadtest`, or directly:
    python -m locust -f loadtest/locustfile.py --headless -u 8 -r 4 -t 30s \
        --grpc-url 127.0.0.1:8001 --http-url 127.0.0.1:8000 --batch-size 4

GrpcUser calls KServe v2 gRPC (tritonclient.grpc), HttpUser calls KServe v2
HTTP with the binary-tensor extension (tritonclient.http, which is built on
geventhttpclient and so cooperates with Locust's gevent). Every request is
reported to Locust with request_type "grpc" or "http".
"""

from __future__ import annotations

import time

# Locust has monkey-patched the standard library by now; gRPC's own C-core
# threads must also yield to gevent, before any channel exists.
import gevent
import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

from locust import User, between, constant, events, task  # noqa: E402
from locust.exception import StopUser  # noqa: E402

from face2hbe import contract  # noqa: E402
from face2hbe.loadtest.crops import batch_of, load_crops  # noqa: E402

_CROPS = {}
_SENT = {"requests": 0}


@events.init_command_line_parser.add_listener
def _options(parser):
    group = parser.add_argument_group("face2hbe")
    group.add_argument(
        "--grpc-url", default=f"{contract.DEFAULT_HOST}:{contract.GRPC_PORT}", help="Triton gRPC host:port"
    )
    group.add_argument(
        "--http-url", default=f"{contract.DEFAULT_HOST}:{contract.HTTP_PORT}", help="Triton HTTP host:port"
    )
    group.add_argument("--model-name", default=contract.MODEL_NAME, help="Served model name")
    group.add_argument("--batch-size", type=int, default=1, help="Faces per inference request")
    group.add_argument("--grpc-weight", type=int, default=1, help="Relative share of gRPC users (0 = none)")
    group.add_argument("--http-weight", type=int, default=1, help="Relative share of HTTP users (0 = none)")
    group.add_argument("--think-time", type=float, default=0.0, help="Seconds each user waits between requests")
    group.add_argument("--crop-count", type=int, default=32, help="Real face crops held in memory and cycled through")
    group.add_argument("--timeout", type=float, default=30.0, help="Per-request timeout in seconds")
    group.add_argument(
        "--max-requests", type=int, default=0, help="Stop the run after this many requests (0 = run for -t)"
    )


@events.init.add_listener
def _on_init(environment, **_):
    options = environment.parsed_options
    if options is None:  # imported by something other than the locust CLI
        return
    if not 1 <= options.batch_size <= contract.MAX_BATCH_SIZE:
        raise ValueError(f"--batch-size must be 1..{contract.MAX_BATCH_SIZE}")
    # The user mix: Locust reads class weights when it spawns users.
    GrpcUser.weight, HttpUser.weight = options.grpc_weight, options.http_weight
    wait = constant(0) if options.think_time <= 0 else between(0, 2 * options.think_time)
    GrpcUser.wait_time = HttpUser.wait_time = wait
    crops, source = load_crops(options.crop_count)
    _CROPS["pool"] = crops
    print(f"face2hbe locustfile: {source}, batch size {options.batch_size}", flush=True)


def _quit_when_users_stopped(environment) -> None:
    """End the run once every user has finished its last request and Locust's CSV writer (1 s period) caught up."""
    from locust.stats import CSV_STATS_INTERVAL_SEC

    while environment.runner.user_count > 0:
        gevent.sleep(0.05)
    gevent.sleep(CSV_STATS_INTERVAL_SEC + 0.5)
    environment.runner.quit()


class _TritonUser(User):
    abstract = True
    request_type = ""
    wait_time = constant(0)

    def on_start(self):
        options = self.environment.parsed_options
        self.batch_size = options.batch_size
        self.model_name = options.model_name
        self.timeout = options.timeout
        self.crops = _CROPS["pool"]
        self.cursor = 0
        self.client = self.connect(options)

    def on_stop(self):
        if getattr(self, "client", None) is not None:  # on_start may have failed before connecting
            self.client.close()

    def connect(self, options):
        raise NotImplementedError

    def infer(self, batch):
        """Send one request; returns the bytes of the scores tensor."""
        raise NotImplementedError

    @task
    def score(self):
        batch = batch_of(self.crops, self.batch_size, self.cursor)
        self.cursor += self.batch_size
        start = time.perf_counter()
        exception, length = None, 0
        try:
            scores = self.infer(batch)
            if scores.shape != (len(batch), len(contract.LABELS)):
                raise ValueError(f"scores shape {scores.shape}, expected {(len(batch), len(contract.LABELS))}")
            length = scores.nbytes
        except Exception as exc:  # any failure is a failed request in the report
            exception = exc
        self.environment.events.request.fire(
            request_type=self.request_type,
            name=f"{self.model_name} x{self.batch_size}",
            response_time=(time.perf_counter() - start) * 1000.0,
            response_length=length,
            exception=exception,
            context={},
        )
        # Load by count: the run ends after N requests on any machine (-t stays as a cap).
        limit = self.environment.parsed_options.max_requests
        _SENT["requests"] += 1
        if limit and _SENT["requests"] == limit:
            # From its own greenlet: quit() stops every user, this one included, and would end mid-call here.
            gevent.spawn(_quit_when_users_stopped, self.environment)
        if limit and _SENT["requests"] >= limit:
            raise StopUser()


class GrpcUser(_TritonUser):
    request_type = "grpc"

    def connect(self, options):
        import tritonclient.grpc as triton

        self.triton = triton
        return triton.InferenceServerClient(options.grpc_url.split("://", 1)[-1])

    def infer(self, batch):
        t = self.triton
        inputs = [t.InferInput(contract.INPUT_NAME, list(batch.shape), contract.INPUT_DTYPE)]
        inputs[0].set_data_from_numpy(batch)
        result = self.client.infer(
            self.model_name, inputs, outputs=[t.InferRequestedOutput(contract.OUTPUT_NAME)], client_timeout=self.timeout
        )
        return result.as_numpy(contract.OUTPUT_NAME)


class HttpUser(_TritonUser):
    request_type = "http"

    def connect(self, options):
        import tritonclient.http as triton

        self.triton = triton
        return triton.InferenceServerClient(
            options.http_url.split("://", 1)[-1], connection_timeout=self.timeout, network_timeout=self.timeout
        )

    def infer(self, batch):
        t = self.triton
        inputs = [t.InferInput(contract.INPUT_NAME, list(batch.shape), contract.INPUT_DTYPE)]
        inputs[0].set_data_from_numpy(batch, binary_data=True)
        outputs = [t.InferRequestedOutput(contract.OUTPUT_NAME, binary_data=True)]
        result = self.client.infer(self.model_name, inputs, outputs=outputs)
        return result.as_numpy(contract.OUTPUT_NAME)
