"""Helpers shared by the pipeline steps: errors, JSON files, the validated-data handle, logging."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mccl_core.data import DataConfig
from mccl_core.data.sources import data_source
from mccl_core.hashing import json_default
from mccl_core.steps.errors import StepError
from mccl_core.steps.layout import VALIDATED_DATA_FILE

log = logging.getLogger(__name__)


def write_json(path: Path, payload: Any) -> Path:
    """Write ``payload`` as indented JSON atomically (a killed step never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=json_default) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_json(path: Path, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise StepError(f"{what} {str(path)!r} is missing: run the step that writes it first")
    return json.loads(path.read_text(encoding="utf-8"))


def write_text(path: Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def dvc_data_hash(data_root: Path, project_dir: Path) -> str | None:
    """The DVC hash of the dataset folder, if DVC knows it.

    Looked up in ``dvc.lock`` (a stage output, e.g. the demo generator's ``data/demo``) and in
    ``*.dvc`` files (e.g. ``data.dvc`` tracking ``data/real``). ``None`` when DVC does not track it.
    """
    project_dir = Path(project_dir).resolve()
    try:
        target = Path(data_root).resolve().relative_to(project_dir).as_posix()
    except ValueError:
        return None
    candidates: list[tuple[Path, list[dict[str, Any]]]] = []
    lock = project_dir / "dvc.lock"
    if lock.is_file():
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
        for stage in stages.values():
            candidates.append((project_dir, stage.get("outs") or []))
    for dvc_file in (p for p in project_dir.glob("*.dvc") if p.is_file()):
        candidates.append((project_dir, (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or []))
    for base, outs in candidates:
        for out in outs:
            if (base / out.get("path", "")).resolve().relative_to(project_dir).as_posix() == target:
                value = out.get("md5") or out.get("hash") or out.get("etag")
                if value:
                    return f"dvc:{value}"
    return None


def annotation_files(data_cfg: DataConfig, splits: Iterable[str]) -> list[Path]:
    """The files that define the labels of ``data_cfg`` (what the data hash covers)."""
    return [f for f in data_source(data_cfg).label_files(data_cfg, list(splits)) if Path(f).is_file()]


@dataclass
class ValidatedData:
    """What the validate step hands to every later step.

    ``data``: the config to load splits with (it points at the clean annotation files, so
    quarantined records are not seen); ``source``: the configured source (``mdid`` changes the
    evaluation protocol); ``splits``: the splits that exist; ``data_hash``: the provenance tag.
    """

    data: DataConfig
    source: str
    splits: list[str]
    data_hash: str
    counts: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": self.data.to_dict(),
            "source": self.source,
            "splits": list(self.splits),
            "data_hash": self.data_hash,
            "counts": self.counts,
        }

    def save(self, path: Path, folders: Mapping[str, Path] | None = None) -> Path:
        """Write the handle. Paths inside its own folder are stored as ``@handle/<rel>``, paths
        inside one of ``folders`` (upstream step folders by step name, e.g. ``demo``) as
        ``@<name>/<rel>``: orchestrators hand a step's inputs over under other paths."""
        path = Path(path)
        bases = {"handle": path.parent, **{k: Path(v) for k, v in (folders or {}).items()}}
        payload = self.to_dict()
        data = payload["data"]
        data["root"] = _portable(data["root"], bases)
        data["annotations"] = {k: _portable(v, bases) for k, v in data["annotations"].items()}
        for key in ("manifest", "class_list"):
            if data.get(key):
                data[key] = _portable(data[key], bases)
        return write_json(path, payload)

    @classmethod
    def load(cls, path: Path, folders: Mapping[str, Path] | None = None) -> ValidatedData:
        """Read the validate step's handle; a folder means ``<folder>/validated_data.json``.

        ``folders``: where the upstream folders the handle refers to (``@demo/...``) are now.
        """
        path = Path(path)
        if path.is_dir():
            path = path / VALIDATED_DATA_FILE
        raw = read_json(path, "validated data handle")
        data = dict(raw["data"])
        bases = {"handle": path.parent, **{k: Path(v) for k, v in (folders or {}).items()}}
        data["root"] = str(_resolve(data["root"], bases, path))
        data["annotations"] = {k: str(_resolve(v, bases, path)) for k, v in (data.get("annotations") or {}).items()}
        for key in ("manifest", "class_list"):
            if data.get(key):
                data[key] = str(_resolve(data[key], bases, path))
        return cls(
            data=DataConfig.from_dict(data),
            source=str(raw["source"]),
            splits=list(raw["splits"]),
            data_hash=str(raw["data_hash"]),
            counts=dict(raw.get("counts") or {}),
        )


def _resolve(value: str, bases: Mapping[str, Path], handle: Path) -> Path:
    text = str(value)
    if not text.startswith("@"):
        return Path(text)
    name, _, relative = text[1:].partition("/")
    if name not in bases:
        # Steps that never open the files (cluster, register) need not get that folder; a step
        # that does gets a "file not found" naming the missing input.
        log.debug("%s refers to %r but the %r folder was not given", handle, text, name)
        return Path(f"<input folder {name!r} not given>") / relative
    return bases[name] / relative


def _portable(value: str, bases: Mapping[str, Path]) -> str:
    """``@<name>/<rel>`` for a path inside one of ``bases``, else the path unchanged."""
    for name, base in bases.items():
        try:
            relative = Path(value).resolve().relative_to(Path(base).resolve())
        except ValueError:
            continue
        return f"@{name}/{relative.as_posix()}"
    return str(value)


#: Top-level loggers whose INFO lines the terminal shows; the rest (MLflow, Great Expectations,
#: DVC, torch, ...) reach the terminal only from ERROR up when a log file keeps everything.
OWN_LOGGERS = frozenset({"mccl_core", "components", "pipeline", "__main__"})
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _OwnOrSevere(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.split(".")[0] in OWN_LOGGERS or record.levelno >= logging.ERROR


def configure_logging(verbose: bool = False, log_file: Path | None = None) -> Path | None:
    """Logging of every step CLI (library code only uses ``logging``).

    With ``log_file``, everything (third-party INFO and warnings too, Python ``warnings``
    included) goes to that file, and the terminal shows our own lines plus anyone's errors: our
    progress bars and one summary line per step stay readable, and nothing is lost. Without it
    (Kubeflow: the pod log is the only log), everything goes to the terminal.
    """
    # MLflow otherwise installs its own stderr handler on import and bypasses the root logger.
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_mccl", False):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter(LOG_FORMAT))
    handlers: list[logging.Handler] = [console]
    if log_file is not None:
        console.addFilter(_OwnOrSevere())
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        to_file = logging.FileHandler(log_file, mode="w", encoding="utf-8")
        to_file.setFormatter(logging.Formatter(LOG_FORMAT))
        handlers.append(to_file)
    for handler in handlers:
        handler._mccl = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    logging.captureWarnings(True)
    return log_file
