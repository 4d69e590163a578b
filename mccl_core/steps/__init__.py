"""Library functions of the pipeline steps, one module per step.

The same functions run under three drivers, so a step behaves identically everywhere:

* ``components/`` - one thin CLI per step (``mccl step <name>``), what ``dvc.yaml`` calls;
* ``pipeline/`` - the Kubeflow pipeline's lightweight Python components;
* tests, calling them directly.

Steps (in DAG order): ``demo`` (generates the embedded demo dataset), ``validate``, ``extract``,
``cluster`` (CPI prototypes + label embeddings), ``train``, ``evaluate``, ``register``. Each takes
its own config dataclass (built from its section of ``params.yaml``), explicit input/output paths
and :class:`~mccl_core.tracking.steps.TrackingOptions`, and returns a result dataclass.
"""

from mccl_core.steps.errors import StepError

__all__ = ["StepError"]
