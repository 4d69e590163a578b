"""400 bodies carry no request data and no server paths.

The scoring server is MLflow's own FastAPI app (:func:`mlflow.pyfunc.scoring_server.init`, what
``mlflow models serve`` runs), called in-process through ASGI with real request bodies, on a real
saved pyfunc model (an untrained bundle of the default architecture: errors do not need a
trained model). Each bad request goes to both the plain MLflow app - pinning the echoes the
README lists as MLflow's own, so an MLflow upgrade that changes them fails here - and to
``mccl serve``'s app (:class:`mccl_core.serving.app.ScrubbedErrors`), which must answer the same
status with a message that names the problem and echoes nothing.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from conftest import TINY_MODEL
from mlflow.pyfunc import scoring_server
from PIL import Image

from mccl_core.cli import main as mccl_main
from mccl_core.data import DataConfig, cooccurrence_counts, load_split
from mccl_core.models import ModelConfig, load_label_embeddings
from mccl_core.models.bundle import read_meta
from mccl_core.serving import (
    BUNDLE_ARTIFACT,
    MCCLIntentModel,
    RequestRejected,
    build_untrained_bundle,
    serving_signature,
)
from mccl_core.serving.app import REDACTED, ScrubbedErrors, scrub_message
from mccl_core.serving.pyfunc import explain_top_k


def _jpeg(seed: int) -> bytes:
    image = Image.effect_noise((48, 40), 40 + seed).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


GOOD = [base64.b64encode(_jpeg(seed)).decode("ascii") for seed in range(3)]


@pytest.fixture(scope="module")
def apps(tiny_demo, tiny_demo_label_embeddings, tmp_path_factory) -> dict:
    """A saved pyfunc model with the real serving signature (params schema included), served by
    MLflow's app as is and behind ``ScrubbedErrors``."""
    train = load_split(DataConfig(source="demo", root=tiny_demo), "train")
    model_cfg = ModelConfig.from_dict({
        **TINY_MODEL, "backbone": {"arch": "efficientnet_lite0", "stages": ["stage3", "stage4"], "weights": "package"},
    })  # fmt: skip
    root = tmp_path_factory.mktemp("serving-errors")
    bundle = build_untrained_bundle(
        root / "bundle", model_cfg, train.class_names, load_label_embeddings(tiny_demo_label_embeddings),
        cooccurrence_counts(train.label_matrix()), image_size=64, class_descriptions=train.class_descriptions,
    )  # fmt: skip
    path = root / "model"
    mlflow.pyfunc.save_model(
        str(path), python_model=MCCLIntentModel(), artifacts={BUNDLE_ARTIFACT: str(bundle)},
        model_config={"threshold": 0.5}, signature=serving_signature(read_meta(bundle).class_names),
        pip_requirements=[],
    )  # fmt: skip
    plain = scoring_server.init(mlflow.pyfunc.load_model(str(path)))
    return {"mlflow": plain, "mccl": ScrubbedErrors(plain)}


def _post(app, body: bytes, content_type: str = "application/json") -> tuple[int, str]:
    """One POST /invocations through the ASGI interface; (status, body text)."""

    async def run() -> tuple[int, str]:
        pending = [{"type": "http.request", "body": body, "more_body": False}]
        status, chunks = 0, []

        async def receive() -> dict:
            if pending:
                return pending.pop(0)
            await asyncio.Event().wait()  # the client stays connected
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                length = dict(message["headers"]).get(b"content-length")
                chunks.append(("length", length))
            elif message["type"] == "http.response.body":
                chunks.append(("body", message.get("body", b"")))

        headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": "/invocations", "raw_path": b"/invocations", "query_string": b"", "root_path": "",
            "headers": headers, "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 5001),
        }  # fmt: skip
        await app(scope, receive, send)
        data = b"".join(c for kind, c in chunks if kind == "body")
        lengths = [c for kind, c in chunks if kind == "length" and c is not None]
        assert all(int(n) == len(data) for n in lengths), (lengths, len(data))
        return status, data.decode("utf-8", errors="replace")

    return asyncio.run(run())


def _split_json(values: list[str], **extra) -> bytes:
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": [[v] for v in values]}, **extra}).encode()


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    return buffer.getvalue()


#: name -> (body, content type, what MLflow's own 400 echoes, what our message must say)
BAD = {
    "explain_not_boolean": (
        _split_json(GOOD, params={"explain": "yes"}), "application/json", "echoes the frame", "explain",
    ),
    "no_image_column": (
        json.dumps({"dataframe_split": {"columns": ["picture"], "data": [[v] for v in GOOD]}}).encode(),
        "application/json", "echoes the frame", "missing inputs ['image']",
    ),
    "headerless_csv": (("\n".join(GOOD) + "\n").encode(), "text/csv", "echoes the frame", "missing inputs ['image']"),
    "not_json": (b'{"dataframe_split": {"columns": ["image"], "data": [["' + GOOD[0].encode() + b'"]]',
                 "application/json", "echoes the body", "not valid JSON (line 1 column"),
    "json_not_utf8": (b'{"x": "\xff\xd8\xff' + GOOD[1].encode() + b'"}', "application/json", "echoes the body",
                      "not valid UTF-8"),
    "malformed_csv": (("image\n" + GOOD[0] + "\n\"" + GOOD[1] + ",\n").encode(), "text/csv", "stack trace",
                      "Failed to parse input as a Pandas DataFrame"),
    "malformed_parquet": (_parquet(pd.DataFrame({"image": GOOD}))[:-40], "application/vnd.apache.parquet", "stack trace",
                          "Failed to parse input as a Pandas DataFrame"),
}  # fmt: skip


def _echoes(text: str) -> list[str]:
    """What of the request data or the server's files is in an answer."""
    found = [g[:16] for g in GOOD if g[:16] in text or g[-24:-8] in text]
    found += [
        marker for marker in ("stack_trace", "Traceback", ".py", "site-packages", str(Path.cwd())) if marker in text
    ]
    return found


@pytest.mark.parametrize("case", list(BAD))
def test_mlflows_own_echoes_are_the_ones_the_readme_lists(apps, case):
    """Pins what ``mlflow models serve`` does with these requests (README: MLflow 3.17's echoes)."""
    body, content_type, echo, _ = BAD[case]
    status, text = _post(apps["mlflow"], body, content_type)
    assert status == 400, text
    if echo == "echoes the frame":
        assert "Failed to predict data '" in text and _echoes(text), text
    elif echo == "echoes the body":
        assert "Input:" in text or "\\\\x" in text, text
        assert _echoes(text) or "\\\\xff" in text, text
    else:
        assert "stack_trace" in json.loads(text) and ".py" in text, text


@pytest.mark.parametrize("case", list(BAD))
def test_mccl_serve_answers_the_same_status_with_the_problem_and_no_echo(apps, case):
    body, content_type, _, problem = BAD[case]
    status, text = _post(apps["mccl"], body, content_type)
    assert status == 400, text
    answer = json.loads(text)
    assert "stack_trace" not in answer and "message" in answer, answer
    assert problem in answer["message"], answer
    assert not _echoes(text), text
    assert "\\xff" not in text and "\\\\x" not in text


def test_our_own_rejections_pass_unchanged_and_good_requests_are_untouched(apps):
    not_an_image = base64.b64encode(b"<html><body>404 Not Found</body></html>" * 4).decode()
    body = _split_json([GOOD[0], not_an_image, GOOD[1]])
    expected = "1 of 3 images rejected: row 1: not a recognised image format (corrupt file or not an image)"
    for name in ("mlflow", "mccl"):
        status, text = _post(apps[name], body)
        assert status == 400 and json.loads(text)["message"] == expected, (name, text)
        assert not _echoes(text) and not_an_image[:16] not in text
    plain, scrubbed = _post(apps["mlflow"], _split_json(GOOD)), _post(apps["mccl"], _split_json(GOOD))
    assert plain[0] == 200 and scrubbed == plain
    assert len(json.loads(scrubbed[1])["predictions"]) == len(GOOD)


def test_scrub_keeps_the_error_and_drops_only_request_data_and_paths():
    request = _split_json(GOOD)
    frame_repr = f"   image\n0  {GOOD[0][:47]}..."
    message = f"Failed to predict data '{frame_repr}'. \nError: Invalid parameters found: {{('explain', 'bad')}}"
    assert scrub_message(message, request) == "Invalid parameters found: {('explain', 'bad')}"
    assert scrub_message(f"row 0: {GOOD[2][:30]} in /usr/lib/python3/x/y.py", request) == (
        f"row 0: {REDACTED} in <server file>"
    )
    # A long word of the message that the client did not send stays.
    assert scrub_message("max_request_pixels_per_batch exceeded", request) == "max_request_pixels_per_batch exceeded"


def test_our_messages_do_not_echo_column_names_or_long_params():
    """In-process (no scoring server in front): the model's own messages name no client data."""
    frame = pd.DataFrame({GOOD[0]: [GOOD[1]]})  # a headerless CSV read by pandas: row 0 becomes the header
    with pytest.raises(RequestRejected, match=r"no column 'image' \(it has 1 other column\(s\)\)") as error:
        MCCLIntentModel._as_frame(frame)
    assert GOOD[0][:16] not in error.value.message
    with pytest.raises(RequestRejected, match=r"got a str$") as error:
        explain_top_k({"explain": GOOD[0]})
    assert GOOD[0][:16] not in error.value.message
    with pytest.raises(RequestRejected, match=r"got 'yes'$"):  # a short scalar names the problem best
        explain_top_k({"explain": "yes"})


def test_mccl_serve_is_a_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        mccl_main(["serve", "--help"])
    assert exit_.value.code == 0
    assert "--model" in capsys.readouterr().out
