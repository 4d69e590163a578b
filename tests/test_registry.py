"""Champion promotion against a real MLflow tracking server (SQLite backend, proxied artifacts),
and the same checks against the embedded SQLite store in-process (the fast tier: no server)."""

from __future__ import annotations

import math

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from services import MlflowServer

from mccl_core.serving import CANDIDATE_TAG, PROMOTED_TAG, SCORE_TAG, promote_if_better
from mccl_core.serving.registry import REPORTED_TAG


@pytest.fixture(scope="module", params=["sqlite", pytest.param("server", marks=pytest.mark.slow)])
def client(request, tmp_path_factory) -> MlflowClient:
    folder = tmp_path_factory.mktemp(f"mlflow-registry-{request.param}")
    if request.param == "sqlite":
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        # The embedded store keeps the run artifacts under the test's folder, not the working directory.
        client.create_experiment("registry-test", artifact_location=(folder / "artifacts").as_uri())
        yield client
        return
    server = MlflowServer(folder).start()
    try:
        yield MlflowClient(tracking_uri=server.url, registry_uri=server.url)
    finally:
        server.stop()


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
