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
  pipe) none of its progress blocks (one every 10 s), the caller logs one line per stage instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading

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
