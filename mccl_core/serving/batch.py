"""``mccl predict``: score a batch of images with a trained model - what users do after training.

    mccl predict --model outputs/train/model --input photos/ --output scores.csv
    mccl predict --model models:/mccl-intent@champion --input data/new/m.csv --output scores.parquet --top-clues 3
    mccl predict --model runs:/<run id>/model --input s3://bucket/new-batch/ --output scores.csv

* ``--model``: a bundle folder, or a logged/registered pyfunc model (``models:/<name>@<alias>``,
  ``models:/<name>/<version>``, ``runs:/...``; store: ``--tracking-uri``, ``$MLFLOW_TRACKING_URI``
  or ``./mlflow.db``). The threshold is the bundle's (the one the evaluate step tuned on val).
* ``--input``: a folder (its images, recursively), a manifest (``.csv``/``.jsonl`` with an
  ``image_path`` column, relative to the manifest's folder) or an ``s3://`` prefix (downloaded first).
* ``--output``: ``.csv`` or ``.parquet``: ``image_path``, one score column per intent, ``intents``
  (the intents above the threshold, ``|``-separated) and, with ``--top-clues K``, ``clues`` (JSON:
  each predicted intent's K heaviest prototypes, as the served model answers).

Bad images (missing, not an image, too large) never stop the batch: they are listed with the
reason in ``<output stem>.bad.csv`` and left out of the scores. Scoring goes by chunks of
``--chunk-size`` images, each written under ``<output>.parts/`` when done: a killed run resumes
at the first missing chunk (the parts record the input list and model they belong to, and a
different one starts over).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
PARTS_SUFFIX = ".parts"
BAD_SUFFIX = ".bad.csv"
STATE_FILE = "state.json"


class PredictError(ValueError):
    """The batch cannot be scored at all (no model, no images, no threshold): names what is wrong."""


def resolve_bundle(model: str, work_dir: Path, tracking_uri: str | None = None) -> Path:
    """A bundle folder for ``model``: a folder as is, or a registered ``models:/<name>@<alias>``
    (or ``models:/<name>/<version>``, ``runs:/...``) MLflow pyfunc model downloaded to ``work_dir``."""
    if "://" in model or model.startswith(("models:/", "runs:/")):
        import mlflow

        from mccl_core.models.bundle import META_FILE
        from mccl_core.serving.pyfunc import BUNDLE_ARTIFACT
        from mccl_core.tracking.reaper import sweep
        from mccl_core.tracking.tracker import resolve_tracking_uri

        uri = resolve_tracking_uri(Path.cwd(), tracking_uri)
        sweep(uri)  # a command that reads the store shows no run of a dead process as RUNNING
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=model, dst_path=str(work_dir), tracking_uri=uri, registry_uri=uri
            )
        )
        candidates = [p.parent for p in sorted(local.rglob(META_FILE))]
        preferred = [c for c in candidates if c.name == BUNDLE_ARTIFACT] or candidates
        if not preferred:
            raise FileNotFoundError(f"{model}: the downloaded model holds no MCCL bundle ({META_FILE})")
        return preferred[0]
    path = Path(model)
    if not path.is_dir():
        raise FileNotFoundError(f"model bundle folder {str(path)!r} not found")
    return path


def list_inputs(source: str, work_dir: Path) -> list[Path]:
    """The images of a folder, a manifest or an ``s3://`` prefix, in a stable order."""
    if source.startswith("s3://"):
        from mccl_core.launch.staging import download_prefix

        local = work_dir / "s3"
        if download_prefix(source, local) == 0:
            raise PredictError(f"no objects under {source}")
        return list_inputs(str(local), work_dir)
    path = Path(source)
    if path.is_dir():
        images = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise PredictError(f"input folder {source!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return images
    if path.is_file() and path.suffix.lower() in (".csv", ".jsonl"):
        frame = pd.read_json(path, lines=True) if path.suffix.lower() == ".jsonl" else pd.read_csv(path)
        column = next((c for c in ("image_path", "image") if c in frame.columns), None)
        if column is None:
            raise PredictError(f"manifest {source!r} has no 'image_path' column (columns: {list(frame.columns)})")
        return [p if p.is_absolute() else path.parent / p for p in (Path(str(v)) for v in frame[column])]
    raise PredictError(f"input {source!r} is not a folder, a .csv/.jsonl manifest or an s3:// prefix")


@dataclass
class BatchResult:
    output: Path
    scored: int
    bad: list[tuple[str, str]]
    reused_chunks: int


def predict_batch(
    bundle: Path,
    images: list[Path],
    output: Path,
    *,
    chunk_size: int = 256,
    batch_size: int = 32,
    top_clues: int = 0,
    threshold: float | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> BatchResult:
    """Score ``images`` with the bundle, resumably; see the module docstring for the files."""
    import torch
    from tqdm.auto import tqdm

    from mccl_core.data.images import ImageLoadError, load_rgb_image
    from mccl_core.models.bundle import load_bundle, read_meta

    if output.suffix.lower() not in (".csv", ".parquet"):
        raise PredictError(f"--output must end in .csv or .parquet, got {output.name!r}")
    meta = read_meta(bundle)
    threshold = meta.threshold if threshold is None else threshold
    if threshold is None:
        raise PredictError(f"bundle {bundle} records no threshold (the evaluate step tunes it): pass --threshold")
    model: Any
    model, meta = load_bundle(bundle, device)
    if top_clues and not callable(getattr(model, "explain", None)):
        raise PredictError("this model has no prototypes to name clues with: leave out --top-clues")
    from mccl_core.data.transforms import eval_transform_for

    transform = eval_transform_for(meta)
    names = list(meta.class_names)
    parts = output.with_name(output.name + PARTS_SUFFIX)
    state = {"images": hashlib.sha256("\n".join(map(str, images)).encode()).hexdigest(),
             "model": hashlib.sha256((bundle / "bundle.json").read_bytes()).hexdigest(),
             "threshold": threshold, "chunk_size": chunk_size, "top_clues": top_clues}  # fmt: skip
    if parts.is_dir() and _read_state(parts) != state:
        log.warning("%s belongs to another input, model or setting: starting over", parts)
        shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    (parts / STATE_FILE).write_text(json.dumps(state))
    chunks = [images[i : i + chunk_size] for i in range(0, len(images), chunk_size)]
    reused = 0
    bar = tqdm(total=len(images), desc="predicting", unit="img", disable=not progress)
    for number, chunk in enumerate(chunks):
        done_file = parts / f"chunk-{number:06d}.parquet"
        if done_file.is_file():
            reused += 1
            bar.update(len(chunk))
            continue
        rows: list[dict[str, Any]] = []
        tensors, kept = [], []
        for path in chunk:
            try:
                tensors.append(transform(load_rgb_image(path)))
                kept.append(path)
            except (ImageLoadError, OSError) as error:
                rows.append({"image_path": str(path), "bad": str(error)})
        for start in range(0, len(tensors), batch_size):
            pixels = torch.stack(tensors[start : start + batch_size])
            with torch.inference_mode():
                if top_clues:
                    explanation = model.explain(pixels)
                    logits = explanation.logits
                else:
                    logits = model(pixels).logits
            scores = torch.sigmoid(logits.float()).numpy()
            for i, row in enumerate(scores):
                path = kept[start + i]
                predicted = [j for j in np.flatnonzero(row > threshold)]
                record: dict[str, Any] = {"image_path": str(path), "bad": "", **dict(zip(names, map(float, row))),
                                          "intents": "|".join(names[j] for j in predicted)}  # fmt: skip
                if top_clues:
                    record["clues"] = json.dumps({
                        names[j]: [{"prototype": c["prototype"], "owner": names[c["owner"]], "mass": c["mass"]}
                                   for c in explanation.top_clues(i, int(j), top_clues)]
                        for j in predicted
                    })  # fmt: skip
                rows.append(record)
        pd.DataFrame(rows).to_parquet(done_file.with_suffix(".tmp"), index=False)
        done_file.with_suffix(".tmp").rename(done_file)  # a chunk exists only once complete
        bar.update(len(chunk))
    bar.close()
    frame = pd.concat([pd.read_parquet(p) for p in sorted(parts.glob("chunk-*.parquet"))], ignore_index=True)
    frame["bad"] = frame["bad"].fillna("")
    bad_rows = frame[frame["bad"] != ""]
    scored = frame[frame["bad"] == ""].drop(columns=["bad"]).reset_index(drop=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix.lower() == ".parquet":
        scored.to_parquet(output, index=False)
    else:
        scored.to_csv(output, index=False)
    bad_file = output.with_name(output.stem + BAD_SUFFIX)
    bad_rows.rename(columns={"bad": "reason"})[["image_path", "reason"]].to_csv(bad_file, index=False)
    shutil.rmtree(parts)
    bad = list(zip(bad_rows["image_path"], bad_rows["bad"]))
    if bad:
        log.warning("%d of %d images could not be scored (listed in %s)", len(bad), len(images), bad_file)
    return BatchResult(output, len(scored), bad, reused)


def _read_state(parts: Path) -> dict[str, Any] | None:
    try:
        return json.loads((parts / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mccl predict", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", required=True, help="bundle folder, models:/<name>@<alias>, models:/<name>/<v> or runs:/..."
    )
    p.add_argument("--input", required=True, help="image folder, .csv/.jsonl manifest (image_path) or s3:// prefix")
    p.add_argument("--output", required=True, type=Path, help="scores file: .csv or .parquet")
    p.add_argument(
        "--top-clues", type=int, default=0, metavar="K", help="also list each predicted intent's K top clues"
    )
    p.add_argument("--chunk-size", type=int, default=256, help="images per resumable chunk (default 256)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threshold", type=float, default=None, help="override the bundle's tuned threshold")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")
    p.add_argument("--tracking-uri", default=None, help="MLflow store for models:/ (default: env or ./mlflow.db)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from mccl_core.models.bundle import BundleError
    from mccl_core.training.distributed import resolve_device

    with tempfile.TemporaryDirectory(prefix="mccl-predict-") as tmp:
        try:
            bundle = resolve_bundle(args.model, Path(tmp), args.tracking_uri)
            images = list_inputs(args.input, Path(tmp))
            result = predict_batch(bundle, images, args.output, chunk_size=args.chunk_size, batch_size=args.batch_size,
                                   top_clues=args.top_clues, threshold=args.threshold,
                                   device=str(resolve_device(args.device)))  # fmt: skip
        except (PredictError, BundleError, FileNotFoundError) as error:
            print(f"mccl predict: {error}", file=sys.stderr)
            return 2
    log.info("scored %d images -> %s (%d bad, listed in %s)", result.scored, result.output, len(result.bad),
             result.output.with_name(result.output.stem + BAD_SUFFIX))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
