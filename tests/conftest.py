"""Shared fixtures: a tiny demo dataset and its label-embedding cache, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests run on 2 cores; more threads than cores only adds contention.
os.environ.setdefault("OMP_NUM_THREADS", "2")

FIXTURES = Path(__file__).parent / "fixtures"

TINY_MODEL = {
    "backbone": {"arch": "resnet18", "stages": ["layer3", "layer4"], "weights": "none"},
    "pki": {"dim": 32, "decoder_layers": 1, "heads": 2, "ff_dim": 64, "dropout": 0.0},
    "cpi": {"k_max": 4, "max_patches_per_class": 2000},
}


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """96 train / 48 val / 48 test synthetic images of 32 px (Intentonomy schema)."""
    from mccl_core.data import DemoConfig, generate_demo

    root = tmp_path_factory.mktemp("tiny_demo")
    generate_demo(root, DemoConfig(seed=3, n_train=96, n_val=48, n_test=48, image_size=32), show_progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_demo_label_embeddings(tiny_demo, tmp_path_factory) -> Path:
    """Label-embedding cache of the demo classes (the real offline sentence encoder, run once)."""
    from mccl_core.data import DataConfig, load_split
    from mccl_core.models import compute_label_embeddings, label_texts

    train = load_split(DataConfig(source="demo", root=tiny_demo), "train")
    path = tmp_path_factory.mktemp("embeddings") / "label_embeddings.npz"
    compute_label_embeddings(label_texts(train.class_names, train.class_descriptions), path)
    return path
