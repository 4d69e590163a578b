"""Scoring CLI (`python -m mccl_core.metrics.score`) on the real Intentonomy val/test annotation JSON."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.special import expit, logit

from mccl_core.metrics import (
    INTENTONOMY_SUBSETS,
    AnnotationFileError,
    PredictionsFileError,
    ScoringConfig,
    load_split_annotations,
    official_protocol,
    score_prediction_files,
    split_tuned_protocol,
)
from mccl_core.metrics.score import main

FIXTURES = Path(__file__).parent / "fixtures" / "intentonomy"
VAL_JSON = FIXTURES / "intentonomy_val2020.json"
TEST_JSON = FIXTURES / "intentonomy_test2020.json"
REPO_ROOT = Path(__file__).resolve().parents[1]


def _annotation_ids(path: Path) -> list[str]:
    return [a["image_id"] for a in json.loads(path.read_text())["annotations"]]


@pytest.fixture(scope="module")
def splits() -> dict:
    """Real ids/labels/class names plus informative generated scores for val and test."""
    rng = np.random.default_rng(0)
    data: dict = {"class_names": [c["name"] for c in json.loads(VAL_JSON.read_text())["categories"]]}
    for name, path in (("val", VAL_JSON), ("test", TEST_JSON)):
        labels = np.load(FIXTURES / f"{name}_label_vectors_intentonomy2020.npy")
        scores = np.clip(0.35 * labels + 0.65 * rng.random(labels.shape), 0.0, 1.0).round(6)
        data[name] = {"ids": _annotation_ids(path), "labels": labels, "scores": scores}
    return data


def _rows(splits: dict, which: tuple[str, ...] = ("val", "test")) -> list[tuple[str, np.ndarray]]:
    return [(i, s) for name in which for i, s in zip(splits[name]["ids"], splits[name]["scores"], strict=True)]


def write_csv(path: Path, rows: list[tuple[str, np.ndarray]], columns: list[str], order: list[int]) -> Path:
    """CSV with score columns in the given class order (so column order is exercised)."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_id"] + [columns[c] for c in order])
        for image_id, scores in rows:
            writer.writerow([image_id] + [repr(float(scores[c])) for c in order])
    return path


def write_json(path: Path, rows: list[tuple[str, np.ndarray]]) -> Path:
    path.write_text(json.dumps({i: [float(v) for v in s] for i, s in rows}))
    return path


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def library_official(splits: dict) -> dict:
    return official_protocol(
        splits["val"]["labels"],
        splits["val"]["scores"],
        splits["test"]["labels"],
        splits["test"]["scores"],
        INTENTONOMY_SUBSETS,
        class_names=splits["class_names"],
    ).to_dict()


def test_local_parser_matches_real_label_matrices(splits: dict) -> None:
    for name, path in (("val", VAL_JSON), ("test", TEST_JSON)):
        parsed = load_split_annotations(path)
        assert parsed.image_ids == tuple(splits[name]["ids"])
        np.testing.assert_array_equal(parsed.label_matrix, splits[name]["labels"])
        assert parsed.class_names[0] == "Attractive" and parsed.class_names[27] == "WorkILike"
        assert parsed.num_classes == 28


def test_csv_with_class_name_columns_equals_library_call(splits: dict, tmp_path: Path, capsys) -> None:
    order = list(np.random.default_rng(1).permutation(28))
    predictions = write_csv(tmp_path / "preds.csv", _rows(splits), splits["class_names"], order)
    json_out = tmp_path / "out" / "scores.json"
    code, out, err = run_cli(
        [
            "--predictions",
            predictions,
            "--val-annotations",
            VAL_JSON,
            "--test-annotations",
            TEST_JSON,
            "--json-out",
            json_out,
        ],
        capsys,
    )
    assert code == 0, err
    written = json.loads(json_out.read_text())
    expected = library_official(splits)
    assert written["official"] == expected  # every number, threshold and per-class value
    assert written["split_tuned"] is None
    assert written["annotation_files"] == {"val": str(VAL_JSON), "test": str(TEST_JSON)}
    assert "OFFICIAL protocol" in out and "SPLIT-TUNED" not in out
    assert f"{100 * expected['f1']['macro_f1']:6.2f}" in out
    assert f"{100 * expected['map']['map']:6.2f}" in out
    for text in ("Samples-F1", "Micro-F1", "InLoveAnimal", "FineDesignLearnArt-Arch", "easy", "context", "other"):
        assert text in out


def test_json_and_s_columns_give_the_same_result(splits: dict, tmp_path: Path, capsys) -> None:
    json_preds = write_json(tmp_path / "preds.json", _rows(splits))
    s_columns = [f"s{i}" for i in range(28)]
    csv_preds = write_csv(tmp_path / "preds_s.csv", _rows(splits), s_columns, list(range(28))[::-1])
    results = []
    for predictions in (json_preds, csv_preds):
        out_file = tmp_path / f"{predictions.stem}.out.json"
        code, _, err = run_cli(
            [
                "--predictions",
                predictions,
                "--val-annotations",
                VAL_JSON,
                "--test-annotations",
                TEST_JSON,
                "--json-out",
                out_file,
                "--split-tuned",
            ],
            capsys,
        )
        assert code == 0, err
        results.append(json.loads(out_file.read_text()))
    assert results[0]["official"] == results[1]["official"] == library_official(splits)
    expected_tuned = split_tuned_protocol(
        splits["test"]["labels"],
        splits["test"]["scores"],
        INTENTONOMY_SUBSETS,
        class_names=splits["class_names"],
        split="test",
    ).to_dict()
    assert results[0]["split_tuned"] == results[1]["split_tuned"] == expected_tuned


def test_predictions_split_across_two_files(splits: dict, tmp_path: Path) -> None:
    val_file = write_json(tmp_path / "val.json", _rows(splits, ("val",)))
    test_file = write_csv(tmp_path / "test.csv", _rows(splits, ("test",)), splits["class_names"], list(range(28)))
    result = score_prediction_files(
        ScoringConfig(prediction_paths=(val_file, test_file), val_annotations=VAL_JSON, test_annotations=TEST_JSON)
    )
    assert result.official is not None and result.official.to_dict() == library_official(splits)
    assert set(result.metrics()) == set(result.official.metrics())


def test_single_annotation_file_reports_split_tuned_only(splits: dict, tmp_path: Path, capsys) -> None:
    predictions = write_json(tmp_path / "test_only.json", _rows(splits, ("test",)))
    json_out = tmp_path / "single.json"
    code, out, err = run_cli(
        ["--predictions", predictions, "--test-annotations", TEST_JSON, "--json-out", json_out], capsys
    )
    assert code == 0, err
    assert "official protocol needs both --val-annotations and --test-annotations" in out
    assert "SPLIT-TUNED protocol" in out and "OFFICIAL protocol" not in out
    written = json.loads(json_out.read_text())
    assert written["official"] is None
    expected = split_tuned_protocol(
        splits["test"]["labels"],
        splits["test"]["scores"],
        INTENTONOMY_SUBSETS,
        class_names=splits["class_names"],
        split="test",
    ).to_dict()
    assert written["split_tuned"] == expected
    assert any("official protocol needs both val and test" in note for note in written["notes"])


def test_logits_need_the_flag(splits: dict, tmp_path: Path, capsys) -> None:
    rows = [(i, logit(np.clip(s, 1e-4, 1 - 1e-4))) for i, s in _rows(splits)]
    predictions = write_json(tmp_path / "logits.json", rows)
    args = ["--predictions", predictions, "--val-annotations", VAL_JSON, "--test-annotations", TEST_JSON]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "probabilities in [0, 1]" in err and "sigmoid" in err
    json_out = tmp_path / "logits.out.json"
    code, _, err = run_cli(args + ["--scores-are-logits", "--json-out", json_out], capsys)
    assert code == 0, err
    by_id = dict(rows)
    expected = official_protocol(
        splits["val"]["labels"],
        expit(np.stack([by_id[i] for i in splits["val"]["ids"]])),
        splits["test"]["labels"],
        expit(np.stack([by_id[i] for i in splits["test"]["ids"]])),
        INTENTONOMY_SUBSETS,
        class_names=splits["class_names"],
    ).to_dict()
    assert json.loads(json_out.read_text())["official"] == expected


def _cli_error(args: list, capsys) -> str:
    code, out, err = run_cli(args, capsys)
    assert code == 2 and out == ""
    return err


def test_missing_ids_are_named(splits: dict, tmp_path: Path, capsys) -> None:
    rows = _rows(splits)
    dropped = [i for i, _ in rows[500:507]]  # 7 test images
    predictions = write_json(tmp_path / "missing.json", rows[:500] + rows[507:])
    err = _cli_error(
        ["--predictions", predictions, "--val-annotations", VAL_JSON, "--test-annotations", TEST_JSON], capsys
    )
    assert "lack scores for test images: 7 id(s), first 5:" in err
    assert repr(dropped[0]) in err and repr(dropped[5]) not in err


def test_extra_ids_are_named_or_ignored_on_request(splits: dict, tmp_path: Path, capsys) -> None:
    extra_rows = [(f"not_an_image_{k}", np.full(28, 0.5)) for k in range(3)]
    predictions = write_json(tmp_path / "extra.json", _rows(splits) + extra_rows)
    args = ["--predictions", predictions, "--val-annotations", VAL_JSON, "--test-annotations", TEST_JSON]
    err = _cli_error(args, capsys)
    assert "in none of the annotation files" in err
    assert "3 id(s): 'not_an_image_0', 'not_an_image_1', 'not_an_image_2'" in err
    json_out = tmp_path / "extra.out.json"
    code, out, _ = run_cli(args + ["--ignore-extra-ids", "--json-out", json_out], capsys)
    assert code == 0 and "ignored predictions for 3 id(s)" in out
    assert json.loads(json_out.read_text())["official"] == library_official(splits)


def test_wrong_score_counts_are_named(splits: dict, tmp_path: Path, capsys) -> None:
    rows = _rows(splits)
    short_rows = [(i, s[:27]) for i, s in rows[:8]] + rows[8:]
    json_predictions = write_json(tmp_path / "short.json", short_rows)
    err = _cli_error(["--predictions", json_predictions, "--test-annotations", TEST_JSON], capsys)
    assert "wrong number of scores (expected 28) for 8 id(s), first 5:" in err
    assert f"'{rows[0][0]} (27 scores)'" in err

    csv_path = write_csv(tmp_path / "ok.csv", rows, splits["class_names"], list(range(28)))
    lines = csv_path.read_text().splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0]  # drop the last score of the 3rd image
    csv_path.write_text("\n".join(lines) + "\n")
    err = _cli_error(["--predictions", csv_path, "--test-annotations", TEST_JSON], capsys)
    assert f"1 id(s): '{rows[2][0]} (27 scores)'" in err and str(csv_path) in err


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda lines: lines[:3] + [lines[2]] + lines[3:], "more than one row for 1 id(s)"),
        (
            lambda lines: [lines[0].replace("Attractive", "Atractive")] + lines[1:],
            "1 unrecognised column(s): ['Atractive']",
        ),
        (lambda lines: [lines[0].replace("image_id", "id")] + lines[1:], "no 'image_id' column"),
        (
            lambda lines: lines[:1] + [lines[1].replace(lines[1].split(",")[1], "nan", 1)] + lines[2:],
            "non-numeric, NaN or infinite",
        ),
        (lambda lines: lines[:1] + [lines[1].replace(lines[1].split(",")[1], "abc", 1)] + lines[2:], "non-numeric"),
    ],
)
def test_malformed_csv(splits: dict, tmp_path: Path, capsys, mutate, message: str) -> None:
    csv_path = write_csv(tmp_path / "p.csv", _rows(splits), splits["class_names"], list(range(28)))
    csv_path.write_text("\n".join(mutate(csv_path.read_text().splitlines())) + "\n")
    err = _cli_error(
        ["--predictions", csv_path, "--val-annotations", VAL_JSON, "--test-annotations", TEST_JSON], capsys
    )
    assert message in err and str(csv_path) in err


def test_bad_files(splits: dict, tmp_path: Path, capsys) -> None:
    predictions = write_json(tmp_path / "p.json", _rows(splits))
    err = _cli_error(["--predictions", predictions, "--test-annotations", tmp_path / "nope.json"], capsys)
    assert "annotation file does not exist" in err and "nope.json" in err
    err = _cli_error(["--predictions", tmp_path / "none.csv", "--test-annotations", TEST_JSON], capsys)
    assert "predictions file does not exist" in err
    (tmp_path / "p.txt").write_text("x")
    err = _cli_error(["--predictions", tmp_path / "p.txt", "--test-annotations", TEST_JSON], capsys)
    assert "unsupported predictions format '.txt'" in err
    (tmp_path / "dup.json").write_text('{"a": [0.1], "a": [0.2]}')
    err = _cli_error(["--predictions", tmp_path / "dup.json", "--test-annotations", TEST_JSON], capsys)
    assert "repeats key(s): 1 id(s): 'a'" in err
    err = _cli_error(["--predictions", predictions], capsys)
    assert "--val-annotations and/or --test-annotations" in err
    # the same annotation file given as val and test: leakage is refused
    err = _cli_error(
        ["--predictions", predictions, "--val-annotations", TEST_JSON, "--test-annotations", TEST_JSON], capsys
    )
    assert "share images" in err


def test_annotation_parser_rejects_schema_problems(tmp_path: Path) -> None:
    document = json.loads(VAL_JSON.read_text())

    def write(doc: dict) -> Path:
        path = tmp_path / "ann.json"
        path.write_text(json.dumps(doc))
        return path

    bad = json.loads(json.dumps(document))
    bad["annotations"][4]["category_ids"] = [3, 99]
    image_id = bad["annotations"][4]["image_id"]
    with pytest.raises(
        AnnotationFileError,
        match=rf"ann.json: annotations\[4\] image '{image_id}' file 'low/{image_id}.jpg': unknown category id\(s\) \[99\]",
    ):
        load_split_annotations(write(bad))
    bad = json.loads(json.dumps(document))
    dropped = bad["annotations"].pop(10)["image_id"]
    with pytest.raises(AnnotationFileError, match=rf"images\[\d+\] image '{dropped}' .*: image has no annotation"):
        load_split_annotations(write(bad))
    bad = json.loads(json.dumps(document))
    bad["annotations"][1]["image_id"] = bad["annotations"][0]["image_id"]
    with pytest.raises(
        AnnotationFileError, match=r"annotations\[1\] .*more than one annotation \(first: annotations\[0\]\)"
    ):
        load_split_annotations(write(bad))
    bad = json.loads(json.dumps(document))
    bad["categories"][3]["id"] = 40
    with pytest.raises(AnnotationFileError, match=r"category ids must be 0..27 \(class index = id\)"):
        load_split_annotations(write(bad))
    bad = json.loads(json.dumps(document))
    del bad["annotations"][0]["category_ids"]
    with pytest.raises(AnnotationFileError, match=r"annotations\[0\] .* has no 'category_ids' list"):
        load_split_annotations(write(bad))
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(AnnotationFileError, match="broken.json: not valid JSON"):
        load_split_annotations(tmp_path / "broken.json")


def test_prediction_errors_are_value_errors_in_the_library(splits: dict, tmp_path: Path) -> None:
    predictions = write_json(tmp_path / "val_only.json", _rows(splits, ("val",)))
    with pytest.raises(PredictionsFileError, match="lack scores for test images: 1217 id"):
        score_prediction_files(
            ScoringConfig(prediction_paths=(predictions,), val_annotations=VAL_JSON, test_annotations=TEST_JSON)
        )
    assert issubclass(PredictionsFileError, ValueError) and issubclass(AnnotationFileError, ValueError)


def test_runs_as_module(splits: dict, tmp_path: Path) -> None:
    predictions = write_json(tmp_path / "p.json", _rows(splits))
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "mccl_core.metrics.score",
            "--predictions",
            str(predictions),
            "--val-annotations",
            str(VAL_JSON),
            "--test-annotations",
            str(TEST_JSON),
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert "OFFICIAL protocol" in completed.stdout and "WorkILike" in completed.stdout


def _renamed_classes(path: Path, tmp_path: Path) -> Path:
    """The same file with 28 classes that are NOT the Intentonomy ones (same count, other names)."""
    document = json.loads(path.read_text())
    for category in document["categories"]:
        category["name"] = f"intent_{category['id']:02d}"
    out = tmp_path / path.name
    out.write_text(json.dumps(document))
    return out


def test_subsets_auto_goes_by_class_names_not_count(splits: dict, tmp_path: Path, capsys) -> None:
    predictions = write_json(tmp_path / "p.json", _rows(splits))
    val, test = _renamed_classes(VAL_JSON, tmp_path), _renamed_classes(TEST_JSON, tmp_path)
    json_out = tmp_path / "renamed.json"
    code, out, err = run_cli(
        ["--predictions", predictions, "--val-annotations", val, "--test-annotations", test, "--json-out", json_out],
        capsys,
    )
    assert code == 0, err
    written = json.loads(json_out.read_text())
    assert written["official"]["f1"]["subsets"] == {} and "no class subsets reported" in written["notes"]
    # The official classes get the official subsets (same scores, same labels).
    code, _, err = run_cli(
        ["--predictions", predictions, "--val-annotations", VAL_JSON, "--test-annotations", TEST_JSON,
         "--json-out", json_out], capsys,
    )  # fmt: skip
    assert code == 0, err
    assert set(json.loads(json_out.read_text())["official"]["f1"]["subsets"]) == set(INTENTONOMY_SUBSETS)
    # Asking for the Intentonomy subsets on other classes is an error, not a silent mislabel.
    code, _, err = run_cli(
        [
            "--predictions",
            predictions,
            "--val-annotations",
            val,
            "--test-annotations",
            test,
            "--subsets",
            "intentonomy",
        ],
        capsys,
    )
    assert code == 2 and "Intentonomy subsets need the 28 Intentonomy classes" in err


def test_scoring_cli_does_not_import_torch() -> None:
    completed = subprocess.run(
        [sys.executable, "-c",
         "import sys, mccl_core.metrics.score; "
         "torch_free = {'mccl_core.data', 'mccl_core.data.intentonomy_json'}; "
         "bad = sorted(m for m in sys.modules if m == 'torch' or (m.startswith('mccl_core.data') and m not in torch_free)); "
         "print(','.join(bad)); sys.exit(1 if bad else 0)"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
    )  # fmt: skip
    assert completed.returncode == 0, f"mccl score imports {completed.stdout.strip()} {completed.stderr}"
