"""Cold starts of `face2hbe serve`, one after another: each until every model is ready, then SIGTERM.

    .venv/bin/python tools/cold_starts.py --starts 20 --cpus 0      # pinned to one core (taskset -c 0)

A start passes when `face2hbe serve` exits 0 after its SIGTERM, its console shows no ERROR line, traceback or
retry, and tritonserver's own log has no error line (E...) but the one every GPU-enabled tritonserver writes on a
host without a CUDA driver (serving.embedded.CPU_HOST_NOTICE). One line per start, a summary, exit 1 if any failed.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from face2hbe.net import free_port
from face2hbe.serving.embedded import CPU_HOST_NOTICE

CONSOLE_FAULTS = re.compile(r"ERROR|Error:|Traceback|retry|Retry|handshake")


def one_start(repository: str, cpus: str | None, folder: Path, timeout_s: float) -> tuple[float, list[str]]:
    """(seconds until ready, what was wrong) for one start of `face2hbe serve`."""
    ports = [free_port() for _ in range(3)]
    server_log = folder / "triton.log"
    command = [
        sys.executable,
        "-m",
        "face2hbe.app.cli",
        "serve",
        "--repository",
        repository,
        "--server-log",
        str(server_log),
        "--http-port",
        str(ports[0]),
        "--grpc-port",
        str(ports[1]),
        "--metrics-port",
        str(ports[2]),
    ]
    if cpus is not None:
        command = ["taskset", "-c", cpus, *command]
    console = folder / "console.txt"
    started = time.monotonic()
    with console.open("wb") as out:
        proc = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    problems, ready_s = [], float("nan")
    try:
        while time.monotonic() - started < timeout_s and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/v2/health/ready", timeout=5) as response:
                    if response.status == 200:
                        ready_s = time.monotonic() - started
                        break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            problems.append(f"not ready (exit code {proc.poll()})")
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
        if code != 0:
            problems.append(f"exit code {code} after SIGTERM")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = console.read_text(errors="replace")
    problems += [f"console: {line}" for line in text.splitlines() if CONSOLE_FAULTS.search(line)]
    log = server_log.read_text(errors="replace") if server_log.is_file() else ""
    problems += [
        f"server log: {line[:200]}"
        for line in log.splitlines()
        if (line[:1] == "E" and line[1:5].isdigit() and CPU_HOST_NOTICE not in line) or "Traceback" in line
    ]
    return ready_s, problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=20)
    parser.add_argument("--cpus", default=None, help="taskset -c CPUS for every start (e.g. 0: one core)")
    parser.add_argument("--repository", default="model_repository")
    parser.add_argument("--timeout", type=float, default=600.0, help="hang guard per start, seconds")
    args = parser.parse_args(argv)
    failed, times = 0, []
    for i in range(1, args.starts + 1):
        with tempfile.TemporaryDirectory(prefix="face2hbe-cold-start-") as folder:
            ready_s, problems = one_start(args.repository, args.cpus, Path(folder), args.timeout)
        times.append(ready_s)
        failed += bool(problems)
        print(
            f"start {i}/{args.starts}: ready in {ready_s:.1f} s, " + ("ok" if not problems else "; ".join(problems)),
            flush=True,
        )
    print(
        f"{args.starts - failed}/{args.starts} clean starts (taskset -c {args.cpus or '-'}); "
        f"ready in {min(times):.1f}-{max(times):.1f} s, median {sorted(times)[len(times) // 2]:.1f} s"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
