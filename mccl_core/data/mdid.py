"""MDID (Kruk et al., EMNLP 2019): 1,299 Instagram posts, one of 7 intents each, 5 train/val splits.

The authors do not release the images: the user supplies a folder with one image per post,
named by post id (``<root>/<post_id>.jpg``; ``.jpeg`` and ``.png`` are accepted too). Labels are
one-hot over :data:`MDID_INTENTS` (C = 7). There is no test split: each of the 5 split indices
has a ``train`` and a ``val`` part, the 5 val folds partition the posts, and the reported number
is top-1 accuracy averaged over the 5 splits.

The split assignment ships in the repository as a compact derived file,
``resources/mdid_splits.json`` (post id + intent per post, and per split the train/val post
indices in the order of the official ``{train,val}_split_k.json`` files). It was produced from
the official files by :func:`compact_mdid_splits`; captions, tags and URLs are not needed for
image-only intent recognition and are left out.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from mccl_core.data.dataset import AnnotationError, ImageRecord, ProblemCollector

logger = logging.getLogger(__name__)

#: MDID intent labels in the official ``labels/intent_labels.json`` order (index = class id).
MDID_INTENTS: tuple[str, ...] = ("provoke", "inform", "advocate", "entertain", "expose", "express", "promote")

#: Descriptions paraphrasing the intent taxonomy of Kruk et al. (2019), used as label text.
MDID_DESCRIPTIONS: tuple[str, ...] = (
    "Provocative or discriminating: the post directly or indirectly denigrates, mocks or provokes a person or group.",
    "Informative: the post relays factual information about a subject or an event, such as news or instructions.",
    "Advocative: the post advocates for a figure, idea, cause or movement and tries to win support for it.",
    "Entertainment: the post aims to amuse, using humour, memes, jokes or funny pictures.",
    "Exhibitionist: the post builds a self-image of the user, with selfies, pictures of their belongings or lifestyle.",
    "Expressive: the post expresses emotion, attachment or admiration towards an external person, group or thing.",
    "Promotive: the post promotes an event, product, service, brand or organisation.",
)

MDID_NUM_SPLITS = 5
MDID_SPLITS = ("train", "val")
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")

_RESOURCE = "mdid_splits.json"


def compact_mdid_splits(master_metadata: Path, split_dir: Path, num_splits: int = MDID_NUM_SPLITS) -> dict[str, Any]:
    """Derive the compact split file from the official MDID files.

    Args:
        master_metadata: ``master_metadata.json`` (list of posts with ``id`` and ``intent``).
        split_dir: folder with ``train_split_{k}.json`` / ``val_split_{k}.json``.

    Raises:
        ValueError: unknown intents, duplicate post ids, posts missing from the metadata, a
            post whose intent differs between files, or train/val overlap within a split.
    """
    problems = ProblemCollector(str(split_dir))
    posts = json.loads(Path(master_metadata).read_text(encoding="utf-8"))
    index_of: dict[str, int] = {}
    compact_posts: list[list[Any]] = []
    for position, post in enumerate(posts):
        post_id, intent = str(post.get("id")), post.get("intent")
        if intent not in MDID_INTENTS:
            problems.add(f"post #{position}: unknown intent {intent!r}", post_id)
            continue
        if post_id in index_of:
            problems.add(f"post #{position}: duplicate post id", post_id)
            continue
        index_of[post_id] = len(compact_posts)
        compact_posts.append([post_id, MDID_INTENTS.index(intent)])
    splits: list[dict[str, list[int]]] = []
    for k in range(num_splits):
        split: dict[str, list[int]] = {}
        for part in MDID_SPLITS:
            file = Path(split_dir) / f"{part}_split_{k}.json"
            indices: list[int] = []
            for entry in json.loads(file.read_text(encoding="utf-8")):
                post_id = str(entry.get("id"))
                if post_id not in index_of:
                    problems.add(f"{file.name}: post not in master metadata", post_id)
                    continue
                if compact_posts[index_of[post_id]][1] != MDID_INTENTS.index(entry.get("intent", "")):
                    problems.add(f"{file.name}: intent {entry.get('intent')!r} differs from master metadata", post_id)
                indices.append(index_of[post_id])
            if len(set(indices)) != len(indices):
                problems.add(f"{file.name}: duplicate posts")
            split[part] = indices
        overlap = set(split["train"]) & set(split["val"])
        if overlap:
            problems.add(f"split {k}: {len(overlap)} posts in both train and val")
        splits.append(split)
    problems.raise_if_any()
    return {
        "source": "MDID (Kruk et al., EMNLP 2019): derived from master_metadata.json and "
        "splits/{train,val}_split_{0..4}.json by mccl_core.data.mdid.compact_mdid_splits; see ATTRIBUTION.md",
        "intents": list(MDID_INTENTS),
        "posts": compact_posts,
        "splits": splits,
    }


def read_mdid_splits(splits_file: Path | None = None) -> dict[str, Any]:
    """The compact split description (bundled resource unless ``splits_file`` is given), validated."""
    if splits_file is None:
        text = resources.files("mccl_core.data.resources").joinpath(_RESOURCE).read_text(encoding="utf-8")
        source = f"bundled {_RESOURCE}"
    else:
        text = Path(splits_file).read_text(encoding="utf-8")
        source = str(splits_file)
    data = json.loads(text)
    problems = ProblemCollector(source)
    if list(data.get("intents", [])) != list(MDID_INTENTS):
        problems.add(f"intents must be {list(MDID_INTENTS)}, got {data.get('intents')}")
    posts = data.get("posts", [])
    for position, entry in enumerate(posts):
        if not (
            isinstance(entry, list)
            and len(entry) == 2
            and isinstance(entry[1], int)
            and 0 <= entry[1] < len(MDID_INTENTS)
        ):
            problems.add(f"post entry #{position} must be [post_id, intent_index]: {entry!r}")
    ids = [str(entry[0]) for entry in posts if isinstance(entry, list) and entry]
    if len(set(ids)) != len(ids):
        problems.add("duplicate post ids")
    for k, split in enumerate(data.get("splits", [])):
        for part in MDID_SPLITS:
            bad = [i for i in split.get(part, []) if not (isinstance(i, int) and 0 <= i < len(posts))]
            if bad:
                problems.add(f"split {k} {part}: post indices out of range {bad[:5]}")
    problems.raise_if_any()
    return data


def resolve_post_image(root: Path, post_id: str) -> tuple[Path, list[Path]]:
    """Path of a post's image (first existing of ``<post_id>{.jpg,.jpeg,.png}``) and all existing
    candidates. When none exists the ``.jpg`` path is returned, so reading it raises a clear
    "file not found" naming the expected file."""
    candidates = [Path(root) / f"{post_id}{ext}" for ext in IMAGE_EXTENSIONS]
    existing = [c for c in candidates if c.is_file()]
    return (existing[0] if existing else candidates[0]), existing


def read_mdid_rows(
    root: Path, split_index: int, split: str, splits_file: Path | None = None
) -> list[tuple[ImageRecord, tuple[str, ...]]]:
    """Every post of MDID split ``split_index``, part ``split``, with its problems (lenient).

    The one record-level problem: a post with several image files (ambiguous which to use).
    A missing image is not a problem here (the image checks report it, naming the file).

    Raises:
        ValueError: bad split index / name (MDID has no test split), a bad split file.
    """
    if split not in MDID_SPLITS:
        raise ValueError(
            f"MDID has only 'train' and 'val' parts per split index (got {split!r}); "
            "the protocol reports val accuracy averaged over split indices 0..4"
        )
    data = read_mdid_splits(splits_file)
    if not 0 <= split_index < len(data["splits"]):
        raise ValueError(f"MDID split index must be 0..{len(data['splits']) - 1}, got {split_index}")
    rows: list[tuple[ImageRecord, tuple[str, ...]]] = []
    for post_index in data["splits"][split_index][split]:
        post_id, intent = data["posts"][post_index]
        path, existing = resolve_post_image(Path(root), str(post_id))
        problems: tuple[str, ...] = ()
        if len(existing) > 1:
            where = f"image {str(post_id)!r} file {str(path)!r}"
            problems = (f"{where}: several image files for one post: {[p.name for p in existing]}",)
        rows.append((ImageRecord(str(post_id), path, (int(intent),), None), problems))
    return rows


def load_mdid_records(
    root: Path, split_index: int, split: str, splits_file: Path | None = None
) -> tuple[list[ImageRecord], list[str], list[str]]:
    """Records of MDID split ``split_index`` (0..4), part ``split`` ("train" or "val").

    Raises:
        ValueError: bad split index / name (MDID has no test split).
        AnnotationError: a post with several image files (ambiguous which to use).
    """
    rows = read_mdid_rows(root, split_index, split, splits_file)
    problems = [p for _, row_problems in rows for p in row_problems]
    if problems:
        raise AnnotationError(f"MDID split {split_index} {split}", problems)
    records = [record for record, _ in rows]
    missing = sum(1 for record in records if not record.image_path.is_file())
    if missing:
        logger.warning(
            "MDID split %d %s: %d of %d post images are missing under %s (reading them will fail)",
            split_index,
            split,
            missing,
            len(records),
            root,
        )
    return records, list(MDID_INTENTS), list(MDID_DESCRIPTIONS)


def write_mdid_splits(compact: dict[str, Any], out_file: Path) -> None:
    """Write a compact split description (one post per line keeps diffs readable)."""
    lines = [
        "{",
        f' "source": {json.dumps(compact["source"])},',
        f' "intents": {json.dumps(compact["intents"])},',
        ' "posts": [',
    ]
    posts: Sequence[list[Any]] = compact["posts"]
    lines += [f"  {json.dumps(p)}{',' if i < len(posts) - 1 else ''}" for i, p in enumerate(posts)]
    lines.append(" ],")
    lines.append(' "splits": [')
    splits = compact["splits"]
    lines += [
        f"  {json.dumps(s, separators=(',', ':'))}{',' if i < len(splits) - 1 else ''}" for i, s in enumerate(splits)
    ]
    lines += [" ]", "}"]
    Path(out_file).write_text("\n".join(lines) + "\n", encoding="utf-8")
