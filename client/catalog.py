"""The SKU catalog and the ranking that turns label scores into products (rules: face2hbe.client.decisions).

The format is chosen by the file suffix: `.csv` is CSV, anything else YAML.

Catalog file (YAML):

    currency: EUR            # optional, shown in tables
    thresholds:              # optional: this catalog's own threshold for a served label (replaces the model's)
      earrings: 0.6
    opt_in: [earrings]       # optional: labels below the model's production bar that this catalog recommends anyway
    products:
      - sku: EW-1001         # unique id
        label: eyewear       # one of the served labels: the scores' (eyewear, beard, hat) or the attributes'
                             # (earrings, necklace, necktie, lipstick, makeup, mustache, goatee, bald, gray_hair)
        name: Round acetate frames
        price: 89.0
        url: https://shop.example/ew-1001   # optional
        min_score: 0.6       # optional: only when the face's score reaches this (default: the label threshold)
        priority: 1.2        # optional: ranking weight (default 1.0)

Catalog file (CSV, header row required; empty optional cells take the defaults;
CSV has no currency, no thresholds and no opt_in):

    sku,label,name,price,url,min_score,priority
    EW-1001,eyewear,Round acetate frames,89.0,https://shop.example/ew-1001,,
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from face2hbe.errors import CatalogError

from .decisions import margin, passing, rank_key


@dataclass(frozen=True)
class Product:
    sku: str
    label: str
    name: str
    price: float
    url: str = ""
    min_score: float = 0.0
    priority: float = 1.0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Catalog:
    products: tuple[Product, ...]
    currency: str = ""
    thresholds: dict[str, float] = field(default_factory=dict)  # the catalog's overrides of served labels' thresholds
    opt_in: tuple[str, ...] = ()  # labels below the production bar that this catalog recommends anyway

    def for_label(self, label: str) -> list[Product]:
        return [p for p in self.products if p.label == label]

    def effective_thresholds(self, thresholds: dict[str, float]) -> dict[str, float]:
        """The thresholds a label passes by: the catalog's own where it sets one, else `thresholds` (the model's)."""
        return {**thresholds, **self.thresholds}

    def recommended(self, production: list[str] | tuple[str, ...] | None) -> set[str] | None:
        """The labels this catalog may recommend: the model's production labels and its own opt-ins (None: all)."""
        return None if production is None else set(production) | set(self.opt_in)

    def rules(self) -> dict:
        """What this catalog changes in the decisions (its thresholds, its opt-ins), for the records; {} when nothing."""
        return {k: v for k, v in (("thresholds", dict(self.thresholds)), ("opt_in", list(self.opt_in))) if v}

    def rank(
        self,
        label_scores: dict[str, float],
        thresholds: dict[str, float],
        limit: int = 3,
        production: list[str] | tuple[str, ...] | None = None,
    ) -> list[dict]:
        """Products for every recommended label that passes, best first (decisions.py).

        A label passes by the catalog's threshold for it when it sets one, else `thresholds` (the model's); it is
        recommended when it is in `production` (None: every label) or this catalog opts it in. A product also needs
        the face score to reach its own `min_score`. Rank score = priority x margin over the threshold; ties by
        priority, then SKU. Each label's best product comes first (so a strong beard cannot crowd out the
        glasses), then the rest by rank.
        """
        ranked = []
        thresholds = self.effective_thresholds(thresholds)
        allowed = self.recommended(production)
        for label in passing(label_scores, thresholds):
            if allowed is not None and label not in allowed:
                continue
            score = label_scores[label]
            over = margin(score, thresholds[label])
            for p in self.for_label(label):
                if score >= p.min_score:
                    ranked.append({**p.as_dict(), "rank_score": round(p.priority * over, 6)})
        ranked.sort(key=rank_key)
        seen_labels: set[str] = set()
        leaders = [r for r in ranked if r["label"] not in seen_labels and not seen_labels.add(r["label"])]
        rest = [r for r in ranked if r not in leaders]
        return (leaders + rest)[:limit]


def default_catalog_path() -> Path:
    return Path(str(resources.files("face2hbe.client") / "catalog.yaml"))


REQUIRED_FIELDS = ("sku", "label", "name", "price")
CATALOG_KEYS = ("currency", "thresholds", "opt_in", "products")  # a YAML catalog's top-level keys


def load_catalog(path: str | Path | None = None, labels: list[str] | None = None) -> Catalog:
    """Read and validate a catalog file (the bundled example when `path` is None).

    `.csv` files are read as CSV (columns sku,label,name,price,url,min_score,priority),
    every other suffix as YAML.
    """
    path = Path(path) if path else default_catalog_path()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read catalog ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise CatalogError(f"{path}: not UTF-8 text ({exc.reason})") from None
    if path.suffix.lower() == ".csv":
        rows, currency, thresholds, opt_in = _read_csv(path, text), "", {}, []
    else:
        rows, currency, thresholds, opt_in = _read_yaml(path, text)
    return Catalog(
        _validate(path, rows, labels),
        currency,
        _validate_thresholds(path, thresholds, labels),
        _validate_opt_in(path, opt_in, labels),
    )


def _validate_opt_in(path: Path, opt_in, labels: list[str] | None) -> tuple[str, ...]:
    if not isinstance(opt_in, list) or not all(isinstance(label, str) for label in opt_in):
        raise CatalogError(f"{path}: 'opt_in' must be a list of labels, e.g. [earrings]")
    unknown = [label for label in opt_in if labels is not None and label not in labels]
    if unknown:
        raise CatalogError(f"{path}: opt_in names {unknown}, not served labels {labels}")
    return tuple(dict.fromkeys(opt_in))


def _validate_thresholds(path: Path, thresholds, labels: list[str] | None) -> dict[str, float]:
    if not isinstance(thresholds, dict):
        raise CatalogError(f"{path}: 'thresholds' must map labels to numbers")
    out = {}
    for label, value in thresholds.items():
        if labels is not None and label not in labels:
            raise CatalogError(f"{path}: threshold for {label!r}, not one of the served labels {labels}")
        try:
            out[str(label)] = float(value)
        except (TypeError, ValueError):
            raise CatalogError(f"{path}: threshold for {label!r} is not a number ({value!r})") from None
        if not 0.0 <= out[str(label)] <= 1.0:
            raise CatalogError(f"{path}: threshold for {label!r} is {value}, outside 0..1")
    return out


def _read_yaml(path: Path, text: str) -> tuple[list, str, dict, list]:
    import yaml

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CatalogError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("products"), list):
        raise CatalogError(f"{path}: expected a mapping with a 'products' list")
    unknown = sorted(set(doc) - set(CATALOG_KEYS), key=str)
    if unknown:
        raise CatalogError(f"{path}: unknown keys {unknown} (a catalog has {', '.join(CATALOG_KEYS)})")
    return doc["products"], str(doc.get("currency") or ""), doc.get("thresholds") or {}, doc.get("opt_in") or []


def _read_csv(path: Path, text: str) -> list[dict]:
    import csv
    import io

    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip() for h in (reader.fieldnames or [])]
    if not header:
        raise CatalogError(f"{path}: empty CSV (expected a header row: sku,label,name,price,url,min_score,priority)")
    reader.fieldnames = header
    rows = []
    try:
        for line_no, row in enumerate(reader, start=2):
            if None in row:
                raise CatalogError(f"{path}: line {line_no} has more cells than the header")
            # Empty optional cells take the defaults; missing required ones are reported below.
            rows.append({k: v.strip() for k, v in row.items() if v is not None and v.strip() != ""})
    except csv.Error as exc:
        raise CatalogError(f"{path}: not valid CSV ({exc})") from None
    return rows


def _validate(path: Path, rows: list, labels: list[str] | None) -> tuple[Product, ...]:
    products, seen = [], set()
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise CatalogError(f"{path}: product #{i} is not a mapping")
        missing = [k for k in REQUIRED_FIELDS if k not in row]
        if missing:
            raise CatalogError(f"{path}: product #{i} lacks {', '.join(missing)}")
        unknown = set(row) - {f for f in Product.__dataclass_fields__}
        if unknown:
            raise CatalogError(f"{path}: product {row['sku']!r} has unknown fields {sorted(unknown)}")
        if labels is not None and row["label"] not in labels:
            raise CatalogError(
                f"{path}: product {row['sku']!r} has label {row['label']!r}, not one of the served labels {labels}"
            )
        if row["sku"] in seen:
            raise CatalogError(f"{path}: duplicate sku {row['sku']!r}")
        seen.add(row["sku"])
        try:
            products.append(
                Product(
                    sku=str(row["sku"]),
                    label=str(row["label"]),
                    name=str(row["name"]),
                    price=float(row["price"]),
                    url=str(row.get("url", "")),
                    min_score=float(row.get("min_score", 0.0)),
                    priority=float(row.get("priority", 1.0)),
                )
            )
        except (TypeError, ValueError) as exc:
            raise CatalogError(f"{path}: product {row['sku']!r}: {exc}") from None
    return tuple(products)
