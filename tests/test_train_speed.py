"""Train-step speed work (issue 23): the fast paths compute what the eager / reference paths do.

``train.compile`` and its validation, AdamW's multi-tensor kernels, the on-device non-finite loss
watch, graph-break-free MCC, and one (slow) inductor-compiled train run equal to eager. Speed
itself is measured in bench/, never asserted here.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from mccl_core.config import ConfigError
from mccl_core.models import ModelConfig, build_model
from mccl_core.models.archs import IMAGENET_MEAN, IMAGENET_STD
from mccl_core.training.config import TrainConfig
from mccl_core.training.loop import _LossWatch, adamw_kernel

NUM_CLASSES = 5


def _tiny_mccl(dropout: float = 0.0):
    """ResNet-18 (random weights), MCC on random prototypes, GCN queries, 1-layer decoder."""
    cfg = ModelConfig.from_dict(
        {
            "backbone": {"arch": "resnet18", "stages": ["layer3", "layer4"], "weights": "none"},
            "use_cpi": False,
            "mcc": {"residual": 0.5, "momentum": 0.9},
            "pki": {"dim": 32, "decoder_layers": 1, "heads": 2, "ff_dim": 64, "dropout": dropout},
        }
    )
    counts = np.diag([40.0, 20.0, 10.0, 30.0, 15.0])
    counts[0, 1] = counts[1, 0] = 8.0
    torch.manual_seed(0)
    embeddings = torch.nn.functional.normalize(torch.randn(NUM_CLASSES, 384), dim=1).numpy()
    return build_model(cfg, NUM_CLASSES, embeddings, counts, None)


def _batches(steps: int, batch: int = 4, size: int = 32):
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(batch, 3, size, size, generator=g), (torch.rand(batch, NUM_CLASSES, generator=g) < 0.4).float())
        for _ in range(steps)
    ]


def _train_steps(model, optimizer, batches) -> list[float]:
    """The loop's step order: forward, loss, backward, optimiser step, prototype update."""
    losses = []
    for images, labels in batches:
        output = model(images)
        loss = model.loss(output, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.update_prototypes(output, labels)
        losses.append(float(loss.detach()))
    return losses


def test_compile_option_accepts_its_three_values_and_refuses_others_by_name():
    assert TrainConfig().compile is False and TrainConfig().compile_mode is None  # default: eager
    assert TrainConfig.from_dict({"compile": "default"}).compile_mode == "default"
    assert TrainConfig.from_dict({"compile": "max-autotune"}).compile_mode == "max-autotune"
    for bad in (True, 0, "fast", "false"):
        with pytest.raises(ConfigError, match=r"train\.compile="):
            TrainConfig.from_dict({"compile": bad})
    assert TrainConfig().decode_device == "cpu"
    with pytest.raises(ConfigError, match=r"train\.decode_device="):
        TrainConfig.from_dict({"decode_device": "gpu"})


def test_adamw_kernel_choice_and_foreach_equals_the_per_parameter_loop():
    assert adamw_kernel(torch.device("cuda")) == {"fused": True}
    assert adamw_kernel(torch.device("cpu")) == {"foreach": True}
    reference = _tiny_mccl().train()
    fast = copy.deepcopy(reference)
    batches = _batches(3)
    loop_losses = _train_steps(reference, torch.optim.AdamW(reference.parameters(), 1e-3, foreach=False), batches)
    fast_losses = _train_steps(
        fast, torch.optim.AdamW(fast.parameters(), 1e-3, **adamw_kernel(torch.device("cpu"))), batches
    )
    np.testing.assert_allclose(fast_losses, loop_losses, rtol=1e-5, atol=1e-6)
    assert loop_losses[0] != loop_losses[-1]  # the steps really moved the model
    for (name, p), q in zip(fast.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)


def test_loss_watch_reports_the_first_non_finite_step_at_the_next_read():
    watch = _LossWatch(torch.device("cpu"), epoch=1)
    watch.observe(torch.tensor(0.5), 0)
    assert watch.read() == pytest.approx(0.5)
    for step, value in enumerate([0.4, float("nan"), float("inf"), 0.3], start=1):
        watch.observe(torch.tensor(value), step)  # no read: the step does not wait for the host
    with pytest.raises(FloatingPointError, match=r"non-finite loss nan at epoch 2, step 3"):
        watch.read()


def test_mcc_forward_and_prototype_update_trace_without_graph_breaks():
    """fullgraph=True raises on any graph break; the eager backend traces without compiling C++."""
    model = _tiny_mccl().train()
    assert model.clues is not None
    images, labels = _batches(1)[0]
    traced_forward = torch.compile(model.clues, backend="eager", fullgraph=True)
    tokens, _ = model.maps_to_tokens(model.forward_features(images))
    rebuilt, state = traced_forward(tokens)
    expected, _ = model.clues(tokens)
    for got, want in zip(rebuilt, expected):
        torch.testing.assert_close(got, want)

    eager = copy.deepcopy(model.clues)
    carries = (labels > 0).float()
    moved = torch.compile(model.clues.momentum_step, backend="eager", fullgraph=True)(
        list(state.tokens), list(state.assignments), carries
    )
    eager_moved = eager.momentum_step(list(state.tokens), list(state.assignments), carries)
    assert {k: int(v) for k, v in moved.items()} == {k: int(v) for k, v in eager_moved.items()}
    assert any(int(v) > 0 for v in moved.values())
    for stage in eager.stages:
        torch.testing.assert_close(model.clues.prototypes(stage), eager.prototypes(stage))


def test_whole_mccl_forward_traces_in_one_graph():
    model = _tiny_mccl().eval()
    images, _ = _batches(1)[0]
    with torch.no_grad():
        logits = torch.compile(model, backend="eager", fullgraph=True)(images).logits
        torch.testing.assert_close(logits, model(images).logits)


@pytest.mark.slow
def test_compiled_training_equals_eager_through_the_loop(tiny_demo, tiny_demo_label_embeddings, tmp_path):
    """train.compile=default (inductor, C++ on CPU) through train(): compiled forward + compiled
    prototype update, EMA evaluation, bundle; 2 epochs x 3 steps give eager's losses and val mAP."""
    from conftest import tiny_train_params

    from mccl_core.data import DataConfig
    from mccl_core.models.bundle import load_bundle
    from mccl_core.training.loop import train
    from mccl_core.training.run import TrainArtifacts, prepare_inputs

    history = {}
    for mode in (False, "default"):
        params = tiny_train_params(tiny_demo, tmp_path / str(mode), epochs=2, max_steps_per_epoch=3, compile=mode)
        model_cfg = ModelConfig.from_dict(params["model"])
        train_cfg = TrainConfig.from_dict(params["train"])
        artifacts = TrainArtifacts(label_embeddings=tiny_demo_label_embeddings)
        inputs = prepare_inputs(DataConfig.from_dict(params["data"]), model_cfg, train_cfg, artifacts)
        result = train(model_cfg, train_cfg, inputs)
        load_bundle(result.model_path)  # the compiled run's bundle has the plain state-dict keys
        history[mode] = np.array([(r.train_loss, r.val_map) for r in result.history], dtype=float)
    assert history[False][0, 0] != history[False][1, 0]  # training moved
    np.testing.assert_allclose(history["default"], history[False], rtol=1e-4, atol=1e-5)


def _jpeg_folder(tmp_path, count: int = 3):
    from PIL import Image

    paths = []
    for i in range(count):
        pixels = np.random.default_rng(i).integers(0, 255, (40 + 8 * i, 56, 3), dtype=np.uint8)
        paths.append(tmp_path / f"{i}.jpg")
        Image.fromarray(pixels).save(paths[-1], quality=95)
    return paths


def _dataset(paths, transform=None):
    from mccl_core.data.dataset import ImageRecord, IntentDataset

    records = [ImageRecord(f"r{i}", p, (i % 2,)) for i, p in enumerate(paths)]
    return IntentDataset(records, ["a", "b"], transform=transform)


def test_gpu_decode_path_reads_jpeg_bytes_and_refuses_other_files_and_cpu(tmp_path):
    from mccl_core.data.gpu_decode import EncodedImages, GpuBatchDecoder, GpuDecodeError, collate_encoded
    from mccl_core.training.loop import train

    paths = _jpeg_folder(tmp_path)
    encoded = EncodedImages(_dataset(paths))
    batch = collate_encoded([encoded[0], encoded[2]])
    assert bytes(batch["jpeg"][1].numpy()) == paths[2].read_bytes()
    torch.testing.assert_close(batch["labels"], torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    assert batch["index"].tolist() == [0, 2]
    png = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(png)
    with pytest.raises(GpuDecodeError, match=r"x\.png.*not a JPEG"):
        EncodedImages(_dataset([png]))[0]
    with pytest.raises(GpuDecodeError, match="needs a CUDA device"):
        GpuBatchDecoder(lambda t: t, torch.device("cpu"))
    cfg = TrainConfig(decode_device="cuda", device="cpu", output_dir=tmp_path / "out")
    with pytest.raises(ValueError, match=r"decode_device=cuda .*needs CUDA"):
        train(ModelConfig(), cfg, inputs=None)  # type: ignore[arg-type]  # refused before any input is used


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nvJPEG decoding needs CUDA")
def test_gpu_decoded_batch_matches_the_cpu_loader_with_the_eval_transform(tmp_path):
    from mccl_core.data.gpu_decode import EncodedImages, GpuBatchDecoder, collate_encoded
    from mccl_core.data.transforms import build_transforms

    transform = build_transforms(32, train=False, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    dataset = _dataset(_jpeg_folder(tmp_path), transform)
    cpu = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    batch = collate_encoded([EncodedImages(dataset)[i] for i in range(len(dataset))])
    gpu = GpuBatchDecoder(transform, torch.device("cuda"))(batch["jpeg"])
    assert gpu.device.type == "cuda" and gpu.shape == cpu.shape
    # nvJPEG and libjpeg differ by a few grey levels (IDCT / upsampling): 0.1 after normalisation
    assert (gpu.cpu() - cpu).abs().mean() < 0.1
