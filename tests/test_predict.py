"""``mccl predict`` (issue 21, item 5): a folder of real photos (sklearn's two), a bad file listed
and never fatal, resume by chunks, and the same scores through ``models:/`` from a real sqlite store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sklearn.datasets

from mccl_core.models.bundle import read_meta, write_meta
from mccl_core.serving.batch import main

PHOTOS = Path(sklearn.datasets.__file__).parent / "images"
THRESHOLD = 0.5


@pytest.fixture
def bundle(tiny_trained_bundle, tmp_path) -> Path:
    """A copy of the session's bundle with a threshold, as the evaluate step leaves it."""
    copy = shutil.copytree(tiny_trained_bundle.path, tmp_path / "bundle")
    meta = read_meta(copy)
    meta.threshold = THRESHOLD
    write_meta(copy, meta)
    return copy


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(PHOTOS / "china.jpg", folder / "china.jpg")
    shutil.copy(PHOTOS / "flower.jpg", folder / "sub" / "flower.jpg")
    (folder / "broken.jpg").write_text("not an image")
    return folder


def _expected_scores(bundle: Path, paths: list[Path]) -> np.ndarray:
    import torch

    from mccl_core.data.images import load_rgb_image
    from mccl_core.models.bundle import load_bundle

    model, meta = load_bundle(bundle, "cpu")
    from mccl_core.data.transforms import eval_transform_for

    pixels = torch.stack([eval_transform_for(meta)(load_rgb_image(p)) for p in paths])
    with torch.inference_mode():
        return torch.sigmoid(model(pixels).logits).numpy()


def test_predict_scores_a_folder_of_photos_lists_bad_files_and_resumes(bundle, photos, tmp_path):
    out = tmp_path / "scores.csv"
    assert main(["--model", str(bundle), "--input", str(photos), "--output", str(out), "--chunk-size", "1",
                 "--top-clues", "2"]) == 0  # fmt: skip
    frame = pd.read_csv(out, keep_default_na=False)
    names = list(read_meta(bundle).class_names)
    good = [photos / "china.jpg", photos / "sub" / "flower.jpg"]
    assert frame["image_path"].tolist() == [str(p) for p in good]
    expected = _expected_scores(bundle, good)
    np.testing.assert_allclose(frame[names].to_numpy(), expected, rtol=1e-5, atol=1e-6)
    assert frame["intents"].tolist() == ["|".join(n for n, s in zip(names, row) if s > THRESHOLD) for row in expected]
    for intents, clues in zip(frame["intents"], frame["clues"]):
        parsed = json.loads(clues)
        assert sorted(parsed) == sorted(i for i in intents.split("|") if i)
        assert all(1 <= len(v) <= 2 and v[0]["mass"] >= v[-1]["mass"] for v in parsed.values())
    bad = pd.read_csv(tmp_path / "scores.bad.csv")
    assert bad["image_path"].tolist() == [str(photos / "broken.jpg")] and bad["reason"].str.len().min() > 0
    assert not (tmp_path / "scores.csv.parts").exists()


def test_resume_reuses_finished_chunks_and_restarts_on_another_input(bundle, photos, tmp_path):
    from mccl_core.serving.batch import PARTS_SUFFIX, list_inputs, predict_batch

    images = list_inputs(str(photos), tmp_path)
    out = tmp_path / "s.csv"
    predict_batch(bundle, images, out, chunk_size=1, progress=False)
    reference = pd.read_csv(out)
    parts = out.with_name(out.name + PARTS_SUFFIX)
    import mccl_core.serving.batch as batch

    original = pd.DataFrame.to_csv
    calls = {"n": 0}

    def fail_once(self, *args, **kwargs):  # the run dies after scoring, while writing the output
        calls["n"] += 1
        raise KeyboardInterrupt

    pd.DataFrame.to_csv = fail_once
    try:
        with pytest.raises(KeyboardInterrupt):
            batch.predict_batch(bundle, images, out, chunk_size=1, progress=False)
    finally:
        pd.DataFrame.to_csv = original
    assert len(list(parts.glob("chunk-*.parquet"))) == 3
    again = batch.predict_batch(bundle, images, out, chunk_size=1, progress=False)
    assert again.reused_chunks == 3
    pd.testing.assert_frame_equal(pd.read_csv(out), reference)
    # Another input list: the parts are not reused.
    pd.DataFrame.to_csv = fail_once
    try:
        with pytest.raises(KeyboardInterrupt):
            batch.predict_batch(bundle, images, out, chunk_size=1, progress=False)
    finally:
        pd.DataFrame.to_csv = original
    other = batch.predict_batch(bundle, images[:2], out, chunk_size=1, progress=False)
    assert other.reused_chunks == 0


def test_predict_through_models_uri_from_a_real_sqlite_store(bundle, photos, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    from mccl_core.serving.model_logging import log_pyfunc_model

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    mlflow.set_experiment("predict")
    with mlflow.start_run():
        info = log_pyfunc_model(bundle, THRESHOLD, registered_model_name="mccl-intent")
    MlflowClient(uri).set_registered_model_alias("mccl-intent", "champion", str(info.registered_model_version))
    via_store, via_folder = tmp_path / "store.parquet", tmp_path / "folder.parquet"
    assert main(["--model", "models:/mccl-intent@champion", "--tracking-uri", uri, "--input", str(photos),
                 "--output", str(via_store)]) == 0  # fmt: skip
    assert main(["--model", str(bundle), "--input", str(photos), "--output", str(via_folder)]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(via_store), pd.read_parquet(via_folder))
    assert len(pd.read_parquet(via_store)) == 2
