#!/usr/bin/env python3
"""Score face crops with the face2hbe model on a Triton (KServe v2) server over gRPC.

Each image is one face crop, sent as raw RGB pixels (UINT8); the graph does its own preprocessing. Crop as
face2hbe does (docs/kserve-contract.md): other framings score worse. Labels and thresholds come from the
served model config. Usage: python examples/crops.py face1.png face2.jpg --url localhost:8001
"""

import argparse
import json

import numpy as np
import tritonclient.grpc as grpcclient
from PIL import Image

MODEL = "face2hbe"
INPUT = "image"  # UINT8 [N, 150, 150, 3]
OUTPUTS = ("scores", "attributes")  # FP32 [N, 3] in `labels` order, [N, 9] in `attribute_labels` order


def main() -> None:
    parser = argparse.ArgumentParser(description="Score face crops with the face2hbe model (gRPC).")
    parser.add_argument("crops", nargs="+", help="face crop image files, one face each")
    parser.add_argument("--url", default="localhost:8001", help="the server's gRPC host:port (default: %(default)s)")
    args = parser.parse_args()

    client = grpcclient.InferenceServerClient(args.url)
    config = client.get_model_config(MODEL, as_json=True)["config"]
    params = {key: value["string_value"] for key, value in config["parameters"].items()}
    labels = params["labels"].split(",") + params["attribute_labels"].split(",")  # the columns of OUTPUTS, in order
    thresholds = json.loads(params["thresholds"])  # a face has a label when its score >= the label's threshold
    height, width, _ = (int(d) for d in config["input"][0]["dims"])

    crops = [Image.open(path).convert("RGB") for path in args.crops]
    pixels = np.stack([np.asarray(c if c.size == (width, height) else c.resize((width, height))) for c in crops])
    step = int(config["max_batch_size"])  # the most crops one request may carry
    rows = []
    for i in range(0, len(pixels), step):
        batch = pixels[i : i + step].astype(np.uint8)
        image = grpcclient.InferInput(INPUT, list(batch.shape), "UINT8")
        image.set_data_from_numpy(batch)
        result = client.infer(MODEL, [image], outputs=[grpcclient.InferRequestedOutput(name) for name in OUTPUTS])
        rows += list(np.concatenate([result.as_numpy(name) for name in OUTPUTS], axis=1))

    for path, row in zip(args.crops, rows):
        print(path)
        for label, score in zip(labels, row):
            verdict = "yes" if score >= thresholds[label] else "no"
            print(f"  {label:<10} {score:.6f}  {verdict:<3} (threshold {thresholds[label]})")


if __name__ == "__main__":
    main()
