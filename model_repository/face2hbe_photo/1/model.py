"""face2hbe_photo in Triton's Python backend: photo bytes in, every face's box, scores, detection score out.

The one adapter for both servers: NVIDIA's Triton container and `face2hbe serve` (serving/embedded.py) run
this same file. A thin layer over face2hbe.photo.score_photo: decoding with the limits, detection and
cropping run here; the crops are scored by the face2hbe model through BLS, so its dynamic batcher gathers
faces from many photos. Bad input (not an image, too many bytes or pixels) answers INVALID_ARG (gRPC
INVALID_ARGUMENT, HTTP 400) with one line naming the reason; the model stays loaded. The face2hbe package is
installed in the image (Dockerfile) and in the Python environment `face2hbe serve` runs from.
"""

import json

import triton_python_backend_utils as pb_utils

from face2hbe import contract
from face2hbe.errors import BadImageError
from face2hbe.photo import FACE_OUTPUT_NAMES, PhotoSettings, photo_bytes, score_photo


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        self.settings = PhotoSettings.from_parameters(params)
        self.output_names = [output["name"] for output in config["output"]]

    def _score_crops(self, crops):
        """The face2hbe model's scores and attributes for uint8 crops [n, 150, 150, 3] (BLS), by output name."""
        request = pb_utils.InferenceRequest(
            model_name=contract.MODEL_NAME,
            requested_output_names=list(FACE_OUTPUT_NAMES),
            inputs=[pb_utils.Tensor(contract.INPUT_NAME, crops)],
        )
        response = request.exec()
        if response.has_error():
            raise pb_utils.TritonModelException(f"{contract.MODEL_NAME}: {response.error().message()}")
        return {name: pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in FACE_OUTPUT_NAMES}

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                data = photo_bytes(pb_utils.get_input_tensor_by_name(request, contract.PHOTO_INPUT_NAME).as_numpy())
                outputs = score_photo(data, self._score_crops, self.settings)
            except BadImageError as exc:
                error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            except Exception as exc:  # the face2hbe model failed: this request fails, the next ones still run
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(" ".join(str(exc).split()))))
                continue
            tensors = [pb_utils.Tensor(name, outputs[name]) for name in self.output_names]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    def finalize(self):
        pass
