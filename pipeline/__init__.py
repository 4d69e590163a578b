"""The MCCL pipeline on Kubeflow Pipelines (KFP v2).

* :mod:`pipeline.image` - the container image every step runs in (name and tag in one place).
* :mod:`pipeline.components` - the six steps as lightweight Python components over
  :mod:`mccl_core.steps` (the same library functions ``dvc repro`` runs).
* :mod:`pipeline.pipeline` - the DAG; :func:`pipeline.pipeline.compile_pipeline` writes
  ``pipeline/mccl_pipeline.yaml`` (committed; a test recompiles and diffs it).
* :mod:`pipeline.pytorchjob` - multi-node training as a Kubeflow Training Operator PyTorchJob.
* :mod:`pipeline.cli` - ``mccl pipeline compile|submit``.
"""
