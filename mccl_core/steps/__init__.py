"""The pipeline steps, one module per step, each declaring its contract (``SPEC``).

Every driver runs a step through :func:`mccl_core.steps.contract.run_step`, so a step behaves
identically everywhere:

* ``mccl step <name>`` (:mod:`mccl_core.steps.cli`) - what ``dvc.yaml`` calls;
* ``components/`` - the Kubeflow components (argument plumbing only);
* the pods of a TrainJob or PyTorchJob (:mod:`mccl_core.steps.pod`) - the train step itself;
* tests, calling the typed ``run_<step>`` functions or ``run_step`` directly.

Steps (in DAG order): ``demo``, ``validate``, ``extract``, ``cluster`` (CPI prototypes + label
embeddings), ``train``, ``evaluate``, ``register``. See docs/step-contract.md.
"""

from mccl_core.steps.errors import StepError

__all__ = ["StepError"]
