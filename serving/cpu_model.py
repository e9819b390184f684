"""face2hbe on CPUs, as `face2hbe serve` runs it: a Triton Python-backend model.py running the ONNX file in onnxruntime.

The server copies this file to <workspace>/models/face2hbe/1/model.py next to a link to the repository's
model.onnx; its config.pbtxt is the committed one in CPU form (serving/embedded.py). Parameters: `graph`
("mirror" or "plain", face2hbe.graphs), `intra_op_thread_count` (onnxruntime's threads; 0 = its default) and
`run_rows` (rows per onnxruntime run, default face2hbe.graphs.CPU_RUN_ROWS: a gathered batch of 32 runs as four
of 8, which bounds the memory the CPU arena keeps); the session is face2hbe.graphs.cpu_session's, which
`face2hbe bench` measures in-process too.
Triton checks names, types, shapes and batch sizes against the config before a request gets here.
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from face2hbe import contract
from face2hbe.graphs import CPU_RUN_ROWS, cpu_session


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        onnx_file = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        threads = int(params.get("intra_op_thread_count", "0")) or None
        self.session = cpu_session(onnx_file, params.get("graph", "mirror"), threads)
        self.outputs = [output["name"] for output in config["output"]]
        self.run_rows = int(params.get("run_rows", "0")) or CPU_RUN_ROWS

    def execute(self, requests):
        """All the requests the dynamic batcher gathered, in onnxruntime runs of `run_rows`; each gets its own rows back."""
        images = [pb_utils.get_input_tensor_by_name(request, contract.INPUT_NAME).as_numpy() for request in requests]
        batch = np.concatenate(images) if len(images) > 1 else images[0]
        try:
            runs = [
                self.session.run(self.outputs, {contract.INPUT_NAME: batch[i : i + self.run_rows]})
                for i in range(0, len(batch), self.run_rows)
            ]
            results = [np.concatenate(parts) for parts in zip(*runs)]
        except Exception as exc:  # our fault, never the client's: INTERNAL, one line
            error = pb_utils.TritonError(" ".join(str(exc).split()))
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        responses, start = [], 0
        for batch in images:
            rows = slice(start, start + len(batch))
            tensors = [pb_utils.Tensor(name, result[rows]) for name, result in zip(self.outputs, results)]
            responses.append(pb_utils.InferenceResponse(tensors))
            start = rows.stop
        return responses
