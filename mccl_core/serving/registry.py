"""Champion/candidate promotion in the MLflow model registry.

Every evaluated model is registered (a new version); the alias (``champion`` by default) is what
serving loads (``models:/<name>@champion``). It moves on the **validation** score only - the
official Intentonomy protocol's own selection criterion, macro-F1 on val at the threshold tuned on
val. Moving it on the test score would select models on test: over a sweep, the champion's test
number would then be optimistically biased. Test scores are recorded next to it for reporting
(tag ``test_macro_f1``) and never compared.

Each version keeps its selection score as the version tag ``val_macro_f1`` (full float
precision), and the outcome as a tag: ``promoted`` or ``candidate`` whose value is the
human-readable reason. "Better" means strictly greater: on a tie the serving model stays put.

If the current champion has no (or an unreadable) ``val_macro_f1`` tag - e.g. the alias was set by
hand, or by a version of this project that selected on test - nothing is moved: the new version
stays a candidate and the reason says how to resolve it. Two pipelines promoting into the same
model at the same instant are not serialised (the registry has no compare-and-set); run the
register step of one model name at a time.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

logger = logging.getLogger(__name__)

SCORE_TAG = "val_macro_f1"
#: Reported, never compared.
REPORTED_TAG = "test_macro_f1"
PROMOTED_TAG = "promoted"
CANDIDATE_TAG = "candidate"


@dataclass
class PromotionDecision:
    """Outcome of :func:`promote_if_better`.

    ``promoted`` is True when the alias points at ``version`` after the call (also when it already
    did). ``champion_version`` / ``champion_score`` describe the champion *before* the call
    (``None`` when there was none or its score is unknown).
    """

    promoted: bool
    version: str
    new_score: float
    champion_version: str | None
    champion_score: float | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _current_alias_holder(client: MlflowClient, model_name: str, alias: str) -> ModelVersion | None:
    """The version ``alias`` points at, or None (read from the model's alias map: a missing alias is
    not an error, whatever error code a given server uses for it)."""
    holder = (client.get_registered_model(model_name).aliases or {}).get(alias)
    return client.get_model_version(model_name, str(holder)) if holder is not None else None


def _tag_score(version: ModelVersion) -> float | None:
    text = (version.tags or {}).get(SCORE_TAG)
    try:
        score = float(text) if text is not None else None
    except ValueError:
        return None
    return score if score is not None and math.isfinite(score) else None


def promote_if_better(
    client: MlflowClient,
    model_name: str,
    version: str,
    val_macro_f1: float,
    alias: str = "champion",
    test_macro_f1: float | None = None,
) -> PromotionDecision:
    """Record ``version``'s validation macro-F1 and move ``alias`` to it if it beats the holder's.

    Args:
        client: an MLflow client for the tracking/registry server.
        model_name: registered model name; ``version`` must already exist in it.
        version: the new model version (as returned by registration).
        val_macro_f1: the selection score: macro-F1 on val at the val-tuned threshold (finite).
        alias: the serving alias.
        test_macro_f1: recorded as a tag for reporting; it never influences the decision.

    Raises:
        ValueError: a non-finite score. MlflowException: unknown model/version, server errors.
    """
    version = str(version)
    new_score = float(val_macro_f1)
    if not math.isfinite(new_score):
        raise ValueError(f"{model_name} v{version}: val_macro_f1 must be finite, got {val_macro_f1}")
    existing = client.get_model_version(model_name, version)  # fails clearly for an unknown name/version
    client.set_model_version_tag(model_name, version, SCORE_TAG, repr(new_score))
    if test_macro_f1 is not None:
        client.set_model_version_tag(model_name, version, REPORTED_TAG, repr(float(test_macro_f1)))

    champion = _current_alias_holder(client, model_name, alias)
    # str(): the REST store returns versions as strings, the embedded SQLite store as ints.
    champion_version = str(champion.version) if champion is not None else None
    champion_score = _tag_score(champion) if champion is not None else None

    if champion is None:
        promoted = True
        reason = f"v{version} (val macro-F1 {new_score:.6f}) becomes {alias}: {model_name} had no {alias}"
    elif str(champion.version) == version:
        promoted = True
        reason = f"v{version} is already the {alias} (val macro-F1 {new_score:.6f})"
    elif champion_score is None:
        promoted = False
        reason = (
            f"v{version} (val macro-F1 {new_score:.6f}) stays a candidate: the {alias} v{champion.version} "
            f"has no readable {SCORE_TAG!r} tag, so the two cannot be compared; tag it or move the alias by hand"
        )
    elif new_score > champion_score:
        promoted = True
        reason = (
            f"v{version} (val macro-F1 {new_score:.6f}) beats the {alias} v{champion.version} "
            f"({champion_score:.6f}) and becomes {alias}"
        )
    else:
        promoted = False
        reason = (
            f"v{version} (val macro-F1 {new_score:.6f}) does not beat the {alias} v{champion.version} "
            f"({champion_score:.6f}); {alias} unchanged"
        )

    if promoted:
        client.set_registered_model_alias(model_name, alias, version)
        client.set_model_version_tag(model_name, version, PROMOTED_TAG, reason)
        if CANDIDATE_TAG in (existing.tags or {}):
            client.delete_model_version_tag(model_name, version, CANDIDATE_TAG)  # an earlier "not better"
        logger.info("%s: %s", model_name, reason)
    else:
        client.set_model_version_tag(model_name, version, CANDIDATE_TAG, reason)
        (logger.warning if champion_score is None else logger.info)("%s: %s", model_name, reason)
    return PromotionDecision(promoted, version, new_score, champion_version, champion_score, reason)
