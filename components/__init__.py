"""The pipeline steps as Kubeflow Pipelines (KFP v2) lightweight Python components.

Each component only moves KFP artifacts and parameters into
:func:`mccl_core.steps.contract.run_step` (through :mod:`components.runner`), the same call
``mccl step <name>`` (what ``dvc.yaml`` runs) makes. The components run in the project's image,
which has the project installed, so nothing is pip-installed at run time.
"""
