"""The SKU catalog and the ranking rules that turn label scores into products.

Catalog file (YAML):

    currency: EUR            # optional, shown in tables
    products:
      - sku: EW-1001         # unique id
        label: eyewear       # one of the model's labels
        name: Round acetate frames
        price: 89.0
        url: https://shop.example/ew-1001   # optional
        min_score: 0.6       # optional: only when the face's score reaches this (default: the label threshold)
        priority: 1.2        # optional: ranking weight (default 1.0)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from face2hbe.errors import CatalogError


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

    def for_label(self, label: str) -> list[Product]:
        return [p for p in self.products if p.label == label]

    def rank(self, label_scores: dict[str, float], thresholds: dict[str, float], limit: int = 3) -> list[dict]:
        """Products for every label whose score passes its threshold, best first.

        Rank score = face score x product priority; a product also needs the
        face score to reach its own `min_score`.
        """
        ranked = []
        for label, score in label_scores.items():
            if score < thresholds.get(label, 1.0):
                continue
            for p in self.for_label(label):
                if score >= p.min_score:
                    ranked.append({**p.as_dict(), "rank_score": round(score * p.priority, 6)})
        ranked.sort(key=lambda r: (-r["rank_score"], r["sku"]))
        return ranked[:limit]


    def best_for(self, label: str, score: float) -> dict | None:
        """The top-ranked product of one label for a face scoring `score` (None if none qualifies)."""
        ranked = [{**p.as_dict(), "rank_score": round(score * p.priority, 6)} for p in self.for_label(label) if score >= p.min_score]
        return min(ranked, key=lambda r: (-r["rank_score"], r["sku"])) if ranked else None


def default_catalog_path() -> Path:
    return Path(str(resources.files("face2hbe.client") / "catalog.yaml"))


def load_catalog(path: str | Path | None = None, labels: list[str] | None = None) -> Catalog:
    """Read and validate a catalog file (the bundled example when `path` is None)."""
    import yaml

    path = Path(path) if path else default_catalog_path()
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read catalog ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise CatalogError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("products"), list):
        raise CatalogError(f"{path}: expected a mapping with a 'products' list")
    products, seen = [], set()
    for i, row in enumerate(doc["products"], start=1):
        if not isinstance(row, dict):
            raise CatalogError(f"{path}: product #{i} is not a mapping")
        missing = [k for k in ("sku", "label", "name", "price") if k not in row]
        if missing:
            raise CatalogError(f"{path}: product #{i} lacks {', '.join(missing)}")
        unknown = set(row) - {f for f in Product.__dataclass_fields__}
        if unknown:
            raise CatalogError(f"{path}: product {row['sku']!r} has unknown fields {sorted(unknown)}")
        if labels is not None and row["label"] not in labels:
            raise CatalogError(f"{path}: product {row['sku']!r} has label {row['label']!r}, not one of {labels}")
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
    return Catalog(tuple(products), str(doc.get("currency", "")))
