"""Intentonomy annotation reading (real val/test files, through the canonical-format reader of
:mod:`mccl_core.data.annotations`), bundled metadata, annotation errors."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest

from mccl_core.data import AnnotationError, DataConfig, cooccurrence_counts, load_split
from mccl_core.data.annotations import load_annotation_records, parse_annotations
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
)
from mccl_core.data.intentonomy_json import (
    AnnotationFileError,
    AnnotationFileNotFoundError,
    load_intentonomy_annotations,
    parse_intentonomy_document,
    read_intentonomy_json,
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
    assert conditional.max() == pytest.approx(0.369, abs=5e-4)  # the "largest P(j|i)" quoted in docs/model.md
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
    parse_annotations(document, Path("/root"), split, "ann.json")


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
        parse_annotations(document, tmp_path, "train", "train.json")
    problems = info.value.problems
    assert len(problems) == 3
    assert "must be a list of 28 numbers, got 27" in problems[0]
    assert "values must be numbers in [0, 1]" in problems[1]
    assert "neither 'category_ids' nor 'category_ids_softprob'" in problems[2]


def test_unlabelled_train_image_is_kept_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    document = json.loads((FIXTURES / "intentonomy_train_mini.json").read_text())
    document["annotations"][4]["category_ids_softprob"] = [0.0] * 28
    records, _, _ = parse_annotations(document, tmp_path, "train", "train.json")
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
        load_annotation_records(path, tmp_path, "val")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_annotation_records(tmp_path / "missing.json", tmp_path, "val")


# ----------------------------------------------------------------------------- one parser, two modes

GOOD_FILES = [
    pytest.param(OFFICIAL / "intentonomy_val2020.json", "val", id="official-val"),
    pytest.param(OFFICIAL / "intentonomy_test2020.json", "test", id="official-test"),
    pytest.param(FIXTURES / "intentonomy_train_mini.json", "train", id="train-softprob"),
]


@pytest.mark.parametrize(("path", "split"), GOOD_FILES)
def test_strict_and_lenient_agree_on_good_files(path: Path, split: str) -> None:
    strict = load_intentonomy_annotations(path, mode="strict", image_root=Path("/root"), split=split)
    lenient = load_intentonomy_annotations(path, mode="lenient", image_root=Path("/root"), split=split)
    assert lenient.problems == () and lenient.bad_records() == []
    assert lenient.records == strict.records
    assert (lenient.class_names, lenient.class_descriptions) == (strict.class_names, strict.class_descriptions)
    document = json.loads(path.read_text())
    assert [r.image_id for r in strict.records] == [a["image_id"] for a in document["annotations"]]
    assert [r.position for r in strict.records] == list(range(len(document["annotations"])))
    # The training loader is the same parser: same ids, paths, labels and soft labels.
    records, names, _ = load_annotation_records(path, Path("/root"), split)
    assert [(r.image_id, r.image_path, r.labels, r.soft_labels) for r in records] == [
        (s.image_id, s.image_path, s.label_ids, s.soft_labels) for s in strict.records
    ]
    assert tuple(names) == strict.class_names


def _mutate_unknown_id(doc: dict) -> None:
    doc["annotations"][3]["category_ids"] = [4, 28]


def _mutate_duplicate_annotation(doc: dict) -> None:
    doc["annotations"].append(copy.deepcopy(doc["annotations"][5]))


def _mutate_annotation_without_image(doc: dict) -> None:
    doc["annotations"].append({"id": 999, "image_id": "not-there", "category_ids": [1]})


def _mutate_image_without_annotation(doc: dict) -> None:
    doc["annotations"].pop(10)


def _mutate_no_labels(doc: dict) -> None:
    doc["annotations"][0]["category_ids"] = []


def _mutate_non_integer_label(doc: dict) -> None:
    doc["annotations"][7]["category_ids"] = ["3"]


def _mutate_not_an_object(doc: dict) -> None:
    doc["annotations"][2] = "oops"


def _mutate_repeated_label(doc: dict) -> None:
    doc["annotations"][8]["category_ids"] = [5, 5]


#: (mutation, {annotations position or image id (unannotated image): (label_ids as written, problem)}).
BAD_RECORDS = [
    pytest.param(_mutate_unknown_id, {3: ((4, 28), "unknown category id(s) [28] (valid: 0..27)")}, id="unknown-id"),
    pytest.param(_mutate_duplicate_annotation, {498: (None, "more than one annotation (first: annotations[5])")},
                 id="duplicate-annotation"),
    pytest.param(_mutate_annotation_without_image, {498: ((1,), "refers to an image id missing from 'images'")},
                 id="annotation-without-image"),
    pytest.param(_mutate_image_without_annotation, {"popped": (None, "image has no annotation")},
                 id="image-without-annotation"),
    pytest.param(_mutate_no_labels, {0: ((), "no labels (every val image needs at least one intent)")}, id="no-labels"),
    pytest.param(_mutate_non_integer_label, {7: (("3",), "'category_ids' must be a list of integers")},
                 id="non-integer-label"),
    pytest.param(_mutate_repeated_label, {8: ((5, 5), "category id listed more than once in [5, 5]")},
                 id="repeated-label"),
    pytest.param(_mutate_not_an_object, {2: (None, "is not an object"), "popped": (None, "image has no annotation")},
                 id="annotation-not-an-object"),
]  # fmt: skip


@pytest.mark.parametrize(("mutate", "expected"), BAD_RECORDS)
def test_lenient_returns_every_record_with_its_problem(val_document: dict, mutate, expected: dict) -> None:
    original_annotations = copy.deepcopy(val_document["annotations"])
    mutate(val_document)
    annotated = {a["image_id"] for a in val_document["annotations"] if isinstance(a, dict)}
    unannotated = [i["id"] for i in val_document["images"] if i["id"] not in annotated]
    popped = [a["image_id"] for a in original_annotations if a["image_id"] in unannotated]

    lenient = parse_intentonomy_document(
        val_document, "ann.json", mode="lenient", image_root=Path("/root"), split="val"
    )
    assert len(lenient.records) == len(val_document["annotations"]) + len(unannotated)  # nothing dropped
    bad = {(r.position if r.position is not None else "popped"): r for r in lenient.bad_records()}
    assert set(bad) == set(expected)
    for key, (label_ids, problem) in expected.items():
        record = bad[key]
        assert len(record.problems) == 1 and problem in record.problems[0]
        if label_ids is not None:
            assert record.label_ids == label_ids  # as written: GX sees out-of-range / malformed ids
        if key == "popped":
            assert record.image_id == popped[0] and record.label_ids is None
            assert record.image_path == Path("/root/low") / f"{popped[0]}.jpg"
    # Record problems name the record; the file's problem list is exactly the records' problems.
    assert list(lenient.problems) == [p for r in lenient.records if r.position is not None for p in r.problems] + [
        p for r in lenient.records if r.position is None for p in r.problems
    ]
    # Strict mode raises exactly those problems; the training loader names the file and records.
    with pytest.raises(AnnotationFileError) as strict_error:
        parse_intentonomy_document(val_document, "ann.json", mode="strict", image_root=Path("/root"), split="val")
    assert strict_error.value.problems == list(lenient.problems)
    with pytest.raises(AnnotationError) as loader_error:
        _parse(val_document)
    assert loader_error.value.problems == list(lenient.problems)
    assert str(loader_error.value).startswith(f"ann.json: {len(lenient.problems)} annotation problem(s)")


def test_lenient_keeps_softprob_labels_as_written_and_attaches_image_problems_to_records(tmp_path: Path) -> None:
    """An image listed twice is a problem of that image's record (quarantinable), not of the file."""
    document = json.loads((FIXTURES / "intentonomy_train_mini.json").read_text())
    document["annotations"][0]["category_ids_softprob"] = [0.0] * 27 + [0.5, 0.5]  # 29 values
    twice = document["images"][1]["id"]
    document["images"].append(copy.deepcopy(document["images"][1]))  # an image listed twice
    document["images"].append({"filename": "low/anonymous.jpg"})  # an entry without id
    lenient = parse_intentonomy_document(document, "train.json", mode="lenient", image_root=tmp_path, split="train")
    assert len(lenient.records) == 7  # 6 annotations + the unusable images entry
    softprob, listed_twice, no_id = lenient.bad_records()
    assert softprob.position == 0 and softprob.label_ids == (27, 28) and softprob.soft_labels is None
    assert "'category_ids_softprob' must be a list of 28 numbers, got 29" in softprob.problems[0]
    assert listed_twice.image_id == twice and listed_twice.image_positions == (1, 6)
    assert listed_twice.problems == (f"images[6] image {twice!r} file '{tmp_path}/low/{twice}.jpg': "
                                     "duplicate image id (first listed as images[1])",)  # fmt: skip
    assert no_id.position is None and no_id.image_id is None and no_id.image_positions == (7,)
    assert "images[7]: needs a string 'id' and a string 'filename'" in no_id.problems[0]
    assert len(lenient.problems) == 3 and lenient.file_problems() == []
    with pytest.raises(AnnotationFileError) as info:
        parse_intentonomy_document(document, "train.json", mode="strict", image_root=tmp_path, split="train")
    assert info.value.problems == list(lenient.problems)


def test_mixing_soft_and_hard_labels_is_a_file_problem(val_document: dict) -> None:
    val_document["annotations"][0]["category_ids_softprob"] = [1.0 if i in val_document["annotations"][0][
        "category_ids"] else 0.0 for i in range(28)]  # fmt: skip
    lenient = parse_intentonomy_document(val_document, "ann.json", mode="lenient", split="val")
    assert lenient.bad_records() == []
    assert lenient.file_problems() == ["some annotations have 'category_ids_softprob' and others do not; "
                                       "use one format per file"]  # fmt: skip


@pytest.mark.parametrize("mode", ["strict", "lenient"])
@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["categories"].pop(5), "category ids must be 0..26"),
        (lambda d: d.pop("annotations"), "missing or non-list 'annotations'"),
        (lambda d: d["categories"][2].update(name=""), "categories[2] must have an integer 'id' and a non-empty"),
        (lambda d: d.update(images={}), "missing or non-list 'images'"),
    ],
    ids=["category-gap", "no-annotations", "empty-name", "images-not-a-list"],
)
def test_structural_problems_raise_in_both_modes(val_document: dict, mode: str, mutate, message: str) -> None:
    mutate(val_document)
    with pytest.raises(AnnotationFileError, match=re.escape(message)):
        parse_intentonomy_document(val_document, "ann.json", mode=mode, split="val")


def test_read_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(AnnotationFileNotFoundError, match="missing.json: annotation file does not exist"):
        read_intentonomy_json(tmp_path / "missing.json")
    assert issubclass(AnnotationFileNotFoundError, FileNotFoundError) and issubclass(AnnotationFileError, ValueError)
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(AnnotationFileError, match="list.json: top level must be a JSON object, got list"):
        load_intentonomy_annotations(tmp_path / "list.json", mode="lenient")
