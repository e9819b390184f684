#!/usr/bin/env node
// Score a raw uint8 batch with the face2hbe model over KServe v2 gRPC, from Node.js.
//
//   node infer.js --url 127.0.0.1:8001 --model face2hbe --batch 2 < faces.u8
//
// stdin: batch x H x W x C bytes (RGB face crops, row-major, channels last; H, W, C as the model says).
// stdout: one JSON object {model, labels, thresholds, scores: [[eyewear, beard, hat], ...]}.
// Everything about the model comes from the server's model config, as any client should read it:
// the input's name, datatype and dims, the output's name, the labels and thresholds (parameters).
// Uses Triton's own grpc_service.proto / model_config.proto (proto/, BSD-3-Clause, NVIDIA).
"use strict";

const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

function parseArgs(argv) {
  const args = { url: "127.0.0.1:8001", model: "", batch: 1, timeout: 30 };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, "");
    if (!(key in args) || argv[i + 1] === undefined) throw new Error(`unknown or incomplete option ${argv[i]}`);
    args[key] = typeof args[key] === "number" ? Number(argv[i + 1]) : argv[i + 1];
  }
  if (!Number.isInteger(args.batch) || args.batch < 1) throw new Error("--batch must be a positive integer");
  if (!args.model) throw new Error("--model NAME is required (the served model to call)");
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

  const stub = client(args.url);
  const { config } = await call(stub, "ModelConfig", { name: args.model }, args.timeout);
  if (config.input.length !== 1 || config.output.length < 1) throw new Error(`model ${args.model} does not take one input tensor`);
  const input = config.input[0];
  const output = config.output[0];
  const dims = input.dims.map(Number); // per item; the batch dimension comes first on the wire
  const datatype = input.data_type.replace(/^TYPE_/, "");
  if (datatype !== "UINT8") throw new Error(`input ${input.name} is ${datatype}: this client sends raw bytes (UINT8)`);
  const expected = args.batch * dims.reduce((a, b) => a * b, 1);
  if (pixels.length !== expected) throw new Error(`stdin has ${pixels.length} bytes, expected ${expected} for batch ${args.batch} of [${dims}]`);
  const params = config.parameters || {};
  if (!params.labels) throw new Error(`model ${args.model} publishes no 'labels' parameter`);
  const labels = params.labels.string_value.split(",");
  const thresholds = params.thresholds ? JSON.parse(params.thresholds.string_value) : {};

  const response = await call(
    stub,
    "ModelInfer",
    {
      model_name: args.model,
      inputs: [{ name: input.name, datatype, shape: [args.batch, ...dims] }],
      outputs: [{ name: output.name }],
      raw_input_contents: [pixels],
    },
    args.timeout,
  );
  const out = response.outputs.findIndex((o) => o.name === output.name);
  if (out < 0) throw new Error(`response has no '${output.name}' output`);
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
