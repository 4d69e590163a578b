"""Launchers of the train step: TrainJob / PyTorchJob manifests against their real CRD schemas, the
pod entry point's PET_* environment, supervised torchrun (dies with the step, one trainer per
folder), and - on a real S3 server (SeaweedFS) - per-run staging isolation, checkpoint upload and
resume of a killed pod, and 2 node processes on 127.0.0.1 giving the 1-node result.

Kubernetes itself does not run here: :class:`LocalCluster` plays the operator, running each node
of the *generated manifest* (its command, env and node count) as a local process with the
environment the ``torch-distributed`` runtime sets. Everything below the operator is real.
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = Path(__file__).parent / "fixtures" / "k8s"


# ------------------------------------------------------------------------ schemas and manifests


def _strict(node: Any) -> Any:
    """A CRD structural schema as JSON Schema that, like ``kubectl --validate=strict``, rejects
    unknown fields (the API server would silently prune them). ``x-kubernetes-*`` keys dropped
    after use: preserve-unknown-fields keeps an object open, int-or-string is an anyOf already."""
    if isinstance(node, list):
        return [_strict(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _validator(schema_file: str) -> Any:
    import jsonschema

    crd = json.loads((K8S / schema_file).read_text())
    schema = _strict(crd["openAPIV3Schema"])
    # apiVersion / kind / metadata are checked by the API server itself, not by the CRD schema.
    return crd, jsonschema.Draft7Validator(schema)


def _errors(validator: Any, manifest: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(manifest)]


def _job_config(**overrides: Any) -> Any:
    from mccl_core.launch.kube import NodeJobConfig

    values = dict(name="mccl-train-1", namespace="team", image="reg/mccl:1", num_nodes=3, nproc_per_node=4,
                  accelerator_type="nvidia.com/gpu", accelerators_per_node=4, staging_uri="s3://b/run1",
                  mlflow_tracking_uri="http://mlflow:5000")  # fmt: skip
    values.update(overrides)
    return NodeJobConfig(**values)


def test_trainjob_manifest_is_valid_against_the_crd_and_fits_the_stock_runtime():
    from mccl_core.launch.trainjob import API_VERSION, KIND, build_trainjob, job_state

    crd, validator = _validator("trainjobs.trainer.kubeflow.org.v1alpha1.schema.json")
    manifest = build_trainjob(_job_config())
    assert manifest["apiVersion"] == f"{crd['group']}/{crd['version']}" == API_VERSION
    assert manifest["kind"] == crd["kind"] == KIND
    assert _errors(validator, manifest) == []
    # The validator is live: a wrong type and an unknown field are both reported.
    broken = copy.deepcopy(manifest)
    broken["spec"]["trainer"]["numNodes"] = "three"
    broken["spec"]["trainer"]["nodes"] = 3
    assert len(_errors(validator, broken)) == 2

    runtime = yaml.safe_load((K8S / "clustertrainingruntime_torch-distributed.yaml").read_text())
    assert manifest["spec"]["runtimeRef"]["name"] == runtime["metadata"]["name"] == "torch-distributed"
    assert manifest["spec"]["runtimeRef"]["kind"] == runtime["kind"]
    assert "torch" in runtime["spec"]["mlPolicy"]  # the runtime that sets PET_* for torchrun
    jobs = {j["name"]: j for j in runtime["spec"]["template"]["spec"]["replicatedJobs"]}
    override = manifest["spec"]["podSpecOverrides"][0]
    (target,) = override["targetJobs"]
    assert target["name"] in jobs  # the overrides reach the runtime's trainer job and container
    containers = jobs[target["name"]]["template"]["spec"]["template"]["spec"]["containers"]
    assert override["containers"][0]["name"] in {c["name"] for c in containers}

    trainer = manifest["spec"]["trainer"]
    assert trainer["numNodes"] == 3 and trainer["numProcPerNode"] == 4 and trainer["image"] == "reg/mccl:1"
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "4"
    assert trainer["command"][:3] == ["python", "-m", "mccl_core.steps.pod"]
    assert trainer["command"][trainer["command"].index("--staging-uri") + 1] == "s3://b/run1"
    secret_refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in trainer["env"] if "valueFrom" in e}
    assert secret_refs["AWS_SECRET_ACCESS_KEY"] == "mccl-s3-credentials"  # a reference, never a value
    assert job_state({"status": {"conditions": [{"type": "Created", "status": "True"}]}}) is None
    assert job_state({"status": {"conditions": [{"type": "Complete", "status": "True"}]}}) == "Complete"
    assert job_state({"status": {"conditions": [{"type": "Failed", "status": "True"}]}}) == "Failed"


def test_pytorchjob_manifest_is_valid_against_the_crd():
    from mccl_core.launch.pytorchjob import API_VERSION, PyTorchJobConfig, build_pytorchjob, job_state

    crd, validator = _validator("pytorchjobs.kubeflow.org.v1.schema.json")
    cfg = PyTorchJobConfig(**{k: v for k, v in vars(_job_config()).items()})
    manifest = build_pytorchjob(cfg)
    assert manifest["apiVersion"] == f"{crd['group']}/{crd['version']}" == API_VERSION
    assert _errors(validator, manifest) == []
    broken = copy.deepcopy(manifest)
    broken["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] = "2"
    assert _errors(validator, broken)
    replicas = manifest["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 2
    assert manifest["spec"]["nprocPerNode"] == "4"
    container = replicas["Worker"]["template"]["spec"]["containers"][0]
    assert container["name"] == "pytorch" and container["image"] == "reg/mccl:1"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert container["command"][:3] == ["python", "-m", "mccl_core.steps.pod"]  # the same pod entry point
    assert "AWS_SECRET_ACCESS_KEY" not in json.dumps(manifest)  # credentials come from a secret reference
    assert job_state({"status": {"conditions": [{"type": "Succeeded", "status": "True"}]}}) == "Succeeded"
    with pytest.raises(ValueError, match="num_nodes=1"):
        PyTorchJobConfig(**{**vars(_job_config()), "num_nodes": 1})


def test_pod_reads_the_pet_environment_of_the_torch_distributed_runtime():
    from mccl_core.launch.config import LaunchConfig
    from mccl_core.launch.local import torchrun_command
    from mccl_core.launch.node import launch_from_env

    # What Trainer v2's torch plugin sets on node 2 of a 3-node TrainJob.
    env = {"PET_NNODES": "3", "PET_NPROC_PER_NODE": "4", "PET_NODE_RANK": "2",
           "PET_MASTER_ADDR": "mccl-train-1-trainer-node-0-0.mccl-train-1", "PET_MASTER_PORT": "29400"}  # fmt: skip
    values = launch_from_env(env)
    assert values == {"backend": "torchrun", "nproc_per_node": 4, "nnodes": 3, "node_rank": 2,
                      "rdzv_endpoint": "mccl-train-1-trainer-node-0-0.mccl-train-1:29400",
                      "rdzv_backend": "static"}  # fmt: skip
    command = torchrun_command(LaunchConfig.from_dict(values), [])
    # Static rendezvous: global rank = node rank x 4 + local rank, so rank 0 (the writer) is on node 0.
    assert command[command.index("--node_rank") + 1] == "2" and "--rdzv_backend" not in command
    assert command[command.index("--master_addr") + 1] == "mccl-train-1-trainer-node-0-0.mccl-train-1"
    assert command[command.index("--master_port") + 1] == "29400"
    assert command[command.index("--nnodes") + 1] == "3" and command[command.index("--nproc_per_node") + 1] == "4"
    # Training Operator v1: MASTER_ADDR / MASTER_PORT / RANK, elastic "min:max" PET_NNODES.
    v1 = launch_from_env({"PET_NNODES": "1:2", "PET_NPROC_PER_NODE": "1", "RANK": "1", "MASTER_ADDR": "job-master-0",
                          "MASTER_PORT": "23456"})  # fmt: skip
    assert (v1["nnodes"], v1["node_rank"], v1["rdzv_endpoint"]) == (2, 1, "job-master-0:23456")
    assert launch_from_env({"PET_NPROC_PER_NODE": "auto"})["nproc_per_node"] >= 1  # the runtime's default


def test_launch_config_shape_and_the_local_default():
    from mccl_core.config import ConfigError, load_params
    from mccl_core.launch.config import LaunchConfig

    assert LaunchConfig.from_dict(load_params(REPO / "params.yaml")["launch"]).backend == "torchrun"
    job = LaunchConfig.from_dict({"backend": "trainjob", "nnodes": 1, "kubernetes": {"runtime": "my-runtime"}})
    assert job.kubernetes.runtime == "my-runtime" and job.kubernetes.checkpoint_upload_s == 30.0
    assert LaunchConfig(backend="pytorchjob", nnodes=2).world_size == 2
    with pytest.raises(ConfigError, match="pytorchjob is for >= 2 nodes"):
        LaunchConfig.from_dict({"backend": "pytorchjob"})
    with pytest.raises(ConfigError, match="launch.backend"):
        LaunchConfig.from_dict({"backend": "kubernetes"})
    with pytest.raises(ConfigError, match="trainjob"):
        LaunchConfig.from_dict({"nnodes": 2})  # torchrun across machines needs an endpoint


# ------------------------------------------------------------------ supervised training processes

WORKER = textwrap.dedent("""
    import os, sys, time
    open(os.path.join(sys.argv[1], f"worker-{os.getpid()}"), "w").close()
    time.sleep(600)
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its (dead) parent's reaper counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.mark.slow
def test_killed_step_takes_torchrun_and_its_workers_along(tmp_path):
    """SIGKILL of the step (the parent of torchrun): torchrun and both workers are gone in seconds."""
    (tmp_path / "worker.py").write_text(WORKER)
    step = textwrap.dedent(f"""
        import os, sys
        from mccl_core.launch.supervise import run_streaming
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               {str(tmp_path / "worker.py")!r}, {str(tmp_path)!r}]
        run_streaming(cmd, dict(os.environ))
    """)
    parent = subprocess.Popen([sys.executable, "-c", step], cwd=REPO, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 2 and time.monotonic() < deadline and parent.poll() is None:
            workers = [int(p.name.split("-")[1]) for p in tmp_path.glob("worker-*")]
            time.sleep(0.2)
        assert len(workers) == 2, "torchrun did not start its 2 workers"
        agent = int(Path(f"/proc/{workers[0]}/stat").read_text().split(") ")[1].split()[1])  # the worker's parent
        assert agent != parent.pid and _alive(agent)
        os.kill(parent.pid, signal.SIGKILL)  # the parent alone: no group kill
        parent.wait()
        deadline = time.monotonic() + 20
        while any(_alive(p) for p in [agent, *workers]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in [agent, *workers] if _alive(p)], "training processes outlived the killed step"
    finally:
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_second_trainer_on_the_same_folder_is_refused(tmp_path):
    from mccl_core.launch.config import LaunchConfig
    from mccl_core.launch.supervise import TrainerBusyError, TrainerLock
    from mccl_core.steps.errors import StepError
    from mccl_core.steps.train import run_train

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from mccl_core.launch.supervise import TrainerLock; "
         "TrainerLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(600)", str(tmp_path)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(TrainerBusyError, match=rf"another trainer \(PID {holder.pid}\) is writing"):
            TrainerLock(tmp_path).acquire()
        # The train step refuses before touching anything.
        with pytest.raises(StepError, match=rf"PID {holder.pid}"):
            run_train(None, None, LaunchConfig(), None, None, tmp_path)  # type: ignore[arg-type]
    finally:
        holder.kill()
        holder.wait()
    with TrainerLock(tmp_path) as lock:  # a crashed holder leaves no stale lock
        assert (tmp_path / "train.lock").read_text().strip() == str(os.getpid()) and lock.fd is not None
    assert not (tmp_path / "train.lock").exists()


# ------------------------------------------------------------ on a real S3 server, pods run locally


class LocalCluster:
    """The operator, played locally: every node of the manifest is ``command`` (``python`` = this
    interpreter) with the manifest's env, the secret's AWS_* variables and what the runtime sets
    per node (PET_* and, as Training Operator v1 also does, MASTER_*/WORLD_SIZE/RANK).

    ``kill_after_upload``: once node 0 has uploaded a checkpoint to S3, SIGKILL the node process
    alone (its training processes must follow) and restart it with an empty workspace, as the
    job's restart policy does with a new pod.
    """

    def __init__(self, root: Path, env: dict[str, str], kill_after_upload: bool = False) -> None:
        self.root, self.env, self.kill_after_upload = root, env, kill_after_upload
        self.logs: list[str] = []
        self.killed_after_epoch: int | None = None

    def _nodes(self, manifest: dict) -> tuple[list[str], dict[str, str], int, int]:
        if manifest["kind"] == "TrainJob":
            trainer = manifest["spec"]["trainer"]
            command, env_list = trainer["command"], trainer["env"]
            nnodes, nproc = trainer["numNodes"], int(trainer["numProcPerNode"])
        else:
            replicas = manifest["spec"]["pytorchReplicaSpecs"]
            container = replicas["Master"]["template"]["spec"]["containers"][0]
            command, env_list = container["command"], container["env"]
            nnodes, nproc = 1 + replicas["Worker"]["replicas"], int(manifest["spec"]["nprocPerNode"])
        env = {e["name"]: e["value"] for e in env_list if "value" in e}
        return command, env, nnodes, nproc

    def _start(self, command: list[str], env: dict[str, str], workspace: Path) -> subprocess.Popen:
        argv = [sys.executable if c == "python" else c for c in command]
        argv[argv.index("--workspace") + 1] = str(workspace)
        log = open(workspace.with_suffix(".log"), "w")  # noqa: SIM115 - closed by the caller via the file
        return subprocess.Popen(argv, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip

    def __call__(self, manifest: dict) -> None:
        from services import free_ports

        from mccl_core.launch.staging import _location

        command, job_env, nnodes, nproc = self._nodes(manifest)
        staging = command[command.index("--staging-uri") + 1]
        port = free_ports(1)[0]
        procs, workspaces = [], []
        for rank in range(nnodes):
            env = {**self.env, **job_env, "PET_NNODES": str(nnodes), "PET_NPROC_PER_NODE": str(nproc),
                   "PET_NODE_RANK": str(rank), "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port),
                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(nnodes),
                   "RANK": str(rank)}  # fmt: skip
            workspaces.append(self.root / f"{manifest['metadata']['name']}-node{rank}")
            workspaces[-1].mkdir(parents=True)
            procs.append((self._start(command, env, workspaces[-1]), env))
        try:
            if self.kill_after_upload:
                from mccl_core.launch.s3 import list_keys, s3_client_from_env

                client = s3_client_from_env()
                bucket, prefix = _location(f"{staging}/outputs/checkpoints/last.pt")
                deadline = time.monotonic() + 300
                while not list_keys(client, bucket, prefix) and procs[0][0].poll() is None:
                    assert time.monotonic() < deadline, "no checkpoint was uploaded"
                    time.sleep(0.1)
                assert procs[0][0].poll() is None, "node 0 finished before it could be killed"
                ckpt = self.root / "uploaded-last.pt"
                client.download_file(bucket, prefix, str(ckpt))
                from mccl_core.training.checkpoint import load_checkpoint

                self.killed_after_epoch = int(load_checkpoint(ckpt)["epoch"])
                procs[0][0].kill()  # the node process alone: PDEATHSIG must stop its training
                procs[0][0].wait()
                self.logs.append(workspaces[0].with_suffix(".log").read_text())
                restarted = self.root / f"{manifest['metadata']['name']}-node0-restarted"
                restarted.mkdir()
                workspaces[0] = restarted
                procs[0] = (self._start(command, procs[0][1], restarted), procs[0][1])
            for proc, _ in procs:
                proc.wait(timeout=900)
        finally:
            for proc, _ in procs:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        logs = [w.with_suffix(".log").read_text() for w in workspaces]
        self.logs += logs
        for (proc, _), text in zip(procs, logs):
            if proc.returncode != 0:
                raise RuntimeError(f"{manifest['kind']} node failed ({proc.returncode}):\n{text[-4000:]}")


@pytest.fixture(scope="module")
def upstream(tiny_upstream) -> tuple[dict, dict[str, Path]]:
    """validate -> extract -> cluster on the tiny demo (the session's, read-only)."""
    return tiny_upstream


@pytest.fixture(scope="module")
def s3(s3_server):
    """The session's S3 server; these tests write under s3://mccl/{staging,restart,nodes}."""
    return s3_server


def _train(upstream, out: Path, cluster: LocalCluster, launch: dict, **train: Any) -> Any:
    """The train step's run_train with a Kubernetes backend, the job run by ``cluster``."""
    from mccl_core.launch.config import LaunchConfig
    from mccl_core.models import ModelConfig
    from mccl_core.steps.cluster import EMBEDDINGS_FILE, PROTOTYPES_FILE
    from mccl_core.steps.common import ValidatedData
    from mccl_core.steps.extract import BACKBONE_INIT_FILE
    from mccl_core.steps.train import TrainInputsPaths, run_train
    from mccl_core.tracking.steps import TrackingOptions
    from mccl_core.training.config import TrainConfig

    params, folders = upstream
    # Pods train 2 optimiser steps per epoch: what these tests prove is in the launch, the staging
    # and the resume, not in the number of steps.
    train_section = {"epochs": 1, "batch_size": 16, "image_size": 32, "num_workers": 0, "device": "cpu",
                     "max_steps_per_epoch": 2, **train}  # fmt: skip
    validated = ValidatedData.load(folders["validate"], folders=folders)
    paths = TrainInputsPaths(folders["cluster"] / PROTOTYPES_FILE, folders["extract"] / BACKBONE_INIT_FILE,
                             folders["cluster"] / EMBEDDINGS_FILE)  # fmt: skip
    launch_cfg = LaunchConfig.from_dict(launch)
    return run_train(ModelConfig.from_dict(params["model"]), TrainConfig.from_dict(train_section), launch_cfg,
                     validated, paths, out, TrackingOptions(enabled=False), submit=cluster)  # fmt: skip


def _weights(bundle: Path) -> dict:
    import torch

    return torch.load(bundle / "model.pt", map_location="cpu", weights_only=True)


def _launch(staging: str, **values: Any) -> dict:
    return {"backend": "trainjob", "nnodes": 1,
            "kubernetes": {"staging_uri": staging, "checkpoint_upload_s": 0.5}, **values}  # fmt: skip


@pytest.mark.slow
def test_runs_with_other_params_never_resume_each_other(upstream, s3, tmp_path, monkeypatch):
    """Run A, then run B (other lr) with the same staging_uri - even with A's checkpoints planted
    under B's own key - B trains from scratch and does not return A's weights."""
    import torch

    from mccl_core.launch.s3 import list_keys
    from mccl_core.launch.staging import download_prefix, upload_dir

    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    staging = "s3://mccl/staging"
    cluster_a = LocalCluster(tmp_path / "a", env)
    a = _train(upstream, tmp_path / "out-a", cluster_a, _launch(staging), lr=1e-3)
    keys = {k.split("/")[1] for k in list_keys(s3.client(), "mccl", "staging/")}
    assert len(keys) == 1  # A's own prefix
    (key_a,) = keys
    # Plant A's checkpoints under every key B could use: B's guard must refuse them.
    download_prefix(f"{staging}/{key_a}/outputs/checkpoints", tmp_path / "a-ckpt")
    from mccl_core.steps import train as train_step

    planted = []
    original_key = train_step.staging_key

    def planting_key(fingerprint: dict) -> str:
        key = original_key(fingerprint)
        if key != key_a and key not in planted:
            upload_dir(tmp_path / "a-ckpt", f"{staging}/{key}/outputs/checkpoints")
            planted.append(key)
        return key

    monkeypatch.setattr(train_step, "staging_key", planting_key)
    cluster_b = LocalCluster(tmp_path / "b", env)
    b = _train(upstream, tmp_path / "out-b", cluster_b, _launch(staging), lr=3e-3)
    assert planted and planted[0] != key_a  # other params -> another prefix
    log_b = "\n".join(cluster_b.logs)
    assert "were written for other inputs or params" in log_b and "resumed from" not in log_b
    assert [r["epoch"] for r in b.history] == [0]
    wa, wb = _weights(a.model_dir), _weights(b.model_dir)
    assert any(not torch.equal(wa[k], wb[k]) for k in wa), "run B returned run A's weights"
    # B's prefix now holds B's own checkpoint record, not A's.
    record_b = json.loads((tmp_path / "out-b" / "checkpoints" / "inputs.json").read_text())
    download_prefix(f"{staging}/{planted[0]}/outputs/checkpoints", tmp_path / "b-remote")
    assert json.loads((tmp_path / "b-remote" / "inputs.json").read_text())["sha256"] == record_b["sha256"]
    assert not list((tmp_path / "b-remote").glob("*.stale.pt"))


@pytest.mark.slow
def test_a_killed_pod_resumes_its_own_uploaded_epoch(upstream, s3, tmp_path, monkeypatch):
    """Node 0 uploads each epoch's checkpoint while training; SIGKILL it after one is uploaded, and
    the restarted pod (empty workspace) resumes that epoch instead of starting over."""
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cluster = LocalCluster(tmp_path / "pods", env, kill_after_upload=True)
    epochs = 4  # short epochs (2 steps): enough of them left after the first upload to kill the pod
    result = _train(upstream, tmp_path / "out", cluster, _launch("s3://mccl/restart"), epochs=epochs, lr=2e-3)
    killed, restarted = cluster.logs[0], cluster.logs[-1]
    assert cluster.killed_after_epoch is not None and cluster.killed_after_epoch < epochs - 1
    match = re.search(r"resumed from \S+ after epoch (\d+)", restarted)
    assert match, restarted[-3000:]
    assert int(match.group(1)) >= cluster.killed_after_epoch
    assert "checkpoint written" in killed
    assert [r["epoch"] for r in result.history] == list(range(epochs))


def _prototype_gap(single: dict, multi: dict) -> list[tuple[str, float, float]]:
    return [(k, float((single[k] - multi[k]).norm()), float(single[k].norm())) for k in single if ".prototypes_" in k]


@pytest.mark.slow
def test_two_node_processes_give_the_one_node_result(upstream, s3, tmp_path, monkeypatch):
    """A 2-node PyTorchJob (2 node processes on 127.0.0.1, static rendezvous from PET_*) trains the
    same model as a 1-node TrainJob with the same global batch."""
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # As the DDP test: no augmentation, no EMA, frozen BN statistics -> equal updates.
    common = dict(epochs=2, augment=False, ema_decay=0.0, deterministic=False, freeze_bn_stats=True, lr=2e-3)
    one = _train(upstream, tmp_path / "one", LocalCluster(tmp_path / "p1", env), _launch("s3://mccl/nodes"), **common)
    cluster = LocalCluster(tmp_path / "p2", env)
    # The 2 nodes as a Training Operator v1 PyTorchJob (1 master + 1 worker): both launchers' manifests
    # run end to end, the TrainJob's in the tests above.
    two = _train(upstream, tmp_path / "two", cluster, _launch("s3://mccl/nodes", nnodes=2, backend="pytorchjob"),
                 **common)  # fmt: skip
    assert [r["epoch"] for r in two.history] == [0, 1]
    assert [r["replica_prototype_max_diff"] for r in two.history] == [pytest.approx(0.0, abs=1e-6)] * 2
    for s, d in zip(one.history, two.history):
        assert d["train_loss"] == pytest.approx(s["train_loss"], rel=1e-3)
    w1, w2 = _weights(one.model_dir), _weights(two.model_dir)
    gaps = _prototype_gap(w1, w2)
    assert gaps
    for key, gap, norm in gaps:
        assert gap < 1e-3 * norm, f"{key}: 1-node and 2-node prototypes differ by {gap}"
    assert one.final_metrics["val_map"] == pytest.approx(two.final_metrics["val_map"], abs=0.02)
