"""MDID end to end: a tiny MDID-format dataset through the real steps (the whole chain on split 0;
validate + evaluate with that model on the other split indices), then the protocol's number (val
top-1 accuracy, mean +- population std over the 5 splits).

The pipeline runs one ``data.mdid_split_index`` per run; :func:`mccl_core.metrics.mdid_protocol`
combines the five evaluate outputs. The dataset is written in the official MDID layout
(``master_metadata.json``, ``splits/{train,val}_split_{k}.json``) and compacted with
``compact_mdid_splits``, as a user does with the real files.

Note: MDID is single-label, so its label co-occurrence graph has no edges; the default
``model.pki.use_gcn: true`` fails on it (``EmptyLabelGraphError``) and MDID runs set it false.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import TINY_MODEL
from PIL import Image

from mccl_core.data.mdid import MDID_INTENTS, compact_mdid_splits, write_mdid_splits
from mccl_core.metrics import (
    MDIDSplitPredictions,
    format_table,
    load_mdid_val_predictions,
    mdid_protocol,
)

N_SPLITS = 5
#: Posts per intent: one in each split's val fold (the 5 folds partition the 35 posts).
PER_INTENT = N_SPLITS
COLOURS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]
#: (step, the upstream folders it reads), in DAG order; register is covered by test_registry.py.
STEPS = (
    ("validate", ()),
    ("extract", ("validate",)),
    ("cluster", ("validate", "extract")),
    ("train", ("validate", "extract", "cluster")),
    ("evaluate", ("validate", "train")),
)


def write_mdid_dataset(folder: Path) -> tuple[Path, Path, list[str]]:
    """35 posts (5 per intent) in the official layout; an intent's images share a colour.

    Returns the image folder, the compact split file and the post ids."""
    images, official = folder / "images", folder / "official"
    images.mkdir(parents=True)
    (official / "splits").mkdir(parents=True)
    rng = np.random.default_rng(0)
    posts = []
    for i in range(PER_INTENT * len(MDID_INTENTS)):
        intent = i % len(MDID_INTENTS)
        post = {"id": str(170000 + i), "intent": MDID_INTENTS[intent]}
        posts.append(post)
        pixels = np.asarray(COLOURS[intent])[None, None, :] + rng.normal(0.0, 20.0, (40, 48, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(images / f"{post['id']}.jpg", quality=90)
    (official / "master_metadata.json").write_text(json.dumps(posts))
    fold_of = [i // len(MDID_INTENTS) for i in range(len(posts))]  # fold k: posts 7k..7k+6, one per intent
    for k in range(N_SPLITS):
        for part, in_val in (("train", False), ("val", True)):
            chosen = [p for p, f in zip(posts, fold_of, strict=True) if (f == k) == in_val]
            (official / "splits" / f"{part}_split_{k}.json").write_text(json.dumps(chosen))
    splits_file = folder / "mdid_splits.json"
    write_mdid_splits(compact_mdid_splits(official / "master_metadata.json", official / "splits"), splits_file)
    return images, splits_file, [p["id"] for p in posts]


def mdid_params(images: Path, splits_file: Path, split_index: int) -> dict:
    """The params of one tiny CPU run on split ``split_index`` (one optimiser step)."""
    model: dict[str, Any] = copy.deepcopy(TINY_MODEL)
    model["pki"]["use_gcn"] = False  # single-label data: no co-occurrence edges
    return {
        "data": {"source": "mdid", "root": str(images), "mdid_split_index": split_index,
                 "mdid_splits_file": str(splits_file)},
        "validate": {"workers": 1},
        "extract": {"batch_size": 64, "tokens_per_image": 8, "shard_size": 64, "device": "cpu"},
        "cluster": {"device": "cpu"},
        "model": model,
        "train": {"epochs": 1, "max_steps_per_epoch": 1, "batch_size": 28, "lr": 1e-3, "image_size": 32,
                  "num_workers": 0, "device": "cpu", "deterministic": True},
        "launch": {"nproc_per_node": 1},
        "evaluate": {"batch_size": 64, "device": "cpu", "plots": False},
    }  # fmt: skip


@pytest.mark.slow
def test_mdid_five_splits_through_the_steps_give_mean_and_std_accuracy(tmp_path):
    from mccl_core.steps.contract import run_step
    from mccl_core.tracking.steps import TrackingOptions

    images, splits_file, post_ids = write_mdid_dataset(tmp_path / "mdid")
    off = TrackingOptions(enabled=False)
    step_metrics: dict[int, dict] = {}
    predictions: list[MDIDSplitPredictions] = []
    trained = tmp_path / "split0" / "train"
    for k in range(N_SPLITS):
        params = mdid_params(images, splits_file, k)
        folders = {name: tmp_path / f"split{k}" / name for name, _ in STEPS}
        # The whole chain runs on split 0. Splits 1-4 are validated and scored with split 0's model:
        # what the protocol test needs from them is their own val fold through validate + evaluate
        # (the chain itself, per split index, is the same code), at a fifth of the cost.
        chain = STEPS if k == 0 else [s for s in STEPS if s[0] in ("validate", "evaluate")]
        folders["train"] = trained
        for name, inputs in chain:
            run_step(name, params, {i: folders[i] for i in inputs}, folders[name], off)
        step_metrics[k] = json.loads((folders["evaluate"] / "metrics.json").read_text())
        predictions.append(load_mdid_val_predictions(folders["evaluate"] / "predictions" / "val.npz", k))
        counts = json.loads((folders["validate"] / "validated_data.json").read_text())["counts"]["per_split"]
        assert counts == {"train": 28, "val": 7}

    # Each run really was its own split: the 5 val folds partition the 35 posts.
    assert sorted(i for p in predictions for i in p.image_ids) == sorted(post_ids)
    assert [len(p.image_ids) for p in predictions] == [7] * N_SPLITS
    for k, p in enumerate(predictions):
        assert p.labels.tolist() == [int(post_ids.index(i)) % 7 for i in p.image_ids], k
        assert p.scores.shape == (7, len(MDID_INTENTS))

    summary = mdid_protocol(predictions)
    assert summary.split_indices == (0, 1, 2, 3, 4)
    # The summary is the evaluate step's own per-split accuracy, averaged: not a second opinion.
    assert summary.per_split == pytest.approx([step_metrics[k]["val_accuracy"] for k in range(N_SPLITS)], abs=1e-12)
    assert all(step_metrics[k]["protocol"] == "mdid" for k in range(N_SPLITS))
    for value in summary.per_split:  # 7 val posts per split: accuracy is a multiple of 1/7
        assert 0.0 <= value <= 1.0 and value * 7 == pytest.approx(round(value * 7), abs=1e-9)
    assert summary.mean == pytest.approx(np.mean(summary.per_split), abs=1e-12)
    assert summary.std == pytest.approx(np.std(summary.per_split, ddof=0), abs=1e-12)
    assert 0.0 <= summary.std <= 0.5
    # The label prior of a balanced train set is one constant score row: argmax is intent 0, which
    # is exactly 1 of the 7 val posts of every split -> 1/7 on each, std 0.
    assert [step_metrics[k]["label_prior_val_accuracy"] for k in range(N_SPLITS)] == pytest.approx([1 / 7] * 5)
    document = summary.to_dict()
    assert (document["n_splits"], document["std_ddof"], document["split_indices"]) == (5, 0, [0, 1, 2, 3, 4])
    table = format_table(summary)
    assert f"mean {100 * summary.mean:.2f} +- {100 * summary.std:.2f}" in table and "split 4" in table

    # One split evaluated twice instead of two splits is caught, as is a missing split.
    twice = [predictions[0], MDIDSplitPredictions(1, predictions[0].image_ids, predictions[0].labels,
                                                  predictions[0].scores), *predictions[2:]]  # fmt: skip
    with pytest.raises(ValueError, match="split 1 shares 7 post"):
        mdid_protocol(twice)
    with pytest.raises(ValueError, match=r"averages split indices 0..4; got \[0, 1, 2, 3\]"):
        mdid_protocol(predictions[:4])
    assert mdid_protocol(predictions[:4], n_splits=None).split_indices == (0, 1, 2, 3)


def _write_predictions(path: Path, ids: list[str], labels: list[int], scores: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, scores=scores, labels=np.eye(scores.shape[1])[labels], image_ids=np.array(ids))
    return path


def test_mdid_protocol_over_prediction_files_hand_checked(tmp_path):
    """The fast tier: the combination and its checks on hand-made evaluate outputs."""
    eye = np.eye(3)
    files = {
        0: _write_predictions(tmp_path / "0" / "val.npz", ["a", "b"], [0, 1], eye[[0, 1]]),  # 2/2
        1: _write_predictions(tmp_path / "1" / "val.npz", ["c", "d"], [2, 2], eye[[2, 0]]),  # 1/2
        2: _write_predictions(tmp_path / "2" / "val.npz", ["e", "f", "g", "h"], [1, 1, 1, 0], eye[[0, 0, 0, 1]]),  # 0/4
    }
    result = mdid_protocol([load_mdid_val_predictions(path, k) for k, path in files.items()], n_splits=3)
    assert result.per_split == (1.0, 0.5, 0.0) and result.split_indices == (0, 1, 2)
    assert result.mean == pytest.approx(0.5) and result.std == pytest.approx(np.sqrt(1 / 6))
    # Order of the inputs does not matter; duplicates and holes are errors.
    shuffled = [load_mdid_val_predictions(files[k], k) for k in (2, 0, 1)]
    assert mdid_protocol(shuffled, n_splits=3) == result
    with pytest.raises(ValueError, match=r"given more than once: \[0, 0, 1\]"):
        mdid_protocol([load_mdid_val_predictions(files[k], j) for k, j in ((0, 0), (1, 0), (2, 1))], n_splits=None)
    with pytest.raises(ValueError, match="averages split indices 0..4"):
        mdid_protocol([load_mdid_val_predictions(files[k], k) for k in files])

    multi = tmp_path / "multi.npz"
    np.savez_compressed(
        multi, scores=eye[[0, 1]], labels=np.array([[1, 1, 0], [0, 1, 0]]), image_ids=np.array(["x", "y"])
    )
    with pytest.raises(
        ValueError, match=r"1 post\(s\) without exactly one intent \(MDID is single-label\): 1 id\(s\): 'x'"
    ):
        load_mdid_val_predictions(multi, 0)
    with pytest.raises(FileNotFoundError, match="MDID split 3: predictions file"):
        load_mdid_val_predictions(tmp_path / "nope.npz", 3)
    other_classes = _write_predictions(tmp_path / "w" / "val.npz", ["z"], [0], np.eye(4)[[0]])
    with pytest.raises(ValueError, match=r"different numbers of classes: \[3, 4\]"):
        mdid_protocol([load_mdid_val_predictions(files[0], 0), load_mdid_val_predictions(other_classes, 1)],
                      n_splits=None)  # fmt: skip
