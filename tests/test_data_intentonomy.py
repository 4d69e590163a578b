"""Intentonomy annotation reading (real val/test files), bundled metadata, annotation errors."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from mccl_core.data import AnnotationError, DataConfig, cooccurrence_counts, load_split
from mccl_core.data.intentonomy import (
    INTENTONOMY_CLASSES,
    image_urls,
    intentonomy_class_counts,
    intentonomy_class_metadata,
    intentonomy_coarse_group_ids,
    intentonomy_coarse_groups,
    intentonomy_descriptions,
    intentonomy_mid_groups,
    intentonomy_train_cooccurrence,
    load_intentonomy_records,
    parse_intentonomy_annotations,
)

FIXTURES = Path(__file__).parent / "fixtures" / "data"
#: Official val/test annotation files and label matrices (shared with the metrics tests).
OFFICIAL = Path(__file__).parent / "fixtures" / "intentonomy"


def _cfg(split: str, path: Path, root: Path = Path("/data/intentonomy")) -> DataConfig:
    return DataConfig(source="intentonomy", root=root, annotations={split: path})


@pytest.mark.parametrize(("split", "count"), [("val", 498), ("test", 1217)])
def test_real_annotations_match_official_label_vectors(split: str, count: int) -> None:
    dataset = load_split(_cfg(split, OFFICIAL / f"intentonomy_{split}2020.json"), split)
    expected = np.load(OFFICIAL / f"{split}_label_vectors_intentonomy2020.npy")
    assert len(dataset) == count and expected.shape == (count, 28)
    matrix = dataset.label_matrix()
    assert matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix, expected.astype(np.float32))
    assert dataset.class_names == list(INTENTONOMY_CLASSES)
    assert dataset.class_descriptions == intentonomy_descriptions()
    assert dataset.soft_label_matrix() is None
    first = dataset.records[0]
    document = json.loads((OFFICIAL / f"intentonomy_{split}2020.json").read_text())
    assert [r.image_id for r in dataset.records] == [a["image_id"] for a in document["annotations"]]
    assert first.image_path == Path("/data/intentonomy/low") / f"{first.image_id}.jpg"
    np.testing.assert_array_equal(dataset.class_counts(), intentonomy_class_counts(split))


def test_train_schema_softprob_labels_and_soft_targets(tmp_path: Path) -> None:
    dataset = load_split(_cfg("train", FIXTURES / "intentonomy_train_mini.json", tmp_path), "train")
    assert len(dataset) == 6
    assert [r.labels for r in dataset.records] == [(6, 19), (4, 9, 12), (16,), (0, 11), (27,), (3, 13, 19)]
    soft = dataset.soft_label_matrix()
    assert soft is not None and soft.shape == (6, 28)
    np.testing.assert_allclose(soft[1, [4, 9, 12]], [2 / 3, 1 / 3, 1 / 3], rtol=1e-6)
    np.testing.assert_array_equal(dataset.label_matrix(), (soft > 0).astype(np.float32))
    assert dataset.records[0].image_path == tmp_path / "low" / f"{dataset.records[0].image_id}.jpg"


def test_bundled_metadata() -> None:
    assert len(INTENTONOMY_CLASSES) == 28 and INTENTONOMY_CLASSES[16] == "InLoveAnimal"
    metadata = intentonomy_class_metadata()
    assert [c["name"] for c in metadata] == list(INTENTONOMY_CLASSES)
    descriptions = intentonomy_descriptions()
    assert all(20 < len(d) < 300 and d.count(".") <= 3 for d in descriptions)
    assert len(set(descriptions)) == 28
    assert "pets or animals" in descriptions[16]
    coarse = intentonomy_coarse_groups()
    assert len(coarse) == 9 and sorted(i for ids in coarse.values() for i in ids) == list(range(28))
    assert coarse["family"] == [10] and coarse["power"] == [1]
    mid = intentonomy_mid_groups()
    assert len(mid) == 15 and sorted(i for ids in mid.values() for i in ids) == list(range(28))
    group_ids = intentonomy_coarse_group_ids()
    assert group_ids.shape == (28,) and set(group_ids.tolist()) == set(range(9))
    train_counts = intentonomy_class_counts("train")
    assert train_counts.sum() == 23_828 and train_counts.max() == 2375 and train_counts.min() == 145
    assert train_counts.argmax() == INTENTONOMY_CLASSES.index("NatBeauty")
    with pytest.raises(ValueError, match="unknown Intentonomy split"):
        intentonomy_class_counts("dev")


def test_bundled_cooccurrence() -> None:
    cooccurrence = intentonomy_train_cooccurrence()
    assert cooccurrence.dtype == np.int64 and cooccurrence.shape == (28, 28)
    np.testing.assert_array_equal(cooccurrence, cooccurrence.T)
    np.testing.assert_array_equal(np.diag(cooccurrence), intentonomy_class_counts("train"))
    conditional = cooccurrence / np.diag(cooccurrence)[:, None]
    np.fill_diagonal(conditional, 0)
    assert conditional.max() == pytest.approx(0.369, abs=5e-4)  # the spec's "largest P(j|i)"
    assert int((conditional >= 0.1).sum()) == 101  # "tau = 0.1 gives 101 directed edges"


def test_cooccurrence_counts_matches_definition() -> None:
    labels = np.array([[1, 1, 0], [1, 0, 0], [0.33, 0.66, 1], [0, 0, 0]], dtype=np.float32)
    counts = cooccurrence_counts(labels)
    np.testing.assert_array_equal(counts, [[3, 2, 1], [2, 2, 1], [1, 1, 1]])
    assert counts.dtype == np.int64
    with pytest.raises(ValueError, match="2-D"):
        cooccurrence_counts(np.zeros(3))


def test_cooccurrence_of_real_val_split() -> None:
    dataset = load_split(_cfg("val", OFFICIAL / "intentonomy_val2020.json"), "val")
    counts = cooccurrence_counts(dataset.label_matrix())
    np.testing.assert_array_equal(np.diag(counts), intentonomy_class_counts("val"))
    assert counts[6, 19] == int(((dataset.label_matrix()[:, 6] > 0) & (dataset.label_matrix()[:, 19] > 0)).sum()) > 0


def test_image_urls_of_real_file() -> None:
    urls = image_urls(OFFICIAL / "intentonomy_val2020.json")
    assert len(urls) == 498 and urls[0][1] == "low/ce2b1c756b60afaca18fff022212d3f4.jpg"
    assert all(u.startswith("https://images.unsplash.com/") for _, _, u in urls)


# ----------------------------------------------------------------------------- annotation errors


@pytest.fixture()
def val_document() -> dict:
    return json.loads((OFFICIAL / "intentonomy_val2020.json").read_text())


def _parse(document: dict, split: str = "val") -> None:
    parse_intentonomy_annotations(document, Path("/root"), split, "ann.json")


def test_unknown_category_id_is_reported_with_record(val_document: dict) -> None:
    val_document["annotations"][3]["category_ids"] = [4, 28]
    with pytest.raises(AnnotationError) as info:
        _parse(val_document)
    message = str(info.value)
    image_id = val_document["annotations"][3]["image_id"]
    assert f"image '{image_id}' file '/root/low/{image_id}.jpg': unknown category id(s) [28]" in message
    assert message.startswith("ann.json: 1 annotation problem(s)")


def test_duplicate_image_ids(val_document: dict) -> None:
    val_document["images"].append(copy.deepcopy(val_document["images"][0]))
    with pytest.raises(AnnotationError, match="duplicate image id"):
        _parse(val_document)


def test_duplicate_annotation_for_one_image(val_document: dict) -> None:
    val_document["annotations"].append(copy.deepcopy(val_document["annotations"][5]))
    with pytest.raises(AnnotationError, match="more than one annotation"):
        _parse(val_document)


def test_image_without_annotation_and_annotation_without_image(val_document: dict) -> None:
    dropped = val_document["annotations"].pop(10)
    val_document["annotations"].append({"id": 999, "image_id": "not-there", "category_ids": [1]})
    with pytest.raises(AnnotationError) as info:
        _parse(val_document)
    assert info.value.problems[0].endswith("refers to an image id missing from 'images'")
    assert f"image '{dropped['image_id']}'" in info.value.problems[1] and "has no annotation" in info.value.problems[1]


def test_val_image_without_labels(val_document: dict) -> None:
    val_document["annotations"][0]["category_ids"] = []
    with pytest.raises(AnnotationError, match="no labels \\(every val image needs at least one intent\\)"):
        _parse(val_document)


def test_all_problems_reported_in_one_truncated_message(val_document: dict) -> None:
    for annotation in val_document["annotations"][:30]:
        annotation["category_ids"] = [99]
    with pytest.raises(AnnotationError) as info:
        _parse(val_document)
    assert len(info.value.problems) == 30
    message = str(info.value)
    assert "30 annotation problem(s)" in message and "... and 10 more" in message
    assert message.count("unknown category id") == 20


def test_train_softprob_errors(tmp_path: Path) -> None:
    document = json.loads((FIXTURES / "intentonomy_train_mini.json").read_text())
    document["annotations"][0]["category_ids_softprob"] = [0.5] * 27
    document["annotations"][1]["category_ids_softprob"][2] = 1.5
    document["annotations"][2].pop("category_ids_softprob")
    with pytest.raises(AnnotationError) as info:
        parse_intentonomy_annotations(document, tmp_path, "train", "train.json")
    problems = info.value.problems
    assert len(problems) == 3
    assert "must be a list of 28 numbers, got 27" in problems[0]
    assert "values must be numbers in [0, 1]" in problems[1]
    assert "neither 'category_ids' nor 'category_ids_softprob'" in problems[2]


def test_unlabelled_train_image_is_kept_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    document = json.loads((FIXTURES / "intentonomy_train_mini.json").read_text())
    document["annotations"][4]["category_ids_softprob"] = [0.0] * 28
    records, _, _ = parse_intentonomy_annotations(document, tmp_path, "train", "train.json")
    assert len(records) == 6 and records[4].labels == ()
    assert "1 train images have no positive label" in caplog.text


def test_bad_categories(val_document: dict) -> None:
    val_document["categories"] = [c for c in val_document["categories"] if c["id"] != 5]
    with pytest.raises(AnnotationError, match="category ids must be 0..26"):
        _parse(val_document)


def test_unreadable_annotation_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"images": [')
    with pytest.raises(ValueError, match="broken.json.*not valid JSON"):
        load_intentonomy_records(path, tmp_path, "val")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_intentonomy_records(tmp_path / "missing.json", tmp_path, "val")
