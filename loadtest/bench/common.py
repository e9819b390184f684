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
