"""model_repository/face2hbe_photo/1/model.py, the Python-backend adapter for NVIDIA's Triton container.

The container cannot run here, so triton_python_backend_utils is a small stand-in module with
the API that python_backend documents (Tensor, InferenceRequest/Response, TritonError codes);
its BLS call (InferenceRequest.exec) runs the committed face2hbe ONNX graph in onnxruntime.
Detection runs for real on real photos.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types

import numpy as np
import pytest

from face2hbe import contract
from face2hbe.photo import PhotoSettings, score_photo
from face2hbe.repository import read_config

from conftest import REPOSITORY, SAMPLES
from test_bad_inputs import bomb_png_bytes

PHOTO_DIR = REPOSITORY / contract.PHOTO_MODEL_NAME
ONNX = REPOSITORY / contract.MODEL_NAME / contract.MODEL_VERSION / "model.onnx"


def _stand_in_pb_utils(session, bls_calls: list):
    """triton_python_backend_utils as the adapter uses it; BLS to face2hbe goes to `session`."""
    pb = types.ModuleType("triton_python_backend_utils")

    class TritonError:
        UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS, CANCELLED = range(8)

        def __init__(self, message, code=INTERNAL):
            self._message, self._code = message, code

        def message(self):
            return self._message

        def code(self):
            return self._code

    class TritonModelException(Exception):
        pass

    class Tensor:
        def __init__(self, name, array):
            self._name, self._array = name, np.asarray(array)

        def name(self):
            return self._name

        def as_numpy(self):
            return self._array

    class InferenceResponse:
        def __init__(self, output_tensors=(), error=None):
            self.output_tensors, self._error = list(output_tensors), error

        def has_error(self):
            return self._error is not None

        def error(self):
            return self._error

    class InferenceRequest:
        def __init__(self, model_name, requested_output_names, inputs):
            self.model_name, self.requested_output_names, self.inputs = (
                model_name,
                list(requested_output_names),
                list(inputs),
            )

        def exec(self):
            assert self.model_name == contract.MODEL_NAME
            feeds = {t.name(): t.as_numpy() for t in self.inputs}
            bls_calls.append(len(feeds[contract.INPUT_NAME]))
            outputs = session.run(self.requested_output_names, feeds)
            return InferenceResponse([Tensor(n, o) for n, o in zip(self.requested_output_names, outputs)])

    def get_input_tensor_by_name(request, name):
        return next((t for t in request.inputs if t.name() == name), None)

    def get_output_tensor_by_name(response, name):
        return next((t for t in response.output_tensors if t.name() == name), None)

    for item in (
        TritonError,
        TritonModelException,
        Tensor,
        InferenceResponse,
        InferenceRequest,
        get_input_tensor_by_name,
        get_output_tensor_by_name,
    ):
        setattr(pb, item.__name__, item)
    return pb


@pytest.fixture(scope="module")
def session():
    import onnxruntime as ort

    return ort.InferenceSession(str(ONNX), providers=["CPUExecutionProvider"])


@pytest.fixture()
def adapter(session, monkeypatch):
    """The adapter, initialised with the committed config.pbtxt as Triton passes it (JSON); (model, pb_utils, BLS batch sizes)."""
    from google.protobuf import json_format

    calls: list[int] = []
    pb = _stand_in_pb_utils(session, calls)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    spec = importlib.util.spec_from_file_location(
        "face2hbe_photo_model", PHOTO_DIR / contract.MODEL_VERSION / "model.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    config = json_format.MessageToDict(read_config(PHOTO_DIR), preserving_proto_field_name=True)
    model.initialize(
        {"model_config": json.dumps(config), "model_name": contract.PHOTO_MODEL_NAME, "model_version": "1"}
    )
    yield model, pb, calls
    model.finalize()


def _request(pb, data: bytes):
    return pb.InferenceRequest(
        contract.PHOTO_MODEL_NAME, [], [pb.Tensor(contract.PHOTO_INPUT_NAME, np.array([data], dtype=object))]
    )


def test_adapter_reads_its_limits_from_the_config(adapter):
    model, _, _ = adapter
    assert model.settings == PhotoSettings()
    assert model.output_names == [
        contract.BOXES_NAME,
        contract.OUTPUT_NAME,
        contract.DETECTION_SCORES_NAME,
        contract.ATTRIBUTES_NAME,
    ]


def test_adapter_answers_each_request_in_order(adapter, session):
    """One batch of requests: a face, a bad photo, no face, a bomb. Good ones equal the core function; bad ones INVALID_ARG."""
    model, pb, calls = adapter
    face, no_face = (SAMPLES / "grace_hopper.jpg").read_bytes(), (SAMPLES / "no_face_china.jpg").read_bytes()
    responses = model.execute(
        [
            _request(pb, face),
            _request(pb, b"not a photo"),
            _request(pb, no_face),
            _request(pb, bomb_png_bytes(side=30_000, garbage=True)),
        ]
    )
    assert len(responses) == 4
    assert calls == [1], "one BLS call for the one face; none for the others"

    names = [contract.OUTPUT_NAME, contract.ATTRIBUTES_NAME]
    want = score_photo(face, lambda crops: dict(zip(names, session.run(names, {contract.INPUT_NAME: crops}))))
    good = responses[0]
    assert not good.has_error()
    got = {t.name(): t.as_numpy() for t in good.output_tensors}
    assert list(got) == model.output_names
    np.testing.assert_array_equal(got[contract.BOXES_NAME], want[contract.BOXES_NAME])
    assert got[contract.BOXES_NAME].shape == (1, 4) and got[contract.BOXES_NAME].dtype == np.int32
    np.testing.assert_allclose(got[contract.OUTPUT_NAME], want[contract.OUTPUT_NAME], atol=1e-6)
    np.testing.assert_allclose(got[contract.ATTRIBUTES_NAME], want[contract.ATTRIBUTES_NAME], atol=1e-6)
    np.testing.assert_allclose(got[contract.DETECTION_SCORES_NAME], want[contract.DETECTION_SCORES_NAME])

    for response, reason in (
        (responses[1], "photo: not a recognised image format"),
        (responses[3], f"photo: image is above the {PhotoSettings().max_pixels}-pixel limit"),
    ):
        assert response.has_error()
        assert response.error().code() == pb.TritonError.INVALID_ARG
        assert response.error().message() == reason  # one line, the reason only

    empty = {t.name(): t.as_numpy() for t in responses[2].output_tensors}
    assert not responses[2].has_error()
    assert [empty[n].shape for n in model.output_names] == [
        (0, 4),
        (0, len(contract.LABELS)),
        (0,),
        (0, len(contract.ATTRIBUTE_LABELS)),
    ]


def test_a_failing_face2hbe_model_fails_the_request_not_the_adapter(adapter):
    model, pb, _ = adapter

    def broken_exec(self):
        return pb.InferenceResponse(error=pb.TritonError("model face2hbe is not ready", pb.TritonError.UNAVAILABLE))

    pb.InferenceRequest.exec = broken_exec
    face = (SAMPLES / "grace_hopper.jpg").read_bytes()
    (response,) = model.execute([_request(pb, face)])
    assert response.has_error() and response.error().code() == pb.TritonError.INTERNAL
    assert response.error().message() == "face2hbe: model face2hbe is not ready"
