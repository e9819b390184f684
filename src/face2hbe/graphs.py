"""ONNX graphs on the CPU: the variants of a served graph, derived in memory (nothing is written to the
repository), and the one builder of onnxruntime CPU sessions (`cpu_session`) with its batched scorer.

The served graph is mirror-averaged: it scores each face and its mirror image in one batch
of 2N and returns the mean (docs/model.md). That doubles the convolution work for a small
gain in AUC; `plain_graph` removes the mirror branch and the averaging from the same file
(fp32 or INT8), so the CPU default can be chosen by measurement (docs/serving.md, "CPU
default") and the other graph is one flag away (`face2hbe serve --graph plain|mirror`).
"""

from __future__ import annotations

import numpy as np

from . import contract
from .errors import ModelRepositoryError
from .repository import MIRROR_AVERAGE_KEY

GRAPHS = ("mirror", "plain")  # `face2hbe serve --graph` choices: the file as exported, or without the mirror branch


def is_mirror_averaged(model) -> bool:
    """Whether an ONNX ModelProto has the mirror branch (a Concat of the batch and its ReverseSequence)."""
    return _mirror_concat(model) is not None


def _producers(graph) -> dict[str, object]:
    return {out: node for node in graph.node for out in node.output}


def _mirror_concat(model):
    """The Concat that stacks the faces and their mirror images along the batch axis, or None."""
    producers = _producers(model.graph)
    for node in model.graph.node:
        if node.op_type != "Concat" or len(node.input) != 2:
            continue
        mirrored = producers.get(node.input[1])
        if mirrored is not None and mirrored.op_type == "ReverseSequence":
            return node
    return None


def _average(model):
    """(Mul node, the tensor averaged): the mean of the two batch halves of the head's sigmoid."""
    producers = _producers(model.graph)
    for node in model.graph.node:
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        halves = [producers.get(name) for name in node.input]
        if not all(h is not None and h.op_type == "Slice" for h in halves) or halves[0].input[0] != halves[1].input[0]:
            continue
        for mul in model.graph.node:
            if mul.op_type == "Mul" and node.output[0] in mul.input:
                return mul, halves[0].input[0]
    return None


def plain_graph(model):
    """A copy of a mirror-averaged ONNX ModelProto that scores each face once (no mirror, no averaging).

    Raises ModelRepositoryError when the graph is not one of ours with a mirror branch.
    """
    import onnx

    concat, average = _mirror_concat(model), _average(model)
    if concat is None or average is None:
        raise ModelRepositoryError(
            "the graph has no mirror branch to remove (it is plain already, or not a face2hbe export)"
        )
    plain = onnx.ModelProto()
    plain.CopyFrom(model)
    graph = plain.graph
    rename = {concat.output[0]: concat.input[0], average[0].output[0]: average[1]}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    for out in graph.output:
        if out.name in rename:  # never the case for our exports (outputs are Slice/Gather results); kept correct anyway
            raise ModelRepositoryError(f"graph output {out.name!r} is the mirror average itself: cannot remove it")
    _prune(graph)
    for prop in plain.metadata_props:
        if prop.key == MIRROR_AVERAGE_KEY:
            prop.value = "false"
    return plain


def _prune(graph) -> None:
    """Drop the nodes and initializers no graph output depends on any more."""
    producers = _producers(graph)
    needed, stack = set(), [o.name for o in graph.output]
    while stack:
        name = stack.pop()
        node = producers.get(name)
        if node is None or id(node) in needed:
            continue
        needed.add(id(node))
        stack.extend(i for i in node.input if i)
        for attr in node.attribute:  # subgraphs (If/Loop) read outer tensors too
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                stack.extend(i for n in sub.node for i in n.input if i)
    keep = [node for node in graph.node if id(node) in needed]
    used = {i for node in keep for i in node.input} | {o.name for o in graph.output}
    del graph.node[:]
    graph.node.extend(keep)
    inits = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    infos = [v for v in graph.value_info if v.name in used or v.name in {o for n in keep for o in n.output}]
    del graph.value_info[:]
    graph.value_info.extend(infos)


def load_graph(onnx_model, graph: str = "mirror") -> bytes:
    """The serialized ONNX model (a file's path, or its bytes) as `graph` ("mirror": as exported; "plain": mirror
    branch removed).

    A plain export asked for "mirror" is served as it is (it has no mirror branch to keep).
    """
    import onnx

    if graph not in GRAPHS:
        raise ValueError(f"graph must be one of {', '.join(GRAPHS)}, not {graph!r}")
    model = onnx.load_from_string(onnx_model) if isinstance(onnx_model, bytes) else onnx.load(str(onnx_model))
    if graph == "plain" and is_mirror_averaged(model):
        model = plain_graph(model)
    return model.SerializeToString()


def cpu_session(onnx_model, graph: str = "mirror", threads: int | None = None, spin: bool = False):
    """An onnxruntime CPU session on `graph` of an ONNX file (a path) or serialized model (bytes): the one place
    sessions are built (the server's model.py, the batch job's local engine, the commands, the benchmarks, tools).

    `threads`: intra-op threads, one inter-op thread (None: onnxruntime's defaults). No spin-waiting between ops
    unless `spin`: in the server these threads share the cores with tritonserver's gRPC and batcher threads, which
    a spinning pool starves (on the shared 2-core machine, face2hbe bench's Triton rows went from 0.59-0.61x to
    0.91-0.93x of in-process at 16 clients). Scores do not change (tests/test_server.py compares them to the bit).
    `spin=True` is onnxruntime's own default, kept by the benchmarks that compare files rather than servers.
    """
    import onnxruntime as ort

    if graph not in GRAPHS:
        raise ValueError(f"graph must be one of {', '.join(GRAPHS)}, not {graph!r}")
    options = ort.SessionOptions()
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    if graph == "plain":
        model = load_graph(onnx_model, graph)
    else:  # the model as exported: onnxruntime reads it directly (no parse and re-serialisation by onnx)
        model = onnx_model if isinstance(onnx_model, bytes) else str(onnx_model)
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


# Rows per onnxruntime run on CPUs: a request of up to MAX_BATCH_SIZE crops runs in parts of this many. The CPU
# arena keeps the peak of the largest run: at 128 px runs of 32 (x2 with the mirror) held +1017 MB, runs of 8
# +196 MB, at 31.8 against 29.8 faces/s (INT8, 2-core AMD EPYC; loadtest/bench/run_rows.py, docs/serving.md
# "Memory: rows per run").
CPU_RUN_ROWS = 8


def score_crops(session, crops: np.ndarray, outputs=(contract.OUTPUT_NAME,), batch: int = CPU_RUN_ROWS) -> np.ndarray:
    """[N, columns]: the session's `outputs` side by side (scores, then attributes when asked), `batch` crops a run."""
    parts = [
        np.concatenate(session.run(list(outputs), {contract.INPUT_NAME: crops[i : i + batch]}), axis=1)
        for i in range(0, len(crops), batch)
    ]
    if not parts:
        widths = {contract.OUTPUT_NAME: len(contract.LABELS), contract.ATTRIBUTES_NAME: len(contract.ATTRIBUTE_LABELS)}
        return np.zeros((0, sum(widths[name] for name in outputs)), np.float32)
    return np.concatenate(parts).astype(np.float32, copy=False)


def score_onnx(onnx_path, crops: np.ndarray, batch: int = CPU_RUN_ROWS) -> np.ndarray:
    """[N, len(SERVED_LABELS)]: an exported graph's scores then attributes for uint8 crops, on the CPU."""
    return score_crops(cpu_session(onnx_path), crops, (contract.OUTPUT_NAME, contract.ATTRIBUTES_NAME), batch)
