#!/usr/bin/env node
// Score a raw uint8 batch with the face2hbe model over KServe v2 gRPC, from Node.js.
//
//   node infer.js --url 127.0.0.1:8001 --batch 2 < faces.u8
//
// stdin: batch x 150 x 150 x 3 bytes (RGB face crops, row-major, channels last).
// stdout: one JSON object {model, labels, thresholds, scores: [[eyewear, beard, hat], ...]}.
// Labels and thresholds come from the model config's parameters, as any client should read them.
// Uses Triton's own grpc_service.proto / model_config.proto (proto/, BSD-3-Clause, NVIDIA).
"use strict";

const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const SIDE = 150;
const CHANNELS = 3;

function parseArgs(argv) {
  const args = { url: "127.0.0.1:8001", model: "face2hbe", batch: 1, timeout: 30 };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, "");
    if (!(key in args) || argv[i + 1] === undefined) throw new Error(`unknown or incomplete option ${argv[i]}`);
    args[key] = typeof args[key] === "number" ? Number(argv[i + 1]) : argv[i + 1];
  }
  if (!Number.isInteger(args.batch) || args.batch < 1) throw new Error("--batch must be a positive integer");
  return args;
}

function readStdin() {
  return new Promise((resolve, reject) => {
    const chunks = [];
    process.stdin.on("data", (c) => chunks.push(c));
    process.stdin.on("end", () => resolve(Buffer.concat(chunks)));
    process.stdin.on("error", reject);
  });
}

function client(url) {
  const definition = protoLoader.loadSync("grpc_service.proto", {
    includeDirs: [path.join(__dirname, "proto")],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const { inference } = grpc.loadPackageDefinition(definition);
  return new inference.GRPCInferenceService(url, grpc.credentials.createInsecure());
}

function call(stub, method, request, timeoutS) {
  const deadline = new Date(Date.now() + timeoutS * 1000);
  return new Promise((resolve, reject) =>
    stub[method](request, { deadline }, (err, response) => (err ? reject(err) : resolve(response))),
  );
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const pixels = await readStdin();
  const expected = args.batch * SIDE * SIDE * CHANNELS;
  if (pixels.length !== expected) throw new Error(`stdin has ${pixels.length} bytes, expected ${expected} for batch ${args.batch}`);

  const stub = client(args.url);
  const { config } = await call(stub, "ModelConfig", { name: args.model }, args.timeout);
  const params = config.parameters || {};
  const labels = params.labels ? params.labels.string_value.split(",") : ["eyewear", "beard", "hat"];
  const thresholds = params.thresholds ? JSON.parse(params.thresholds.string_value) : {};

  const response = await call(
    stub,
    "ModelInfer",
    {
      model_name: args.model,
      inputs: [{ name: "image", datatype: "UINT8", shape: [args.batch, SIDE, SIDE, CHANNELS] }],
      outputs: [{ name: "scores" }],
      raw_input_contents: [pixels],
    },
    args.timeout,
  );
  const out = response.outputs.findIndex((o) => o.name === "scores");
  if (out < 0) throw new Error("response has no 'scores' output");
  const raw = response.raw_output_contents[out];
  // FP32 little-endian, [batch, labels]; copy into an aligned buffer before viewing as floats.
  const flat = new Float32Array(new Uint8Array(raw).buffer);
  const scores = [];
  for (let i = 0; i < args.batch; i += 1) scores.push(Array.from(flat.subarray(i * labels.length, (i + 1) * labels.length)));
  stub.close();
  process.stdout.write(JSON.stringify({ model: response.model_name, labels, thresholds, scores }) + "\n");
}

main().catch((err) => {
  process.stderr.write(`error: ${err.message || err}\n`);
  process.exit(1);
});
