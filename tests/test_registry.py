"""Champion promotion against a real MLflow tracking server (SQLite backend, proxied artifacts),
and the same checks against the embedded SQLite store in-process (the fast tier: no server)."""

from __future__ import annotations

import json
import math

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mccl_core.serving import CANDIDATE_TAG, PROMOTED_TAG, SCORE_TAG, promote_if_better
from mccl_core.serving.registry import (
    CLASS_COUNT_TAG,
    CLASS_LIST_TAG,
    CLASS_NAMES_TAG,
    DATA_HASH_TAG,
    DATASET_TAG,
    REPORTED_TAG,
    IncompatibleModelError,
    ModelIdentity,
    check_comparable,
    class_list_hash,
)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("server", marks=pytest.mark.slow)])
def client(request, tmp_path_factory) -> MlflowClient:
    """An embedded SQLite store, or the session's real MLflow server (its model names are this
    module's own)."""
    folder = tmp_path_factory.mktemp(f"mlflow-registry-{request.param}")
    if request.param == "sqlite":
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        # The embedded store keeps the run artifacts under the test's folder, not the working directory.
        client.create_experiment("registry-test", artifact_location=(folder / "artifacts").as_uri())
        yield client
        return
    server = request.getfixturevalue("mlflow_server")
    yield MlflowClient(tracking_uri=server.url, registry_uri=server.url)


def _new_version(client: MlflowClient, name: str) -> str:
    """Register a new version of ``name`` whose source is a real artifact folder of a real run."""
    experiment = client.get_experiment_by_name("registry-test") or client.get_experiment(
        client.create_experiment("registry-test")
    )
    run = client.create_run(experiment.experiment_id)
    client.log_text(run.info.run_id, "weights would be here", "model/README.txt")
    client.set_terminated(run.info.run_id)
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        client.create_registered_model(name)
    version = client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    return str(version.version)


def _champion(client: MlflowClient, name: str, alias: str = "champion") -> str | None:
    holder = client.get_registered_model(name).aliases.get(alias)
    # The REST store answers the version as a string, the embedded SQLite store as an int.
    return None if holder is None else str(holder)


def _tags(client: MlflowClient, name: str, version: str) -> dict[str, str]:
    return dict(client.get_model_version(name, version).tags)


def test_first_model_becomes_champion_worse_stays_candidate_better_takes_alias(client, request):
    name = "mccl-promotion"
    v1 = _new_version(client, name)
    first = promote_if_better(client, name, v1, 0.40)
    assert first.promoted and first.champion_version is None and first.champion_score is None
    assert "had no champion" in first.reason
    assert _champion(client, name) == v1
    assert float(_tags(client, name, v1)[SCORE_TAG]) == 0.40
    assert _tags(client, name, v1)[PROMOTED_TAG] == first.reason

    v2 = _new_version(client, name)
    worse = promote_if_better(client, name, v2, 0.35)
    assert not worse.promoted
    assert (worse.champion_version, worse.champion_score, worse.new_score) == (v1, 0.40, 0.35)
    assert f"does not beat the champion v{v1}" in worse.reason
    assert _champion(client, name) == v1
    assert _tags(client, name, v2)[CANDIDATE_TAG] == worse.reason
    assert float(_tags(client, name, v2)[SCORE_TAG]) == 0.35

    v3 = _new_version(client, name)
    tie = promote_if_better(client, name, v3, 0.40)  # equal is not better: serving stays put
    assert not tie.promoted and _champion(client, name) == v1

    v4 = _new_version(client, name)
    better = promote_if_better(client, name, v4, 0.4000001)
    assert better.promoted and (better.champion_version, better.champion_score) == (v1, 0.40)
    assert f"beats the champion v{v1}" in better.reason
    assert _champion(client, name) == v4
    assert CANDIDATE_TAG not in _tags(client, name, v4)

    # The old champion beaten by v4 cannot come back with its old score ...
    again = promote_if_better(client, name, v1, 0.40)
    assert not again.promoted and _champion(client, name) == v4
    # ... and re-evaluating the champion itself keeps it (and updates its score).
    same = promote_if_better(client, name, v4, 0.41)
    assert same.promoted and "already the champion" in same.reason
    assert float(_tags(client, name, v4)[SCORE_TAG]) == 0.41


def test_candidate_later_promoted_loses_candidate_tag_and_aliases_are_independent(client):
    name = "mccl-aliases"
    v1, v2 = _new_version(client, name), _new_version(client, name)
    assert promote_if_better(client, name, v1, 0.5).promoted
    assert not promote_if_better(client, name, v2, 0.45).promoted
    assert CANDIDATE_TAG in _tags(client, name, v2)
    # A second alias (e.g. a per-dataset champion) has its own history.
    staging = promote_if_better(client, name, v2, 0.45, alias="staging")
    assert staging.promoted and _champion(client, name, "staging") == v2
    assert _champion(client, name) == v1
    assert CANDIDATE_TAG not in _tags(client, name, v2)


def test_champion_without_score_is_not_replaced_silently(client, request):
    name = "mccl-manual-alias"
    v1, v2 = _new_version(client, name), _new_version(client, name)
    client.set_registered_model_alias(name, "champion", v1)  # set by hand, no score tag
    decision = promote_if_better(client, name, v2, 0.9)
    assert not decision.promoted and decision.champion_version == v1 and decision.champion_score is None
    assert f"champion v{v1} has no readable '{SCORE_TAG}' tag" in decision.reason
    assert _champion(client, name) == v1


def test_bad_score_and_unknown_version_are_errors(client):
    name = "mccl-errors"
    v1 = _new_version(client, name)
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="val_macro_f1 must be finite"):
            promote_if_better(client, name, v1, bad)
    with pytest.raises(MlflowException):
        promote_if_better(client, name, "99", 0.5)
    assert _champion(client, name) is None


def test_better_on_test_but_worse_on_val_does_not_become_champion(client):
    """Selection uses val only: a candidate that wins on test but loses on val stays a candidate."""
    name = "mccl-val-selection"
    v1, v2 = _new_version(client, name), _new_version(client, name)
    assert SCORE_TAG == "val_macro_f1"
    assert promote_if_better(client, name, v1, 0.50, test_macro_f1=0.30).promoted
    decision = promote_if_better(client, name, v2, 0.45, test_macro_f1=0.60)
    assert not decision.promoted and _champion(client, name) == v1
    assert (decision.new_score, decision.champion_score) == (0.45, 0.50)
    tags = _tags(client, name, v2)
    assert float(tags[REPORTED_TAG]) == 0.60 and float(tags[SCORE_TAG]) == 0.45  # test recorded, not used


# ------------------------------------------------------------------ class list / dataset identity

INTENTONOMY_LIKE = ModelIdentity.of([f"intent_{i}" for i in range(28)], "intentonomy", "sha256:data-v1")
FIVE_CLASSES = ModelIdentity.of(["art", "food", "travel", "sport", "pets"], "manifest", "sha256:other")


def test_identity_tags_and_hash_follow_the_class_order():
    tags = INTENTONOMY_LIKE.tags()
    assert tags[CLASS_LIST_TAG] == class_list_hash([f"intent_{i}" for i in range(28)])
    assert tags[CLASS_LIST_TAG].startswith("sha256:") and len(tags[CLASS_LIST_TAG]) == 7 + 64
    assert (tags[CLASS_COUNT_TAG], tags[DATASET_TAG], tags[DATA_HASH_TAG]) == ("28", "intentonomy", "sha256:data-v1")
    assert json.loads(tags[CLASS_NAMES_TAG])[27] == "intent_27"
    # The class order is the output layout: a permutation is another model.
    assert class_list_hash(["a", "b"]) != class_list_hash(["b", "a"])
    assert class_list_hash(["a", "b"]) == ModelIdentity.of(("a", "b")).class_list_sha256
    # A class list too long for a tag value keeps the hash and the count only.
    huge = ModelIdentity.of([f"class-{i:05d}-{'x' * 40}" for i in range(200)])
    assert CLASS_NAMES_TAG not in huge.tags() and huge.tags()[CLASS_COUNT_TAG] == "200"
    with pytest.raises(ValueError, match="needs the class names"):
        ModelIdentity.of([])


def test_candidate_with_another_class_list_or_dataset_is_refused_and_the_champion_stays(client):
    """The reported bug: a 5-class model with a (much) higher val score under the same name must not
    displace a 28-class Intentonomy champion."""
    name = "mccl-identity"
    v1 = _new_version(client, name)
    assert promote_if_better(client, name, v1, 0.30, identity=INTENTONOMY_LIKE).promoted
    assert _tags(client, name, v1)[CLASS_LIST_TAG] == INTENTONOMY_LIKE.class_list_sha256
    check_comparable(client, name, INTENTONOMY_LIKE)  # same classes, same dataset: comparable

    v2 = _new_version(client, name)
    with pytest.raises(IncompatibleModelError) as caught:
        promote_if_better(client, name, v2, 0.95, identity=FIVE_CLASSES)
    message = str(caught.value)
    assert "the class list and dataset differ" in message
    assert f"champion v{v1} was trained on 28 classes [intent_0," in message and "dataset 'intentonomy'" in message
    assert "candidate on 5 classes [art, food, travel, sport, pets]" in message and "dataset 'manifest'" in message
    assert "register it under its own model name" in message and "champion is unchanged" in message
    assert caught.value.differences == ("class list", "dataset") and caught.value.champion_version == v1
    assert _champion(client, name) == v1
    tags = _tags(client, name, v2)
    assert tags[CANDIDATE_TAG].startswith("refusing to compare") and PROMOTED_TAG not in tags
    assert tags[CLASS_COUNT_TAG] == "5" and float(tags[SCORE_TAG]) == 0.95  # recorded, never compared
    with pytest.raises(IncompatibleModelError, match="class list and dataset differ"):
        check_comparable(client, name, FIVE_CLASSES)

    # The same 28 names in another order: a different output layout, refused on the class list alone.
    v3 = _new_version(client, name)
    permuted = ModelIdentity.of(list(reversed(INTENTONOMY_LIKE.class_names)), "intentonomy")
    with pytest.raises(IncompatibleModelError, match=r"the class list differ\(s\)") as caught:
        promote_if_better(client, name, v3, 0.95, identity=permuted)
    assert caught.value.differences == ("class list",)
    # Same classes from another source (a manifest re-labelled with the Intentonomy names): refused too.
    v4 = _new_version(client, name)
    with pytest.raises(IncompatibleModelError, match=r"the dataset differ\(s\)"):
        promote_if_better(client, name, v4, 0.95, identity=ModelIdentity.of(INTENTONOMY_LIKE.class_names, "manifest"))
    assert _champion(client, name) == v1

    # A new version of the same dataset (other data hash) still competes on the val score.
    v5 = _new_version(client, name)
    newer_data = ModelIdentity.of(INTENTONOMY_LIKE.class_names, "intentonomy", "sha256:data-v2")
    decision = promote_if_better(client, name, v5, 0.31, identity=newer_data)
    assert decision.promoted and _champion(client, name) == v5
    assert _tags(client, name, v5)[DATA_HASH_TAG] == "sha256:data-v2"
    # check_comparable on a name that does not exist (yet) has nothing to refuse.
    check_comparable(client, "mccl-identity-never-registered", FIVE_CLASSES)


def test_unknown_identity_on_either_side_keeps_the_candidate_a_candidate(client):
    """A champion from before identity tags (or a candidate without them) cannot be compared: the
    alias stays put, as for a champion without a score."""
    name = "mccl-identity-legacy"
    v1, v2 = _new_version(client, name), _new_version(client, name)
    assert promote_if_better(client, name, v1, 0.30).promoted  # no identity recorded
    decision = promote_if_better(client, name, v2, 0.90, identity=INTENTONOMY_LIKE)
    assert not decision.promoted and _champion(client, name) == v1
    assert f"the champion v{v1} records no class list" in decision.reason
    assert _tags(client, name, v2)[CANDIDATE_TAG] == decision.reason

    # Moved by hand to the tagged version, a caller that does not pass an identity cannot displace it.
    client.set_registered_model_alias(name, "champion", v2)
    v3 = _new_version(client, name)
    decision = promote_if_better(client, name, v3, 0.99)
    assert not decision.promoted and f"the candidate v{v3} records no class list" in decision.reason
    assert _champion(client, name) == v2


# ------------------------------------------------------------------ the register step


def _bundle(folder, class_names: list[str]):
    """A real (untrained, random-weight) bundle with ``class_names``: the registry only cares
    about what it predicts, and log_pyfunc_model loads and scores it like a trained one."""
    import numpy as np
    from conftest import TINY_MODEL

    from mccl_core.models import ModelConfig
    from mccl_core.serving import build_untrained_bundle

    count = len(class_names)
    embeddings = np.random.default_rng(count).standard_normal((count, 384)).astype(np.float32)
    return build_untrained_bundle(folder, ModelConfig.from_dict(TINY_MODEL), class_names, embeddings,
                                  np.eye(count) * 7 + 3, image_size=32)  # fmt: skip


def test_register_step_refuses_a_model_with_other_classes_and_registers_nothing(tmp_path):
    """Through ``run_register`` on a real embedded MLflow store: an Intentonomy-like champion, then a
    5-class candidate with a far better val score under the same (default) name -> the step fails
    naming both class lists and the setting to change; nothing is registered, the champion stays."""
    from mccl_core.steps import StepError
    from mccl_core.steps.register import RegisterConfig, run_register
    from mccl_core.tracking.steps import TrackingOptions

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = TrackingOptions(project_dir=tmp_path, tracking_uri=uri, run_ref=tmp_path / "run.json")
    metrics = tmp_path / "metrics.json"
    cfg = RegisterConfig()  # the default name every dataset would otherwise share
    seven = ["provoke", "inform", "advocate", "entertain", "expose", "express", "promote"]
    metrics.write_text(json.dumps({"threshold": 0.3, "selection_score": 0.40, "test_macro_f1": 0.38}))
    first = run_register(cfg, _bundle(tmp_path / "a", seven), metrics, tmp_path / "out-a", tracking,
                         data_hash="sha256:mdid-data", dataset="mdid")  # fmt: skip
    assert first.promoted and first.version == "1"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    tags = _tags(client, cfg.model_name, "1")
    assert tags[CLASS_LIST_TAG] == class_list_hash(seven) and tags[CLASS_COUNT_TAG] == "7"
    assert (tags[DATASET_TAG], tags[DATA_HASH_TAG]) == ("mdid", "sha256:mdid-data")
    assert first.decision["identity_class_list_sha256"] == class_list_hash(seven)

    five = ["art", "food", "travel", "sport", "pets"]
    metrics.write_text(json.dumps({"threshold": 0.5, "selection_score": 0.97, "test_macro_f1": 0.96}))
    with pytest.raises(StepError) as caught:
        run_register(cfg, _bundle(tmp_path / "b", five), metrics, tmp_path / "out-b", tracking,
                     data_hash="sha256:own-data", dataset="manifest")  # fmt: skip
    message = str(caught.value)
    assert "refusing to compare with the champion of registered model 'mccl-intent'" in message
    assert "the class list and dataset differ" in message
    assert "champion v1 was trained on 7 classes [provoke, inform," in message
    assert "candidate on 5 classes [art, food, travel, sport, pets]" in message
    assert "Nothing was registered" in message and "`register.model_name: mccl-intent-manifest`" in message
    assert _champion(client, cfg.model_name) == "1"
    assert [str(v.version) for v in client.search_model_versions(f"name = '{cfg.model_name}'")] == ["1"]
    assert not (tmp_path / "out-b" / "register.json").exists()

    # Under its own name, as the message says, it registers and becomes that model's champion.
    own = run_register(RegisterConfig(model_name="mccl-intent-manifest"), tmp_path / "b", metrics,
                       tmp_path / "out-b", tracking, data_hash="sha256:own-data", dataset="manifest")  # fmt: skip
    assert own.promoted and own.version == "1" and _champion(client, "mccl-intent-manifest") == "1"
    assert _champion(client, cfg.model_name) == "1"
