"""Async KServe v2 client for the face2hbe model (tritonclient, gRPC or HTTP).

Labels, thresholds and the model version are read from the server once the model
is ready. Requests are bounded in flight; failures are judged by their status
code, never by their text:

- transient (retried with jittered exponential back-off, tenacity): the server is
  unreachable or restarting (gRPC UNAVAILABLE, HTTP 502/503, connection refused),
  busy (RESOURCE_EXHAUSTED, 429), slow (DEADLINE_EXCEEDED, 504, client timeout), or
  the model is not loaded yet (NOT_FOUND, 404: the port opens before the model is);
- any other answer of the server: InferenceError (that request failed, the run goes on);
- anything else (a TypeError in our own code, say) is a bug and propagates.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import numpy as np

from face2hbe import contract
from face2hbe.errors import BadImageError, InferenceError, ServerUnavailableError
from face2hbe.net import host_port
from face2hbe.repository import config_from_json, labels_and_thresholds, output_labels, production_labels_in

log = logging.getLogger(__name__)

DEFAULT_URLS = {
    "grpc": f"{contract.DEFAULT_HOST}:{contract.GRPC_PORT}",
    "http": f"{contract.DEFAULT_HOST}:{contract.HTTP_PORT}",
}

TRANSIENT_GRPC = {
    "StatusCode.UNAVAILABLE",
    "StatusCode.RESOURCE_EXHAUSTED",
    "StatusCode.DEADLINE_EXCEEDED",
    "StatusCode.NOT_FOUND",
}
TRANSIENT_HTTP = {"404", "429", "502", "503", "504"}
# The photo model's answer to a photo it cannot take (unreadable, above a limit): the photo's fault, not the server's.
REFUSED_PHOTO = {"StatusCode.INVALID_ARGUMENT", "400"}
WAIT_NOTICE_S = 0.5  # a readiness check still unanswered after this long says "waiting up to ..." (one line)


@dataclass(frozen=True)
class ModelInfo:
    labels: list[str]  # every served label: the scores' labels, then the attributes' (when served)
    thresholds: dict[str, float]
    max_batch_size: int
    name: str = contract.MODEL_NAME
    version: str = contract.MODEL_VERSION
    attribute_labels: tuple[str, ...] = ()  # the tail of `labels` that the attributes output carries
    # The labels the config publishes as production-grade (`production_labels`); None: every label (not published).
    production_labels: tuple[str, ...] | None = None

    @classmethod
    def from_config(cls, config, name: str = contract.MODEL_NAME, version: str = contract.MODEL_VERSION) -> "ModelInfo":
        labels, thresholds = labels_and_thresholds(config)
        attributes = tuple(output_labels(config).get(contract.ATTRIBUTES_NAME, ()))
        production = production_labels_in(config)
        return cls(
            labels,
            thresholds,
            int(config.max_batch_size),
            name,
            version,
            attributes,
            None if production is None else tuple(production),
        )

    @property
    def score_labels(self) -> list[str]:
        """The labels of the `scores` output."""
        return self.labels[: len(self.labels) - len(self.attribute_labels)]

    @property
    def outputs(self) -> list[str]:
        """Output tensors to request; their columns, concatenated, follow `labels`."""
        return [contract.OUTPUT_NAME, contract.ATTRIBUTES_NAME] if self.attribute_labels else [contract.OUTPUT_NAME]


@dataclass(frozen=True)
class ClientSettings:
    url: str | None = None  # host:port; None = the protocol's default on 127.0.0.1
    protocol: str = "grpc"
    model_name: str = contract.MODEL_NAME
    timeout_s: float = 30.0  # per request, end to end
    retries: int = 8  # attempts after the first, for transient failures
    backoff_s: float = 0.5  # first back-off; doubles each retry up to backoff_max_s, with jitter
    backoff_max_s: float = 8.0
    wait_ready_s: float = 60.0  # at start-up: how long to wait for the model to be ready
    max_in_flight: int = 8

    def __post_init__(self):
        if self.protocol not in DEFAULT_URLS:
            raise ValueError(f"protocol must be 'grpc' or 'http', not {self.protocol!r}")
        host_port(self.url or DEFAULT_URLS[self.protocol])  # a bad address fails here, with its reason

    @property
    def address(self) -> str:
        return host_port(self.url or DEFAULT_URLS[self.protocol])


def _raise_if_cancelled() -> None:
    """Re-raise a cancellation that a client library turned into an error of its own.

    Cancelling a task in the middle of an RPC (Ctrl-C under asyncio.run) can surface as the RPC's
    failure (gRPC's UNAVAILABLE / CANCELLED), which would read as "server unavailable" and be retried.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def is_transient(exc: BaseException) -> bool:
    """A failure worth retrying: decided by status code or exception type, never by message text."""
    from tritonclient.utils import InferenceServerException

    if isinstance(exc, InferenceServerException):
        return str(exc.status()) in TRANSIENT_GRPC | TRANSIENT_HTTP
    import aiohttp

    return isinstance(
        exc, (asyncio.TimeoutError, ConnectionError, aiohttp.ClientConnectionError, aiohttp.ServerTimeoutError)
    )


def is_server_failure(exc: BaseException) -> bool:
    """An answer (or no answer) from the server, as opposed to a bug on our side."""
    import aiohttp
    from tritonclient.utils import InferenceServerException

    return isinstance(exc, (InferenceServerException, asyncio.TimeoutError, OSError, aiohttp.ClientError))


def refused_photo_reason(exc) -> str | None:
    """The server's one-line reason when the photo model refused a photo (INVALID_ARGUMENT / HTTP 400: the photo's
    fault, not retried), else None."""
    if str(exc.status()) not in REFUSED_PHOTO:
        return None
    reason = " ".join(str(exc.message() or exc).split())
    return reason.removeprefix(f"{contract.PHOTO_INPUT_NAME}: ")[:300]


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


class AsyncScorer:
    """Scores batches of 150x150 uint8 RGB crops on a Triton server."""

    def __init__(self, settings: ClientSettings | None = None):
        self.settings = settings or ClientSettings()
        self._client = None
        self._semaphore = None
        self.info: ModelInfo | None = None

    async def __aenter__(self) -> "AsyncScorer":
        await self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def connect(self) -> ModelInfo:
        """Open the connection, wait (bounded) for the model to be ready, read labels/thresholds/version."""
        s = self.settings
        if s.protocol == "grpc":
            import tritonclient.grpc.aio as triton

            self._client = triton.InferenceServerClient(s.address)
        else:
            import tritonclient.http.aio as triton

            # aiohttp's total timeout per request; Triton's own `timeout=` is a server-side queue
            # timeout in microseconds and is not what a client deadline means.
            self._client = triton.InferenceServerClient(s.address, conn_timeout=s.timeout_s)
        self._triton = triton
        self._semaphore = asyncio.Semaphore(s.max_in_flight)
        await self._wait_ready()
        config = await self._with_retries(self._read_config, "read model config")
        metadata = await self._with_retries(self._read_metadata, "read model metadata")
        versions = [str(v) for v in metadata.get("versions", [])] or [contract.MODEL_VERSION]
        self.info = ModelInfo.from_config(config, name=s.model_name, version=max(versions, key=lambda v: (len(v), v)))
        return self.info

    async def _wait_ready(self) -> None:
        """Poll model readiness until it is ready or `wait_ready_s` have passed (a server still starting).

        A server that is not ready at the first look, or does not answer within WAIT_NOTICE_S, gets
        one WARNING line at once ("waiting up to 60 s for face2hbe at 127.0.0.1:8001 ..."), so
        waiting never looks like hanging. Cancelling the wait (Ctrl-C under asyncio.run) ends it
        at once with CancelledError, never as "not ready".
        """
        from tenacity import (
            AsyncRetrying,
            RetryError,
            retry_if_exception,
            retry_if_result,
            stop_after_delay,
            wait_exponential_jitter,
        )

        s = self.settings
        last: list[str] = []
        noticed = []

        def notice() -> None:
            if not noticed:
                noticed.append(True)
                log.warning("waiting up to %g s for %s at %s ...", s.wait_ready_s, s.model_name, s.address)

        async def ready() -> bool:
            try:
                ok = await asyncio.wait_for(self._client.is_model_ready(s.model_name), timeout=min(s.timeout_s, 10.0))
            except Exception as exc:
                _raise_if_cancelled()
                if not is_server_failure(exc):
                    raise
                last[:] = [one_line(exc)]
                if not is_transient(exc):
                    raise
                ok = False
            _raise_if_cancelled()  # gRPC can answer a cancelled check with "not ready" instead of raising
            if not ok:
                notice()
            return ok

        retrying = AsyncRetrying(
            retry=retry_if_result(lambda ok: not ok) | retry_if_exception(is_transient),
            stop=stop_after_delay(s.wait_ready_s),
            wait=wait_exponential_jitter(multiplier=0.2, max=2.0),
        )
        slow = asyncio.get_running_loop().call_later(WAIT_NOTICE_S, notice)
        try:
            await retrying(ready)
        except RetryError:
            why = f": {last[0]}" if last else ""
            raise ServerUnavailableError(
                f"model {s.model_name!r} not ready at {s.address} ({s.protocol}) within {s.wait_ready_s:g} s{why}"
            ) from None
        except Exception as exc:
            if not is_server_failure(exc):
                raise
            raise ServerUnavailableError(
                f"model {s.model_name!r} at {s.address} ({s.protocol}): {one_line(exc)}"
            ) from None
        finally:
            slow.cancel()

    async def _read_config(self):
        s = self.settings
        if s.protocol == "grpc":
            response = await self._client.get_model_config(s.model_name, as_json=True, client_timeout=s.timeout_s)
            return config_from_json(response["config"])
        return config_from_json(await self._client.get_model_config(s.model_name))

    async def _read_metadata(self) -> dict:
        s = self.settings
        if s.protocol == "grpc":
            return await self._client.get_model_metadata(s.model_name, as_json=True, client_timeout=s.timeout_s)
        return await self._client.get_model_metadata(s.model_name)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def score(self, crops: np.ndarray) -> np.ndarray:
        """Scores [N, len(info.labels)] for crops [N,150,150,3] uint8, split into max-batch requests.

        The columns follow `info.labels`: the `scores` output's, then the `attributes` output's when served.
        """
        if (
            crops.ndim != 4
            or crops.shape[1:] != contract.INPUT_SHAPE
            or crops.dtype != contract.numpy_dtype(contract.INPUT_DTYPE)
        ):
            raise InferenceError(
                f"crops must be uint8 [N,{','.join(map(str, contract.INPUT_SHAPE))}], got {crops.dtype} {list(crops.shape)}"
            )
        if len(crops) == 0:
            return np.zeros((0, len(self.info.labels)), np.float32)
        step = self.info.max_batch_size or len(crops)
        parts = await asyncio.gather(*(self._score_batch(crops[i : i + step]) for i in range(0, len(crops), step)))
        return np.concatenate(parts)

    async def _score_batch(self, batch: np.ndarray) -> np.ndarray:
        async with self._semaphore:
            return await self._with_retries(lambda: self._infer(batch), f"infer batch of {len(batch)}")

    async def _infer(self, batch: np.ndarray) -> np.ndarray:
        t, s = self._triton, self.settings
        inputs = [t.InferInput(contract.INPUT_NAME, list(batch.shape), contract.INPUT_DTYPE)]
        inputs[0].set_data_from_numpy(batch)
        outputs = [t.InferRequestedOutput(name) for name in self.info.outputs]
        if s.protocol == "grpc":
            result = await self._client.infer(s.model_name, inputs, outputs=outputs, client_timeout=s.timeout_s)
        else:
            result = await asyncio.wait_for(
                self._client.infer(s.model_name, inputs, outputs=outputs), timeout=s.timeout_s
            )
        return np.concatenate([result.as_numpy(name) for name in self.info.outputs], axis=1)

    async def score_photo(self, data: bytes, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(boxes int32 [N,4] top/right/bottom/left, scores [N, info.labels], detection scores [N]) of one encoded photo.

        The photo model (contract.PHOTO_MODEL_NAME) decodes, detects and crops on the server and scores the
        crops through the face model. A photo the server refuses (unreadable, too large: INVALID_ARGUMENT,
        HTTP 400) raises BadImageError with the server's reason; other failures as for `score`.
        """
        async with self._semaphore:
            return await self._with_retries(lambda: self._infer_photo(data, name), f"infer photo {name!r}")

    async def _infer_photo(self, data: bytes, name: str):
        from tritonclient.utils import InferenceServerException

        t, s = self._triton, self.settings
        inputs = [t.InferInput(contract.PHOTO_INPUT_NAME, list(contract.PHOTO_INPUT_SHAPE), contract.PHOTO_INPUT_DTYPE)]
        inputs[0].set_data_from_numpy(np.array([data], dtype=object))
        names = (contract.BOXES_NAME, contract.OUTPUT_NAME, contract.DETECTION_SCORES_NAME) + (
            (contract.ATTRIBUTES_NAME,) if self.info.attribute_labels else ()
        )
        outputs = [t.InferRequestedOutput(n) for n in names]
        try:
            if s.protocol == "grpc":
                result = await self._client.infer(
                    contract.PHOTO_MODEL_NAME, inputs, outputs=outputs, client_timeout=s.timeout_s
                )
            else:
                result = await asyncio.wait_for(
                    self._client.infer(contract.PHOTO_MODEL_NAME, inputs, outputs=outputs), timeout=s.timeout_s
                )
        except InferenceServerException as exc:
            reason = refused_photo_reason(exc)
            if reason is not None:
                raise BadImageError(name, f"refused by the server: {reason}") from None
            raise
        boxes = result.as_numpy(contract.BOXES_NAME).reshape(-1, 4)
        # One row per face in self.info.labels order: the scores' labels, then the attributes'.
        rows = np.concatenate(
            [
                result.as_numpy(name).reshape(len(boxes), width)
                for name, width in (
                    (contract.OUTPUT_NAME, len(self.info.score_labels)),
                    (contract.ATTRIBUTES_NAME, len(self.info.attribute_labels)),
                )
                if width
            ],
            axis=1,
        )
        return boxes, rows, result.as_numpy(contract.DETECTION_SCORES_NAME).reshape(-1)

    async def _with_retries(self, call, what: str):
        """`call()`, retried on transient failures; InferenceError / ServerUnavailableError otherwise."""
        from tenacity import AsyncRetrying, RetryError, retry_if_exception, stop_after_attempt, wait_exponential_jitter

        s = self.settings

        def before_sleep(state) -> None:
            log.warning(
                "%s failed (%s); retry %d/%d in %.1fs",
                what,
                one_line(state.outcome.exception()),
                state.attempt_number,
                s.retries,
                state.next_action.sleep,
            )

        retrying = AsyncRetrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_attempt(s.retries + 1),
            wait=wait_exponential_jitter(multiplier=s.backoff_s, max=s.backoff_max_s, jitter=s.backoff_s / 4),
            before_sleep=before_sleep,
        )

        async def attempt():  # tenacity awaits only coroutine functions, not lambdas returning coroutines
            try:
                return await call()
            except Exception:
                _raise_if_cancelled()  # a cancelled run (Ctrl-C) ends now, not after the retries
                raise

        try:
            return await retrying(attempt)
        except RetryError as exc:
            raise ServerUnavailableError(
                f"{what}: server at {s.address} ({s.protocol}) unavailable after {s.retries + 1} attempts: "
                f"{one_line(exc.last_attempt.exception())}"
            ) from None
        except Exception as exc:
            if not is_server_failure(exc):
                raise  # our own bug: crash loudly, never a per-image record
            raise InferenceError(f"{what}: server error: {one_line(exc)}") from None
