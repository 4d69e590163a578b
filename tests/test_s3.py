"""mccl_core.launch.s3 helpers that need no server (the S3 round trips are in test_s3_integration.py)."""

from __future__ import annotations

import pytest

from mccl_core.launch.s3 import (
    S3ConfigError,
    describe_s3_env,
    parse_s3_uri,
    redact_secrets,
    s3_client_from_env,
    s3_endpoint_from_env,
)

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"


def test_parse_s3_uri() -> None:
    location = parse_s3_uri("s3://bucket/dvc/files/md5")
    assert (location.bucket, location.key, location.uri) == ("bucket", "dvc/files/md5", "s3://bucket/dvc/files/md5")
    assert parse_s3_uri("s3://bucket").key == ""
    for bad in ("http://bucket/x", "s3:///x", "bucket/x"):
        with pytest.raises(S3ConfigError, match="not an s3:// URI"):
            parse_s3_uri(bad)


def test_endpoint_precedence_and_validation() -> None:
    assert s3_endpoint_from_env({}) is None
    env = {"MLFLOW_S3_ENDPOINT_URL": "http://mlflow:1", "AWS_ENDPOINT_URL": "http://aws:2"}
    assert s3_endpoint_from_env(env) == "http://aws:2"
    assert s3_endpoint_from_env({**env, "AWS_ENDPOINT_URL_S3": "https://s3only:3"}) == "https://s3only:3"
    assert s3_endpoint_from_env({"MLFLOW_S3_ENDPOINT_URL": "http://mlflow:1"}) == "http://mlflow:1"
    with pytest.raises(S3ConfigError, match="AWS_ENDPOINT_URL must be an http"):
        s3_endpoint_from_env({"AWS_ENDPOINT_URL": "localhost:9000"})


def test_missing_credentials_name_the_variables_not_values() -> None:
    with pytest.raises(S3ConfigError, match=r"\$AWS_ACCESS_KEY_ID and \$AWS_SECRET_ACCESS_KEY"):
        s3_client_from_env({})
    with pytest.raises(S3ConfigError) as caught:
        s3_client_from_env({"AWS_SECRET_ACCESS_KEY": SECRET})
    assert "$AWS_ACCESS_KEY_ID" in str(caught.value) and SECRET not in str(caught.value)


def test_client_uses_env_endpoint_region_and_keys() -> None:
    env = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": SECRET,
           "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_DEFAULT_REGION": "eu-west-1"}  # fmt: skip
    client = s3_client_from_env(env)
    assert client.meta.endpoint_url == "http://127.0.0.1:9" and client.meta.region_name == "eu-west-1"
    credentials = client._request_signer._credentials
    assert (credentials.access_key, credentials.secret_key) == ("AKIDEXAMPLE", SECRET)


def test_describe_and_redact_never_show_the_secret() -> None:
    env = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_ENDPOINT_URL": "http://h:1"}
    summary = describe_s3_env(env)
    assert summary == {"endpoint_url": "http://h:1", "region": "us-east-1",
                       "access_key_id": "AKID****", "secret_access_key": "set"}  # fmt: skip
    assert SECRET not in str(summary)
    text = f"error: signature for {SECRET} mismatched"
    assert redact_secrets(text, env) == "error: signature for <$AWS_SECRET_ACCESS_KEY> mismatched"
    assert describe_s3_env({})["secret_access_key"] == "missing"
