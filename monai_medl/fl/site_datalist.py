# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""One federated site's own datalist: read and checked before the site trains or writes anything."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["SiteDataError", "SiteData", "load_site_datalist"]


class SiteDataError(ValueError):
    """A site's datalist is missing or malformed; the message names the site and the file."""


@dataclass
class SiteData:
    """A site's training items: ``features`` ``(n, in_features)``, ``labels`` ``(n, 1)`` and its ``site_name``."""

    site: str
    path: Path
    site_name: str
    features: torch.Tensor
    labels: torch.Tensor


def _fail(site: str, path: Path, what: str) -> SiteDataError:
    return SiteDataError(f"site {site!r}: datalist {str(path)!r} {what}")


def _entries(site: str, path: Path, key: str) -> list:
    if not path.is_file():
        raise _fail(site, path, "does not exist (each site needs its own datalist JSON).")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _fail(site, path, f"is not readable JSON: {e}.") from None
    entries = content.get(key) if isinstance(content, dict) else None
    if not isinstance(entries, list) or not entries:
        raise _fail(
            site,
            path,
            f"needs a non-empty list under {key!r}, like {{{key!r}: [{{'features': [...], "
            "'label': 0.0, 'site': 'hospital_a'}, ...]}.",
        )
    return entries


def load_site_datalist(path: str | Path, site: str, in_features: int | None = None, key: str = "training") -> SiteData:
    """Read ``path``, a MONAI-style datalist of tabular items ``{"features": [...], "label": y, "site": name}``.

    Every item must carry the same ``site`` name (the site's one entry of the site vocabulary) and ``in_features``
    numbers when given.

    Raises:
        SiteDataError: naming ``site``, the file, the item index and the key at fault.

    Example::

        >>> import json, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "site_a.json")
        >>> items = [{"features": [0.1, 0.2], "label": 1.0, "site": "a"}, {"features": [0.3, 0.1], "label": 0.0,
        ...          "site": "a"}]
        >>> with open(path, "w") as f: json.dump({"training": items}, f)
        >>> data = load_site_datalist(path, site="site-1", in_features=2)
        >>> data.site_name, tuple(data.features.shape), tuple(data.labels.shape)
        ('a', (2, 2), (2, 1))
    """
    path = Path(path)
    entries = _entries(site, path, key)
    rows, labels, names = [], [], set()
    for i, item in enumerate(entries):
        where = f"item {i} of {key!r}"
        if not isinstance(item, dict) or not {"features", "label", "site"} <= set(item):
            raise _fail(site, path, f"{where} needs the keys 'features', 'label' and 'site', got {item!r:.80}.")
        feats = item["features"]
        if not isinstance(feats, list) or not all(isinstance(v, (int, float)) for v in feats):
            raise _fail(site, path, f"{where}: 'features' must be a list of numbers.")
        if in_features is not None and len(feats) != in_features:
            raise _fail(site, path, f"{where}: 'features' has {len(feats)} values, the network expects {in_features}.")
        if not isinstance(item["label"], (int, float)):
            raise _fail(site, path, f"{where}: 'label' must be a number, got {item['label']!r}.")
        rows.append(feats)
        labels.append(float(item["label"]))
        names.add(str(item["site"]))
    if len(names) != 1:
        raise _fail(site, path, f"holds items of several sites {sorted(names)}: a site trains on its own items only.")
    if len({len(r) for r in rows}) != 1:
        raise _fail(site, path, "has items with different numbers of features.")
    features = torch.tensor(rows, dtype=torch.float32)
    return SiteData(site, path, names.pop(), features, torch.tensor(labels, dtype=torch.float32)[:, None])
