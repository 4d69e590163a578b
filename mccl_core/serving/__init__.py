"""Serving: the MCCL pyfunc model, logging it to MLflow, and champion promotion in the registry.

* :func:`log_pyfunc_model` - bundle folder -> self-contained pyfunc model (+ registered version).
* :func:`promote_if_better` - move the ``champion`` alias only to a strictly better validation
  macro-F1 (test is recorded, never selected on).
* :class:`MCCLIntentModel` - what ``mlflow models serve`` runs: base64 images in, per-class scores
  and the intents above the tuned threshold out (I/O contract and the decode budget:
  :mod:`mccl_core.serving.pyfunc`); with ``params: {"explain": true}`` also each predicted
  intent's top clues (``docs/serving-explain.md``).

Serve the champion with::

    MLFLOW_TRACKING_URI=http://... mlflow models serve -m models:/<name>@champion --env-manager local
"""

from mccl_core.serving.model_logging import (
    SERVING_DISTRIBUTIONS,
    encode_image,
    example_jpeg,
    log_pyfunc_model,
    serving_requirements,
    serving_signature,
)
from mccl_core.serving.pyfunc import (
    BUNDLE_ARTIFACT,
    CLUES_COLUMN,
    EXPLAIN_PARAM,
    IMAGE_COLUMN,
    INTENTS_COLUMN,
    TOP_K_PARAM,
    MCCLIntentModel,
    RequestError,
    RequestRejected,
    ServingConfig,
    decode_base64_image,
)
from mccl_core.serving.registry import (
    CANDIDATE_TAG,
    PROMOTED_TAG,
    SCORE_TAG,
    PromotionDecision,
    promote_if_better,
)
from mccl_core.serving.smoke import build_untrained_bundle

__all__ = [
    "BUNDLE_ARTIFACT",
    "CLUES_COLUMN",
    "EXPLAIN_PARAM",
    "TOP_K_PARAM",
    "CANDIDATE_TAG",
    "IMAGE_COLUMN",
    "INTENTS_COLUMN",
    "PROMOTED_TAG",
    "SCORE_TAG",
    "SERVING_DISTRIBUTIONS",
    "MCCLIntentModel",
    "PromotionDecision",
    "RequestError",
    "RequestRejected",
    "ServingConfig",
    "build_untrained_bundle",
    "decode_base64_image",
    "encode_image",
    "example_jpeg",
    "log_pyfunc_model",
    "promote_if_better",
    "serving_requirements",
    "serving_signature",
]
