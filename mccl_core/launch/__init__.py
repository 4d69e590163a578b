"""How the train step starts its processes: ``torchrun`` on this machine (supervised, see
:mod:`mccl_core.launch.supervise`), or a Kubernetes job across nodes - Kubeflow Trainer v2
``TrainJob`` (:mod:`mccl_core.launch.trainjob`, default) or Training Operator v1 ``PyTorchJob``
(:mod:`mccl_core.launch.pytorchjob`) - whose pods run :mod:`mccl_core.steps.pod`, staging the
inputs and checkpoints through S3 (:mod:`mccl_core.launch.staging`). All run the same train step."""
