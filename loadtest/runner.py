"""Headless Locust run against the face2hbe server, judged against an SLO.

Locust runs in a subprocess (`python -m locust`): it monkey-patches the whole
interpreter with gevent, which must not leak into the caller (or into the
embedded Triton server this module may start). Its CSV and HTML reports land
in the output folder, next to verdict.json.
"""

from __future__ import annotations

import csv
import ipaddress
import json
import logging
import socket
import subprocess
import sys
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

from face2hbe import contract
from face2hbe.errors import Face2hbeError
from face2hbe.net import free_port

log = logging.getLogger(__name__)

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
MAX_USERS = 64  # 2-core machine: more greenlets only measure the client
MAX_DURATION_S = 600
CSV_PREFIX = "locust"


class SLOMissedError(Face2hbeError):
    """The load test ran but missed its service-level objective."""


class LoadTestError(Face2hbeError):
    """The load test could not run (bad target, Locust failed, no stats)."""


@dataclass(frozen=True)
class SLO:
    p95_ms: float = 2000.0  # 95th-percentile latency per request
    max_error_rate: float = 0.01  # failed / all requests
    min_rps: float = 0.0  # requests per second over the run; 0 = no floor


@dataclass
class LoadTestSettings:
    output_dir: Path
    users: int = 8
    spawn_rate: float = 4.0
    duration_s: int = 30  # with max_requests: only a cap
    max_requests: int = 0  # stop after this many requests (0 = run for duration_s)
    batch_size: int = 1
    grpc_weight: int = 1
    http_weight: int = 1
    think_time_s: float = 0.0
    repository: Path = Path("model_repository")
    grpc_url: str | None = None  # None (with http_url None) = start the embedded server
    http_url: str | None = None
    crop_count: int = 32
    slo: SLO = field(default_factory=SLO)

    def validate(self) -> None:
        if not 1 <= self.users <= MAX_USERS:
            raise LoadTestError(f"users must be 1..{MAX_USERS}, not {self.users}")
        if not 1 <= self.duration_s <= MAX_DURATION_S:
            raise LoadTestError(f"duration must be 1..{MAX_DURATION_S} s, not {self.duration_s}")
        if not 1 <= self.batch_size <= contract.MAX_BATCH_SIZE:
            raise LoadTestError(f"batch size must be 1..{contract.MAX_BATCH_SIZE}, not {self.batch_size}")
        if self.grpc_weight < 0 or self.http_weight < 0 or self.grpc_weight + self.http_weight == 0:
            raise LoadTestError("user weights must be >= 0 and not both 0")
        if (self.grpc_url is None) != (self.http_url is None) and self.grpc_weight and self.http_weight:
            raise LoadTestError("give both --grpc-url and --http-url, or neither (then the embedded server is started)")
        for url in (self.grpc_url, self.http_url):
            if url is not None:
                require_loopback(url)


def require_loopback(url: str) -> None:
    """Load tests only ever target this machine."""
    host = url.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as exc:
        raise LoadTestError(f"{url}: cannot resolve host ({exc})") from None
    if not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise LoadTestError(f"{url}: load tests target loopback addresses only (127.0.0.1, ::1, localhost)")


def locust_command(settings: LoadTestSettings, grpc_url: str, http_url: str) -> list[str]:
    out = Path(settings.output_dir)
    classes = [
        name for name, weight in (("GrpcUser", settings.grpc_weight), ("HttpUser", settings.http_weight)) if weight > 0
    ]
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "-u",
        str(settings.users),
        "-r",
        str(settings.spawn_rate),
        "-t",
        f"{settings.duration_s}s",
        "--csv",
        str(out / CSV_PREFIX),
        "--html",
        str(out / "report.html"),
        "--only-summary",
        "--exit-code-on-error",
        "0",
        "--host",
        f"http://{http_url}",
        "--grpc-url",
        grpc_url,
        "--http-url",
        http_url,
        "--batch-size",
        str(settings.batch_size),
        "--grpc-weight",
        str(settings.grpc_weight),
        "--http-weight",
        str(settings.http_weight),
        "--think-time",
        str(settings.think_time_s),
        "--crop-count",
        str(settings.crop_count),
        "--max-requests",
        str(settings.max_requests),
        *classes,
    ]


def read_stats(path: Path) -> list[dict]:
    """Rows of Locust's <prefix>_stats.csv (the last one is "Aggregated")."""
    if not path.is_file():
        raise LoadTestError(f"{path}: Locust wrote no stats file (see locust.log next to it)")
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _number(row: dict, key: str) -> float:
    value = row.get(key, "")
    try:
        return float(value)
    except ValueError:  # Locust writes "N/A" for percentiles of an empty row
        return float("nan")


def judge(rows: list[dict], slo: SLO, batch_size: int) -> dict:
    """The verdict: every SLO check with its limit, measurement and outcome."""
    total = next((r for r in rows if r.get("Name") == "Aggregated"), None)
    if total is None:
        raise LoadTestError("Locust stats have no Aggregated row")
    requests = int(_number(total, "Request Count"))
    failures = int(_number(total, "Failure Count"))
    p95 = _number(total, "95%")
    rps = _number(total, "Requests/s")
    error_rate = failures / requests if requests else 1.0
    checks = [
        {"name": "requests", "limit": "> 0", "measured": requests, "ok": requests > 0},
        {"name": "p95_ms", "limit": slo.p95_ms, "measured": p95, "ok": requests > 0 and p95 <= slo.p95_ms},
        {
            "name": "error_rate",
            "limit": slo.max_error_rate,
            "measured": round(error_rate, 6),
            "ok": error_rate <= slo.max_error_rate,
        },
        {"name": "rps", "limit": slo.min_rps, "measured": rps, "ok": requests > 0 and rps >= slo.min_rps},
    ]
    per_type = [
        {
            "type": r["Type"],
            "name": r["Name"],
            "requests": int(_number(r, "Request Count")),
            "failures": int(_number(r, "Failure Count")),
            "median_ms": _number(r, "50%"),
            "p95_ms": _number(r, "95%"),
            "p99_ms": _number(r, "99%"),
            "rps": _number(r, "Requests/s"),
        }
        for r in rows
    ]
    return {
        "passed": all(c["ok"] for c in checks),
        "checks": checks,
        "requests": requests,
        "failures": failures,
        "faces_per_s": rps * batch_size,
        "rows": per_type,
    }


def run_locust(settings: LoadTestSettings, grpc_url: str, http_url: str) -> None:
    out = Path(settings.output_dir)
    command = locust_command(settings, grpc_url, http_url)
    log.info("running %s", " ".join(command))
    # Crop loading and Locust start-up come on top of the run time itself.
    limit = settings.duration_s + 120
    with (out / "locust.log").open("w") as logfile:
        try:
            done = subprocess.run(command, stdout=logfile, stderr=subprocess.STDOUT, timeout=limit, check=False)
        except subprocess.TimeoutExpired:
            raise LoadTestError(f"Locust did not finish within {limit} s (see {out / 'locust.log'})") from None
    if done.returncode != 0:
        tail = (out / "locust.log").read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise LoadTestError(f"Locust exited with code {done.returncode}: {tail[0][:300]} (see {out / 'locust.log'})")


def run_loadtest(settings: LoadTestSettings) -> dict:
    """Run Locust headless (starting the embedded server unless URLs are given); return the verdict.

    Writes locust_stats.csv (and Locust's other CSVs), report.html, locust.log
    and verdict.json into settings.output_dir. Does not raise on a missed SLO:
    the caller decides (the CLI raises SLOMissedError).
    """
    settings.validate()
    out = Path(settings.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        grpc_url, http_url = settings.grpc_url, settings.http_url
        target = "given URLs"
        if grpc_url is None and http_url is None:
            from face2hbe.serving.embedded import EmbeddedServer, ServerSettings

            server = EmbeddedServer(
                ServerSettings(
                    repository=Path(settings.repository),
                    http_port=free_port(),
                    grpc_port=free_port(),
                    metrics_port=free_port(),
                )
            )
            stack.enter_context(server)
            grpc_url = f"{contract.DEFAULT_HOST}:{server.settings.grpc_port}"
            http_url = f"{contract.DEFAULT_HOST}:{server.settings.http_port}"
            target = f"embedded server on {settings.repository}"
        grpc_url = grpc_url or f"{contract.DEFAULT_HOST}:{contract.GRPC_PORT}"
        http_url = http_url or f"{contract.DEFAULT_HOST}:{contract.HTTP_PORT}"
        run_locust(settings, grpc_url, http_url)
    verdict = judge(read_stats(out / f"{CSV_PREFIX}_stats.csv"), settings.slo, settings.batch_size)
    verdict["settings"] = {
        "users": settings.users,
        "spawn_rate": settings.spawn_rate,
        "duration_s": settings.duration_s,
        "max_requests": settings.max_requests,
        "batch_size": settings.batch_size,
        "grpc_weight": settings.grpc_weight,
        "http_weight": settings.http_weight,
        "think_time_s": settings.think_time_s,
        "target": target,
        "grpc_url": grpc_url,
        "http_url": http_url,
        "slo": asdict(settings.slo),
    }
    verdict["files"] = {
        "stats_csv": str(out / f"{CSV_PREFIX}_stats.csv"),
        "html": str(out / "report.html"),
        "log": str(out / "locust.log"),
    }
    (out / "verdict.json").write_text(json.dumps(verdict, indent=2, default=str) + "\n")
    return verdict


def print_verdict(verdict: dict) -> None:
    """A rich table of the per-type stats and the SLO checks."""
    from rich.console import Console
    from rich.table import Table

    stats = Table(title="Locust results")
    for column in ("type", "name", "requests", "failures", "median ms", "p95 ms", "p99 ms", "req/s"):
        stats.add_column(column, justify="left" if column in ("type", "name") else "right")
    for r in verdict["rows"]:
        stats.add_row(
            r["type"],
            r["name"],
            str(r["requests"]),
            str(r["failures"]),
            f"{r['median_ms']:.0f}",
            f"{r['p95_ms']:.0f}",
            f"{r['p99_ms']:.0f}",
            f"{r['rps']:.2f}",
        )
    checks = Table(title=f"SLO verdict: {'PASS' if verdict['passed'] else 'FAIL'}")
    for column in ("check", "limit", "measured", "ok"):
        checks.add_column(column)
    for c in verdict["checks"]:
        checks.add_row(c["name"], str(c["limit"]), str(c["measured"]), "yes" if c["ok"] else "NO")
    console = Console()
    console.print(stats)
    console.print(checks)
    console.print(f"faces/s: {verdict['faces_per_s']:.2f}")
