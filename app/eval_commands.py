"""The commands that judge the model and promote it: thresholds, slices, promote, review, evaluate."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from face2hbe.paths import DATA_DIR

from .options import DEFAULT_REPOSITORY, cache_dir_option, data_option


@click.command()
@data_option("celeba", "CelebA folder (labels.csv + list_attr_celeba.txt).")
@data_option("lfw", "LFW folder (labels.csv with FaRL pseudo-labels).")
@click.option(
    "--repository",
    type=click.Path(path_type=Path),
    default=DEFAULT_REPOSITORY,
    help="Model repository whose face2hbe graph is scored (onnxruntime, CPU).",
)
@cache_dir_option
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the slice metrics as JSON here.",
)
@click.option(
    "--report",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Markdown file whose slices section receives the table (docs/model.md).",
)
def slices(celeba, lfw, repository, cache_dir, output, report):
    """Recall at the served thresholds and ROC AUC per slice (grey hair, moustache without goatee, sex, age, pale skin) of the test splits."""
    from face2hbe.paths import portable

    from . import slices as slice_report

    result = slice_report.run(str(celeba), str(lfw), repository, cache_dir)
    click.echo(slice_report.markdown(result))
    if output:
        slice_report.save_json(result, output)
    if report:
        command = f"face2hbe slices --celeba {portable(celeba)} --lfw {portable(lfw)} --report {portable(report)}" + (
            f" --output {portable(output)}" if output else ""
        )
        slice_report.write_report(result, report, command)


@click.command()
@data_option("celeba", "CelebA folder (labels.csv + list_attr_celeba.txt).")
@data_option("lfw", "LFW folder (labels.csv with FaRL pseudo-labels).")
@click.option(
    "--repository",
    type=click.Path(path_type=Path),
    default=DEFAULT_REPOSITORY,
    help="Model repository whose face2hbe graph is scored (onnxruntime, CPU).",
)
@click.option("--seed", default=0, type=int, help="Split seed; must match the training run's.")
@cache_dir_option
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the thresholds and per-domain metrics as JSON here.",
)
@click.option(
    "--report",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Markdown file whose thresholds section receives the tables (docs/model.md).",
)
@click.option(
    "--write",
    is_flag=True,
    help="Write the chosen thresholds and the production labels (CelebA-test ROC AUC at or above "
    "the bar; kept as they are with --no-test) into face2hbe's, face2hbe_int8's and face2hbe_photo's config.pbtxt.",
)
@click.option("--no-test", is_flag=True, help="Skip the test-split measurement (choose on val only; faster).")
def thresholds(celeba, lfw, repository, seed, cache_dir, output, report, write, no_test):
    """Choose every served label's threshold on a CelebA + LFW validation mix; report P/R/F1 per domain and test ROC AUC."""
    from face2hbe.paths import portable, portable_spec

    from .thresholds import apply, markdown, production, run, save_json, write_report

    for folder in (celeba, lfw):
        if not (folder / "labels.csv").is_file():
            raise click.ClickException(f"{folder}: no labels.csv (see ../shared/data/README.md)")
    result = run(str(celeba), str(lfw), repository, cache_dir, seed, with_test=not no_test)
    result["data"] = [portable_spec(f"celeba:{celeba}"), portable_spec(f"lfw:{lfw}")]
    click.echo(markdown(result))
    if output:
        save_json(result, output)
    if report:
        write_report(
            result,
            report,
            f"face2hbe thresholds --celeba {portable(celeba)} --lfw {portable(lfw)} "
            f"--write --report {report}" + (f" --output {output}" if output else ""),
        )
    if write:
        for path in apply(repository, result["thresholds"], production(result)):
            click.echo(f"wrote {path}")


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--repository",
    type=click.Path(path_type=Path),
    default=DEFAULT_REPOSITORY,
    help="Model repository to promote into (its served model is the gate's baseline).",
)
@data_option("celeba", "CelebA folder: thresholds (val), INT8 calibration, gate (test).")
@data_option("lfw", "LFW folder: thresholds (val), gate (test identities).")
@click.option(
    "--more",
    type=click.Path(path_type=Path),
    multiple=True,
    default=[DATA_DIR / "celeba_more"],
    help="Further CelebA folders with identities whose test split the gate also measures (skipped when absent).",
)
@cache_dir_option
@click.option(
    "--docs",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("docs"),
    help="Docs folder whose model.md (gate, thresholds, slices), serving.md (INT8) and eval/*.json are rewritten on promotion.",
)
@click.option("--dry-run", is_flag=True, help="Stage and gate only: nothing in the repository or the docs changes.")
@click.option("--force", is_flag=True, help="Promote even when the gate refuses (the refusal is still reported).")
def promote(run_dir, repository, celeba, lfw, more, cache_dir, docs, dry_run, force):
    """Serve a training run: fp32 + INT8 from it, thresholds on validation, a gate against the served model on the test splits."""
    from .promote import PromoteSettings, markdown
    from .promote import promote as run_promote

    for folder in (celeba, lfw):
        if not (folder / "labels.csv").is_file():
            raise click.ClickException(f"{folder}: no labels.csv (see ../shared/data/README.md)")
    settings = PromoteSettings(
        run_dir,
        repository,
        celeba,
        lfw,
        [m for m in more if (m / "labels.csv").is_file()],
        cache_dir,
        docs,
        force,
        dry_run,
    )
    result = run_promote(settings)
    click.echo(markdown(result["gate"]))
    if result["promoted"]:
        click.echo(
            f"promoted {run_dir} into {repository}: " + ", ".join(f"{k} {v[:12]}" for k, v in result["sha256"].items())
        )
    elif not dry_run:
        click.echo(f"not promoted: the gate refused {run_dir} (--force promotes anyway)", err=True)
    sys.exit(0 if result["promoted"] or (dry_run and result["gate"]["passed"]) else 1)


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder for review.html and corrections.csv.",
)
@click.option(
    "--repository",
    type=click.Path(path_type=Path),
    default=DEFAULT_REPOSITORY,
    help="Model repository whose face2hbe graph scores the photos (onnxruntime, CPU).",
)
@click.option(
    "--per-kind",
    default=12,
    type=click.IntRange(1),
    help="How many false positives and false negatives to show per label.",
)
def review(folder, output, repository, per_kind):
    """Worst false positives/negatives per label on a labelled folder (eyewear/ beard/ hat/ none/): an HTML page and a corrections CSV."""
    from .review import review as run_review

    result = run_review(folder, output, repository, per_kind)
    click.echo(
        f"{result['photos']} photos, {result['faces']} with a face, {result['mistakes']} mistakes shown: "
        f"{result['html']}, {result['csv']} (save corrected as {folder / 'corrections.csv'})"
    )


@click.command()
@click.option(
    "--data", required=True, metavar="KIND:PATH", help="Labeled set: celeba:DIR, folders:DIR or lfw:DIR (as for train)."
)
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Folder for metrics.json and curves.png (ROC + precision-recall).",
)
@click.option("--url", default=None, help="Server address host:port (default 127.0.0.1:8001 for gRPC, :8000 for HTTP).")
@click.option(
    "--protocol",
    type=click.Choice(["grpc", "http"]),
    default="grpc",
    help="KServe v2 protocol to call the server with.",
)
@click.option(
    "--split",
    type=click.Choice(["train", "val", "test", "all"]),
    default="test",
    help="Which part of the seeded split (by identity where known, as in training) to evaluate.",
)
@click.option("--seed", default=0, type=int, help="Split seed; must match the training run's.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Use only the first N samples (before splitting).")
@cache_dir_option
def evaluate(data, output, url, protocol, split, seed, limit, cache_dir):
    """Per-label ROC AUC, PR AUC, accuracy and F1 of the served model on a labeled set (detect -> crop -> serve)."""
    from .evaluate import EvalConfig
    from .evaluate import evaluate as run_evaluation

    result = run_evaluation(
        EvalConfig(
            data=data,
            output=output,
            url=url,
            protocol=protocol,
            split=split,
            seed=seed,
            limit=limit,
            cache_dir=cache_dir,
        )
    )
    click.echo(f"{result['data']} ({result['split']}): {result['faces_found']} faces in {result['images']} images")
    for label, m in result["metrics"].items():
        click.echo(
            f"  {label:8s} ROC AUC {m.get('roc_auc', float('nan')):.3f}  PR AUC {m.get('pr_auc', float('nan')):.3f}  "
            f"acc {m.get('accuracy', float('nan')):.3f}  F1 {m.get('f1', float('nan')):.3f} @ {m.get('threshold', float('nan')):.3f}"
        )
    click.echo(f"metrics and curves in {output}")
