"""How the train step starts its processes: ``torchrun`` on this machine, or a Kubeflow
Training Operator ``PyTorchJob`` across nodes (:mod:`mccl_core.launch.pytorchjob`), staging the
inputs through S3 (:mod:`mccl_core.launch.staging`). Both run the same train step."""
