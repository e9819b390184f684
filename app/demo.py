"""`make demo`: the embedded Triton server + the client on the bundled sample photos.

Starts the server on free loopback ports, runs `recommend` on the sample
profile, prints the tables, writes the JSONL, stops the server.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib import resources
from pathlib import Path

from face2hbe.net import free_port


def sample_photos_dir() -> Path:
    return Path(str(resources.files("face2hbe.client") / "samples"))


def default_repository() -> Path:
    """The checkout's model_repository/ (the demo runs from a source checkout: app/demo.py's parent's sibling)."""
    return Path(__file__).resolve().parents[1] / "model_repository"


def recommend_samples(url: str, output: Path, photos=None):
    """The demo's run against the server at `url`: recommend on `photos` (default: the bundled
    samples, one profile), write the JSONL to `output`; returns (summary, catalog)."""
    from face2hbe.client import Recommender

    rec = Recommender(url=url)
    summary = rec.run(photos or [sample_photos_dir()], output, progress=False)
    return summary, rec.catalog


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repository", type=Path, default=default_repository())
    parser.add_argument("--output", type=Path, default=Path("out/demo-results.jsonl"))
    parser.add_argument("photos", nargs="*", type=Path, help="default: the bundled sample photos")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from face2hbe.client.report import print_report
    from face2hbe.errors import Face2hbeError
    from face2hbe.serving.embedded import EmbeddedServer, ServerSettings

    ports = dict(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    try:
        with EmbeddedServer(ServerSettings(args.repository, **ports)):
            summary, catalog = recommend_samples(f"127.0.0.1:{ports['grpc_port']}", args.output, args.photos)
            print_report(args.output, summary, catalog)
    except Face2hbeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
