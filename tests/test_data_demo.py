"""Synthetic compositional-clue demo: determinism, long tail, compositional structure, loading."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mccl_core.data import DataConfig, DemoConfig, build_transforms, ensure_demo, generate_demo, load_split
from mccl_core.data.demo import CLUES, COLOURS, DEMO_CLASSES, DEMO_INTENTS, SHAPES
from mccl_core.models.archs import IMAGENET_MEAN, IMAGENET_STD


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def default_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo at its DEFAULT size (what users get), generated once for this module."""
    return generate_demo(tmp_path_factory.mktemp("demo_default"), DemoConfig(), workers=2, show_progress=False)


def _annotations(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"{split}.json").read_text())


def test_same_config_gives_byte_identical_files_for_any_worker_count(tmp_path: Path) -> None:
    cfg = DemoConfig(seed=3, n_train=30, n_val=10, n_test=12, image_size=64)
    first = _tree_hashes(generate_demo(tmp_path / "a", cfg, workers=1, show_progress=False))
    second = _tree_hashes(generate_demo(tmp_path / "b", cfg, workers=2, show_progress=False))
    assert len(first) == 30 + 10 + 12 + 3 + 1
    assert first == second
    other_seed = _tree_hashes(
        generate_demo(
            tmp_path / "c", DemoConfig(seed=4, n_train=30, n_val=10, n_test=12, image_size=64), show_progress=False
        )
    )
    changed = [name for name in first if name.endswith(".jpg") and first[name] != other_seed[name]]
    assert len(changed) == 52


def test_files_follow_intentonomy_schema(tmp_path: Path) -> None:
    cfg = DemoConfig(n_train=8, n_val=4, n_test=4, image_size=72)
    root = generate_demo(tmp_path, cfg, show_progress=False)
    # The project's canonical names, not Intentonomy's published ones.
    assert sorted(p.name for p in (root / "annotations").iterdir()) == ["test.json", "train.json", "val.json"]
    train = _annotations(root, "train")
    assert [c["name"] for c in train["categories"]] == list(DEMO_CLASSES)
    assert all(c["description"] and len(c["clues"]) in (2, 3) for c in train["categories"])
    assert train["images"][0] == {
        "id": "demo-train-00000",
        "filename": "low/demo-train-00000.jpg",
        "original_id": "demo-train-00000",
    }
    assert all(set(a["category_ids_softprob"]) <= {0.0, 1 / 3, 2 / 3, 1.0} for a in train["annotations"])
    assert all(
        "category_ids" in a and "category_ids_softprob" not in a for a in _annotations(root, "val")["annotations"]
    )
    with Image.open(root / "low" / "demo-test-00003.jpg") as image:
        assert image.format == "JPEG" and image.size == (72, 72) and image.mode == "RGB"
    assert json.loads((root / "demo_config.json").read_text())["demo_config"] == cfg.to_dict()


def test_intent_table_is_compositional() -> None:
    clue_sets = [set(i.clues) for i in DEMO_INTENTS]
    assert len(DEMO_INTENTS) == 10 and len(CLUES) == 12
    # Every clue is shared by at least two intents, so no clue alone decides an intent ...
    assert all(sum(c in s for s in clue_sets) >= 2 for c in range(len(CLUES)))
    # ... nor does a colour or a shape alone.
    assert all(sum(colour == c for c, _ in CLUES) >= 2 for colour in COLOURS)
    assert all(sum(shape == s for _, s in CLUES) >= 2 for shape in SHAPES)
    # No intent's clues contain another's (which would force the two to co-occur).
    assert not any(a < b for a in clue_sets for b in clue_sets)
    assert all(2 <= len(s) <= 3 for s in clue_sets)


@pytest.mark.slow  # the default demo: 4000 images generated
def test_default_demo_long_tail_and_label_cardinality(default_demo: Path) -> None:
    train = load_split(DataConfig(source="demo", root=default_demo), "train")
    assert len(train) == DemoConfig().n_train
    counts = train.class_counts()
    assert counts.min() > 0 and counts.max() >= 10 * counts.min()
    labels_per_image = train.label_matrix().sum(axis=1)
    assert labels_per_image.min() == 1 and labels_per_image.max() == 3
    images_per_cardinality = np.bincount(labels_per_image.astype(int), minlength=4)[1:]
    assert (images_per_cardinality > 100).all(), images_per_cardinality
    for split in ("val", "test"):
        dataset = load_split(DataConfig(source="demo", root=default_demo), split)
        split_counts = dataset.class_counts()
        assert split_counts.min() >= 10, (split, split_counts)  # every class evaluable
        assert set(dataset.label_matrix().sum(axis=1).tolist()) == {1.0, 2.0, 3.0}


@pytest.mark.slow  # the default demo: 4000 images generated
def test_default_demo_labels_are_exactly_the_completed_intents(default_demo: Path) -> None:
    clue_sets = [set(i.clues) for i in DEMO_INTENTS]
    train = _annotations(default_demo, "train")
    images_with_clue_without_intent = np.zeros((len(DEMO_INTENTS), len(CLUES)), dtype=int)
    distractors = 0
    partial = 0
    for annotation in train["annotations"]:
        labels = {k for k, p in enumerate(annotation["category_ids_softprob"]) if p > 0}
        present = {o["clue"] for o in annotation["demo_objects"] if o["clue"] is not None}
        assert labels == {k for k, s in enumerate(clue_sets) if s <= present}
        required = set().union(*(clue_sets[k] for k in labels))
        partial += bool(present - required)
        distractors += sum(o["clue"] is None for o in annotation["demo_objects"])
        for k, clue_set in enumerate(clue_sets):
            if k not in labels:
                for clue in clue_set & present:
                    images_with_clue_without_intent[k, clue] += 1
        cell = DemoConfig().image_size // 3
        cells = {(o["box"][0] // cell, o["box"][1] // cell) for o in annotation["demo_objects"]}
        assert len(cells) == len(annotation["demo_objects"])  # one object per grid cell
    # Each clue of each intent also appears (often) in images without that intent.
    for k, clue_set in enumerate(clue_sets):
        assert all(images_with_clue_without_intent[k, c] >= 20 for c in clue_set), DEMO_INTENTS[k].name
    assert partial > 0.2 * len(train["annotations"]) and distractors > 0.5 * len(train["annotations"])


@pytest.mark.slow  # the default demo: 4000 images generated
def test_soft_labels_track_clue_size(default_demo: Path) -> None:
    train = load_split(DataConfig(source="demo", root=default_demo), "train")
    soft = train.soft_label_matrix()
    assert soft is not None
    values = soft[soft > 0]
    shares = {v: float(np.isclose(values, v).mean()) for v in (1 / 3, 2 / 3, 1.0)}
    assert all(share > 0.1 for share in shares.values()), shares
    np.testing.assert_array_equal(train.label_matrix(), (soft > 0).astype(np.float32))


@pytest.mark.slow  # the default demo: 4000 images generated
def test_demo_items_through_transforms(default_demo: Path) -> None:
    dataset = load_split(
        DataConfig(source="demo", root=default_demo),
        "train",
        build_transforms(64, train=True, mean=IMAGENET_MEAN, std=IMAGENET_STD),
    )
    item = dataset[5]
    assert item["image"].shape == (3, 64, 64) and item["labels"].shape == (10,)
    assert item["soft_labels"].shape == (10,) and (item["soft_labels"] > 0).float().equal(item["labels"])
    assert dataset.class_descriptions[0].startswith("Enjoying time outside")


def test_ensure_demo_reuses_complete_output(tmp_path: Path) -> None:
    cfg = DemoConfig(n_train=6, n_val=3, n_test=3, image_size=48)
    ensure_demo(tmp_path, cfg)
    marker = tmp_path / "low" / "demo-train-00000.jpg"
    before = marker.stat().st_mtime_ns
    ensure_demo(tmp_path, cfg)
    assert marker.stat().st_mtime_ns == before
    ensure_demo(tmp_path, DemoConfig(n_train=6, n_val=3, n_test=3, image_size=56))
    with Image.open(marker) as image:
        assert image.size == (56, 56)


def test_missing_demo_and_bad_config(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="demo dataset not found.*cli demo --out"):
        load_split(DataConfig(source="demo", root=tmp_path), "train")
    with pytest.raises(ValueError, match="label_count_probs"):
        DemoConfig(label_count_probs=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match=r"unknown config key\(s\) demo.sed"):
        DemoConfig.from_dict({"sed": 1})
    assert DemoConfig.from_dict(DemoConfig(seed=9).to_dict()) == DemoConfig(seed=9)


def test_many_intent_table_is_compositional_and_fixed() -> None:
    from mccl_core.data.demo import ALL_COLOURS, CLASSIC_TABLE, demo_table

    assert demo_table(10) is CLASSIC_TABLE and CLASSIC_TABLE.intents == DEMO_INTENTS
    table = demo_table(45)
    assert len(table.intents) == 45 and len(table.clues) == 30 == len(set(table.clues))
    clue_sets = table.clue_sets
    assert len(set(clue_sets)) == 45 and all(len(s) == 2 for s in clue_sets)  # distinct pairs
    uses = [sum(c in s for s in clue_sets) for c in range(len(table.clues))]
    assert min(uses) >= 2 and max(uses) <= 4  # no clue alone decides an intent; use stays even
    assert len(table.non_clue_combos) == len(ALL_COLOURS) * len(SHAPES) - 30  # the rest are distractors
    assert sorted(table.frequency_rank) == list(range(45))
    assert len({i.name for i in table.intents}) == 45
    # The table belongs to the dataset, not to a seed: a rebuilt table is the same one.
    demo_table.cache_clear()
    assert demo_table(45) == table


def test_many_intent_demo_labels_are_the_completed_intents_and_clues_are_small(tmp_path: Path) -> None:
    from mccl_core.data.demo import demo_table

    cfg = DemoConfig(n_train=120, n_val=20, n_test=20, image_size=96, num_intents=45, clue_scale=0.5)
    root = generate_demo(tmp_path, cfg, show_progress=False)
    clue_sets = demo_table(45).clue_sets
    train = _annotations(root, "train")
    assert [c["name"] for c in train["categories"]] == [i.name for i in demo_table(45).intents]
    cell = 96 / 3
    for annotation in train["annotations"]:
        labels = {k for k, p in enumerate(annotation["category_ids_softprob"]) if p > 0}
        present = {o["clue"] for o in annotation["demo_objects"] if o["clue"] is not None}
        assert labels and labels == {k for k, s in enumerate(clue_sets) if s <= present}
        # half the classic size: at most 0.92 x 0.5 of a grid cell
        assert all(o["box"][2] - o["box"][0] <= 0.92 * 0.5 * cell + 1 for o in annotation["demo_objects"])
    assert len(load_split(DataConfig(source="demo", root=root), "train").class_names) == 45
    # The options are part of this demo's stamp, and left out of the classic one (whose files
    # therefore stay byte-identical to those written before the options existed).
    stamp = json.loads((root / "demo_config.json").read_text())["demo_config"]
    assert stamp["num_intents"] == 45 and stamp["clue_scale"] == 0.5
    assert "num_intents" not in DemoConfig().to_dict() and "clue_scale" not in DemoConfig().to_dict()
    assert DemoConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [("num_intents", 9, r"num_intents.*10.*11\.\.60"), ("num_intents", 61, "num_intents"),
     ("clue_scale", 0.1, r"clue_scale.*\[0\.2, 1\]")],
)  # fmt: skip
def test_many_intent_options_are_checked(field: str, value: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DemoConfig(**{field: value})
