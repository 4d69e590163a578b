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

Scores are only comparable between models of the same classes on the same dataset: a 5-class
model's val macro-F1 says nothing about whether it is a better Intentonomy model than a 28-class
champion, yet numerically it can easily be higher. So each version also records what it was
trained on (:class:`ModelIdentity`): the tags ``class_list_sha256`` (SHA-256 of the class names
in class-index order: the order is the output layout, so a permutation is a different model),
``class_count``, ``class_names`` (JSON, for messages, when short enough), ``dataset`` (the data
source, e.g. ``intentonomy``) and ``data_hash`` (the data version; provenance only, never
compared: a new version of the same dataset must still be able to compete). A candidate whose
class list or dataset differs from the champion's is refused with
:class:`IncompatibleModelError` - it belongs under another registered model name - and the
champion is untouched.

If the current champion has no (or an unreadable) ``val_macro_f1`` tag, or records no class list
while the candidate does (or the other way round) - e.g. the alias was set by hand, or by an older
version of this project - nothing is moved: the new version stays a candidate and the reason says
how to resolve it. Two pipelines promoting into the same model at the same instant are not
serialised (the registry has no compare-and-set); run the register step of one model name at a
time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

logger = logging.getLogger(__name__)

SCORE_TAG = "val_macro_f1"
#: Reported, never compared.
REPORTED_TAG = "test_macro_f1"
PROMOTED_TAG = "promoted"
CANDIDATE_TAG = "candidate"
#: What a version was trained on (see :class:`ModelIdentity`).
CLASS_LIST_TAG = "class_list_sha256"
CLASS_COUNT_TAG = "class_count"
CLASS_NAMES_TAG = "class_names"
DATASET_TAG = "dataset"
#: Provenance only (a new version of the same dataset still competes): never compared.
DATA_HASH_TAG = "data_hash"
#: MLflow caps model-version tag values (5000 characters); longer class lists keep only the hash.
_MAX_CLASS_NAMES_TAG = 4000


def class_list_hash(class_names: Sequence[str]) -> str:
    """``sha256:<hex>`` of the class names in class-index order (the model's output layout)."""
    text = json.dumps([str(n) for n in class_names], ensure_ascii=False, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ModelIdentity:
    """What a model version was trained on: the part of it that decides whether two models'
    validation scores can be compared at all.

    ``dataset`` names the data source (``demo``, ``intentonomy``, ``mdid``, ``manifest``), not a
    version of it; ``data_hash`` is that version, recorded for provenance but never compared.
    ``dataset`` None: unknown, not compared (the class list still is).
    """

    class_names: tuple[str, ...]
    dataset: str | None = None
    data_hash: str | None = None

    @classmethod
    def of(cls, class_names: Sequence[str], dataset: str | None = None, data_hash: str | None = None) -> ModelIdentity:
        if not class_names:
            raise ValueError("a model identity needs the class names (got none)")
        return cls(tuple(str(n) for n in class_names), dataset or None, data_hash or None)

    @property
    def class_list_sha256(self) -> str:
        return class_list_hash(self.class_names)

    def tags(self) -> dict[str, str]:
        tags = {CLASS_LIST_TAG: self.class_list_sha256, CLASS_COUNT_TAG: str(len(self.class_names))}
        names = json.dumps(list(self.class_names), ensure_ascii=False)
        if len(names) <= _MAX_CLASS_NAMES_TAG:
            tags[CLASS_NAMES_TAG] = names
        if self.dataset:
            tags[DATASET_TAG] = self.dataset
        if self.data_hash:
            tags[DATA_HASH_TAG] = self.data_hash
        return tags

    def describe(self) -> str:
        return _describe(self.tags())


def _describe(tags: Mapping[str, str]) -> str:
    """``5 classes ['a', ...] (sha256:1234abcd...), dataset 'manifest'`` from identity tags."""
    count = tags.get(CLASS_COUNT_TAG, "?")
    text = f"{count} classes"
    try:
        names = json.loads(tags[CLASS_NAMES_TAG]) if CLASS_NAMES_TAG in tags else None
    except ValueError:
        names = None
    if isinstance(names, list):
        shown = ", ".join(map(str, names[:8])) + (f", ... ({len(names) - 8} more)" if len(names) > 8 else "")
        text += f" [{shown}]"
    text += f" ({str(tags.get(CLASS_LIST_TAG, '?'))[:19]}...)"
    if tags.get(DATASET_TAG):
        text += f", dataset {tags[DATASET_TAG]!r}"
    return text


def identity_differences(recorded: Mapping[str, str], identity: ModelIdentity) -> list[str] | None:
    """How ``identity`` differs from a version's recorded identity tags: ``[]`` when comparable,
    ``None`` when the version records no class list (it cannot be told)."""
    if CLASS_LIST_TAG not in recorded:
        return None
    differences = []
    if recorded[CLASS_LIST_TAG] != identity.class_list_sha256:
        differences.append("class list")
    if recorded.get(DATASET_TAG) and identity.dataset and recorded[DATASET_TAG] != identity.dataset:
        differences.append("dataset")
    return differences


class IncompatibleModelError(ValueError):
    """The candidate's class list or dataset differs from the champion's: their validation scores
    measure different tasks, so the candidate is refused instead of compared."""

    def __init__(self, model_name: str, alias: str, champion_version: str, champion_tags: Mapping[str, str],
                 identity: ModelIdentity, differences: Sequence[str]) -> None:  # fmt: skip
        self.model_name = model_name
        self.alias = alias
        self.champion_version = champion_version
        self.differences = tuple(differences)
        what = " and ".join(differences)
        super().__init__(
            f"refusing to compare with the {alias} of registered model {model_name!r}: the {what} differ(s). "
            f"The {alias} v{champion_version} was trained on {_describe(champion_tags)}; the candidate on "
            f"{identity.describe()}. Validation scores over different classes or datasets are not comparable, "
            f"so the candidate must not replace the {alias}: register it under its own model name. "
            f"The {alias} is unchanged."
        )


def check_comparable(client: MlflowClient, model_name: str, identity: ModelIdentity, alias: str = "champion") -> None:
    """Raise :class:`IncompatibleModelError` when ``alias`` of ``model_name`` records another class
    list or dataset than ``identity``. No registered model, no alias holder or a holder without
    identity tags: nothing to refuse (the latter is handled by :func:`promote_if_better`).

    Called by the register step *before* it registers a version, so a refused model leaves no
    version behind."""
    try:
        champion = _current_alias_holder(client, model_name, alias)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":  # a new model name: nothing to compare with
            return
        raise
    if champion is None:
        return
    recorded = dict(champion.tags or {})
    differences = identity_differences(recorded, identity)
    if differences:
        raise IncompatibleModelError(model_name, alias, str(champion.version), recorded, identity, differences)


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
    identity: ModelIdentity | None = None,
) -> PromotionDecision:
    """Record ``version``'s validation macro-F1 and move ``alias`` to it if it beats the holder's.

    Args:
        client: an MLflow client for the tracking/registry server.
        model_name: registered model name; ``version`` must already exist in it.
        version: the new model version (as returned by registration).
        val_macro_f1: the selection score: macro-F1 on val at the val-tuned threshold (finite).
        alias: the serving alias.
        test_macro_f1: recorded as a tag for reporting; it never influences the decision.
        identity: what ``version`` was trained on; recorded as tags and compared with the holder's.
            ``None`` (callers that do not know it): the version records none, and it can then
            only replace a holder that records none either.

    Raises:
        ValueError: a non-finite score. MlflowException: unknown model/version, server errors.
        IncompatibleModelError: the holder records another class list or dataset than
            ``identity``; ``version`` is tagged ``candidate`` with the reason, the alias not moved.
    """
    version = str(version)
    new_score = float(val_macro_f1)
    if not math.isfinite(new_score):
        raise ValueError(f"{model_name} v{version}: val_macro_f1 must be finite, got {val_macro_f1}")
    existing = client.get_model_version(model_name, version)  # fails clearly for an unknown name/version
    client.set_model_version_tag(model_name, version, SCORE_TAG, repr(new_score))
    if test_macro_f1 is not None:
        client.set_model_version_tag(model_name, version, REPORTED_TAG, repr(float(test_macro_f1)))
    for key, value in (identity.tags() if identity is not None else {}).items():
        client.set_model_version_tag(model_name, version, key, value)

    champion = _current_alias_holder(client, model_name, alias)
    # str(): the REST store returns versions as strings, the embedded SQLite store as ints.
    champion_version = str(champion.version) if champion is not None else None
    champion_score = _tag_score(champion) if champion is not None else None
    champion_tags = dict(champion.tags or {}) if champion is not None else {}
    # [] comparable, None unknown (one side records no class list), else what differs.
    differences: list[str] | None = []
    if champion_version is not None and champion_version != version:
        if identity is not None:
            differences = identity_differences(champion_tags, identity)
            if differences:
                refused = IncompatibleModelError(model_name, alias, champion_version, champion_tags, identity,
                                                 differences)  # fmt: skip
                client.set_model_version_tag(model_name, version, CANDIDATE_TAG, str(refused)[:4000])
                logger.error("%s: %s", model_name, refused)
                raise refused
        elif CLASS_LIST_TAG in champion_tags:
            differences = None  # the champion records its classes, the candidate does not

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
    elif differences is None:
        promoted = False
        missing = f"the {alias} v{champion.version}" if identity is not None else f"the candidate v{version}"
        reason = (
            f"v{version} (val macro-F1 {new_score:.6f}) stays a candidate: {missing} records no class list "
            f"({CLASS_LIST_TAG!r} tag), so it is unknown whether the two models predict the same classes and "
            f"their scores cannot be compared; tag it (tags {CLASS_LIST_TAG!r}, {CLASS_COUNT_TAG!r}, "
            f"{DATASET_TAG!r}) or move the alias by hand"
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
        (logger.warning if champion_score is None or differences is None else logger.info)("%s: %s", model_name, reason)
    return PromotionDecision(promoted, version, new_score, champion_version, champion_score, reason)
