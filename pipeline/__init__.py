"""The MCCL pipeline on Kubeflow Pipelines (KFP v2): the DAG over the components in ``components/``.

* :mod:`pipeline.pipeline` - the DAG; :func:`pipeline.pipeline.compile_pipeline` writes
  ``pipeline/mccl_pipeline.yaml`` (committed; a test recompiles and diffs it).
* :mod:`pipeline.cli` - ``mccl pipeline compile|submit`` (registered as a ``mccl.commands`` entry point).

Multi-node training is not a pipeline concern: the train step's ``launch.backend: pytorchjob``
(:mod:`mccl_core.launch.pytorchjob`) submits the PyTorchJob.
"""
