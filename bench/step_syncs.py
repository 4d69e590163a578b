"""Host-device syncs of the MCCL train step, found with CUDA's sync debug mode.

``torch.cuda.set_sync_debug_mode("warn")`` warns at every op that makes the host wait for the GPU
(``.item()``, ``bool(tensor)``, blocking copies, ...), attributed to the calling Python line. The
loop's step (forward, loss, non-finite watch, backward, clipping, AdamW, OneCycle, prototype
update, EMA, the host read every 10 steps) runs ``--steps`` times and the report counts the
syncs per step and per call site; the expected result is one sync per 10 steps (the read in
``_LossWatch.read``). Needs CUDA: on CPU nothing waits, and CPU-tensor reads are not syncs.

    python bench/step_syncs.py --steps 30
"""

from __future__ import annotations

import argparse
import collections
import json
import warnings

import torch
from train_throughput import synthetic_cooccurrence  # bench/ is the script's folder, first on sys.path

from mccl_core.models import ModelConfig, build_model
from mccl_core.training.ema import ModelEMA
from mccl_core.training.loop import HOST_READ_EVERY, _LossWatch, adamw_kernel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("step_syncs needs CUDA (sync debug mode); nothing to measure on CPU")
        return 2
    device = torch.device("cuda")
    torch.manual_seed(0)
    num_classes = 8
    cfg = ModelConfig.from_dict(
        {
            "backbone": {"arch": "resnet18", "stages": ["layer3", "layer4"], "weights": "none"},
            "use_cpi": False,
            "mcc": {"residual": 0.5},
            "pki": {"dim": 32, "decoder_layers": 1, "heads": 2, "ff_dim": 64},
        }
    )
    embeddings = torch.nn.functional.normalize(torch.randn(num_classes, 384), dim=1).numpy()
    model = build_model(cfg, num_classes, embeddings, synthetic_cooccurrence(num_classes, 0), None).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, **adamw_kernel(device))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-4, total_steps=args.steps + 1)
    ema = ModelEMA(model, 0.999)
    images = torch.randn(4, 3, 32, 32, device=device)
    labels = (torch.rand(4, num_classes, device=device) < 0.3).float()
    watch = _LossWatch(device, epoch=0)

    def step_once(step: int) -> None:
        output = model(images)
        loss = model.loss(output, labels)
        watch.observe(loss, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        scheduler.step()
        model.update_prototypes(output, labels)
        ema.update(model)
        if (step + 1) % HOST_READ_EVERY == 0:
            watch.read()

    step_once(0)  # first-step allocations and lazy initialisation are not the steady state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(1, args.steps + 1):
            step_once(step)
    torch.cuda.set_sync_debug_mode("default")
    sites = collections.Counter(f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message).lower())
    report = {
        "device": torch.cuda.get_device_name(device),
        "steps": args.steps,
        "syncs_per_step": sum(sites.values()) / args.steps,
        "by_call_site": dict(sites),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
