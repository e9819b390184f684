"""The Ray a batch job runs on, and what it prints: a local Ray or a cluster, without Ray's noise.

- `init_ray`: connect to `--address` / RAY_ADDRESS, or start a local Ray sized for this machine
  (its CPUs, an object store capped at `object_store_bytes`, no dashboard, object spilling off so
  face crops never reach a disk, Ray's token authentication on as Ray's own default, without the
  warning that says it is).
- `quiet_stderr`: while the pipeline runs, drop the one line Ray's C++ core worker prints for every
  Ray Data actor pool (`core_worker.cc ... has constructor arguments in the object store and
  max_restarts > 0`, ray-project/ray#57733): Ray Data itself passes the pool's function by
  reference and keeps it alive for the whole run, so the restart it warns about works (the killed
  scoring actor test restarts one). Every other line goes through unchanged.
- `configure_progress`: Ray Data's live progress bars on a terminal; elsewhere (a log file, a
  pipe) none of its progress blocks (one every 10 s), the caller logs one line per stage instead
  (`stage_throughput` reads them from Ray Data's stats text, `stage_line` writes one).
- `user_error`: what a Ray failure means to the user, as one face2hbe error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading

from face2hbe.errors import Face2hbeError

# Lines Ray prints to the driver's stderr that say nothing about this job (matched as bytes).
SPURIOUS_STDERR = (b"has constructor arguments in the object store and max_restarts > 0",)
# Ray Data's INFO chatter (execution started/finished, progress mode chosen): the job reports its own.
RAY_DATA_LOGGER = "ray.data"
AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


def _drop_token_auth_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


def init_ray(address: str | None, num_cpus: int | None, object_store_bytes: int | None) -> bool:
    """Connect to `address` or RAY_ADDRESS, or start a quiet local Ray; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        return True
    # Ray 2.60 turns token authentication on for a new local cluster and warns that it did: keep the
    # protection, drop the warning (RAY_AUTH_MODE set here instead would come too late for Ray's cached config).
    logging.getLogger(AUTH_LOGGER).addFilter(_drop_token_auth_notice)
    ray.init(
        num_cpus=num_cpus or _usable_cpus(),
        object_store_memory=object_store_bytes,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        # Face crops must stay in memory: Ray Data's backpressure keeps the store within bounds.
        _system_config={"automatic_object_spilling_enabled": False},
    )
    return True


def _usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, so `taskset` counts), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def configure_progress(progress: bool) -> bool:
    """Set Ray Data's progress output for this run; True when the caller should log one line per stage.

    Progress bars only on a terminal; on anything else (and with progress off) Ray Data's
    progress and INFO lines are off, warnings and errors still show.
    """
    import ray.data

    ctx = ray.data.DataContext.get_current()
    bars = progress and sys.stdout.isatty()
    ctx.enable_progress_bars = bars
    ctx.print_on_execution_start = False
    if not bars:
        # Ray Data says once that it has no progress bars (a warning) and logs its start/finish at INFO.
        for name in (RAY_DATA_LOGGER, f"{RAY_DATA_LOGGER}._internal.progress"):
            logger = logging.getLogger(name)
            logger.setLevel(
                max(logger.getEffectiveLevel(), logging.ERROR if name.endswith("progress") else logging.WARNING)
            )
    return progress and not bars


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


@contextlib.contextmanager
def quiet_stderr(patterns=SPURIOUS_STDERR):
    """Route this process's file descriptor 2 through a pipe; complete lines containing a pattern are dropped.

    Everything else reaches the original stderr as it comes: a partial line is held only while it
    may be the start of a C++ log line (`[` first), so progress bars' carriage-return updates pass at once.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        read_fd, write_fd = os.pipe()
    except (OSError, ValueError):  # no usable fd 2 (a closed stderr): nothing to filter
        yield
        return

    def pump() -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(read_fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            out = b"".join(line + b"\n" for line in lines if not any(p in line for p in patterns))
            if pending and not pending.startswith(b"["):
                out, pending = out + pending, b""
            if out:
                _write_all(saved, out)
        if pending and not any(p in pending for p in patterns):
            _write_all(saved, pending)
        os.close(read_fd)

    os.dup2(write_fd, 2)
    os.close(write_fd)
    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(saved, 2)  # the pipe's last write end closes: the pump sees its end
        thread.join(timeout=10)
        if (
            not thread.is_alive()
        ):  # else a process spawned meanwhile holds the pipe: the pump keeps forwarding to `saved`
            os.close(saved)


def stage_throughput(stats_text: str) -> list[dict]:
    """Per-operator rows/s and time from Ray Data's `ds.stats()` text."""
    stages = []
    for block in re.split(r"\n(?=Operator \d+ )", stats_text):
        head = re.match(r"Operator \d+ ([^:]+):\s*(\d+) tasks executed, (\d+) blocks produced in ([\d.]+)s", block)
        if not head:
            continue
        rows_in = re.search(r"Total input num rows: (\d+)", block)
        rows_out = re.search(r"Total output num rows: (\d+)", block)
        throughput = re.search(r"Ray Data throughput: ([\d.]+) rows/s", block)
        single = re.search(r"Estimated single (?:task|node) throughput: ([\d.]+) rows/s", block)
        # Rates are Ray's output rows/s; stages that take images in (write: one row per part out) are
        # converted to images/s with their input/output ratio.
        n_in, n_out = (int(m.group(1)) if m else 0 for m in (rows_in, rows_out))
        scale = n_in / n_out if n_in and n_out else 1.0
        stages.append(
            {
                "stage": re.sub(r"MapBatches\((\w+)\)", r"\1", head.group(1).strip()),
                "tasks": int(head.group(2)),
                "seconds": float(head.group(4)),
                "rows": n_in or n_out,
                "rows_per_s": round(float(throughput.group(1)) * scale, 2) if throughput else None,
                "rows_per_s_per_task": round(float(single.group(1)) * scale, 2) if single else None,
            }
        )
    return stages


def stage_line(stage: dict) -> str:
    """One stage's line: images, tasks, seconds and rate (Ray Data's stats)."""
    rate = f", {stage['rows_per_s']:.1f} images/s" if stage["rows_per_s"] is not None else ""
    per_task = f" ({stage['rows_per_s_per_task']:.1f} per task)" if stage["rows_per_s_per_task"] is not None else ""
    return f"stage {stage['stage']}: {stage['rows']} images, {stage['tasks']} tasks, {stage['seconds']:.1f} s{rate}{per_task}"


def user_error(exc: BaseException) -> Face2hbeError:
    """The face2hbe error behind a Ray failure (e.g. Triton down when the scoring actors start), else a one-line one."""
    seen, stack = set(), [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, Face2hbeError):
            return e
        stack += [getattr(e, "cause", None), e.__cause__, e.__context__]
    text = str(exc)
    found = re.search(r"face2hbe\.errors\.(\w+): ([^\n]+)", text)
    if found:  # the actor's traceback, as text only
        from face2hbe import errors

        cls = getattr(errors, found.group(1), Face2hbeError)
        try:
            return cls(found.group(2).strip())
        except TypeError:  # errors with other constructors (BadImageError)
            return Face2hbeError(found.group(2).strip())
    return Face2hbeError(f"batch job failed: {' '.join(text.split())[:500]}")
