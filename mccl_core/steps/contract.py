"""The step contract: what every pipeline step owns, and the one way every driver runs it.

A step (one module of :mod:`mccl_core.steps`) declares a :class:`StepSpec`:

* ``sections``: the ``params.yaml`` sections it reads, and ``config``: the dataclass they become.
  With one section, ``config`` is that section's dataclass; with several, it has one field per
  section, named as the section. :meth:`StepSpec.load_config` builds it from exactly those
  sections, the same way for every step (:func:`mccl_core.config.from_dict`, the one loader);
* ``inputs``: the upstream step folders it reads, by upstream step name, and for each the files
  in it that the step really opens (``dvc.yaml`` deps are checked against these);
* one output folder, whose file names live in :mod:`mccl_core.steps.layout` (so a step reads an
  upstream folder without importing the upstream step);
* ``run(inputs, out_dir, config, tracking) -> StepOutcome``.

The drivers add nothing of their own: ``mccl step <name>`` (what ``dvc.yaml`` runs, see
:mod:`mccl_core.steps.cli`) and the Kubeflow components (``components/``) both call
:func:`run_step` with the params, the input folders and the output folder; they differ only in
where those folders are and how steps find the MLflow parent run (a run-reference file under
DVC, explicit ids under Kubeflow), which is :class:`~mccl_core.tracking.steps.TrackingOptions`.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mccl_core.config import ConfigError, from_dict, section
from mccl_core.steps.errors import StepError
from mccl_core.tracking.steps import TrackingOptions

log = logging.getLogger(__name__)

#: The steps in DAG order (each is the module ``mccl_core.steps.<name>``).
STEP_NAMES: tuple[str, ...] = ("demo", "validate", "extract", "cluster", "train", "evaluate", "explain", "register")

ArtifactKind = Literal["Dataset", "Model", "Artifact"]


@dataclass(frozen=True)
class StepInput:
    """An upstream folder a step reads: ``step`` names the producing step (and the input)."""

    step: str
    #: Files inside that folder the step opens (relative; a folder name means all under it).
    reads: tuple[str, ...]
    #: Optional inputs may be absent (e.g. ``demo``: the dataset folder only Kubeflow hands over).
    optional: bool = False


@dataclass(frozen=True)
class StepSpec:
    name: str
    description: str
    sections: tuple[str, ...]
    #: The typed config: the one section's dataclass, or one field per section (named so).
    config: type
    inputs: tuple[StepInput, ...]
    #: KFP artifact type of the output folder (Dataset, Model or Artifact).
    output_kind: ArtifactKind
    run: Callable[[Mapping[str, Path], Path, Any, TrackingOptions], StepOutcome]
    #: Sections that may be absent from the params (their dataclass defaults apply).
    optional_sections: tuple[str, ...] = ()
    #: Where ``dvc repro`` keeps the output folder.
    default_out: str = ""
    #: Whether Kubeflow may cache the step (deterministic, no side effects outside its output).
    cacheable: bool = True

    def __post_init__(self) -> None:
        stray = sorted(set(self.optional_sections) - set(self.sections))
        if stray:
            raise ValueError(
                f"step {self.name!r}: optional_sections {stray} are not among its sections {self.sections}"
            )

    def out_dir(self) -> Path:
        return Path(self.default_out or f"outputs/{self.name}")

    def input_names(self) -> list[str]:
        return [i.step for i in self.inputs]

    def load_config(self, params: Mapping[str, Any]) -> Any:
        """The step's typed config from ``params`` (the whole params mapping, or at least
        ``sections``). Unknown keys and wrong types are errors naming the dotted key.

        A config class may define ``from_sections(values)`` (section name -> mapping) when a
        section carries a run setting that is not part of the section's own dataclass (the
        demo's ``workers``); every other step is built by :func:`mccl_core.config.from_dict`.
        """
        values = {name: section(params, name, required=name not in self.optional_sections) for name in self.sections}
        custom = getattr(self.config, "from_sections", None)
        if custom is not None:
            return custom(values)
        if len(self.sections) == 1:
            (name,) = self.sections
            return from_dict(self.config, values[name], name)
        return from_dict(self.config, values, "")


@dataclass
class StepOutcome:
    """What a step reports besides its output folder (drivers show it, they do not compute it)."""

    #: One line for the terminal.
    summary: str
    #: Headline numbers: the orchestrator's metrics view (KFP ``Metrics``), the git-tracked
    #: ``metrics/<step>.json`` that ``dvc exp show`` reads, and the MLflow parent run. Only what
    #: the inputs and params determine (no timings), so a re-run on the same inputs rewrites them
    #: byte for byte and leaves the git tree clean.
    metrics: dict[str, float] = field(default_factory=dict)
    #: Facts of this execution (timings, throughput, reused shards): KFP and MLflow only.
    run_metrics: dict[str, float] = field(default_factory=dict)
    #: A human summary (KFP ``Markdown``) and a report page (KFP ``HTML``), when the step has them.
    markdown: str = ""
    html: str = ""
    mlflow_run_id: str = ""
    parent_run_id: str = ""


def spec(name: str) -> StepSpec:
    """The :class:`StepSpec` of step ``name`` (imports the step module lazily: some pull in torch)."""
    if name not in STEP_NAMES:
        raise StepError(f"unknown step {name!r}; steps: {', '.join(STEP_NAMES)}")
    module = importlib.import_module(f"mccl_core.steps.{name}")
    return module.SPEC


def run_step(
    name: str,
    params: Mapping[str, Any],
    inputs: Mapping[str, str | Path | None],
    out_dir: str | Path,
    tracking: TrackingOptions,
) -> StepOutcome:
    """Run step ``name``: config from ``params``, upstream folders ``inputs``, output ``out_dir``.

    ``params`` is the whole params mapping (or at least the step's sections); an input that is
    required and missing, or one the step does not take, is an error naming it.
    """
    step = spec(name)
    given = {k: Path(v) for k, v in inputs.items() if v is not None and v != ""}
    unknown = sorted(set(given) - set(step.input_names()))
    if unknown:
        raise StepError(f"step {name!r} takes inputs {step.input_names()}, not {unknown}")
    for item in step.inputs:
        if item.step not in given and not item.optional:
            raise StepError(f"step {name!r} needs the output folder of step {item.step!r}")
        if item.step in given and not given[item.step].exists():
            raise StepError(f"step {name!r}: input {item.step!r} folder {str(given[item.step])!r} does not exist; "
                            f"run the {item.step} step first")  # fmt: skip
    try:
        config = step.load_config(params)
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:
        raise ConfigError(f"params of step {name!r}: {error}") from error
    outcome = step.run(given, Path(out_dir), config, tracking)
    log.info("%s: %s", name, outcome.summary)
    return outcome
