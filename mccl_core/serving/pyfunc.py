"""The MLflow pyfunc model that serves an MCCL bundle: base64 image bytes in, intent scores out.

Why a custom :class:`mlflow.pyfunc.PythonModel` and not e.g. the ``mlflow.pytorch`` flavour: the
request carries *encoded images* (what a client has), and the answer must be intent names at the
tuned threshold, so decoding, the eval transform, batching, sigmoid and thresholding belong to the
model - exactly the same code path as evaluation (:func:`mccl_core.data.images.load_rgb_image_bytes`
shares the decoder of :func:`mccl_core.data.load_rgb_image`, and the transform is
:func:`mccl_core.data.transforms.eval_transform_for` of the bundle's metadata, with the normalisation of the backbone's weights).

Request (the scoring server's ``dataframe_split`` / ``dataframe_records`` JSON, or a DataFrame when
called in-process): one row per image, column ``image`` = base64 of the JPEG/PNG/... file bytes
(standard or URL-safe alphabet; whitespace and a ``data:image/...;base64,`` prefix are accepted).

Answer: a DataFrame with one ``float32`` column per class (named by the class, the sigmoid score)
and the column ``intents``: the list of class names whose score is strictly above the stored
threshold (the official protocol's rule, :mod:`mccl_core.metrics.f1`), in class order. The scoring
server returns it as ``{"predictions": [{"<class>": score, ..., "intents": [...]}, ...]}``.

Explanations (optional, MLflow inference ``params``): a request with
``"params": {"explain": true, "top_k": 5}`` next to its ``dataframe_split`` / ``dataframe_records``
gets one more answer column, ``clues``: per row ``{intent: [{"prototype": "stage:index", "owner":
<class name>, "mass": <float>}, ...]}`` for each *predicted* intent (the ``intents`` of that row;
``{}`` when none), its ``top_k`` heaviest clues, heaviest first (:meth:`ClueExplanation.top_clues
<mccl_core.models.mccl.ClueExplanation.top_clues>`: ``mass`` is the share of the intent's
decoder attention that reaches the prototype through the patches' soft assignments; over all
prototypes it sums to 1). Scores and intents then come from the same forward pass
(:meth:`MCCLModel.explain <mccl_core.models.mccl.MCCLModel.explain>`, equal to the plain forward in
eval mode up to float rounding). ``explain`` defaults to false and ``top_k`` to
:data:`DEFAULT_TOP_K` (1..:data:`MAX_TOP_K`); without ``explain`` the answer is exactly the one
above. A model without prototypes (the baseline, or MCCL with MCC off) answers an explain request
with a 400. The params schema is part of the logged signature (:mod:`mccl_core.serving.model_logging`);
a model logged before it has none, and MLflow drops (with a warning) the params of a request to it.

Bad requests raise :class:`RequestRejected` (an :class:`mlflow.exceptions.MlflowException` with
``INVALID_PARAMETER_VALUE``), which the scoring server answers with HTTP 400 and the message: a
missing ``image`` column (MLflow's schema enforcement), an empty frame, more than
``max_images_per_request`` rows, and - naming every offending row - values that are null, not
strings, not base64, not an image, corrupt, or too large. One bad row rejects the whole request: a
partial answer would silently drop images.

Decode budget (why: the scoring server gives up on a request after 60 s with a 504, but the
request's thread keeps decoding; a 9 MB body of 80 copies of an 86 KB 9400x9400 PNG took a
minute and 2.8 GiB before these limits). Every row's header is read first and nothing is decoded
unless every row passes:

* ``max_image_bytes``: the encoded file of one row;
* ``max_pixels``: the pixels one image *decodes to* (default 25 MP);
* ``max_request_pixels``: the sum of that over the request's rows (default 100 MP);
* ``jpeg_draft_factor``: a JPEG larger than needed decodes at 1/2, 1/4 or 1/8 scale (libjpeg's DCT
  scaling, ``Image.draft``), keeping its shorter side >= ``jpeg_draft_factor`` x the model's
  ``image_size``; the eval transform then resizes it as usual. At the default factor 4 the
  transformed pixels differ from a full decode by about 0.2/255 on average (a noisy 4000x2670
  photo at 224 px); ``None`` decodes at full size, the pixels of evaluation exactly. A 48 MP phone
  JPEG costs 3 MP of the budget at 224 px; PNG and other formats cost their full size.

The limits are the pyfunc ``model_config`` (:class:`ServingConfig`, logged with the model); a
deployment overrides them without re-logging through MLflow's ``MLFLOW_PYFUNC_INFERENCE_CONFIG``
environment variable (JSON, e.g. ``'{"max_request_pixels": 200000000}'``) of the serving process.
The request body as a whole is not size-limited by the scoring server: put a reverse proxy with a
body-size limit in front of it in production.

Error messages never contain the request's data: rows are named by number, a bad params value
by its type when it is not a short scalar, a missing column by the number of columns the frame
has (a headerless CSV's "column names" are its first row's base64). MLflow's scoring server
prefixes the message of an exception raised by ``predict`` with ``str()`` of the whole input frame
("Failed to predict data '<frame>'"), which would echo 50 base64 characters of each of up to 60
rows back to the client: :class:`RequestRejected` keeps its own message. The echoes MLflow writes
itself, before our code runs (a params or input schema failure, a body that is not JSON, CSV or
Parquet), are listed in :mod:`mccl_core.serving.app`, whose ``mccl serve`` removes them.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel, PythonModelContext
from PIL import Image

from mccl_core.config import ConfigError, from_dict
from mccl_core.data.images import (
    DecodePlan,
    ImageLimits,
    ImageLoadError,
    load_rgb_image_bytes_reduced,
    plan_image_decode,
)
from mccl_core.data.transforms import eval_transform_for
from mccl_core.models.bundle import load_bundle
from mccl_core.models.mccl import ClueExplanation, MCCLModel

logger = logging.getLogger(__name__)

#: Input column: base64 of the encoded image file.
IMAGE_COLUMN = "image"
#: Output column: class names with score > threshold.
INTENTS_COLUMN = "intents"
#: Output column (only when explanations are asked for): ``{intent: [clue, ...]}`` per row.
CLUES_COLUMN = "clues"
#: Inference params (MLflow ``params``): ask for explanations, and how many clues per intent.
EXPLAIN_PARAM = "explain"
TOP_K_PARAM = "top_k"
DEFAULT_TOP_K = 5
MAX_TOP_K = 50
#: The pyfunc artifact key under which the bundle folder is logged.
BUNDLE_ARTIFACT = "bundle"
#: At most this many row problems are spelled out in one error message.
MAX_LISTED_PROBLEMS = 10

_DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+;base64,", re.IGNORECASE)


@dataclass
class ServingConfig:
    """How the served model decides and what it accepts (stored as the pyfunc ``model_config``).

    Attributes:
        threshold: a class is predicted when its score is strictly above this (tuned on val).
        max_pixels: refuse an image that decodes to more pixels (after a reduced-scale JPEG decode),
            from its header, before anything is decoded (decompression bombs); ``None``: PIL's own
            hard limit only (2 x ~89.5 MP). 25 MP: a 5000x5000 PNG, 75 MB of RGB while it is scored.
        max_request_pixels: refuse a request whose rows decode to more pixels in total (checked from
            the headers before any row is decoded; bounds the time one request decodes); ``None``:
            no budget. 100 MP: e.g. 33 phone JPEGs of 12 MP at 224 px (each decoded at half size), or
            four 25 MP photo PNGs - about 15 s of decoding and resizing on one busy core here (a
            5000x5000 PNG: 2.7 s decode + 1.3 s resize; the same JPEG at 1/4 scale: 0.3 s), well
            inside the scoring server's 60 s request timeout.
        jpeg_draft_factor: decode a JPEG at the smallest DCT scale (1, 1/2, 1/4, 1/8) whose shorter side
            stays >= this x the model's ``image_size``; ``None``: always full size (exactly the
            pixels of evaluation, at up to 64 x the decoding cost).
        max_image_bytes: refuse an image whose encoded file is larger than this.
        max_images_per_request: refuse requests with more rows (bounds the memory one request holds).
        batch_size: images per forward pass inside one request.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``, ...
        precision: ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``fp32`` or ``bf16``.
    """

    threshold: float
    max_pixels: int | None = 25_000_000
    max_request_pixels: int | None = 100_000_000
    jpeg_draft_factor: int | None = 4
    max_image_bytes: int = 20 * 1024 * 1024
    max_images_per_request: int = 256
    batch_size: int = 32
    device: str = "auto"
    precision: str = "auto"

    def __post_init__(self) -> None:
        self.threshold = float(self.threshold)
        if not np.isfinite(self.threshold) or not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"threshold must be a score in [0, 1], got {self.threshold}")
        self.max_pixels = None if self.max_pixels is None else int(self.max_pixels)
        self.max_request_pixels = None if self.max_request_pixels is None else int(self.max_request_pixels)
        self.jpeg_draft_factor = None if self.jpeg_draft_factor is None else int(self.jpeg_draft_factor)
        self.max_image_bytes, self.batch_size = int(self.max_image_bytes), int(self.batch_size)
        self.max_images_per_request = int(self.max_images_per_request)
        if self.max_pixels is not None and self.max_pixels <= 0:
            raise ConfigError(f"max_pixels must be positive or None, got {self.max_pixels}")
        if self.max_request_pixels is not None and self.max_request_pixels <= 0:
            raise ConfigError(f"max_request_pixels must be positive or None, got {self.max_request_pixels}")
        if self.jpeg_draft_factor is not None and self.jpeg_draft_factor <= 0:
            raise ConfigError(f"jpeg_draft_factor must be positive or None, got {self.jpeg_draft_factor}")
        if self.max_image_bytes <= 0:
            raise ConfigError(f"max_image_bytes must be positive, got {self.max_image_bytes}")
        if self.batch_size <= 0:
            raise ConfigError(f"batch_size must be positive, got {self.batch_size}")
        if self.max_images_per_request <= 0:
            raise ConfigError(f"max_images_per_request must be positive, got {self.max_images_per_request}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServingConfig:
        return from_dict(cls, data, "serving")


class RequestError(ValueError):
    """One request row cannot be scored; the message names the row and the problem."""


class RequestRejected(MlflowException):
    """A bad request: HTTP 400 (``INVALID_PARAMETER_VALUE``) with a message that names the rows.

    Why a subclass: MLflow's scoring server rewrites the ``message`` of an ``MlflowException`` that
    ``predict`` raises to ``"Failed to predict data '<str(input frame)>'. Error: <message>"``, which
    echoes the request's base64 image data (pandas' repr: 50 characters of each of up to 60 rows)
    back to the client and into whatever logs responses. Here the message is set once, at
    construction; later assignments are ignored, so the 400 carries only our message.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._message

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_message"):
            self._message = value


def base64_image_bytes(value: Any, row: int, config: ServingConfig) -> bytes:
    """One request cell -> the encoded image file bytes, or :class:`RequestError` naming ``row``.

    The size check comes before base64 decoding (4 characters carry 3 bytes). Messages never
    quote the value itself (it is the client's image data).
    """
    if value is None or (isinstance(value, float) and np.isnan(value)):
        raise RequestError(f"row {row}: no image (null value)")
    if not isinstance(value, str):
        raise RequestError(f"row {row}: expected a base64 string, got {type(value).__name__}")
    text = "".join(_DATA_URL.sub("", value.strip(), count=1).split())
    if not text:
        raise RequestError(f"row {row}: empty string instead of base64 image data")
    encoded_bytes = len(text) // 4 * 3
    if encoded_bytes > config.max_image_bytes:
        raise RequestError(
            f"row {row}: image data is {encoded_bytes / 2**20:.1f} MiB, above the limit of "
            f"{config.max_image_bytes / 2**20:.1f} MiB"
        )
    altchars = b"-_" if ("-" in text or "_" in text) else None
    try:
        return base64.b64decode(text, altchars=altchars, validate=True)
    except (binascii.Error, ValueError) as error:
        raise RequestError(f"row {row}: not valid base64 ({error})") from error


def _image_limits(config: ServingConfig) -> ImageLimits:
    return ImageLimits.decode_only(config.max_pixels)


def _min_decode_side(config: ServingConfig, image_size: int | None) -> int | None:
    if config.jpeg_draft_factor is None or image_size is None:
        return None
    return config.jpeg_draft_factor * int(image_size)


def plan_request_row(data: bytes, row: int, config: ServingConfig, image_size: int | None = None) -> DecodePlan:
    """Header of one row's image -> its :class:`~mccl_core.data.images.DecodePlan`; nothing decoded.

    Raises :class:`RequestError` naming ``row`` when the header alone refuses it (not an image,
    above ``max_pixels`` once decoded, unconvertible mode).
    """
    plan = plan_image_decode(
        data, _image_limits(config), min_decode_side=_min_decode_side(config, image_size), name=f"request row {row}"
    )
    if not plan.ok:
        raise RequestError(f"row {row}: {plan.problem}")
    return plan


def decode_request_row(data: bytes, row: int, config: ServingConfig, image_size: int | None = None) -> Image.Image:
    """One row's image bytes -> RGB image (a JPEG at reduced scale when ``image_size`` is given).

    Same checks, mode rule and EXIF orientation as the training loader; :class:`RequestError` names
    ``row`` and the problem.
    """
    try:
        return load_rgb_image_bytes_reduced(
            data,
            min_decode_side=_min_decode_side(config, image_size),
            source=f"request row {row}",
            limits=_image_limits(config),
        )
    except ImageLoadError as error:
        raise RequestError(f"row {row}: {error.problem}") from error


def decode_base64_image(value: Any, row: int, config: ServingConfig, image_size: int | None = None) -> Image.Image:
    """One request cell -> RGB image, or :class:`RequestError` naming ``row`` and the problem.

    ``image_size``: the model's input size; with it (and ``config.jpeg_draft_factor``) a large JPEG
    decodes at reduced scale. Without it: full size, the training loader's pixels.
    """
    data = base64_image_bytes(value, row, config)
    plan_request_row(data, row, config, image_size)
    return decode_request_row(data, row, config, image_size)


def _invalid(message: str) -> MlflowException:
    return RequestRejected(message)


def _rejected(problems: list[str], rows: int) -> MlflowException:
    listed = "; ".join(problems[:MAX_LISTED_PROBLEMS])
    unlisted = len(problems) - MAX_LISTED_PROBLEMS
    more = f"; ... and {unlisted} more" if unlisted > 0 else ""
    return _invalid(f"{len(problems)} of {rows} images rejected: {listed}{more}")


def _shown(value: Any) -> str:
    """A params value for an error message: a short scalar as is, anything else by its type only."""
    text = repr(value)
    if isinstance(value, (bool, int, float, str, np.generic)) and len(text) <= 20:
        return text
    return f"a {type(value).__name__}"


def explain_top_k(params: Mapping[str, Any] | None) -> int | None:
    """The request's inference ``params`` -> clues per intent when explanations are asked for, else None.

    Raises :class:`RequestRejected` for a non-boolean ``explain`` or a ``top_k`` that is not an
    integer in ``1..MAX_TOP_K`` (MLflow's params schema converts JSON types first when it has one).
    """
    if not params:
        return None
    explain = params.get(EXPLAIN_PARAM, False)
    if explain is None:
        explain = False
    if not isinstance(explain, (bool, np.bool_)):
        raise _invalid(f"params.{EXPLAIN_PARAM} must be true or false, got {_shown(explain)}")
    if not explain:
        return None
    top_k = params.get(TOP_K_PARAM, DEFAULT_TOP_K)
    if top_k is None:
        top_k = DEFAULT_TOP_K
    if isinstance(top_k, (bool, np.bool_)) or not isinstance(top_k, (int, np.integer)) or not 1 <= top_k <= MAX_TOP_K:
        raise _invalid(f"params.{TOP_K_PARAM} must be an integer from 1 to {MAX_TOP_K}, got {_shown(top_k)}")
    return int(top_k)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class MCCLIntentModel(PythonModel):
    """pyfunc wrapper of an MCCL model bundle (see the module docstring for the I/O contract).

    Everything is loaded in :meth:`load_context` (nothing but the class is pickled), so the logged
    model is the bundle folder + the ``mccl_core`` code shipped as ``code_paths``.
    """

    def load_context(self, context: PythonModelContext) -> None:
        self.config = ServingConfig.from_dict(context.model_config or {})
        self.device = _resolve_device(self.config.device)
        self.model, self.meta = load_bundle(context.artifacts[BUNDLE_ARTIFACT], self.device)
        self.class_names: list[str] = list(self.meta.class_names)
        self.transform = eval_transform_for(self.meta)
        # One forward at a time: the scoring server runs requests in threads; parallel forwards
        # only oversubscribe the cores (CPU) or the device, while decoding still runs in parallel.
        self._forward_lock = threading.Lock()
        logger.info(
            "MCCL intent model: %d classes, %d px, threshold %.3f, device %s",
            len(self.class_names), self.meta.image_size, self.config.threshold, self.device,
        )  # fmt: skip

    # -- input -----------------------------------------------------------------------------

    def _image_tensors(self, model_input: Any) -> list[torch.Tensor]:
        frame = self._as_frame(model_input)
        if len(frame) == 0:
            raise _invalid(f"the request has no rows: send one row per image in column {IMAGE_COLUMN!r}")
        if len(frame) > self.config.max_images_per_request:
            raise _invalid(
                f"the request has {len(frame)} images, more than the limit of {self.config.max_images_per_request} "
                "per request: split it into several requests"
            )
        rows = self._checked_rows(frame[IMAGE_COLUMN].tolist())
        tensors: list[torch.Tensor] = []
        problems: list[str] = []
        for row, data in rows:
            try:
                tensors.append(self.transform(decode_request_row(data, row, self.config, self.meta.image_size)))
            except RequestError as error:  # corrupt / truncated pixel data: only found by decoding
                problems.append(str(error))
        if problems:
            raise _rejected(problems, len(frame))
        return tensors

    def _checked_rows(self, values: list[Any]) -> list[tuple[int, bytes]]:
        """Every row's base64 and image header, checked against the limits before any row is decoded.

        Returns ``(row, image bytes)`` pairs; raises :class:`RequestRejected` listing the bad rows,
        including the row at which the request's decoded pixels pass ``max_request_pixels``.
        """
        budget = self.config.max_request_pixels
        checked: list[tuple[int, bytes]] = []
        problems: list[str] = []
        total = 0
        for row, value in enumerate(values):
            try:
                data = base64_image_bytes(value, row, self.config)
                plan = plan_request_row(data, row, self.config, self.meta.image_size)
            except RequestError as error:
                problems.append(str(error))
                continue
            checked.append((row, data))
            before, total = total, total + plan.decode_pixels
            if budget is not None and before <= budget < total:
                problems.append(
                    f"row {row}: image is {plan.describe()}, which brings the request to {total:,} pixels to "
                    f"decode, above the limit of {budget:,} pixels per request: send fewer or smaller images "
                    "per request"
                )
        if problems:
            raise _rejected(problems, len(values))
        return checked

    @staticmethod
    def _as_frame(model_input: Any) -> pd.DataFrame:
        if isinstance(model_input, pd.DataFrame):
            frame = model_input
        elif isinstance(model_input, Mapping):
            frame = pd.DataFrame(dict(model_input))
        else:
            raise _invalid(
                f"expected a table with a column {IMAGE_COLUMN!r} of base64 images, got {type(model_input).__name__}"
            )
        if IMAGE_COLUMN not in frame.columns:
            raise _invalid(
                f"the request has no column {IMAGE_COLUMN!r} (it has {len(frame.columns)} other column(s)); "
                f"send one base64-encoded image per row in column {IMAGE_COLUMN!r}"
            )
        return frame

    # -- model -----------------------------------------------------------------------------

    def scores(self, images: Sequence[torch.Tensor]) -> np.ndarray:
        """Sigmoid scores ``[N, C]`` (float32) of transformed images, ``batch_size`` at a time."""
        out: list[np.ndarray] = []
        with self._forward_lock, torch.inference_mode():
            for batch in _chunks(images, self.config.batch_size):
                pixels = torch.stack(list(batch)).to(self.device, non_blocking=True)
                with _autocast(self.device, self.config.precision):
                    logits = self.model(pixels).logits
                out.append(torch.sigmoid(logits.float()).cpu().numpy())
        return np.concatenate(out).astype(np.float32, copy=False)

    @property
    def has_prototypes(self) -> bool:
        """Whether the model can explain its intents by prototypes (MCCL with MCC on)."""
        return getattr(self.model, "clues", None) is not None and callable(getattr(self.model, "explain", None))

    def explained_scores(self, images: Sequence[torch.Tensor], top_k: int) -> tuple[np.ndarray, list[dict]]:
        """Sigmoid scores ``[N, C]`` and, per image, ``{intent name: top_k clues}`` of its predicted
        intents (score > threshold), from one :meth:`MCCLModel.explain` pass per batch."""
        if not self.has_prototypes:
            raise self._no_prototypes()
        out: list[np.ndarray] = []
        clues: list[dict[str, list[dict[str, Any]]]] = []
        with self._forward_lock, torch.inference_mode():
            for batch in _chunks(images, self.config.batch_size):
                pixels = torch.stack(list(batch)).to(self.device, non_blocking=True)
                with _autocast(self.device, self.config.precision):
                    explanation = cast(MCCLModel, self.model).explain(pixels)
                scores = torch.sigmoid(explanation.logits.float()).cpu().numpy()
                out.append(scores)
                for image, row in enumerate(scores > self.config.threshold):
                    clues.append({
                        self.class_names[intent]: self._clues_of(explanation, image, int(intent), top_k)
                        for intent in np.flatnonzero(row)
                    })  # fmt: skip
        return np.concatenate(out).astype(np.float32, copy=False), clues

    def _clues_of(self, explanation: ClueExplanation, image: int, intent: int, top_k: int) -> list[dict[str, Any]]:
        """One intent's clues on one image, owners named."""
        return [
            {"prototype": clue["prototype"], "owner": self.class_names[clue["owner"]], "mass": clue["mass"]}
            for clue in explanation.top_clues(image, intent, top_k)
        ]

    def _no_prototypes(self) -> MlflowException:
        variant = self.meta.model_config.get("variant", "mccl")
        kind = "the baseline" if variant == "baseline" else "an MCCL model with MCC off"
        return _invalid(
            f"this model ({kind}) has no prototypes, so it cannot explain its intents by clues: "
            f"send the request without params.{EXPLAIN_PARAM} (or with false)"
        )

    def to_frame(self, scores: np.ndarray) -> pd.DataFrame:
        """Scores ``[N, C]`` -> the answer frame (class score columns + ``intents``)."""
        frame = pd.DataFrame(scores, columns=self.class_names)
        above = scores > self.config.threshold
        frame[INTENTS_COLUMN] = [[self.class_names[j] for j in np.flatnonzero(row)] for row in above]
        return frame

    def predict(
        self, context: PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Score every image of ``model_input`` (column ``image``, base64); with ``params``
        ``{"explain": true, "top_k": k}`` also the clues of the predicted intents (module docstring)."""
        top_k = explain_top_k(params)
        if top_k is None:
            return self.to_frame(self.scores(self._image_tensors(model_input)))
        if not self.has_prototypes:  # before any image is decoded
            raise self._no_prototypes()
        scores, clues = self.explained_scores(self._image_tensors(model_input), top_k)
        frame = self.to_frame(scores)
        frame[CLUES_COLUMN] = clues
        return frame


def _chunks(items: Sequence[torch.Tensor], size: int) -> Iterator[Sequence[torch.Tensor]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
