# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""benchmarks._common helpers shared by the benchmark scripts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from benchmarks._common import paired_difference


def test_paired_difference_interval_and_wins_on_the_better_side():
    a, b = [0.8, 0.9, 0.7, 0.85], [0.7, 0.8, 0.75, 0.8]
    d = paired_difference(a, b)
    np.testing.assert_allclose(d["values"], [0.1, 0.1, -0.05, 0.05])
    assert d["mean"] == pytest.approx(0.05) and d["wins"] == 3 and d["n"] == 4
    half = stats.t.ppf(0.975, 3) * np.std(d["values"], ddof=1) / 2  # paired Student-t, n = 4
    assert d["ci95"] == pytest.approx([0.05 - half, 0.05 + half])
    assert paired_difference(a, b, higher_is_better=False)["wins"] == 1  # e.g. an error: lower wins
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1.0], [1.0, 2.0])


def test_plan_is_on_disk_before_the_results_and_kept_in_them(tmp_path):
    from benchmarks._common import announce_plan, summarize, write_results

    plan = {"seeds": "0..1", "decision_rule": "interval excludes 0"}
    announce_plan("toy", True, plan, [0, 1], tmp_path)
    early = json.loads((tmp_path / "toy.json").read_text())
    assert early["status"] == "running" and early["plan"] == plan and "models" not in early
    models = {"me": {"seen": summarize([0.5, 0.7]), "unseen": None, "extra": {}}}
    write_results("toy", True, "auroc", 2, models, {}, [0, 1], tmp_path, plan=plan)
    final = json.loads((tmp_path / "toy.json").read_text())
    assert final["plan"] == plan and "status" not in final
    assert "interval excludes 0" in (tmp_path / "toy.md").read_text()


def test_run_benchmark_rows_summaries_planned_comparisons_and_generated_notes(tmp_path):
    from benchmarks._common import Comparison, run_benchmark, summarize_rows

    def run_seed(seed):  # me beats conventional by 0.1 seen on every seed, loses 0.05 unseen on seed 1 only
        return {
            "conventional": {"seen_auroc": 0.6 + 0.01 * seed, "unseen_auroc": 0.5, "mse": 2.0},
            "me": {"seen_auroc": 0.7 + 0.01 * seed, "unseen_auroc": 0.55 - 0.1 * seed, "mse": 1.0 + seed},
        }

    progress: list[str] = []
    comparisons = [
        Comparison("me", "seen_auroc", "conventional"),
        Comparison("me", "mse", "conventional", higher_is_better=False),
        Comparison("me", "unseen_auroc", "conventional", key="paired_unseen"),
    ]
    plan = {"seeds": "0, 1, 2", "decision_rule": "interval excludes 0"}
    res = run_benchmark(
        "toy", True, plan, [0, 1, 2], run_seed, metric="auroc", seen="seen_auroc", unseen="unseen_auroc",
        config=lambda: {"lr": 1e-3}, comparisons=comparisons, notes=lambda models: f"{len(models)} models",
        out_dir=tmp_path, log=progress.append,
    )  # fmt: skip
    assert [p.split(" in ")[0] for p in progress] == ["seed 0 done (1/3)", "seed 1 done (2/3)", "seed 2 done (3/3)"]
    on_disk = json.loads((tmp_path / "toy.json").read_text())
    assert on_disk == json.loads(json.dumps(res)) and on_disk["plan"] == plan and on_disk["config"]["lr"] == 1e-3
    me = on_disk["models"]["me"]
    np.testing.assert_allclose(me["seen"]["values"], [0.7, 0.71, 0.72])
    assert me["extra"]["mse_values"] == [1.0, 2.0, 3.0] and "seen_auroc" not in me["extra"]
    np.testing.assert_allclose(me["extra"]["paired_seen_auroc_minus_conventional_values"], [0.1] * 3)
    assert me["extra"]["paired_seen_auroc_minus_conventional_wins"] == 3
    assert me["extra"]["paired_mse_minus_conventional_wins"] == 1  # lower wins: only seed 0 (1.0 < 2.0)
    np.testing.assert_allclose(me["extra"]["paired_unseen_values"], [0.05, -0.05, -0.15])
    md = (tmp_path / "toy.md").read_text()
    assert "| me - conventional: mse (lower wins) | +0.000 [" in md and md.rstrip().endswith("2 models")
    header = next(line for line in md.splitlines() if line.startswith("| model |"))
    assert header == "| model | seen auroc | unseen auroc | mse |"
    with pytest.raises(KeyError, match="'me' is missing"):
        summarize_rows([run_seed(0), {"conventional": run_seed(1)["conventional"]}], "seen_auroc", "unseen_auroc")


def test_rows_may_carry_records_that_only_the_analysis_reads(tmp_path):
    from benchmarks._common import run_benchmark, summarize_rows

    def run_seed(seed):  # a list of predictions and a record beside the scalar metrics
        return {"me": {"unseen_auroc": 0.5 + 0.1 * seed, "probabilities": [0.1, 0.9]}, "run": {"log": {"s": seed}}}

    def analysis(models, rows):
        return {"mean_probability": float(np.mean([p for r in rows for p in r["me"]["probabilities"]])), "n": len(rows)}

    rows = [run_seed(0), run_seed(1)]
    models = summarize_rows(rows, None, "unseen_auroc", order=["me"])
    assert list(models) == ["me"] and models["me"]["extra"] == {} and models["me"]["unseen"]["values"] == [0.5, 0.6]
    res = run_benchmark(
        "toy", False, {"rule": "-"}, [0, 1], run_seed, metric="auroc", seen=None, unseen="unseen_auroc", config={},
        order=["me"], analysis=analysis, out_dir=tmp_path, log=lambda _: None,
    )  # fmt: skip
    on_disk = json.loads((tmp_path / "toy.json").read_text())
    assert on_disk["analysis"] == {"mean_probability": 0.5, "n": 2} == res["analysis"]
    with pytest.raises(KeyError):  # a metric missing from a row is still an error, not left out
        summarize_rows([run_seed(0), {"me": {"probabilities": []}}], None, "unseen_auroc")


def test_a_cut_off_run_resumes_from_its_checkpoint_and_only_under_the_same_key(tmp_path):
    from benchmarks._common import run_seeds

    checkpoint, calls = tmp_path / "toy.rows.jsonl", []

    def run_seed(seed):
        calls.append(seed)
        if seed == 2 and len(calls) == 3:
            raise KeyboardInterrupt  # the session ends during seed 2
        return {"me": {"seen_auroc": 0.5 + seed / 10}}

    with pytest.raises(KeyboardInterrupt):
        run_seeds([0, 1, 2], run_seed, log=lambda _: None, checkpoint=checkpoint, run_key="k1")
    rows = run_seeds([0, 1, 2], run_seed, log=lambda _: None, checkpoint=checkpoint, run_key="k1")
    assert calls == [0, 1, 2, 2]  # seeds 0 and 1 were reused, 2 was run again
    assert [r["me"]["seen_auroc"] for r in rows] == pytest.approx([0.5, 0.6, 0.7])
    run_seeds([0, 1], run_seed, log=lambda _: None, checkpoint=checkpoint, run_key="other code or plan")
    assert calls[-2:] == [0, 1]  # rows saved under another key are never reused


def test_no_resume_from_a_dirty_checkout_or_under_other_settings(monkeypatch):
    from benchmarks import _common

    plan, seeds, cfg = {"seeds": "0..2"}, [0, 1, 2], {"epochs": 20}
    monkeypatch.setattr(_common, "git_commit", lambda: "0123456789abcdef0123456789abcdef01234567+dirty")
    assert _common.resume_key("toy", False, plan, seeds, cfg) is None
    monkeypatch.setattr(_common, "git_commit", lambda: "0123456789abcdef0123456789abcdef01234567")
    key = _common.resume_key("toy", False, plan, seeds, cfg)
    assert key is not None and key == _common.resume_key("toy", False, dict(plan), list(seeds), dict(cfg))
    assert key != _common.resume_key("toy", False, {"seeds": "0..3"}, seeds, cfg)
    assert key != _common.resume_key("toy", False, plan, seeds, {"epochs": 8})  # same plan, other settings
    assert _common.resume_key("toy", False, plan, seeds, None) is None  # a config known only after the run
