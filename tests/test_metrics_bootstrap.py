"""Seed spread and the paired bootstrap: the resampled metrics are the project's metrics, and
the verdict separates a real difference from noise."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mccl_core.experiments.seeds import SeedRun, parse_seeds, summarise, summary_table, with_seed
from mccl_core.metrics import f1_report, mean_average_precision
from mccl_core.metrics.bootstrap import (
    ScoredRun,
    paired_difference,
    seed_spread,
    weighted_macro_f1,
    weighted_map,
)


def _data(n=240, c=8, seed=0, signal=0.3):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, c)) < 0.25).astype(int)
    labels[:, 3] = 0  # a class without positives: excluded from mAP, F1 0 by zero_division
    scores = np.round(np.clip(rng.random((n, c)) * 0.6 + labels * signal, 0, 1), 2)  # rounded: many ties
    return labels, scores


def test_weighted_metrics_equal_the_project_metrics_at_unit_weights_and_on_a_resample():
    labels, scores = _data()
    ones = np.ones((1, len(labels)))
    assert weighted_map(labels, scores, ones)[0] == pytest.approx(mean_average_precision(labels, scores).map, abs=1e-12)
    assert weighted_macro_f1(labels, scores > 0.5, ones)[0] == pytest.approx(f1_report(labels, scores, 0.5).macro_f1)
    # a resample as multiplicities == the metric of the explicitly resampled rows
    rng = np.random.default_rng(1)
    idx = rng.integers(0, len(labels), len(labels))
    weights = np.bincount(idx, minlength=len(labels))[None, :].astype(float)
    assert weighted_map(labels, scores, weights)[0] == pytest.approx(
        mean_average_precision(labels[idx], scores[idx]).map
    )
    assert weighted_macro_f1(labels, scores > 0.4, weights)[0] == pytest.approx(
        f1_report(labels[idx], scores[idx], 0.4).macro_f1
    )


def test_paired_difference_verdicts():
    labels, scores = _data(signal=0.3)
    rng = np.random.default_rng(2)
    weak = [ScoredRun(np.clip(scores + rng.normal(0, 0.35, scores.shape), 0, 1), 0.5) for _ in range(3)]
    same = [ScoredRun(scores, 0.5) for _ in range(3)]
    better = paired_difference(labels, same, weak, "map", n_boot=300)
    assert better.verdict == "better" and better.low > 0 and better.estimate > 0.1
    worse = paired_difference(labels, weak, same, "macro_f1", n_boot=300)
    assert worse.verdict == "worse" and worse.high < 0
    # a variant equal to its reference up to small noise: the interval straddles 0
    jitter = [ScoredRun(np.clip(scores + rng.normal(0, 0.02, scores.shape), 0, 1), 0.5) for _ in range(3)]
    tie = paired_difference(labels, jitter, same, "map", n_boot=300)
    assert tie.verdict == "within noise" and tie.low <= 0 <= tie.high and abs(tie.estimate) < 0.02
    assert tie.to_dict()["verdict"] == "within noise" and tie.describe().startswith(("+", "-"))
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference(labels, same[:2], same, "map")


def test_seed_noise_widens_the_interval():
    """Two seeds that disagree: the seed level of the bootstrap must show it."""
    labels, scores = _data(n=400)
    rng = np.random.default_rng(3)
    ref = [ScoredRun(scores, 0.5)] * 2
    noise = rng.normal(0, 0.05, scores.shape)
    agreeing = [ScoredRun(np.clip(scores + noise, 0, 1), 0.5)] * 2
    split = [ScoredRun(np.clip(scores + noise, 0, 1), 0.5), ScoredRun(np.clip(scores + 5 * noise, 0, 1), 0.5)]
    narrow = paired_difference(labels, agreeing, ref, "map", n_boot=400)
    wide = paired_difference(labels, split, ref, "map", n_boot=400)
    assert wide.high - wide.low > 2 * (narrow.high - narrow.low)


def test_seed_spread_and_parse_seeds():
    assert seed_spread([0.7, 0.8, 0.9]) == pytest.approx((0.8, 0.1))
    mean, std = seed_spread([0.5])
    assert mean == 0.5 and math.isnan(std)
    assert parse_seeds("", 4) == [4] and parse_seeds("0, 1,2", 0) == [0, 1, 2]
    for bad, message in (("0,0", "twice"), ("a", "not an integer"), ("-1", ">= 0")):
        with pytest.raises(Exception, match=message):
            parse_seeds(bad, 0)
    seeded = with_seed({"train": {"seed": 0, "lr": 1}, "model": {"cpi": {"k_max": 3}}}, 7)
    assert seeded["train"] == {"seed": 7, "lr": 1} and seeded["extract"]["seed"] == 7
    assert seeded["model"]["cpi"] == {"k_max": 3, "seed": 7}


def test_summary_rows_and_table():
    labels, scores = _data()
    rng = np.random.default_rng(4)
    runs = []
    for seed in (0, 1, 2):
        for name, noise in (("mccl", 0.05), ("worse", 0.5)):
            s = np.clip(scores + rng.normal(0, noise, scores.shape), 0, 1)
            row = {"variant": name, "seed": seed, "threshold": 0.5, "val_macro_f1": 0.5 + 0.01 * seed,
                   "test_macro_f1": f1_report(labels, s, 0.5).macro_f1,
                   "test_map": mean_average_precision(labels, s).map}  # fmt: skip
            runs.append(SeedRun(name, seed, row, labels, s))
    prior = np.tile(labels.mean(0), (len(labels), 1))
    runs.append(SeedRun("label_prior", -1, {"variant": "label_prior", "threshold": 0.05, "test_map": 0.1,
                                            "test_macro_f1": 0.1, "val_macro_f1": 0.1}, labels, prior))  # fmt: skip
    summaries = summarise(runs, "mccl", n_boot=200)
    rows = {s.variant: s.row() for s in summaries}
    assert rows["mccl"]["seeds"] == "0,1,2" and "diff_map" not in rows["mccl"]
    assert rows["mccl"]["val_macro_f1_mean"] == pytest.approx(0.51)
    assert rows["mccl"]["val_macro_f1_std"] == pytest.approx(0.01)
    assert rows["worse"]["verdict_map"] == "worse" and rows["worse"]["diff_map_high"] < 0
    assert rows["label_prior"]["verdict_map"] == "worse" and rows["label_prior"]["n_seeds"] == 0
    table = summary_table(summaries, "mccl")
    assert "| mccl | 0,1,2 | 0.510 ± 0.010 |" in table and "**worse**" in table and "reference" in table
    with pytest.raises(ValueError, match="seed 0"):
        summarise(runs + [runs[0]], "mccl")
