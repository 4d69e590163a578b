"""``mccl explain``: explain one image's intents with a trained MCCL model.

    mccl explain --image photo.jpg --model outputs/train/model --out explanations/
    mccl explain --image photo.jpg --model models:/mccl-intent@champion --out explanations/

writes ``<stem>.png`` (attention and own-prototype assignment overlays per predicted intent,
peaks marked) and ``<stem>.json`` (scores, predicted intents, peaks, top clues).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from mccl_core.serving.batch import resolve_bundle

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mccl explain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", required=True, type=Path, help="image file (JPEG, PNG, ...)")
    parser.add_argument("--model", required=True, help="bundle folder or models:/<name>@<alias>")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")
    parser.add_argument("--top-k", type=int, default=5, help="top clues listed per intent (default 5)")
    parser.add_argument(
        "--tracking-uri", default=None, help="MLflow tracking URI for models:/ (default: env or ./mlflow.db)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from mccl_core.data.images import ImageLoadError, load_rgb_image
    from mccl_core.explain.maps import ExplainError
    from mccl_core.explain.render import explain_image, write_explanation
    from mccl_core.models.bundle import BundleError, load_bundle
    from mccl_core.training.distributed import resolve_device

    if not args.image.is_file():
        print(f"mccl explain: image {str(args.image)!r} not found", file=sys.stderr)
        return 2
    try:
        image = load_rgb_image(args.image)
    except ImageLoadError as error:
        print(f"mccl explain: cannot read image {str(args.image)!r}: {error}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="mccl-explain-") as tmp:
        try:
            bundle = resolve_bundle(args.model, Path(tmp), args.tracking_uri)
            model: Any
            model, meta = load_bundle(bundle, resolve_device(args.device))
            result = explain_image(model, meta, image, image_name=str(args.image), top_k=args.top_k)
        except (BundleError, ExplainError, FileNotFoundError) as error:
            print(f"mccl explain: {error}", file=sys.stderr)
            return 2
        png, js = write_explanation(result, args.out, args.image.stem)
    log.info("predicted %s -> %s, %s", result.payload["predicted"], png, js)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
