#!/usr/bin/env python3
"""Find and score every face in photos with the face2hbe_photo model on a Triton (KServe v2) server (gRPC).

The server decodes each photo's bytes (JPEG, PNG, WebP, HEIC, ...), detects, crops and scores; per face it
answers a box (top, right, bottom, left), label scores and a detection score. Labels and thresholds come
from the served model config. Usage: python examples/photos.py photo1.jpg photo2.heic --url localhost:8001
"""

import argparse
import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

MODEL = "face2hbe_photo"
INPUT = "photo"  # BYTES [1]: one encoded photo per request
OUTPUTS = ("boxes", "scores", "attributes", "detection_scores")  # INT32 [F, 4], FP32 [F, 3], [F, 9], [F]


def main() -> int:
    parser = argparse.ArgumentParser(description="Find and score the faces in photos with face2hbe_photo (gRPC).")
    parser.add_argument("photos", nargs="+", help="photo files")
    parser.add_argument("--url", default="localhost:8001", help="the server's gRPC host:port (default: %(default)s)")
    args = parser.parse_args()

    client = grpcclient.InferenceServerClient(args.url)
    config = client.get_model_config(MODEL, as_json=True)["config"]
    params = {key: value["string_value"] for key, value in config["parameters"].items()}
    labels = params["labels"].split(",") + params["attribute_labels"].split(",")  # scores' columns, then attributes'
    thresholds = json.loads(params["thresholds"])

    failed = 0
    for path in args.photos:
        with open(path, "rb") as f:
            photo = grpcclient.InferInput(INPUT, [1], "BYTES")
            photo.set_data_from_numpy(np.array([f.read()], dtype=object))
        try:
            result = client.infer(MODEL, [photo], outputs=[grpcclient.InferRequestedOutput(n) for n in OUTPUTS])
        except InferenceServerException as exc:
            # A photo it cannot take (not an image, truncated, too large) is StatusCode.INVALID_ARGUMENT with one
            # line naming the reason: do not retry it. UNAVAILABLE or DEADLINE_EXCEEDED are worth a retry.
            print(f"{path}: {exc.status()}: {exc.message()}", file=sys.stderr)
            failed += 1
            continue
        boxes, detected = result.as_numpy("boxes"), result.as_numpy("detection_scores")
        scores = np.concatenate([result.as_numpy("scores"), result.as_numpy("attributes")], axis=1)
        print(f"{path}: {len(boxes)} face(s)")
        for box, detection, row in zip(boxes, detected, scores):
            top, right, bottom, left = (int(v) for v in box)
            print(f"  box top={top} right={right} bottom={bottom} left={left} detection={detection:.6f}")
            for label, score in zip(labels, row):
                print(f"    {label:<10} {score:.6f}  {'yes' if score >= thresholds[label] else 'no'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
