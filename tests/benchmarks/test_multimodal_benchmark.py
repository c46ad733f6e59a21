# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""benchmarks.multimodal: per-seed extras in the results and the paired comparisons (no training)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks._common import paired_comparisons, summarize_rows
from benchmarks.multimodal import COMPARISONS, TABLE_ORDER

SPLITS = {"seen_auroc": "seen", "unseen_auroc": "unseen"}
KEYS = TABLE_ORDER + [f"{m}+missing_site" for m in TABLE_ORDER]


def _per_seed(n: int = 4) -> list[dict[str, dict[str, float]]]:
    """Synthetic per-seed rows for every model key the summaries list (values depend on seed and model)."""
    names = TABLE_ORDER
    out = []
    for seed in range(n):
        rows = {}
        for i, name in enumerate(names):
            for suffix in ("", "+missing_site"):
                rows[name + suffix] = {
                    "seen_auroc": 0.6 + 0.01 * i + 0.02 * seed,
                    "unseen_auroc": 0.5 + 0.02 * i + 0.01 * seed * (-1) ** i,
                    "val_auroc": 0.7,
                    "unseen_t1_only": 0.55 + 0.01 * seed - 0.005 * i,
                }
        out.append(rows)
    return out


def test_summaries_keep_per_seed_extras_and_paired_section():
    per_seed = _per_seed()
    models = summarize_rows(per_seed, "seen_auroc", "unseen_auroc", KEYS)
    extra = models["me_multimodal"]["extra"]
    np.testing.assert_allclose(extra["unseen_t1_only_values"], [r["me_multimodal"]["unseen_t1_only"] for r in per_seed])
    np.testing.assert_allclose(extra["val_auroc_values"], [0.7] * 4)
    lines = paired_comparisons(models, COMPARISONS, splits=SPLITS)
    assert len(lines) == 4 + len(COMPARISONS)
    # me_multimodal (index 5) unseen_t1_only minus me_t1 (index 0) unseen AUROC, seed by seed
    key = "paired_unseen_t1_only_minus_me_t1_unseen_auroc"
    expected = [(0.55 + 0.01 * s - 0.025) - (0.5 + 0.01 * s) for s in range(4)]
    np.testing.assert_allclose(extra[f"{key}_values"], expected, atol=1e-12)
    assert extra[key] == pytest.approx(0.025)
    assert extra[f"{key}_wins"] == 4
    row = next(x for x in lines if x.startswith("| me_multimodal unseen_t1_only - me_t1"))
    assert row.endswith("| +0.025 [+0.025, +0.025] | 4/4 |")


def test_run_writes_per_seed_extras_and_paired_markdown(tmp_path, monkeypatch):
    import json

    import benchmarks.multimodal as bench

    per_seed = _per_seed(1)
    run_specs = []
    monkeypatch.setattr(
        bench, "run_seed", lambda cfg, seed, cache_dir, log, specs: run_specs.append(specs) or per_seed[0]
    )
    default_spec = dict(bench.MODELS["me_multimodal"])
    bench.run(quick=True, out_dir=tmp_path, cache_dir=str(tmp_path))
    results = json.loads((tmp_path / "multimodal.json").read_text())
    # the selected me_multimodal reaches the run (and its record) as an argument; the module's MODELS are unchanged
    selected = bench.selected_multimodal_spec()[1]
    assert run_specs and all(specs["me_multimodal"] == selected for specs in run_specs)
    assert results["config"]["models"]["me_multimodal"] == json.loads(json.dumps(selected))
    assert bench.MODELS["me_multimodal"] == default_spec
    extra = results["models"]["me_multimodal"]["extra"]
    assert extra["unseen_t1_only_values"] == [per_seed[0]["me_multimodal"]["unseen_t1_only"]]
    assert "paired_unseen_auroc_minus_me_best_single_unseen_auroc_wins" in extra
    md = (tmp_path / "multimodal.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| model |"))
    assert header == "| model | seen auroc | unseen auroc | val_auroc | unseen_t1_only |"  # no _values / paired_*
    assert "### Paired comparisons (per-seed differences" in md
