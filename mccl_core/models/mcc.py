"""MCC: multi-grained compositional clue learning.

Each patch token x_n of a stage is softly assigned to the stage's class-owned prototypes,

    a_{n,k} = softmax_k( cos(x_n, p_k) / t ),     x_hat_n = sum_k a_{n,k} p_k,

and the rebuilt token x_hat is what the decoder sees, so every token is expressed as a composition
of class clues: alone (the paper), mixed with the normalised token by ``residual`` (fixed or
learned per stage), or next to it (``combine="concat"``: ``[x, x_hat]``, twice the channels).

Prototypes are buffers, not parameters: they receive no gradient and move only by the online
clustering update after each optimiser step (ProtoSeg / PIP-Net lineage). For prototype k owned by
class c, using only patches of images that carry c:

    m_k = normalise( sum_n a_{n,k} x_n ),   p_k <- normalise( l p_k + (1 - l) m_k ).

The update is one masked matmul per stage (``(a * carries_owner)^T @ x``); under
``torch.distributed`` the sums, counts and health statistics are all-reduced in a single call, so
every rank applies the same update and prototypes stay identical across replicas.

All similarity/softmax/update math runs in float32 with autocast disabled: bf16 cosine
similarities divided by t = 0.1 would quantise the softmax logits to ~0.08 steps.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .cpi import PrototypeBank

logger = logging.getLogger(__name__)


@dataclass
class ClueState:
    """Detached per-stage inputs of the momentum update.

    ``tokens[i]``: L2-normalised patch tokens ``[B, N_i, C_i]`` (float32);
    ``assignments[i]``: soft assignments ``[B, N_i, K_i]`` (float32, rows sum to 1).
    """

    stages: tuple[str, ...]
    tokens: list[Tensor]
    assignments: list[Tensor]


class CompositionalClues(nn.Module):
    """Soft assignment to class prototypes, token reconstruction and momentum prototype update.

    Args:
        bank: initial prototypes (CPI or random) and owner class per prototype, per stage.
        temperature: softmax temperature t of the cosine assignment.
        residual: weight r of the normalised input token in ``(1 - r) x_hat + r x``.
        learn_residual: r is ``sigmoid(w_s)``, one learned ``w_s`` per stage started at ``residual``
            (which must then lie in (0, 1)): when the clue rebuild loses what the decoder needs (many
            classes, few patches per image), training can hand the token back instead of stalling.
        momentum: l in ``p <- l p + (1 - l) m`` (1.0 freezes the prototypes).
        update: how patches weigh in ``m_k``: ``soft`` by their assignment ``a_{n,k}`` (the formula
            above), ``hard`` only for their nearest prototype among the carried classes' (online
            k-means, as ProtoSeg's hard assignment). The forward rebuild is soft either way.
        combine: ``mix`` returns ``(1 - r) x_hat + r x``; ``concat`` returns ``[x, x_hat]`` (``residual``
            must be 0): the rebuild can only add to the token, so the decoder can learn MCC off.
    """

    _patches_seen: Tensor  # buffer registered in __init__

    def __init__(
        self,
        bank: PrototypeBank,
        temperature: float = 0.1,
        residual: float = 0.0,
        momentum: float = 0.999,
        update: str = "soft",
        learn_residual: bool = False,
        combine: str = "mix",
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if combine not in ("mix", "concat"):
            raise ValueError(f"combine must be 'mix' or 'concat', got {combine!r}")
        if combine == "concat" and (residual > 0 or learn_residual):
            raise ValueError("combine='concat' keeps the whole token: residual must be 0, learn_residual False")
        self.combine = combine
        if update not in ("soft", "hard"):
            raise ValueError(f"update must be 'soft' or 'hard', got {update!r}")
        self.update = update
        self.stages: tuple[str, ...] = tuple(bank.stages)
        self.num_classes = bank.num_classes
        self.temperature = float(temperature)
        self.residual = float(residual)
        self.momentum = float(momentum)
        self.residual_logits: nn.Parameter | None = None
        if learn_residual:
            if not 0.0 < residual < 1.0:
                raise ValueError(f"learn_residual needs a starting residual in (0, 1), got {residual}")
            start = math.log(residual / (1.0 - residual))
            self.residual_logits = nn.Parameter(torch.full((len(bank.stages),), start))
        for stage in self.stages:
            protos = F.normalize(bank.prototypes[stage].detach().float().clone(), dim=1)
            owners = bank.owners[stage].detach().long().clone()
            self.register_buffer(f"prototypes_{stage}", protos)
            self.register_buffer(f"owners_{stage}", owners)
            # Derived / per-epoch state: not part of checkpoints.
            onehot = F.one_hot(owners, self.num_classes).float()  # [K, C]
            self.register_buffer(f"owner_onehot_{stage}", onehot, persistent=False)
            k = protos.shape[0]
            self.register_buffer(f"usage_sum_{stage}", torch.zeros(k, dtype=torch.float64), persistent=False)
            self.register_buffer(f"argmax_hits_{stage}", torch.zeros(k, dtype=torch.float64), persistent=False)
            # patches whose nearest prototype belongs to a class of their image, and that count's chance level
            self.register_buffer(f"owner_hits_{stage}", torch.zeros(2, dtype=torch.float64), persistent=False)
            self.register_buffer(f"epoch_start_{stage}", protos.clone(), persistent=False)
        self.register_buffer("_patches_seen", torch.zeros(len(self.stages), dtype=torch.float64), persistent=False)
        self._updates_since_reset = 0
        self._epoch_start_valid = False
        #: ``torch.compile``d :meth:`momentum_step` (see :meth:`compile_update`); None: eager.
        self._compiled_step: Callable[[list[Tensor], list[Tensor], Tensor], dict[str, Tensor]] | None = None
        self.register_load_state_dict_post_hook(_invalidate_health_after_load)

    # -- accessors -------------------------------------------------------------------------
    def prototypes(self, stage: str) -> Tensor:
        return getattr(self, f"prototypes_{stage}")

    def owners(self, stage: str) -> Tensor:
        return getattr(self, f"owners_{stage}")

    @property
    def stage_channels(self) -> tuple[int, ...]:
        return tuple(int(self.prototypes(s).shape[1]) for s in self.stages)

    @property
    def output_channels(self) -> tuple[int, ...]:
        """Channels per stage of what :meth:`forward` returns (twice the input's under ``concat``)."""
        factor = 2 if self.combine == "concat" else 1
        return tuple(factor * c for c in self.stage_channels)

    def num_prototypes(self, stage: str) -> int:
        return int(self.prototypes(stage).shape[0])

    def residual_weights(self) -> dict[str, float]:
        """The residual weight r per stage (the learned value under ``learn_residual``)."""
        if self.residual_logits is None:
            return {s: self.residual for s in self.stages}
        return {s: float(torch.sigmoid(w)) for s, w in zip(self.stages, self.residual_logits.detach().cpu())}

    def export_bank(self, template: PrototypeBank) -> PrototypeBank:
        """Current prototypes as a :class:`PrototypeBank` (e.g. for interpretability reports)."""
        return PrototypeBank(
            self.stages,
            {s: self.prototypes(s).detach().float().cpu().clone() for s in self.stages},
            {s: self.owners(s).detach().cpu().clone() for s in self.stages},
            template.allocation,
            self.num_classes,
            {**template.metadata, "source": f"{template.metadata.get('source', 'unknown')}+trained"},
        )

    # -- forward ---------------------------------------------------------------------------
    def forward(self, stage_tokens: Sequence[Tensor]) -> tuple[list[Tensor], ClueState]:
        """``stage_tokens[i]``: ``[B, N_i, C_i]`` -> rebuilt tokens (float32) and the update state."""
        if len(stage_tokens) != len(self.stages):
            raise ValueError(f"MCC expects {len(self.stages)} stages {self.stages}, got {len(stage_tokens)}")
        rebuilt_all: list[Tensor] = []
        tokens_all: list[Tensor] = []
        assign_all: list[Tensor] = []
        for i, (stage, tokens) in enumerate(zip(self.stages, stage_tokens)):
            with torch.autocast(device_type=tokens.device.type, enabled=False):
                protos = self.prototypes(stage)
                x = F.normalize(tokens.float(), dim=-1)
                assignments = torch.softmax((x @ protos.T) / self.temperature, dim=-1)
                rebuilt = assignments @ protos
                if self.residual_logits is not None:
                    r = torch.sigmoid(self.residual_logits[i].float())
                    rebuilt = (1.0 - r) * rebuilt + r * x
                elif self.residual > 0:
                    rebuilt = (1.0 - self.residual) * rebuilt + self.residual * x
                if self.combine == "concat":
                    rebuilt = torch.cat((x, rebuilt), dim=-1)
            rebuilt_all.append(rebuilt)
            tokens_all.append(x.detach())
            assign_all.append(assignments.detach())
        return rebuilt_all, ClueState(self.stages, tokens_all, assign_all)

    # -- online clustering update -----------------------------------------------------------
    @torch.no_grad()
    def update_prototypes(self, state: ClueState, labels: Tensor) -> dict[str, Tensor]:
        """Momentum update from one batch; returns per stage the number of prototypes updated
        as a 0-d tensor (left on the device: no host sync in the training step).

        ``labels``: ``[B, num_classes]`` multi-hot or soft (an image carries c when > 0).
        Prototypes whose owner class is absent from the (global) batch stay bit-identical.
        """
        if tuple(state.stages) != self.stages:
            raise ValueError(f"clue state stages {state.stages} do not match MCC stages {self.stages}")
        device = self.prototypes(self.stages[0]).device
        carries = (labels.detach().to(device) > 0).float()
        if carries.ndim != 2 or carries.shape[1] != self.num_classes:
            raise ValueError(f"labels must be [B, {self.num_classes}], got {tuple(labels.shape)}")
        if not self._epoch_start_valid:
            for stage in self.stages:
                getattr(self, f"epoch_start_{stage}").copy_(self.prototypes(stage))
            self._epoch_start_valid = True

        for x in state.tokens:
            if x.shape[0] != carries.shape[0]:
                raise ValueError(f"clue state batch {x.shape[0]} != labels batch {carries.shape[0]}")
        step = self._compiled_step if self._compiled_step is not None else self.momentum_step
        updated = step(list(state.tokens), list(state.assignments), carries)
        self._updates_since_reset += 1
        return updated

    def compile_update(self, mode: str | None = None) -> None:
        """Run the prototype update through ``torch.compile(momentum_step, fullgraph=True)``: its
        ~20 small kernels per stage become a few fused ones (the update is launch-bound on GPU)."""
        self._compiled_step = torch.compile(self.momentum_step, fullgraph=True, mode=mode)

    @torch.no_grad()
    def momentum_step(self, tokens: list[Tensor], assignments: list[Tensor], carries: Tensor) -> dict[str, Tensor]:
        """The tensor part of :meth:`update_prototypes`: moves the prototype buffers in place and
        accumulates the health statistics; returns per stage the number of prototypes moved.

        Pure tensor code with static shapes and no host sync (no Python state is read or
        written), so ``torch.compile(..., fullgraph=True)`` traces it in one graph (tested).
        """
        device = carries.device
        with torch.autocast(device_type=device.type, enabled=False):
            packed: list[Tensor] = []
            shapes: list[tuple[int, int]] = []
            for i, stage in enumerate(self.stages):
                x = tokens[i].to(device, torch.float32)  # [B, N, C]
                a = assignments[i].to(device, torch.float32)  # [B, N, K]
                k, c = self.prototypes(stage).shape
                owner_present = carries @ getattr(self, f"owner_onehot_{stage}").T  # [B, K] in {0,1}
                if self.update == "hard":
                    # Online spherical k-means: each patch moves only its nearest prototype among
                    # those of the classes its image carries. Soft weights pull every prototype of
                    # a class toward the same (background-dominated) class mean: they collapse.
                    eligible = a.masked_fill(owner_present[:, None, :] == 0, -1.0)
                    nearest = F.one_hot(eligible.argmax(dim=-1), k).float()  # [B, N, K]
                    weighted = (nearest * owner_present[:, None, :]).flatten(0, 1)
                else:
                    weighted = (a * owner_present[:, None, :]).flatten(0, 1)  # [B*N, K]
                sums = weighted.T @ x.flatten(0, 1)  # [K, C]
                counts = owner_present.sum(0)  # images carrying the owner class
                usage = a.sum(dim=(0, 1))  # [K]
                # argmax hits via comparison with the row max (deterministic on CUDA, no scatter)
                top = (a >= a.amax(dim=-1, keepdim=True)).float()  # [B, N, K]
                hits = top.sum(dim=(0, 1))
                # owner hit: the top prototype's class is one the image carries; chance: the share of
                # prototypes owned by carried classes (a uniformly random top prototype)
                owner_hit = (top * owner_present[:, None, :]).sum().reshape(1)
                owner_chance = (owner_present.sum(1) * (a.shape[1] / k)).sum().reshape(1)
                # new_full is a device fill; torch.tensor(..., device=cuda) would be a blocking copy
                patches = a.new_full((1,), float(a.shape[0] * a.shape[1]))
                packed += [sums.flatten(), counts, usage, hits, owner_hit, owner_chance, patches]
                shapes.append((k, c))
            flat = torch.cat(packed)
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)

            updated: dict[str, Tensor] = {}
            offset = 0
            for i, (stage, (k, c)) in enumerate(zip(self.stages, shapes)):
                sums = flat[offset : offset + k * c].view(k, c)
                offset += k * c
                counts = flat[offset : offset + k]
                usage = flat[offset + k : offset + 2 * k]
                hits = flat[offset + 2 * k : offset + 3 * k]
                offset += 3 * k
                owner = flat[offset : offset + 2]
                patches = flat[offset + 2]
                offset += 3

                protos = self.prototypes(stage)
                norms = sums.norm(dim=1, keepdim=True)
                present = (counts > 0) & (norms.squeeze(1) > 1e-12)
                means = sums / norms.clamp_min(1e-12)
                moved = F.normalize(self.momentum * protos + (1.0 - self.momentum) * means, dim=1)
                protos.copy_(torch.where(present[:, None], moved, protos))
                updated[stage] = present.sum()

                getattr(self, f"usage_sum_{stage}").add_(usage.double())
                getattr(self, f"argmax_hits_{stage}").add_(hits.double())
                getattr(self, f"owner_hits_{stage}").add_(owner.double())
                self._patches_seen[i] += patches.double()
        return updated

    # -- health ------------------------------------------------------------------------------
    @torch.no_grad()
    def health(self, reset: bool = False) -> dict[str, float]:
        """Per-stage prototype health accumulated since the last reset (e.g. one epoch).

        ``{stage}/usage_entropy``: entropy (nats) of the mean assignment distribution;
        ``{stage}/usage_entropy_norm``: the same divided by log K (1 = uniform use);
        ``{stage}/never_assigned``: prototypes that were never any patch's argmax (collapse);
        ``{stage}/mean_drift``, ``{stage}/max_drift``: L2 distance of prototypes from their value
        at the first update after the reset (0 = static prototypes). NaN entropy = no updates yet;
        ``{stage}/owner_hit``: share of patches whose nearest prototype belongs to a class of their
        image, ``{stage}/owner_hit_chance`` the same for a uniformly random prototype;
        ``{stage}/residual``: the learned residual weight (``learn_residual`` only).
        With ``reset=True`` the accumulators are cleared and the next update re-snapshots.
        """
        report: dict[str, float] = {"updates": float(self._updates_since_reset)}
        for i, stage in enumerate(self.stages):
            k = self.num_prototypes(stage)
            patches = float(self._patches_seen[i])
            usage = getattr(self, f"usage_sum_{stage}")
            if patches > 0:
                q = (usage / usage.sum()).clamp_min(0)
                entropy = float(-(q[q > 0] * q[q > 0].log()).sum())
            else:
                entropy = math.nan
            drift = (
                (self.prototypes(stage) - getattr(self, f"epoch_start_{stage}")).norm(dim=1)
                if self._epoch_start_valid
                else torch.zeros(k, device=usage.device)
            )
            report[f"{stage}/prototypes"] = float(k)
            report[f"{stage}/usage_entropy"] = entropy
            report[f"{stage}/usage_entropy_norm"] = entropy / math.log(k) if k > 1 else math.nan
            hits = getattr(self, f"argmax_hits_{stage}")
            report[f"{stage}/never_assigned"] = float((hits == 0).sum()) if patches > 0 else math.nan
            report[f"{stage}/mean_drift"] = float(drift.mean())
            report[f"{stage}/max_drift"] = float(drift.max())
            report[f"{stage}/patches"] = patches
            owner = getattr(self, f"owner_hits_{stage}")
            report[f"{stage}/owner_hit"] = float(owner[0]) / patches if patches > 0 else math.nan
            report[f"{stage}/owner_hit_chance"] = float(owner[1]) / patches if patches > 0 else math.nan
        if self.residual_logits is not None:
            for stage, r in self.residual_weights().items():
                report[f"{stage}/residual"] = r
        if reset:
            self.reset_health()
        return report

    def reset_health(self) -> None:
        for stage in self.stages:
            getattr(self, f"usage_sum_{stage}").zero_()
            getattr(self, f"argmax_hits_{stage}").zero_()
            getattr(self, f"owner_hits_{stage}").zero_()
        self._patches_seen.zero_()
        self._updates_since_reset = 0
        self._epoch_start_valid = False

    def extra_repr(self) -> str:
        sizes = ", ".join(f"{s}: {self.num_prototypes(s)}x{c}" for s, c in zip(self.stages, self.stage_channels))
        residual = f"learned from {self.residual}" if self.residual_logits is not None else str(self.residual)
        return (
            f"prototypes=({sizes}), temperature={self.temperature}, residual={residual}, "
            f"combine={self.combine}, momentum={self.momentum}"
        )


#: Thresholds of :func:`mcc_warnings` (checked after every epoch).
NEVER_ASSIGNED_LIMIT = 0.5  # share of a stage's prototypes that were never any patch's nearest
USAGE_ENTROPY_LIMIT = 0.5  # normalised entropy of prototype usage (1 = uniform)
OWNER_HIT_FACTOR = 1.5  # owner hit below this multiple of its chance level: assignment ignores the labels

_COMPARE_ON_VAL = "compare on val: python bench/ablations.py --variants mccl,no_mcc --seeds 0,1,2"
MCC_ADVICE = (
    "MCC may be erasing what the decoder needs (seen with many classes and few patches per image). Try "
    "model.mcc.combine: concat with model.mcc.residual: 0 (the decoder gets the token next to its rebuild, "
    "which then cannot erase it), fewer prototypes (model.cpi.prototypes_per_class), a larger "
    "train.image_size (more patches per image) or model.mcc.enabled: false, and " + _COMPARE_ON_VAL
)
#: Under ``combine: concat`` the decoder still sees every token: a failing stage costs its clues.
MCC_ADVICE_CONCAT = (
    "With model.mcc.combine: concat the decoder still sees every token, so this stage's clues add little "
    "rather than erase anything. Fewer prototypes (model.cpi.prototypes_per_class) or a larger "
    "train.image_size (more patches per image) may give it working clues; " + _COMPARE_ON_VAL
)


def mcc_advice(combine: str) -> str:
    """What the guard suggests after its warnings, for the model's ``mcc.combine``."""
    return MCC_ADVICE_CONCAT if combine == "concat" else MCC_ADVICE


def mcc_warnings(health: dict[str, float]) -> list[str]:
    """What is wrong with MCC, per stage, from one epoch's :meth:`CompositionalClues.health`:
    prototypes never assigned, usage entropy, owner hit near chance. Empty when healthy."""
    problems = []
    stages = sorted({k.split("/")[0] for k in health if k.endswith("/prototypes")})
    for stage in stages:
        k = health[f"{stage}/prototypes"]
        never = health.get(f"{stage}/never_assigned", math.nan)
        entropy = health.get(f"{stage}/usage_entropy_norm", math.nan)
        hit = health.get(f"{stage}/owner_hit", math.nan)
        chance = health.get(f"{stage}/owner_hit_chance", math.nan)
        found = []
        if never > NEVER_ASSIGNED_LIMIT * k:
            found.append(f"{never:.0f} of {k:.0f} prototypes were never a patch's nearest")
        if entropy < USAGE_ENTROPY_LIMIT:
            found.append(f"usage entropy {entropy:.2f} (1 = every prototype used alike)")
        if hit < OWNER_HIT_FACTOR * chance:
            found.append(f"owner hit {hit:.3f} against {chance:.3f} by chance (a patch's nearest prototype "
                         "rarely belongs to a class of its image)")  # fmt: skip
        if found:
            problems.append(f"MCC stage {stage}: " + "; ".join(found))
    return problems


def new_stage_warnings(warnings: Sequence[str], earlier: Iterable[str]) -> list[str]:
    """The warnings of :func:`mcc_warnings` for stages no ``earlier`` warning named: the guard
    checks every epoch but speaks once per stage, when its problem first shows."""
    named = {w.split(":")[0] for w in earlier}
    return [w for w in warnings if w.split(":")[0] not in named]


def _invalidate_health_after_load(module: nn.Module, incompatible_keys: object) -> None:
    """Loaded prototypes/owners replace the constructed ones: refresh derived state."""
    if isinstance(module, CompositionalClues):
        for stage in module.stages:
            onehot = F.one_hot(module.owners(stage).long(), module.num_classes).to(module.prototypes(stage))
            getattr(module, f"owner_onehot_{stage}").copy_(onehot)
        module.reset_health()
