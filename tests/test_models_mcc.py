"""MCC: soft assignment/reconstruction, momentum update, health, DDP-identical prototypes."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from mccl_core.models import AllocationRow, CompositionalClues, CPIConfig, PrototypeBank, random_prototype_bank

NUM_CLASSES = 4
STAGE_CHANNELS = {"layer3": 12, "layer4": 20}


def _bank(seed: int = 0) -> PrototypeBank:
    # counts -> K = (3, 6, 12, 3)-ish allocation, random unit prototypes per stage
    return random_prototype_bank(STAGE_CHANNELS, [40, 20, 10, 40], CPIConfig(seed=seed, prototypes_per_class=6.0))


def _batch(seed: int, batch: int = 5, present: tuple[int, ...] | None = None):
    g = torch.Generator().manual_seed(seed)
    tokens = [torch.randn(batch, n, c, generator=g) * 3 for n, c in ((16, 12), (4, 20))]
    if present is None:
        labels = (torch.rand(batch, NUM_CLASSES, generator=g) < 0.4).float()
    else:
        labels = torch.zeros(batch, NUM_CLASSES)
        labels[:, list(present)] = 1.0
    return tokens, labels


def test_assignment_rows_sum_to_one_and_rebuild_is_a_times_p():
    mcc = CompositionalClues(_bank(), temperature=0.1)
    tokens, _ = _batch(0)
    rebuilt, state = mcc(tokens)
    for i, stage in enumerate(mcc.stages):
        a = state.assignments[i]
        protos = mcc.prototypes(stage)
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:2]))
        torch.testing.assert_close(rebuilt[i], a @ protos)
        x = F.normalize(tokens[i], dim=-1)
        torch.testing.assert_close(state.tokens[i], x)
        torch.testing.assert_close(a, torch.softmax(x @ protos.T / 0.1, dim=-1))
        assert rebuilt[i].dtype == torch.float32


def test_residual_mixes_the_normalised_token():
    mcc = CompositionalClues(_bank(), temperature=0.1, residual=0.25)
    tokens, _ = _batch(1)
    rebuilt, state = mcc(tokens)
    expected = 0.75 * (state.assignments[0] @ mcc.prototypes("layer3")) + 0.25 * F.normalize(tokens[0], dim=-1)
    torch.testing.assert_close(rebuilt[0], expected)


def test_concat_keeps_the_token_next_to_its_rebuild():
    from mccl_core.config import ConfigError
    from mccl_core.models import ModelConfig

    mcc = CompositionalClues(_bank(), temperature=0.1, combine="concat")
    assert mcc.output_channels == (24, 40) and mcc.stage_channels == (12, 20)
    tokens, _ = _batch(1)
    out, state = mcc(tokens)
    pure, _ = CompositionalClues(_bank(), temperature=0.1)(tokens)
    for i in range(2):
        c = mcc.stage_channels[i]
        torch.testing.assert_close(out[i][..., :c], F.normalize(tokens[i], dim=-1))
        torch.testing.assert_close(out[i][..., c:], pure[i])
        torch.testing.assert_close(out[i][..., c:], state.assignments[i] @ mcc.prototypes(mcc.stages[i]))
    with pytest.raises(ValueError, match="residual must be 0"):
        CompositionalClues(_bank(), residual=0.5, combine="concat")
    with pytest.raises(ConfigError, match="mcc.combine=concat keeps the whole token"):
        ModelConfig.from_dict({"mcc": {"combine": "concat", "residual": 0.5}})
    with pytest.raises(ConfigError, match="mcc.combine='sum'"):
        ModelConfig.from_dict({"mcc": {"combine": "sum"}})


def _reference_update(protos, owners, x, a, labels, momentum):
    """Loop-based reading of the update rule in docs/model.md (independent of the matmul implementation)."""
    out = protos.clone()
    for k in range(protos.shape[0]):
        images = labels[:, owners[k]] > 0
        if not images.any():
            continue
        m = (a[images][..., k, None] * x[images]).sum(dim=(0, 1))
        m = m / m.norm()
        p = momentum * protos[k] + (1 - momentum) * m
        out[k] = p / p.norm()
    return out


def test_momentum_update_moves_only_present_classes():
    mcc = CompositionalClues(_bank(), temperature=0.1, momentum=0.5)
    tokens, labels = _batch(2, present=(1, 2))
    before = {s: mcc.prototypes(s).clone() for s in mcc.stages}
    _, state = mcc(tokens)
    updated = mcc.update_prototypes(state, labels)
    for i, stage in enumerate(mcc.stages):
        owners = mcc.owners(stage)
        after = mcc.prototypes(stage)
        present = (owners == 1) | (owners == 2)
        assert int(updated[stage]) == int(present.sum())
        assert torch.equal(after[~present], before[stage][~present])  # bit-identical
        assert (after[present] - before[stage][present]).norm(dim=1).min() > 1e-3
        torch.testing.assert_close(after.norm(dim=1), torch.ones(len(owners)))
        expected = _reference_update(before[stage], owners, state.tokens[i], state.assignments[i], labels, 0.5)
        torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-6)


def test_momentum_one_freezes_and_prototypes_are_buffers():
    mcc = CompositionalClues(_bank(), momentum=1.0)
    tokens, labels = _batch(3)
    before = mcc.prototypes("layer3").clone()
    _, state = mcc(tokens)
    mcc.update_prototypes(state, labels)
    torch.testing.assert_close(mcc.prototypes("layer3"), before)
    assert list(mcc.parameters()) == []
    state_keys = set(mcc.state_dict())
    assert {"prototypes_layer3", "owners_layer3", "prototypes_layer4", "owners_layer4"} == state_keys


def test_no_gradient_reaches_prototypes_but_tokens_get_one():
    mcc = CompositionalClues(_bank())
    tokens, _ = _batch(4)
    tokens = [t.requires_grad_() for t in tokens]
    rebuilt, state = mcc(tokens)
    (rebuilt[0].square().sum() + rebuilt[1].sum()).backward()
    assert tokens[0].grad is not None and tokens[0].grad.abs().sum() > 0
    assert not mcc.prototypes("layer3").requires_grad
    assert not state.assignments[0].requires_grad and not state.tokens[0].requires_grad


def test_health_tracks_entropy_unused_prototypes_and_drift():
    mcc = CompositionalClues(_bank(), temperature=0.1, momentum=0.9)
    empty = mcc.health()
    assert math.isnan(empty["layer3/usage_entropy"]) and empty["updates"] == 0
    k = mcc.num_prototypes("layer3")
    usage, hits = torch.zeros(k), torch.zeros(k)
    start = mcc.prototypes("layer3").clone()
    for seed in range(3):
        tokens, labels = _batch(10 + seed)
        _, state = mcc(tokens)
        usage += state.assignments[0].sum(dim=(0, 1))
        hits += torch.bincount(state.assignments[0].argmax(-1).flatten(), minlength=k)
        mcc.update_prototypes(state, labels)
    report = mcc.health(reset=True)
    q = usage / usage.sum()
    assert report["updates"] == 3 and report["layer3/patches"] == 3 * 5 * 16
    assert report["layer3/usage_entropy"] == pytest.approx(float(-(q * q.log()).sum()), rel=1e-5)
    assert report["layer3/usage_entropy_norm"] == pytest.approx(report["layer3/usage_entropy"] / math.log(k))
    assert report["layer3/never_assigned"] == int((hits == 0).sum())
    drift = (mcc.prototypes("layer3") - start).norm(dim=1)
    assert report["layer3/mean_drift"] == pytest.approx(float(drift.mean()), rel=1e-5)
    assert report["layer3/mean_drift"] > 0 and report["layer3/max_drift"] >= report["layer3/mean_drift"]
    after_reset = mcc.health()
    assert after_reset["updates"] == 0 and after_reset["layer3/mean_drift"] == 0.0


def test_never_assigned_counts_prototypes_no_patch_prefers():
    bank = _bank()
    protos = bank.prototypes["layer3"].clone()
    # make every token identical to prototype 0 -> only prototype 0 wins any argmax
    mcc = CompositionalClues(bank, temperature=0.1)
    tokens, labels = _batch(5)
    tokens[0] = protos[0].expand_as(tokens[0]).clone()
    _, state = mcc(tokens)
    mcc.update_prototypes(state, labels)
    report = mcc.health()
    assert report["layer3/never_assigned"] == mcc.num_prototypes("layer3") - 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        mcc = CompositionalClues(_bank(), temperature=0.1, momentum=0.5)
        tokens, labels = _batch(100 + rank)  # different data per rank
        _, state = mcc(tokens)
        mcc.update_prototypes(state, labels)
        torch.save(
            {s: mcc.prototypes(s) for s in mcc.stages} | {"health": mcc.health()},
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes
def test_ddp_update_gives_identical_prototypes_equal_to_concatenated_batch(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    single = CompositionalClues(_bank(), temperature=0.1, momentum=0.5)
    batches = [_batch(100), _batch(101)]
    tokens = [torch.cat([b[0][i] for b in batches]) for i in range(2)]
    labels = torch.cat([b[1] for b in batches])
    before = single.prototypes("layer3").clone()
    _, state = single(tokens)
    single.update_prototypes(state, labels)
    for stage in single.stages:
        assert torch.equal(r0[stage], r1[stage])  # every replica holds identical prototypes
        torch.testing.assert_close(r0[stage], single.prototypes(stage), rtol=1e-5, atol=1e-6)
    assert not torch.equal(single.prototypes("layer3"), before)
    assert r0["health"] == r1["health"]
    assert r0["health"]["layer3/patches"] == single.health()["layer3/patches"]


def test_loading_a_state_dict_refreshes_owner_map_and_health():
    source = CompositionalClues(_bank(seed=1), momentum=0.5)
    target = CompositionalClues(_bank(seed=2), momentum=0.5)
    wrapper = torch.nn.ModuleDict({"clues": target})  # hooks must fire when loaded as a submodule
    tokens, labels = _batch(7)
    _, state = target(tokens)
    target.update_prototypes(state, labels)
    state_dict = source.state_dict()
    state_dict["owners_layer3"] = state_dict["owners_layer3"].flip(0)
    wrapper.load_state_dict({f"clues.{k}": v for k, v in state_dict.items()})
    assert torch.equal(target.prototypes("layer3"), source.prototypes("layer3"))
    expected = F.one_hot(state_dict["owners_layer3"], NUM_CLASSES).float()
    assert torch.equal(target.owner_onehot_layer3, expected)
    assert target.health()["updates"] == 0


def test_hard_update_keeps_a_class_prototypes_on_their_clusters_where_soft_collapses():
    """One class, two token clusters (e0, e1) and a third direction of another class. With a
    spread-out assignment the soft update pulls both prototypes of the class toward the class mean;
    the hard update (each patch moves only its nearest eligible prototype) keeps one per cluster."""
    dim = 8
    eye = torch.eye(dim)
    protos = F.normalize(torch.stack([eye[0] + 0.3 * eye[2], eye[1] + 0.3 * eye[2], eye[3]]), dim=1)
    bank = PrototypeBank(
        ("layer4",), {"layer4": protos}, {"layer4": torch.tensor([0, 0, 1])},
        (AllocationRow(0, "a", 10, 2), AllocationRow(1, "b", 10, 1)), 2, {"source": "test"},
    )  # fmt: skip
    tokens = torch.cat([eye[0].expand(10, dim), eye[1].expand(10, dim)])[None]  # [1, 20, 8]
    labels = torch.tensor([[1.0, 0.0]])
    results = {}
    for update in ("soft", "hard"):
        mcc = CompositionalClues(bank, temperature=1.0, momentum=0.5, update=update)  # t = 1: spread
        for _ in range(20):
            _, state = mcc([tokens])
            mcc.update_prototypes(state, labels)
        p = mcc.prototypes("layer4")
        results[update] = (float(p[0] @ eye[0]), float(p[1] @ eye[1]), float(p[0] @ p[1]))
        assert torch.equal(p[2], protos[2])  # class 1 is absent: untouched
    soft_0, soft_1, soft_between = results["soft"]
    hard_0, hard_1, hard_between = results["hard"]
    assert hard_0 > 0.99 and hard_1 > 0.99 and hard_between < 0.01  # one prototype per cluster
    assert soft_between > 0.95  # both drifted to the class mean (e0 + e1) / sqrt(2)
    with pytest.raises(ValueError, match="update"):
        CompositionalClues(bank, update="sinkhorn")


def test_owner_hit_and_its_chance_level():
    """Patches equal to a prototype of a carried class hit their owner; of an absent class, never."""
    bank = _bank()
    mcc = CompositionalClues(bank, temperature=0.05)
    owners = mcc.owners("layer3")
    k = mcc.num_prototypes("layer3")
    proto_of = {c: int((owners == c).nonzero()[0]) for c in range(NUM_CLASSES)}
    tokens, _ = _batch(3)
    tokens[0] = mcc.prototypes("layer3")[proto_of[1]].expand_as(tokens[0]).clone()
    for carried, expected in (((1,), 1.0), ((0, 2), 0.0)):
        labels = torch.zeros(tokens[0].shape[0], NUM_CLASSES)
        labels[:, list(carried)] = 1.0
        _, state = mcc(tokens)
        mcc.update_prototypes(state, labels)
        report = mcc.health(reset=True)
        assert report["layer3/owner_hit"] == pytest.approx(expected)
        share = float(sum((owners == c).sum() for c in carried)) / k
        assert report["layer3/owner_hit_chance"] == pytest.approx(share)


def test_the_guard_names_a_collapsed_stage_and_passes_a_healthy_one():
    from mccl_core.models.mcc import mcc_advice, mcc_warnings, new_stage_warnings

    bank = _bank()
    mcc = CompositionalClues(bank, temperature=0.1)
    healthy_tokens, labels = _batch(7, batch=8)
    # healthy: image i carries class i % 4 and its patches lie near that class's prototypes
    owners = mcc.owners("layer3")
    labels = F.one_hot(torch.arange(8) % NUM_CLASSES, NUM_CLASSES).float()
    for i in range(8):
        own = mcc.prototypes("layer3")[owners == i % NUM_CLASSES]
        near = own[torch.arange(16) % len(own)] + 0.01 * torch.randn(16, own.shape[1])
        healthy_tokens[0][i] = near
    _, state = mcc(healthy_tokens)
    mcc.update_prototypes(state, labels)
    healthy = mcc.health(reset=True)
    assert healthy["layer3/owner_hit"] == 1.0 and healthy["layer3/never_assigned"] == 0
    assert [w for w in mcc_warnings(healthy) if "layer3" in w] == []
    # every layer3 patch on one prototype of a class no image carries: collapse + owner hit 0
    absent = 3
    tokens = [t.clone() for t in healthy_tokens]
    tokens[0] = mcc.prototypes("layer3")[int((owners == absent).nonzero()[0])].expand_as(tokens[0]).clone()
    labels[:, absent] = 0.0
    labels[:, 0] = 1.0
    _, state = mcc(tokens)
    mcc.update_prototypes(state, labels)
    (warning,) = [w for w in mcc_warnings(mcc.health()) if "layer3" in w]
    k = mcc.num_prototypes("layer3")
    assert f"{k - 1} of {k} prototypes were never a patch's nearest" in warning
    assert "usage entropy 0.0" in warning and "owner hit 0.000 against" in warning
    # the advice fits the model: a mix is told about concat; concat is told its tokens are safe
    assert "model.mcc.combine: concat with model.mcc.residual: 0" in mcc_advice("mix")
    assert "still sees every token" in mcc_advice("concat") and "combine: concat with" not in mcc_advice("concat")
    assert all("bench/ablations.py" in mcc_advice(c) for c in ("mix", "concat"))
    # The loop checks every epoch and speaks once per stage: a collapse after a healthy first epoch
    # is reported when it shows, and not again in the epochs after.
    epoch1 = [w for w in mcc_warnings(healthy) if "layer3" in w]
    assert new_stage_warnings([warning], epoch1) == [warning]
    assert new_stage_warnings([warning], [*epoch1, warning]) == []
    other_stage = warning.replace("layer3", "layer4")
    assert new_stage_warnings([warning, other_stage], [warning]) == [other_stage]


def test_learned_residual_starts_at_the_configured_value_and_trains():
    from mccl_core.config import ConfigError
    from mccl_core.models import ModelConfig

    mcc = CompositionalClues(_bank(), temperature=0.1, residual=0.25, learn_residual=True)
    assert mcc.residual_weights() == pytest.approx({"layer3": 0.25, "layer4": 0.25})
    tokens, labels = _batch(2)
    rebuilt, state = mcc(tokens)
    fixed, _ = CompositionalClues(_bank(), temperature=0.1, residual=0.25)(tokens)
    for a, b in zip(rebuilt, fixed):
        torch.testing.assert_close(a, b)
    sum(r.sum() for r in rebuilt).backward()
    assert mcc.residual_logits is not None and mcc.residual_logits.grad is not None
    assert mcc.residual_logits.grad.abs().min() > 0
    mcc.update_prototypes(state, labels)
    assert mcc.health()["layer4/residual"] == pytest.approx(0.25)
    with pytest.raises(ConfigError, match="learn_residual needs a starting mcc.residual in"):
        ModelConfig.from_dict({"mcc": {"learn_residual": True, "residual": 0.0}})
