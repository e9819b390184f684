"""The benchmark suite: faces/s on this machine for the serving design choices.

One run measures, on the same real face crops and with one protocol for every
row (warm-up requests, then closed-loop requests for a fixed time, each worker
finishing at least one; faces/s = faces scored / wall time from start to the
last worker's end, time.perf_counter):

1. ONNX Runtime in-process vs `face2hbe serve` (tritonserver) over gRPC on the same file, precision and
   graph (the server's CPU default), at client concurrencies 1, 4, 16 (goal: Triton >= 90% of in-process
   at 16), measured interleaved round by round so both sides see the same load;
2. Triton's dynamic batcher on vs off (two servers, interleaved);
3. batch sizes 1, 8, 32 (in-process and over gRPC, interleaved);
4. fp32 vs INT8 (when an INT8 model exists under the repository);
5. the one shared model vs the prototype's six CNNs per face (goal >= 4.5x):
   one of the prototype's own VGG16s at 150x150 gives the design's gain alone;
   the served model row adds whatever working size the trained model uses.

The server runs in its own process (as in production) so the client threads
do not share its interpreter.
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from face2hbe import contract
from face2hbe.errors import Face2hbeError
from face2hbe.graphs import cpu_session
from face2hbe.repository import CPU_PRECISION, PRECISION_FOLDERS
from face2hbe.serving.process import ServerProcess

from .common import machine_info

log = logging.getLogger(__name__)

TRITON_GOAL = 0.90  # Triton faces/s over in-process at the highest concurrency
PROTOTYPE_GOAL = 4.5  # one model's faces/s over the six-CNN prototype's


@dataclass
class BenchSettings:
    repository: Path = Path("model_repository")
    output_dir: Path = Path("docs/bench")
    quick: bool = False
    seconds: float | None = None  # measured seconds per row; None = 3 (quick) or 15
    cache_dir: Path = Path.home() / ".cache" / "face2hbe" / "bench"
    prototype: bool = True
    concurrencies: tuple[int, ...] = (1, 4, 16)
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    request_batch: int = 1  # faces per request in the concurrency and batching rows
    compare_batch: int = 8  # faces per run in the INT8 and prototype rows
    crop_count: int = 32
    command: str = ""  # the command line, recorded in bench.json

    @property
    def row_seconds(self) -> float:
        return self.seconds or (3.0 if self.quick else 15.0)

    @property
    def warmup(self) -> int:
        return 1 if self.quick else 3


@dataclass
class Row:
    group: str
    name: str
    faces_per_s: float | None
    requests: int = 0
    seconds: float = 0.0
    baseline: str | None = None  # the name of the row this one's ratio is taken against
    ratio: float | None = None
    goal: float | None = None  # ratio to reach, when the design makes a claim
    note: str = ""

    @property
    def meets_goal(self) -> bool | None:
        if self.goal is None or self.ratio is None:
            return None
        return self.ratio >= self.goal


@dataclass
class Bench:
    rows: list[Row] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        if row.baseline is not None:
            base = self.get(row.baseline)
            if base.faces_per_s and row.faces_per_s is not None:
                row.ratio = row.faces_per_s / base.faces_per_s
        self.rows.append(row)
        log.info(
            "%s | %s: %s faces/s%s",
            row.group,
            row.name,
            "-" if row.faces_per_s is None else f"{row.faces_per_s:.2f}",
            "" if row.ratio is None else f" ({row.ratio:.2f}x {row.baseline})",
        )
        return row

    def get(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)


# --- measurement protocol ----------------------------------------------------------


def measure(calls: list[Callable[[], object]], faces_per_call: int, seconds: float, warmup: int) -> dict:
    """Run every call in its own thread, closed loop, for `seconds` after `warmup` calls each.

    Each worker finishes at least one measured call; the clock stops when the
    last one ends, so slow requests are never cut off or half-counted.
    """
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        list(pool.map(lambda call: [call() for _ in range(warmup)], calls))
        start = time.perf_counter()
        deadline = start + seconds

        def loop(call):
            done = 0
            while True:
                call()
                done += 1
                if time.perf_counter() >= deadline:
                    return done, time.perf_counter()

        results = list(pool.map(loop, calls))
    requests = sum(done for done, _ in results)
    elapsed = max(end for _, end in results) - start
    return {"faces_per_s": requests * faces_per_call / elapsed, "requests": requests, "seconds": elapsed}


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _row(group: str, name: str, result: dict, **extra) -> Row:
    return Row(
        group=group,
        name=name,
        faces_per_s=result["faces_per_s"],
        requests=result["requests"],
        seconds=result["seconds"],
        **extra,
    )


# --- in-process ONNX Runtime -------------------------------------------------------


def ort_session(path: Path):
    """onnxruntime's defaults, spinning threads included (the fp32 / INT8 / prototype rows compare files, not servers)."""
    return cpu_session(path, spin=True)


def _summed(parts: list[dict], faces: int) -> dict:
    """One row from measured rounds: their requests over their measured seconds."""
    requests, seconds = sum(p["requests"] for p in parts), sum(p["seconds"] for p in parts)
    return {"faces_per_s": requests * faces / seconds, "requests": requests, "seconds": seconds}


def ort_calls(session, batches: list[np.ndarray]) -> list[Callable[[], object]]:
    name = session.get_inputs()[0].name
    return [lambda b=b: session.run(None, {name: b}) for b in batches]


def grpc_calls(url: str, batches: list[np.ndarray]) -> tuple[list[Callable[[], object]], list]:
    """One tritonclient.grpc client per worker, each sending its own batch."""
    import tritonclient.grpc as triton

    calls, clients = [], []
    for batch in batches:
        client = triton.InferenceServerClient(url)
        inputs = [triton.InferInput(contract.INPUT_NAME, list(batch.shape), contract.INPUT_DTYPE)]
        inputs[0].set_data_from_numpy(batch)
        outputs = [triton.InferRequestedOutput(contract.OUTPUT_NAME)]

        def call(client=client, inputs=inputs, outputs=outputs):
            return client.infer(contract.MODEL_NAME, inputs, outputs=outputs, client_timeout=300).as_numpy(
                contract.OUTPUT_NAME
            )

        calls.append(call)
        clients.append(client)
    return calls, clients


def measure_grpc(url: str, batches: list[np.ndarray], seconds: float, warmup: int) -> dict:
    calls, clients = grpc_calls(url, batches)
    try:
        return measure(calls, len(batches[0]), seconds, warmup)
    finally:
        for client in clients:
            client.close()


# --- the suite ----------------------------------------------------------------------


def find_int8_model(repository: Path) -> Path | None:
    """Any model.onnx in a model folder whose name contains 'int8'."""
    found = sorted(p for p in Path(repository).glob("*int8*/**/model.onnx") if p.is_file())
    return found[0] if found else None


def run_bench(settings: BenchSettings) -> dict:
    """Measure every row, print the table, write bench.json and bench.png; return the result."""
    from face2hbe.loadtest.crops import batch_of, load_crops

    started = time.perf_counter()
    fp32_path = Path(settings.repository) / contract.MODEL_NAME / contract.MODEL_VERSION / "model.onnx"
    if not fp32_path.is_file():
        raise Face2hbeError(f"{fp32_path}: served model not found (export one first)")
    crops, source = load_crops(settings.crop_count)
    served_size = working_size(fp32_path)
    size_text = f"{served_size} px" if served_size else f"{contract.INPUT_SIZE} px"
    secs, warm = settings.row_seconds, settings.warmup
    machine = machine_info()
    bench = Bench()
    rb, cb = settings.request_batch, settings.compare_batch

    def batches(count: int, size: int) -> list[np.ndarray]:
        return [batch_of(crops, size, i * size) for i in range(count)]

    # 4: fp32 vs INT8 in-process, same protocol, before any server starts.
    g4 = "4 fp32 vs INT8"
    fp32_name = f"fp32 {fp32_path.parent.parent.name}, batch {cb}"
    bench.add(_row(g4, fp32_name, measure(ort_calls(ort_session(fp32_path), batches(1, cb)), cb, secs, warm)))
    int8_path = find_int8_model(settings.repository)
    if int8_path is None:
        bench.add(
            Row(g4, f"INT8, batch {cb}", None, note=f"skipped: no model.onnx under {settings.repository}/*int8*/")
        )
    else:
        int8 = ort_session(int8_path)
        bench.add(
            _row(
                g4,
                f"INT8 {int8_path.parent.parent.name}, batch {cb}",
                measure(ort_calls(int8, batches(1, cb)), cb, secs, warm),
                baseline=fp32_name,
            )
        )
        del int8

    # 1 + 2 + 3: the server's default (its CPU precision and graph) in-process and over gRPC: the same file, the same
    # graph, the same onnxruntime. Measured interleaved, round by round (in-process, Triton, in-process, ...), so both
    # sides see the same load on a shared machine; each row sums its rounds.
    g1, g2, g3 = "1 in-process vs Triton gRPC", "2 dynamic batching", "3 batch size"
    served_path = Path(settings.repository) / PRECISION_FOLDERS[CPU_PRECISION] / contract.MODEL_VERSION / "model.onnx"
    precision, top = CPU_PRECISION, max(settings.concurrencies)
    session = cpu_session(served_path, "mirror")  # the server's own session settings (serving/cpu_model.py)
    rounds = 1 if settings.quick else 3
    round_s = max(1.0, secs / rounds)

    def interleaved(calls: dict[str, Callable[[], list[Callable[[], object]]]], faces: int) -> dict[str, dict]:
        """{row: summed result} for rows measured in turn, round after round; `calls` builds each row's workers."""
        results: dict[str, list[dict]] = {name: [] for name in calls}
        for _ in range(rounds):
            for name, make in calls.items():
                workers, close = make()
                try:
                    results[name].append(measure(workers, faces, round_s, warm))
                finally:
                    close()
        return {name: _summed(parts, faces) for name, parts in results.items()}

    def local(count: int, size: int):
        return lambda: (ort_calls(session, batches(count, size)), lambda: None)

    def remote(url: str, count: int, size: int):
        def make():
            workers, clients = grpc_calls(url, batches(count, size))
            return workers, lambda: [client.close() for client in clients]

        return make

    with ServerProcess(settings.repository, args=["--no-photo"]) as server:
        for c in settings.concurrencies:
            mine, theirs = (
                f"in-process {precision}, {_n(c, 'thread')}, batch {rb}",
                f"Triton gRPC {precision}, {_n(c, 'client')}, batch {rb}",
            )
            measured = interleaved({mine: local(c, rb), theirs: remote(server.grpc_url, c, rb)}, rb)
            bench.add(_row(g1, mine, measured[mine]))
            bench.add(_row(g1, theirs, measured[theirs], baseline=mine, goal=TRITON_GOAL if c == top else None))
        for b in settings.batch_sizes:
            mine, theirs = (
                f"in-process {precision}, 1 thread, batch {b}",
                f"Triton gRPC {precision}, 1 client, batch {b}",
            )
            base = b != settings.batch_sizes[0]
            if b == rb and 1 in settings.concurrencies:
                bench.add(Row(g3, mine, bench.get(mine).faces_per_s, note="same run as group 1, 1 thread"))
                bench.add(Row(g3, theirs, bench.get(theirs).faces_per_s, note="same run as group 1, 1 client"))
                continue
            measured = interleaved({mine: local(1, b), theirs: remote(server.grpc_url, 1, b)}, b)
            first = settings.batch_sizes[0]
            bench.add(
                _row(
                    g3,
                    mine,
                    measured[mine],
                    baseline=f"in-process {precision}, 1 thread, batch {first}" if base else None,
                )
            )
            bench.add(
                _row(
                    g3,
                    theirs,
                    measured[theirs],
                    baseline=f"Triton gRPC {precision}, 1 client, batch {first}" if base else None,
                )
            )
        with ServerProcess(settings.repository, args=["--no-photo", "--no-batching"]) as unbatched:
            off, on = f"batching off, {top} clients, batch {rb}", f"batching on, {top} clients, batch {rb}"
            measured = interleaved({off: remote(unbatched.grpc_url, top, rb), on: remote(server.grpc_url, top, rb)}, rb)
            bench.add(_row(g2, off, measured[off]))
            bench.add(_row(g2, on, measured[on], baseline=off))

    # 5: the one shared model vs six one-vs-rest CNNs per face.
    g5 = "5 one model vs prototype"
    if settings.prototype:
        proto = f"prototype: 3 VGG16@150 + 3 ResNet50@224, batch {cb}"
        runs = prototype_runs(settings, crops)
        bench.add(
            _row(
                g5,
                proto,
                measure([lambda: [run() for _, run in runs]], cb, secs, warm),
                note="random weights; inputs pre-resized/cast outside the clock (favours the prototype)",
            )
        )
        vgg = next(run for net, run in runs if net.arch == "vgg16" and net.size == contract.INPUT_SIZE)
        bench.add(
            _row(
                g5,
                f"one VGG16@150 per face (shared design at full size), batch {cb}",
                measure([vgg], cb, secs, warm),
                baseline=proto,
                goal=PROTOTYPE_GOAL,
                note="one of the prototype's VGG16s: the design's gain alone",
            )
        )
        bench.add(
            Row(
                g5,
                f"served model (fp32, one VGG16, works at {size_text}), batch {cb}",
                bench.get(fp32_name).faces_per_s,
                baseline=proto,
                note=f"same run as '{fp32_name}'; adds the trained model's working size",
            )
        )
    else:
        bench.add(Row(g5, "prototype: 6 CNNs per face", None, note="skipped: --skip-prototype"))

    machine["load_average_end"] = list(os.getloadavg())
    result = {
        "command": settings.command,
        "quick": settings.quick,
        "seconds_per_row": secs,
        "warmup_requests": warm,
        "crops": source,
        "machine": machine,
        "served_model": {"path": str(fp32_path), "working_size": served_size or contract.INPUT_SIZE},
        "int8_model": str(int8_path) if int8_path else None,
        # Group 1's two sides: this file, precision and graph in-process and behind tritonserver.
        "triton_vs_in_process": {
            "model": str(served_path),
            "precision": precision,
            "graph": "mirror",
            "rounds": rounds,
            f"ratio_at_{top}_clients": bench.get(f"Triton gRPC {precision}, {_n(top, 'client')}, batch {rb}").ratio,
        },
        "wall_s": time.perf_counter() - started,
        # Grouped for reading; measured in another order (in-process rows before any server starts).
        "rows": [row_dict(r) for r in sorted(bench.rows, key=lambda r: r.group)],
    }
    write_outputs(result, Path(settings.output_dir))
    print_table(result)
    return result


def prototype_runs(settings: BenchSettings, crops: np.ndarray) -> list[tuple[object, Callable[[], object]]]:
    """(net, call) for each of the six prototype CNNs on one batch; run one after another per face batch."""
    from PIL import Image

    from face2hbe.loadtest.bench.prototype import prototype_models
    from face2hbe.loadtest.crops import batch_of

    batch = batch_of(crops, settings.compare_batch)
    inputs = {}
    for size in (150, 224):
        resized = (
            batch
            if size == batch.shape[1]
            else np.stack([np.asarray(Image.fromarray(c).resize((size, size), Image.BILINEAR)) for c in batch])
        )
        inputs[size] = resized.astype(np.float32)
    runs = []
    for net, path in prototype_models(settings.cache_dir):
        session = ort_session(path)
        feed = {session.get_inputs()[0].name: inputs[net.size]}
        runs.append((net, lambda session=session, feed=feed: session.run(None, feed)))
    return runs


def working_size(onnx_path: Path) -> int | None:
    """The side the served graph resizes crops to (its first Resize node), or None if it has none."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path), load_external_data=False)
    constants = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "Resize":
            continue
        for position in (3, 2):  # sizes, then scales
            if len(node.input) > position and node.input[position] in constants:
                values = numpy_helper.to_array(constants[node.input[position]])
                if values.size == 4:
                    return int(values[2]) if position == 3 else round(contract.INPUT_SIZE * float(values[2]))
        return None
    return None


# --- output -------------------------------------------------------------------------


def row_dict(row: Row) -> dict:
    return {
        "group": row.group,
        "name": row.name,
        "faces_per_s": row.faces_per_s,
        "requests": row.requests,
        "seconds": round(row.seconds, 3),
        "baseline": row.baseline,
        "ratio": row.ratio,
        "goal": row.goal,
        "meets_goal": row.meets_goal,
        "note": row.note,
    }


def write_outputs(result: dict, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, output_dir / "bench.png")


def plot(result: dict, path: Path) -> None:
    """Horizontal bars of faces/s per row, coloured by group, ratios written on the bars."""
    # The object-oriented API: no pyplot, no process-wide backend switch inside a library.
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    rows = [r for r in result["rows"] if r["faces_per_s"] is not None]
    groups = list(dict.fromkeys(r["group"] for r in result["rows"]))
    colours = {g: colormaps["tab10"](i) for i, g in enumerate(groups)}
    fig = Figure(figsize=(10, 0.42 * len(rows) + 1.6))
    ax = fig.subplots()
    y = np.arange(len(rows))[::-1]
    ax.barh(y, [r["faces_per_s"] for r in rows], color=[colours[r["group"]] for r in rows])
    ax.set_yticks(y, [r["name"] for r in rows], fontsize=8)
    for yi, r in zip(y, rows):
        label = f"{r['faces_per_s']:.1f}" + (f"  ({r['ratio']:.2f}x)" if r["ratio"] is not None else "")
        ax.text(r["faces_per_s"], yi, " " + label, va="center", fontsize=7)
    ax.set_xlabel("faces/s (higher is better)")
    machine = result["machine"]
    ax.set_title(
        f"face2hbe bench{' --quick' if result['quick'] else ''}: {machine['cores']} cores, {machine['cpu']}", fontsize=9
    )
    handles = [Rectangle((0, 0), 1, 1, color=colours[g]) for g in groups]
    ax.legend(handles, groups, fontsize=7, loc="lower right")
    ax.margins(x=0.25)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"face2hbe bench ({result['seconds_per_row']:g} s per row, {result['warmup_requests']} warm-up request(s) per worker)"
    )
    for column in ("group", "row", "faces/s", "ratio", "vs", "goal", "note"):
        table.add_column(column, justify="right" if column in ("faces/s", "ratio") else "left", overflow="fold")
    for r in result["rows"]:
        goal = "" if r["goal"] is None else f">= {r['goal']:g}x " + ("met" if r["meets_goal"] else "MISSED")
        table.add_row(
            r["group"],
            r["name"],
            "-" if r["faces_per_s"] is None else f"{r['faces_per_s']:.2f}",
            "" if r["ratio"] is None else f"{r['ratio']:.2f}x",
            r["baseline"] or "",
            goal,
            r["note"],
        )
    console = Console(width=max(180, Console().width))
    console.print(table)
    m = result["machine"]
    console.print(
        f"{m['cores']} cores, {m['cpu']}; load average {m['load_average_start'][0]:.1f} at start, "
        f"{m.get('load_average_end', [float('nan')])[0]:.1f} at end; crops: {result['crops']}"
    )
