"""Per-image explanation: scores, predicted intents, maps with peaks, top clues -> PNG + JSON.

For every predicted intent (score > the bundle's threshold, or the top-1 intent when none passes
or the bundle has no threshold) the PNG shows the image with the intent's attention map overlaid
and with its own-prototype assignment map overlaid (none without MCC), the peak marked by a
cross. The JSON has the scores, the predicted intents, the peaks (original pixels) and
``top_clues`` (prototype id, owner class, mass: the share of the intent's attention that reaches
the prototype through the patches' assignments).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mccl_core.data.transforms import eval_transform_for
from mccl_core.explain.maps import CropGeometry, ExplanationMaps, IntentMaps, require_mccl

DISPLAY_MAX_SIDE = 384


@dataclass
class ImageExplanation:
    payload: dict[str, Any]
    maps: list[IntentMaps]
    image: Image.Image


def predicted_intents(scores: np.ndarray, threshold: float | None) -> list[int]:
    """Intents with score > ``threshold``, best first; the top-1 intent when none passes."""
    order = [int(i) for i in np.argsort(-scores, kind="stable")]
    if threshold is not None:
        chosen = [i for i in order if scores[i] > threshold]
        if chosen:
            return chosen
    return order[:1]


def explain_image(
    model: Any, meta: Any, image: Image.Image, *, image_name: str = "", top_k: int = 5
) -> ImageExplanation:
    """Explain one RGB PIL image with an MCCL model and its bundle metadata."""
    require_mccl(model)
    image = image.convert("RGB")
    device = next(model.parameters()).device
    size = int(meta.image_size)
    tensor = eval_transform_for(meta)(image).unsqueeze(0).to(device)
    explanation = model.explain(tensor)
    names = list(meta.class_names)
    maps = ExplanationMaps(explanation, len(names), size)
    scores = torch.sigmoid(explanation.logits[0]).cpu().numpy()
    threshold = None if meta.threshold is None else float(meta.threshold)
    chosen = predicted_intents(scores, threshold)
    geometry = CropGeometry.of(image.width, image.height, size, meta.geometry)
    intent_maps = [maps.intent(0, c, geometry) for c in chosen]
    intents = []
    for m in intent_maps:
        clues = explanation.top_clues(0, m.intent, top_k)
        for clue in clues:
            clue["owner_name"] = names[clue["owner"]]
        intents.append(
            {
                "intent": names[m.intent],
                "index": m.intent,
                "score": float(scores[m.intent]),
                "attention_peak": list(m.attention_peak),
                "assignment_peak": None if m.assignment_peak is None else list(m.assignment_peak),
                "top_clues": clues,
            }
        )
    payload = {
        "image": image_name,
        "width": image.width,
        "height": image.height,
        "image_size": size,
        "threshold": threshold,
        "scores": {n: float(s) for n, s in zip(names, scores)},
        "predicted": [names[c] for c in chosen],
        "threshold_passed": threshold is not None and any(scores[c] > threshold for c in chosen),
        "intents": intents,
        "peaks": "original-image pixels (x, y); maps cover the centre crop the model sees",
    }
    return ImageExplanation(payload, intent_maps, image)


def _overlay(image: np.ndarray, heat: np.ndarray, cmap: Any) -> np.ndarray:
    peak = float(heat.max())
    norm = heat / peak if peak > 0 else heat
    colour = cmap(norm)[..., :3]
    alpha = 0.55 * norm[..., None]
    return (1 - alpha) * image + alpha * colour


def render_explanation(result: ImageExplanation, path: Path) -> Path:
    """One row per predicted intent: image + attention overlay, image + assignment overlay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image = result.image
    scale = min(1.0, DISPLAY_MAX_SIDE / max(image.size))
    shown = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    base = np.asarray(shown, dtype=np.float32) / 255.0
    out_size = (shown.height, shown.width)
    rows = len(result.maps)
    fig, axes = plt.subplots(rows, 2, figsize=(7.0, 3.4 * rows), squeeze=False)
    cmap = plt.get_cmap("jet")
    for row, (m, info) in enumerate(zip(result.maps, result.payload["intents"])):
        panels = [
            ("attention", m.attention_original(out_size), m.attention_peak),
            ("own-prototype assignment", m.assignment_original(out_size), m.assignment_peak),
        ]
        for col, (title, heat, peak) in enumerate(panels):
            ax = axes[row][col]
            ax.axis("off")
            if heat is None or peak is None:
                ax.imshow(base)
                ax.set_title(f"{title}: no MCC", fontsize=8)
                continue
            ax.imshow(np.clip(_overlay(base, heat.numpy(), cmap), 0, 1))
            ax.plot([peak[0] * scale], [peak[1] * scale], marker="x", color="white", markersize=12, mew=3)
            ax.plot([peak[0] * scale], [peak[1] * scale], marker="x", color="black", markersize=9, mew=1.5)
            ax.set_title(f"{info['intent']} ({info['score']:.2f}) - {title}", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_explanation(result: ImageExplanation, out_dir: Path, stem: str) -> tuple[Path, Path]:
    """``<stem>.png`` and ``<stem>.json`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = render_explanation(result, out_dir / f"{stem}.png")
    js = out_dir / f"{stem}.json"
    js.write_text(json.dumps(result.payload, indent=2) + "\n", encoding="utf-8")
    return png, js
