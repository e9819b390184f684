"""The batch job's output: Parquet parts in one folder (local or any filesystem pyarrow understands), written
atomically, and the reconciliation that makes every (path, content hash) key appear once.

    <output>/results/part-<hash of the part's keys>.parquet    one row per image, faces nested (schema())
    <output>/profiles.parquet                                  one row per profile

A part is written to a hidden temporary name and moved to its final name (a rename on local and POSIX shared
filesystems; a server-side copy on object stores), so it appears whole or not at all. Exactly once: `reconcile`
drops the duplicate keys a retried write after a kill leaves (and, before a run, the retryable errors it redoes);
a kill at any point leaves at worst duplicates, which the next call removes.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

from ..results import RETRYABLE_ERRORS, ImageResult, aggregate_profile

RESULTS_DIR = "results"
PROFILES_FILE = "profiles.parquet"
PART_PREFIX = "part-"
# Errors a rerun retries: server trouble and files that could not be read; the rest are final for that content.
BATCH_RETRYABLE = RETRYABLE_ERRORS | {"read_error", "server_unavailable"}


def is_uri(path: str) -> bool:
    """Whether `path` names a file on a pyarrow filesystem (s3://..., file://...) rather than a local path."""
    return "://" in path


def schema():
    import pyarrow as pa

    sku = pa.struct(
        [
            ("sku", pa.string()),
            ("label", pa.string()),
            ("name", pa.string()),
            ("price", pa.float64()),
            ("url", pa.string()),
            ("min_score", pa.float64()),
            ("priority", pa.float64()),
            ("rank_score", pa.float64()),
        ]
    )
    face = pa.struct(
        [
            ("box", pa.list_(pa.int32())),
            ("scores", pa.map_(pa.string(), pa.float64())),
            ("labels", pa.list_(pa.string())),
            ("skus", pa.list_(sku)),
            ("attributes", pa.map_(pa.string(), pa.float64())),
            ("attribute_labels", pa.list_(pa.string())),
        ]
    )
    return pa.schema(
        [
            ("path", pa.string()),
            ("sha256", pa.string()),
            ("profile", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("faces", pa.list_(face)),
            ("faces_total", pa.int32()),
            ("top_label", pa.string()),
            ("recommendation", sku),
            ("reason", pa.string()),
            ("error", pa.struct([("kind", pa.string()), ("message", pa.string())])),
            ("error_kind", pa.string()),
            ("model_name", pa.string()),
            ("model_version", pa.string()),
            ("thresholds", pa.map_(pa.string(), pa.float64())),
            ("engine", pa.string()),
            ("attribute_thresholds", pa.map_(pa.string(), pa.float64())),
            ("production_labels", pa.list_(pa.string())),
            ("catalog_thresholds", pa.map_(pa.string(), pa.float64())),
            ("catalog_opt_in", pa.list_(pa.string())),
        ]
    )


def output_row(record: dict, sha256: str, model: dict) -> dict:
    catalog = record.get("catalog") or {}
    return {
        **record,
        "sha256": sha256,
        "error_kind": (record.get("error") or {}).get("kind"),
        "model_name": model["model_name"],
        "model_version": model["model_version"],
        "thresholds": json.loads(model["thresholds"]),
        "engine": model["engine"],
        "attribute_thresholds": json.loads(model.get("attribute_thresholds") or "{}"),
        "production_labels": json.loads(model["production_labels"]) if model.get("production_labels") else None,
        "catalog_thresholds": catalog.get("thresholds"),
        "catalog_opt_in": catalog.get("opt_in"),
    }


def record_from_row(row: dict) -> dict:
    """recommend's JSON record (results.ImageResult) from one output row."""
    faces = [
        {
            "box": list(f["box"]),
            "scores": dict(f["scores"]),
            "labels": list(f["labels"]),
            "skus": list(f["skus"]),
            "attributes": dict(f.get("attributes") or []),
            "attribute_labels": list(f.get("attribute_labels") or []),
        }
        for f in row.get("faces") or []
    ]
    record = {
        "path": row["path"],
        "profile": row["profile"],
        "width": row["width"],
        "height": row["height"],
        "faces": faces,
        "top_label": row["top_label"],
        "recommendation": row["recommendation"],
        "reason": row["reason"],
        "error": row["error"],
    }
    if row.get("faces_total") is not None:
        record["faces_total"] = row["faces_total"]
    catalog = {
        k: v
        for k, v in (
            ("thresholds", dict(row.get("catalog_thresholds") or [])),
            ("opt_in", list(row.get("catalog_opt_in") or [])),
        )
        if v
    }
    if catalog:
        record["catalog"] = catalog
    return record


class OutputStore:
    """The output folder, on a local path or any filesystem pyarrow understands (a URI); parts written atomically.

    A part is written to a hidden temporary name (fsync'd on local disks) and moved to its
    final name: a rename on local and POSIX shared filesystems; on object stores the move is a
    server-side copy, so the final object appears whole or not at all.
    """

    def __init__(self, output: str | Path):
        import pyarrow.fs as pafs

        text = str(output)
        if is_uri(text):
            self.fs, root = pafs.FileSystem.from_uri(text)
        else:
            self.fs, root = pafs.LocalFileSystem(), os.path.abspath(text)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.root = root.rstrip("/")

    def path(self, *names: str) -> str:
        return "/".join([self.root, *names])

    def names(self, folder: str = RESULTS_DIR) -> list[str]:
        import pyarrow.fs as pafs

        infos = self.fs.get_file_info(pafs.FileSelector(self.path(folder), allow_not_found=True))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.File)

    def parts(self) -> list[str]:
        return [n for n in self.names() if n.startswith(PART_PREFIX) and n.endswith(".parquet")]

    def write_atomic(self, table, name: str, folder: str | None = RESULTS_DIR) -> str:
        import pyarrow.parquet as pq

        where = [folder] if folder else []
        self.fs.create_dir(self.path(*where), recursive=True)
        final = self.path(*where, name)
        tmp = self.path(*where, f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
        pq.write_table(table, tmp, filesystem=self.fs)
        if self.local:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self.fs.move(tmp, final)
        return final

    def read(self, name: str, columns=None):
        import pyarrow.parquet as pq

        return pq.read_table(self.path(RESULTS_DIR, name), columns=columns, filesystem=self.fs)

    def delete(self, name: str) -> None:
        self.fs.delete_file(self.path(RESULTS_DIR, name))


def part_name(keys) -> str:
    digest = hashlib.sha256("\n".join(f"{p}\t{h}" for p, h in sorted(keys)).encode()).hexdigest()[:32]
    return f"{PART_PREFIX}{digest}.parquet"


def reconcile(output: str | Path, drop_retryable: bool) -> tuple[set, int, int]:
    """Make the parts hold each (path, sha256) key once; with `drop_retryable`, drop retryable error rows too.

    Returns (keys kept, rows kept, rows dropped). A part that loses rows is rewritten (the new
    part first, then the old one removed), so a kill at any point leaves at worst duplicates,
    which the next call removes.
    """
    import pyarrow as pa

    store = OutputStore(output)
    store.fs.create_dir(store.path(RESULTS_DIR), recursive=True)
    for name in store.names():
        if name.startswith(".") and name.endswith(".tmp"):  # cut by a kill before its move
            store.delete(name)
    seen: set = set()
    dropped = 0
    for part in store.parts():
        keys = store.read(part, columns=["path", "sha256", "error_kind"]).to_pydict()
        keep = []
        for path, digest, kind in zip(keys["path"], keys["sha256"], keys["error_kind"]):
            ok = (path, digest) not in seen and not (drop_retryable and kind in BATCH_RETRYABLE)
            keep.append(ok)
            if ok:
                seen.add((path, digest))
        if all(keep):
            continue
        dropped += keep.count(False)
        table = store.read(part).filter(pa.array(keep))
        name = (
            part_name(zip(table.column("path").to_pylist(), table.column("sha256").to_pylist()))
            if table.num_rows
            else None
        )
        if name is not None:
            store.write_atomic(table, name)  # same name (duplicates inside one part): replaced in place
        if name != part:
            store.delete(part)
    return seen, len(seen), dropped


def read_output(output: str | Path, columns=None) -> list[dict]:
    """Every row of a batch output folder (local path or URI), as dicts."""
    store = OutputStore(output)
    rows = []
    for part in store.parts():
        rows.extend(store.read(part, columns=columns).to_pylist())
    return rows


def write_profiles(
    output: str | Path,
    by_profile: dict[str, list[ImageResult]],
    labels: list[str],
    catalog,
    production: list[str] | None = None,
) -> list:
    """profiles.parquet: recommend's aggregate_profile for each profile's images."""
    import pyarrow as pa

    profiles = [aggregate_profile(p, results, labels, catalog, production) for p, results in sorted(by_profile.items())]
    rows = [
        {
            "profile": p.profile,
            "images": p.images,
            "images_with_faces": p.images_with_faces,
            "share": p.share,
            "top_label": p.top_label,
            "recommendation": json.dumps(p.recommendation) if p.recommendation else None,
            "reason": p.reason,
        }
        for p in profiles
    ]
    schema = pa.schema(
        [
            ("profile", pa.string()),
            ("images", pa.int64()),
            ("images_with_faces", pa.int64()),
            ("share", pa.map_(pa.string(), pa.float64())),
            ("top_label", pa.string()),
            ("recommendation", pa.string()),
            ("reason", pa.string()),
        ]
    )
    OutputStore(output).write_atomic(pa.Table.from_pylist(rows, schema=schema), PROFILES_FILE, folder=None)
    return profiles
