"""MLflow tracking: a tracker that never fails a step over an unreachable server
(:mod:`mccl_core.tracking.tracker`) and the layout of a pipeline run, one parent run with a
nested run per step (:mod:`mccl_core.tracking.steps`)."""

from mccl_core.tracking.tracker import (
    ARTIFACTS_DIRNAME,
    DATA_HASH_TAG,
    DB_FILENAME,
    GIT_COMMIT_TAG,
    GIT_DIRTY_TAG,
    PARENT_RUN_ENV,
    PARENT_RUN_TAG,
    STEP_TAG,
    TRACKING_URI_ENV,
    NotLoggedSummary,
    ResilientTracker,
    RunHandle,
    TrackerConfig,
    embedded_artifact_location,
    embedded_tracking_uri,
    flatten_params,
    git_commit,
    is_server_uri,
    is_unreachable_error,
    resolve_tracking_uri,
)

__all__ = [
    "ARTIFACTS_DIRNAME",
    "DATA_HASH_TAG",
    "DB_FILENAME",
    "GIT_COMMIT_TAG",
    "GIT_DIRTY_TAG",
    "PARENT_RUN_ENV",
    "PARENT_RUN_TAG",
    "STEP_TAG",
    "TRACKING_URI_ENV",
    "NotLoggedSummary",
    "ResilientTracker",
    "RunHandle",
    "TrackerConfig",
    "embedded_artifact_location",
    "embedded_tracking_uri",
    "flatten_params",
    "git_commit",
    "is_server_uri",
    "is_unreachable_error",
    "resolve_tracking_uri",
]
