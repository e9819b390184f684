"""Async KServe v2 client for the face2hbe model (tritonclient, gRPC or HTTP).

Labels and thresholds are read from the served model's config parameters;
requests are bounded in flight and retried with back-off when the server is
busy or briefly down.
"""
from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass

import numpy as np

from face2hbe import contract
from face2hbe.errors import InferenceError, ServerUnavailableError

log = logging.getLogger(__name__)

DEFAULT_URLS = {"grpc": f"{contract.DEFAULT_HOST}:{contract.GRPC_PORT}", "http": f"{contract.DEFAULT_HOST}:{contract.HTTP_PORT}"}


@dataclass(frozen=True)
class ModelInfo:
    labels: list[str]
    thresholds: dict[str, float]
    max_batch_size: int


@dataclass(frozen=True)
class ClientSettings:
    url: str | None = None  # host:port; None = the protocol's default on 127.0.0.1
    protocol: str = "grpc"
    model_name: str = contract.MODEL_NAME
    timeout_s: float = 30.0
    retries: int = 4  # attempts after the first, for transient failures
    backoff_s: float = 0.5  # first back-off; doubles each retry, with jitter
    max_in_flight: int = 8

    def __post_init__(self):
        if self.protocol not in DEFAULT_URLS:
            raise ValueError(f"protocol must be 'grpc' or 'http', not {self.protocol!r}")

    @property
    def address(self) -> str:
        url = self.url or DEFAULT_URLS[self.protocol]
        return url.split("://", 1)[-1]


def _is_transient(exc: Exception) -> bool:
    """Unavailable, timed out, or overloaded: worth a retry."""
    text = str(exc).lower()
    return any(
        key in text
        for key in ("unavailable", "deadline", "timed out", "timeout", "connect", "refused", "reset", "exhausted", "503", "502", "overload", "queue")
    )


class AsyncScorer:
    """Scores batches of 150x150 uint8 RGB crops on a Triton server."""

    def __init__(self, settings: ClientSettings = ClientSettings()):
        self.settings = settings
        self._client = None
        self._semaphore = None
        self.info: ModelInfo | None = None

    async def __aenter__(self) -> "AsyncScorer":
        await self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def connect(self) -> ModelInfo:
        """Open the connection and read labels/thresholds from the served model config."""
        s = self.settings
        if s.protocol == "grpc":
            import tritonclient.grpc.aio as triton

            self._client = triton.InferenceServerClient(s.address)
        else:
            import tritonclient.http.aio as triton

            self._client = triton.InferenceServerClient(s.address, conn_timeout=s.timeout_s)
        self._triton = triton
        self._semaphore = asyncio.Semaphore(s.max_in_flight)
        config = await self._with_retries(self._read_config, "read model config")
        self.info = _model_info(config)
        return self.info

    async def _read_config(self):
        if self.settings.protocol == "grpc":
            response = await self._client.get_model_config(self.settings.model_name, as_json=True, client_timeout=self.settings.timeout_s)
            return response["config"]
        return await self._client.get_model_config(self.settings.model_name)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def score(self, crops: np.ndarray) -> np.ndarray:
        """Scores [N, labels] for crops [N,150,150,3] uint8, split into max-batch requests."""
        if crops.ndim != 4 or crops.shape[1:] != contract.INPUT_SHAPE or crops.dtype != np.uint8:
            raise InferenceError(f"crops must be uint8 [N,{','.join(map(str, contract.INPUT_SHAPE))}], got {crops.dtype} {list(crops.shape)}")
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
        outputs = [t.InferRequestedOutput(contract.OUTPUT_NAME)]
        if s.protocol == "grpc":
            result = await self._client.infer(s.model_name, inputs, outputs=outputs, client_timeout=s.timeout_s)
        else:
            result = await self._client.infer(s.model_name, inputs, outputs=outputs, timeout=int(s.timeout_s))
        return result.as_numpy(contract.OUTPUT_NAME)

    async def _with_retries(self, call, what: str):
        s = self.settings
        delay = s.backoff_s
        for attempt in range(s.retries + 1):
            try:
                return await call()
            except Exception as exc:  # tritonclient raises InferenceServerException and aiohttp/grpc errors
                transient = _is_transient(exc)
                if not transient:
                    raise InferenceError(f"{what}: server error: {_one_line(exc)}") from None
                if attempt == s.retries:
                    raise ServerUnavailableError(
                        f"{what}: server at {s.address} ({s.protocol}) unavailable after {s.retries + 1} attempts: {_one_line(exc)}"
                    ) from None
                log.warning("%s failed (%s); retry %d/%d in %.1fs", what, _one_line(exc), attempt + 1, s.retries, delay)
                await asyncio.sleep(delay * (1 + random.random() * 0.25))
                delay *= 2


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def _model_info(config: dict) -> ModelInfo:
    """Labels/thresholds from the served config (JSON), parsed by the same code as config.pbtxt."""
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2

    from face2hbe.export.repository import labels_and_thresholds

    message = json_format.ParseDict(config, model_config_pb2.ModelConfig(), ignore_unknown_fields=True)
    labels, thresholds = labels_and_thresholds(message)
    return ModelInfo(labels=labels, thresholds=thresholds, max_batch_size=int(message.max_batch_size))
