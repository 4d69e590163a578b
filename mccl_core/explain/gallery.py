"""Prototype gallery: what each class's prototypes look like in the training images.

For every prototype (per stage) the ``top_k`` training patches nearest to it (cosine of the
L2-normalised backbone token and the prototype, the quantity MCC's soft assignment is a softmax
of) are shown as crops of the original images with the patch box drawn. The tokens come from the
trained model's own backbone over at most ``max_images`` training images (eval transform).

Flags:

* **unreachable**: no patch has the prototype as its nearest prototype (it never wins a patch's
  arg-max assignment, so it only ever contributes a small share of a rebuild);
* **near-duplicate**: cosine > ``duplicate_cosine`` (0.95) to another prototype of the same stage.

Writes ``<class index>_<class name>.png`` per class, ``index.html`` (relative links only) and
``gallery.json`` (flags and the top patches of every prototype).
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from mccl_core.data.transforms import eval_transform_for
from mccl_core.explain.maps import CropGeometry, ExplainError, require_mccl

GALLERY_JSON = "gallery.json"
INDEX_HTML = "index.html"
DUPLICATE_COSINE = 0.95
THUMB = 96


@dataclass
class PrototypeFlags:
    """Per stage: arg-max hits per prototype and near-duplicate pairs."""

    hits: np.ndarray  # [K] patches whose nearest prototype is k
    duplicates: list[tuple[int, int, float]]  # (i, j, cosine), i < j

    @property
    def unreachable(self) -> list[int]:
        return [int(k) for k in np.flatnonzero(self.hits == 0)]

    def duplicates_of(self, k: int) -> list[int]:
        return sorted({j if i == k else i for i, j, _ in self.duplicates if k in (i, j)})


def near_duplicates(prototypes: torch.Tensor, threshold: float = DUPLICATE_COSINE) -> list[tuple[int, int, float]]:
    """Pairs ``(i, j, cosine)``, ``i < j``, of prototypes (rows) with cosine > ``threshold``."""
    p = F.normalize(prototypes.float(), dim=1)
    cos = p @ p.T
    i, j = torch.triu_indices(len(p), len(p), offset=1)
    keep = cos[i, j] > threshold
    return [(int(a), int(b), float(c)) for a, b, c in zip(i[keep], j[keep], cos[i, j][keep])]


def argmax_hits(prototypes: torch.Tensor, tokens: torch.Tensor) -> np.ndarray:
    """``[K]``: how many of the ``[N, C]`` tokens have prototype k as their nearest (cosine)."""
    sims = F.normalize(tokens.float(), dim=1) @ F.normalize(prototypes.float(), dim=1).T
    return torch.bincount(sims.argmax(dim=1), minlength=len(prototypes)).cpu().numpy()


def prototype_flags(
    prototypes: torch.Tensor, tokens: torch.Tensor, threshold: float = DUPLICATE_COSINE
) -> PrototypeFlags:
    """Flags of one stage's ``[K, C]`` prototypes against ``[N, C]`` patch tokens."""
    return PrototypeFlags(argmax_hits(prototypes, tokens), near_duplicates(prototypes, threshold))


@dataclass
class _TopK:
    """Running top-k (cosine, image, patch) per prototype of one stage."""

    k: int
    values: torch.Tensor | None = None  # [K, k]
    images: torch.Tensor | None = None
    patches: torch.Tensor | None = None

    def update(self, sims: torch.Tensor, image_index: torch.Tensor, patch_index: torch.Tensor) -> None:
        # sims [N, K] of N patches; image_index/patch_index [N]
        values = sims.T  # [K, N]
        imgs = image_index.unsqueeze(0).expand_as(values)
        pats = patch_index.unsqueeze(0).expand_as(values)
        if self.values is not None:
            assert self.images is not None and self.patches is not None
            values = torch.cat([self.values, values], dim=1)
            imgs = torch.cat([self.images, imgs], dim=1)
            pats = torch.cat([self.patches, pats], dim=1)
        top = torch.topk(values, min(self.k, values.shape[1]), dim=1)
        self.values = top.values
        self.images = torch.gather(imgs, 1, top.indices)
        self.patches = torch.gather(pats, 1, top.indices)


@dataclass
class GalleryResult:
    out_dir: Path
    class_pngs: list[Path]
    index_html: Path
    gallery_json: Path
    summary: dict[str, Any] = field(default_factory=dict)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "class"


def _patch_input_box(patch: int, grid: tuple[int, int], size: int) -> tuple[float, float, float, float]:
    h, w = grid
    row, col = divmod(patch, w)
    return col * size / w, row * size / h, (col + 1) * size / w, (row + 1) * size / h


def _crop(image: Image.Image, box: tuple[float, float, float, float]) -> Image.Image:
    """A thumbnail of the patch with context (twice its size, at least 1/4 of the short side) and
    the patch box drawn."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half = max(x1 - x0, y1 - y0, min(image.size) / 4)
    left, top = max(0, int(cx - half)), max(0, int(cy - half))
    right, bottom = min(image.width, int(cx + half) + 1), min(image.height, int(cy + half) + 1)
    crop = image.crop((left, top, right, bottom)).convert("RGB")
    scale = THUMB / max(crop.width, crop.height)
    crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))))
    draw = ImageDraw.Draw(crop)
    draw.rectangle(
        [(x0 - left) * scale, (y0 - top) * scale, (x1 - left) * scale - 1, (y1 - top) * scale - 1],
        outline=(255, 0, 0),
        width=2,
    )
    return crop


def build_gallery(
    model: Any,
    meta: Any,
    data_cfg: Any,
    out_dir: Path,
    *,
    top_k: int = 5,
    max_images: int = 200,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    split: str = "train",
    duplicate_cosine: float = DUPLICATE_COSINE,
    show_progress: bool = True,
) -> GalleryResult:
    """Write the prototype gallery of ``model`` (MCCL with MCC) to ``out_dir`` (see module doc)."""
    from tqdm.auto import tqdm

    from mccl_core.data import load_split

    require_mccl(model)
    if model.clues is None:
        raise ExplainError("the model has no prototypes (mcc.enabled: false): there is no prototype gallery to draw")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model = model.to(device).eval()
    dataset = load_split(data_cfg, split, transform=eval_transform_for(meta))
    count = min(max_images, len(dataset))
    size = int(meta.image_size)
    stages = tuple(model.clues.stages)
    protos = {s: F.normalize(model.clues.prototypes(s).float(), dim=1) for s in stages}
    owners = {s: model.clues.owners(s).cpu() for s in stages}
    tops = {s: _TopK(top_k) for s in stages}
    hits = {s: torch.zeros(len(protos[s]), dtype=torch.long) for s in stages}
    grids: dict[str, tuple[int, int]] = {}
    with tqdm(total=count, desc="gallery images", unit="img", disable=not show_progress) as bar:
        for start in range(0, count, batch_size):
            chunk = list(range(start, min(start + batch_size, count)))
            images = torch.stack([dataset[i]["image"] for i in chunk]).to(device)
            with torch.no_grad():
                tokens, grid_sizes = model.maps_to_tokens(model.forward_features(images))
            for stage, tok, grid in zip(stages, tokens, grid_sizes):
                grids[stage] = grid
                b, n, _ = tok.shape
                flat = F.normalize(tok.float().reshape(b * n, -1), dim=1)
                sims = flat @ protos[stage].T  # [B*N, K]
                hits[stage] += torch.bincount(sims.argmax(dim=1), minlength=len(protos[stage])).cpu()
                image_index = torch.tensor(chunk, device=device).repeat_interleave(n)
                patch_index = torch.arange(n, device=device).repeat(b)
                tops[stage].update(sims, image_index, patch_index)
            bar.update(len(chunk))

    flags = {s: PrototypeFlags(hits[s].numpy(), near_duplicates(protos[s].cpu(), duplicate_cosine)) for s in stages}
    names = list(meta.class_names)
    prototypes_json: list[dict[str, Any]] = []
    geometry_cache: dict[int, tuple[Image.Image, CropGeometry]] = {}

    def image_of(index: int) -> tuple[Image.Image, CropGeometry]:
        if index not in geometry_cache:
            image = dataset.load_image(index)
            geometry_cache[index] = (image, CropGeometry.of(image.width, image.height, size, meta.geometry))
        return geometry_cache[index]

    for stage in stages:
        top = tops[stage]
        for k in range(len(protos[stage])):
            entries = []
            if top.values is not None and top.images is not None and top.patches is not None:
                for value, image_index, patch in zip(
                    top.values[k].tolist(), top.images[k].tolist(), top.patches[k].tolist()
                ):
                    _, geometry = image_of(int(image_index))
                    box = geometry.input_box_to_original(_patch_input_box(int(patch), grids[stage], size))
                    entries.append(
                        {
                            "image_id": dataset.records[int(image_index)].image_id,
                            "image_index": int(image_index),
                            "patch": int(patch),
                            "box": [round(v, 2) for v in box],
                            "cosine": float(value),
                        }
                    )
            owner = int(owners[stage][k])
            prototypes_json.append(
                {
                    "prototype": f"{stage}:{k}",
                    "stage": stage,
                    "index": k,
                    "owner": owner,
                    "owner_name": names[owner],
                    "argmax_hits": int(flags[stage].hits[k]),
                    "unreachable": bool(flags[stage].hits[k] == 0),
                    "near_duplicates": [f"{stage}:{j}" for j in flags[stage].duplicates_of(k)],
                    "top_patches": entries,
                }
            )

    class_pngs = []
    for c, name in enumerate(names):
        rows = [p for p in prototypes_json if p["owner"] == c]
        path = out_dir / f"{c:02d}_{_slug(name)}.png"
        _class_sheet(name, rows, top_k, image_of).save(path)
        class_pngs.append(path)

    unreachable = [p["prototype"] for p in prototypes_json if p["unreachable"]]
    duplicate_pairs = [
        {"a": f"{s}:{i}", "b": f"{s}:{j}", "cosine": cos} for s in stages for i, j, cos in flags[s].duplicates
    ]
    summary = {
        "prototypes": len(prototypes_json),
        "unreachable": len(unreachable),
        "near_duplicate_pairs": len(duplicate_pairs),
        "near_duplicate_prototypes": sum(1 for p in prototypes_json if p["near_duplicates"]),
        "images": count,
    }
    document = {
        "split": split,
        "images": count,
        "top_k": top_k,
        "duplicate_cosine": duplicate_cosine,
        "class_names": names,
        "summary": summary,
        "unreachable": unreachable,
        "near_duplicates": duplicate_pairs,
        "prototypes": prototypes_json,
    }
    gallery_json = out_dir / GALLERY_JSON
    gallery_json.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    index = out_dir / INDEX_HTML
    index.write_text(_index_html(names, class_pngs, prototypes_json, summary), encoding="utf-8")
    return GalleryResult(out_dir, class_pngs, index, gallery_json, summary)


def _class_sheet(name: str, rows: list[dict[str, Any]], top_k: int, image_of: Any) -> Image.Image:
    label_w, pad, header = 170, 4, 22
    width = label_w + top_k * (THUMB + pad) + pad
    height = header + max(1, len(rows)) * (THUMB + pad) + pad
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 4), f"{name}: {len(rows)} prototypes, top-{top_k} training patches (cosine)", fill=(0, 0, 0))
    if not rows:
        draw.text((pad, header + 4), "(no prototypes)", fill=(120, 120, 120))
    for r, proto in enumerate(rows):
        y = header + r * (THUMB + pad)
        flags = []
        if proto["unreachable"]:
            flags.append("UNREACHABLE")
        if proto["near_duplicates"]:
            flags.append("dup of " + ",".join(proto["near_duplicates"]))
        draw.text((pad, y + 4), proto["prototype"], fill=(0, 0, 0))
        draw.text((pad, y + 18), f"argmax hits {proto['argmax_hits']}", fill=(60, 60, 60))
        for line, text in enumerate(flags):
            draw.text((pad, y + 32 + 14 * line), text[:28], fill=(200, 0, 0))
        for i, entry in enumerate(proto["top_patches"]):
            image, _ = image_of(entry["image_index"])
            thumb = _crop(image, tuple(entry["box"]))
            x = label_w + pad + i * (THUMB + pad)
            sheet.paste(thumb, (x, y))
            draw.text((x + 2, y + THUMB - 12), f"{entry['cosine']:.2f}", fill=(255, 255, 0))
    return sheet


def _index_html(names: list[str], pngs: list[Path], prototypes: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    items = []
    for c, name in enumerate(names):
        own = [p for p in prototypes if p["owner"] == c]
        flagged = [p["prototype"] for p in own if p["unreachable"] or p["near_duplicates"]]
        note = f" - flagged: {html.escape(', '.join(flagged))}" if flagged else ""
        items.append(f'<li><a href="#c{c}">{html.escape(name)}</a> ({len(own)} prototypes{note})</li>')
    sections = "".join(
        f'<h2 id="c{c}">{html.escape(name)}</h2><a href="{html.escape(png.name)}">'
        f'<img src="{html.escape(png.name)}" alt="{html.escape(name)}"/></a>'
        for c, (name, png) in enumerate(zip(names, pngs))
    )
    stats = ", ".join(f"{html.escape(str(k))}: {v}" for k, v in summary.items())
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>MCCL prototype gallery</title></head><body>"
        f"<h1>MCCL prototype gallery</h1><p>{stats}</p><p>Flags and top patches: "
        f'<a href="{GALLERY_JSON}">{GALLERY_JSON}</a></p><ul>{"".join(items)}</ul>{sections}</body></html>\n'
    )
