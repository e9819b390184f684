#!/usr/bin/env node
// Score face crops (face2hbe) or a whole photo (face2hbe_photo) over KServe v2 gRPC, from Node.js.
//
//   node infer.js --url 127.0.0.1:8001 --model face2hbe --batch 2 < faces.u8
//   node infer.js --url 127.0.0.1:8001 --model face2hbe_photo < photo.jpg
//
// Crops (the model's input is UINT8): stdin holds batch x H x W x C bytes (RGB face crops, row-major,
// channels last; H, W, C as the model says); stdout gets one JSON object
// {model, labels, thresholds, scores: [[eyewear, beard, hat], ...]}.
// Photo (the model's input is BYTES): stdin holds one encoded photo (JPEG, PNG, ...), sent as it is;
// the server finds the faces; stdout gets {model, labels, thresholds, attribute_thresholds, production_labels,
// faces: [{box: [top, right, bottom, left], scores: [...], detection_score, attributes: {label: score},
// passing: [...], recommendable: [...]}, ...]} (no face: an empty list). `passing` and `recommendable` are the
// Python client's decisions (client/decisions.py) from the served config: the labels at or above their threshold,
// largest margin over it first; of those, the production-grade ones (`production_labels`; every label when the
// config has none), which a catalog may recommend.
// Everything about the model comes from the server's model config, as any client should read it:
// the input's name, datatype and dims, the outputs' names, the labels and thresholds (parameters).
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
  const params = config.parameters || {};
  if (!params.labels) throw new Error(`model ${args.model} publishes no 'labels' parameter`);
  const labels = params.labels.string_value.split(",");
  const published = params.thresholds ? JSON.parse(params.thresholds.string_value) : {};
  // The thresholds of the labels this client reads (the config may publish more, for other outputs).
  const thresholds = Object.fromEntries(labels.filter((l) => l in published).map((l) => [l, published[l]]));
  const datatype = input.data_type.replace(/^TYPE_/, "");
  if (datatype === "STRING") {
    const faces = await photo(stub, args, config, labels, pixels);
    stub.close();
    const attributeLabels = listParam(params, "attribute_labels");
    const served = [...labels, ...attributeLabels];
    const production = params.production_labels ? listParam(params, "production_labels") : served;
    const attributeThresholds = Object.fromEntries(attributeLabels.filter((l) => l in published).map((l) => [l, published[l]]));
    for (const face of faces) {
      const all = { ...Object.fromEntries(labels.map((l, k) => [l, face.scores[k]])), ...(face.attributes || {}) };
      face.passing = passing(all, published);
      face.recommendable = face.passing.filter((l) => production.includes(l));
    }
    const out = { model: args.model, labels, thresholds, attribute_thresholds: attributeThresholds, production_labels: production, faces };
    process.stdout.write(JSON.stringify(out) + "\n");
    return;
  }
  const dims = input.dims.map(Number); // per item; the batch dimension comes first on the wire
  if (datatype !== "UINT8") throw new Error(`input ${input.name} is ${datatype}: this client sends raw bytes (UINT8) or a photo (STRING/BYTES)`);
  const expected = args.batch * dims.reduce((a, b) => a * b, 1);
  if (pixels.length !== expected) throw new Error(`stdin has ${pixels.length} bytes, expected ${expected} for batch ${args.batch} of [${dims}]`);

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

// A comma-separated list parameter of the model config (absent: empty).
function listParam(params, key) {
  return ((params[key] || { string_value: "" }).string_value || "").split(",").filter(Boolean);
}

// client/decisions.py, the same rules: a label passes when its score reaches its threshold; the passing labels by
// margin over the threshold ((score - threshold) / (1 - threshold)), largest first, ties in served order.
function margin(score, threshold) {
  if (threshold < 1) return (score - threshold) / (1 - threshold);
  return score >= threshold ? 0 : -1;
}

function passing(scores, thresholds) {
  const order = Object.keys(scores);
  return order
    .filter((l) => l in thresholds && scores[l] >= thresholds[l])
    .sort((a, b) => margin(scores[b], thresholds[b]) - margin(scores[a], thresholds[a]) || order.indexOf(a) - order.indexOf(b));
}

// KServe v2 BYTES on the wire: each element is a 4-byte little-endian length, then its bytes.
function bytesElement(data) {
  const length = Buffer.alloc(4);
  length.writeUInt32LE(data.length, 0);
  return Buffer.concat([length, data]);
}

// A raw output as a typed array of its datatype (copied into an aligned buffer first).
function typed(raw, datatype) {
  const bytes = new Uint8Array(raw);
  if (datatype === "FP32") return new Float32Array(bytes.buffer);
  if (datatype === "INT32") return new Int32Array(bytes.buffer);
  throw new Error(`output datatype ${datatype} is not handled by this client`);
}

// The photo model: one encoded photo in; per face a box, its label scores and its detection score out.
async function photo(stub, args, config, labels, data) {
  if (data.length === 0) throw new Error("stdin is empty: pipe one encoded photo (JPEG, PNG, ...) into this client");
  const input = config.input[0];
  const names = config.output.map((o) => o.name);
  // A photo the server cannot take (not an image, above a limit) is INVALID_ARGUMENT with the reason as its
  // message (face2hbe serve and NVIDIA's container alike): the photo's fault, not the server's.
  const response = await call(
    stub,
    "ModelInfer",
    {
      model_name: args.model,
      inputs: [{ name: input.name, datatype: "BYTES", shape: input.dims.map(Number) }],
      outputs: names.map((name) => ({ name })),
      raw_input_contents: [bytesElement(data)],
    },
    args.timeout,
  ).catch((err) => {
    if (err.code !== grpc.status.INVALID_ARGUMENT) throw err;
    throw new Error(`photo refused: ${String(err.details).replace(/^photo: /, "")}`);
  });
  const out = {};
  response.outputs.forEach((o, i) => {
    out[o.name] = { shape: o.shape.map(Number), values: typed(response.raw_output_contents[i], o.datatype) };
  });
  for (const name of ["boxes", "scores", "detection_scores"]) if (!out[name]) throw new Error(`response has no '${name}' output`);
  const faces = [];
  for (let i = 0; i < out.boxes.shape[0]; i += 1) {
    faces.push({
      box: Array.from(out.boxes.values.subarray(i * 4, (i + 1) * 4)),
      scores: Array.from(out.scores.values.subarray(i * labels.length, (i + 1) * labels.length)),
      detection_score: out.detection_scores.values[i],
    });
    if (out.attributes) {
      // The attributes output, named by the config's attribute_labels (its order).
      const names = (config.parameters.attribute_labels || { string_value: "" }).string_value.split(",").filter(Boolean);
      const row = out.attributes.values.subarray(i * names.length, (i + 1) * names.length);
      faces[i].attributes = Object.fromEntries(names.map((n, k) => [n, row[k]]));
    }
  }
  return faces;
}

// One line per error.
function oneLine(err) {
  return String(err.message || err).split(/\s+/).join(" ").trim();
}

main().catch((err) => {
  process.stderr.write(`error: ${oneLine(err)}\n`);
  process.exit(1);
});
