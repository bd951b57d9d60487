"""Top-down greedy widening (arXiv:1611.05377; docs/multitask.md, "The method").

At the *active layer* l (the highest layer that is still one trunk) hang n branches from above: one
per task at the top hidden layer, else the branches of layer l + 1. A widening step groups these n
branches into d groups, makes one copy of layer l per group (each copy starts from the existing
filters, so the network computes exactly the same function right after the step), and moves the
junction one layer down. A grouping g_d is scored by

    L(g_d) = L_b(g_d) + λ · L_s(g_d)
    L_b(g_d) = (d − 1) · L_0 · 2^{p_l}                       (branch creation; p_l = pools above layer l)
    L_s(g_d) = (1/d) Σ_groups (1 − within-group affinity)    (separation)

with the within-group affinity of a group of branches the mean-of-min construction over the
branch affinity A_b (:func:`~plugins.multitask.affinity.branch_affinity`):
mean_{k∈group} min_{l∈group, l≠k} A_b(k, l), and 1 for a group of one branch (nothing to separate).
The widening stops when the best d is 1 or layer 0 has been widened (the recipe's loop).

Choices where the description of the method leaves room (docs/multitask.md lists them too):

- The cost's form follows the description of the method as written; it is not checked against the
  paper's own equations, so none are quoted here.
- A branch is never compared with itself in the within-group affinity (a singleton group costs 0);
  hence L_s = 0 at d = n, and as λ → ∞ every branch gets its own copy, while λ = 0 never branches.
  For two groups of tasks with within affinity a_in and cross affinity a_x, splitting them apart at
  layer l pays once λ > L_0 · 2^{p_l} / (a_in − a_x).
- For each d the grouping of least L_s is found by exhaustive search over the set partitions of the
  n branches when n ≤ ``exhaustive_limit`` (8: Bell(8) = 4,140 partitions), else greedily: starting
  from singletons, repeatedly merge the two groups whose merge raises Σ (1 − within) the least (an
  agglomerative clustering, our reading of the paper's "approximate" grouping). Ties go to the
  grouping found first; between candidates, ties go to the smaller d.

Every decision is a :class:`WideningDecision`: JSON-serialisable (log it as a run artifact), and
:func:`widen` replays it on the network it was made for.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import torch
from torch import nn

from plugins.multitask.affinity import branch_affinity
from plugins.multitask.model import BranchedNet, TreeConfig

EXHAUSTIVE_LIMIT = 8
_TIE = 1e-12


@dataclass
class Candidate:
    """The best grouping found for one number of groups d, and its costs."""

    groups: list[list[int]]  # indices of the junction's branches; each ascending, groups by first index
    branch_cost: float  # L_b
    separation_cost: float  # L_s
    total: float  # L = L_b + λ·L_s

    @property
    def d(self) -> int:
        return len(self.groups)


@dataclass
class WideningDecision:
    """One widening step: where, on what evidence, every candidate considered and the one chosen."""

    layer: int  # the active layer, to be copied once per chosen group
    pools_above: int  # p_l
    branches: list[list[int]]  # the junction's branches (task groups) that are being grouped
    task_affinity: list[list[float]]  # A, T×T
    branch_affinity: list[list[float]]  # A_b between the junction's branches, n×n
    lam: float  # λ
    unit_cost: float  # L_0
    search: str  # "exhaustive" or "greedy"
    candidates: list[Candidate]  # one per d = 1..n
    chosen: int  # index of the chosen candidate
    tasks: list[str] = field(default_factory=list)  # task names, for reading the record
    separation: str = "mean"  # how L_s weights the groups (see separation_cost)

    @property
    def groups(self) -> list[list[int]]:
        """The chosen grouping of the junction's branches."""
        return self.candidates[self.chosen].groups

    @property
    def d(self) -> int:
        return len(self.groups)

    @property
    def task_groups(self) -> tuple[tuple[int, ...], ...]:
        """The tasks each copy of the active layer will serve."""
        return tuple(tuple(sorted(t for b in group for t in self.branches[b])) for group in self.groups)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WideningDecision:
        values = dict(data)
        values["candidates"] = [Candidate(**c) for c in values["candidates"]]
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> WideningDecision:
        return cls.from_dict(json.loads(text))


# -- the costs -------------------------------------------------------------------------------------------


def branch_cost(d: int, pools_above: int, unit_cost: float = 1.0) -> float:
    """L_b = (d − 1) · L_0 · 2^{p_l}."""
    return (d - 1) * unit_cost * 2.0**pools_above


def within_affinity(affinity: Sequence[Sequence[float]], group: Sequence[int]) -> float:
    """mean_{k∈group} min_{l∈group, l≠k} A_b(k, l); 1 for a single branch."""
    if len(group) < 2:
        return 1.0
    return sum(min(affinity[k][j] for j in group if j != k) for k in group) / len(group)


SEPARATIONS = ("size", "mean")


def _group_weight(group: Sequence[int], separation: str) -> float:
    if separation not in SEPARATIONS:
        raise ValueError(f"separation must be one of {', '.join(SEPARATIONS)}, got {separation!r}")
    return float(len(group)) if separation == "size" else 1.0


def separation_cost(affinity: Sequence[Sequence[float]], groups: Sequence[Sequence[int]],
                    separation: str = "mean") -> float:
    """L_s: ``mean`` = (1/d) Σ_groups (1 − within-group affinity), as the method describes it; ``size`` =
    (1/n) Σ_groups |group| · (1 − within), each group weighted by the share of the n branches it holds."""
    total = sum(_group_weight(g, separation) * (1.0 - within_affinity(affinity, g)) for g in groups)
    return total / (len(groups) if separation == "mean" else sum(len(g) for g in groups))


# -- the search over groupings ---------------------------------------------------------------------------


def set_partitions(n: int) -> Iterator[list[list[int]]]:
    """Every partition of 0..n−1 into non-empty groups (each ascending, groups ordered by first element)."""
    def grow(i: int, groups: list[list[int]]) -> Iterator[list[list[int]]]:
        if i == n:
            yield [list(g) for g in groups]
            return
        for g in groups:
            g.append(i)
            yield from grow(i + 1, groups)
            g.pop()
        groups.append([i])
        yield from grow(i + 1, groups)
        groups.pop()

    if n:
        yield from grow(0, [])


def best_groupings(affinity: Sequence[Sequence[float]], exhaustive_limit: int = EXHAUSTIVE_LIMIT,
                   separation: str = "mean") -> tuple[list[list[list[int]]], str]:
    """For d = 1..n, the grouping of the n branches into d groups with the least L_s (index d − 1), and the
    search used (``exhaustive`` up to ``exhaustive_limit`` branches, else ``greedy`` agglomeration)."""
    n = len(affinity)
    cache: dict[tuple[int, ...], float] = {}

    def cost(group: Sequence[int]) -> float:  # (weight ×) (1 − within), memoised; L_s ∝ its sum for a fixed d
        key = tuple(group)
        if key not in cache:
            cache[key] = _group_weight(key, separation) * (1.0 - within_affinity(affinity, key))
        return cache[key]

    if n <= exhaustive_limit:
        best: list[tuple[float, list[list[int]]] | None] = [None] * n
        for partition in set_partitions(n):
            total = sum(cost(g) for g in partition)
            entry = best[len(partition) - 1]
            if entry is None or total < entry[0] - _TIE:
                best[len(partition) - 1] = (total, partition)
        return [entry[1] for entry in best if entry is not None], "exhaustive"
    groups = [[i] for i in range(n)]
    found = [[list(g) for g in groups]]
    while len(groups) > 1:
        choice, choice_delta = (0, 1), float("inf")
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                delta = cost(sorted(groups[a] + groups[b])) - cost(groups[a]) - cost(groups[b])
                if delta < choice_delta - _TIE:
                    choice, choice_delta = (a, b), delta
        a, b = choice
        groups[a] = sorted(groups[a] + groups[b])
        del groups[b]
        groups.sort(key=lambda g: g[0])
        found.append([list(g) for g in groups])
    return found[::-1], "greedy"


# -- the decision and the step -----------------------------------------------------------------------------


def make_decision(branches: Sequence[Sequence[int]], task_affinity: torch.Tensor, lam: float, *, layer: int,
                  pools_above: int, unit_cost: float = 1.0, exhaustive_limit: int = EXHAUSTIVE_LIMIT,
                  tasks: Sequence[str] = (), separation: str = "mean") -> WideningDecision:
    """Score the best grouping of ``branches`` (task groups) for every d and choose the least L."""
    if lam < 0 or unit_cost < 0:
        raise ValueError(f"λ and L_0 must be non-negative, got λ={lam}, L_0={unit_cost}")
    t = task_affinity.shape[0]
    if task_affinity.shape != (t, t) or sorted(i for b in branches for i in b) != list(range(t)):
        raise ValueError(f"the branches {list(map(list, branches))} do not partition the {t} tasks of the "
                         f"affinity matrix {tuple(task_affinity.shape)}")
    between = branch_affinity(task_affinity.double(), branches).tolist()
    candidates = []
    groupings, search = best_groupings(between, exhaustive_limit, separation)
    for groups in groupings:
        lb = branch_cost(len(groups), pools_above, unit_cost)
        ls = separation_cost(between, groups, separation)
        candidates.append(Candidate(groups, lb, ls, lb + lam * ls))
    chosen = 0
    for i, candidate in enumerate(candidates):
        if candidate.total < candidates[chosen].total - _TIE:
            chosen = i
    return WideningDecision(
        layer=layer, pools_above=pools_above, branches=[sorted(int(i) for i in b) for b in branches],
        task_affinity=task_affinity.double().tolist(), branch_affinity=between, lam=float(lam),
        unit_cost=float(unit_cost), search=search, candidates=candidates, chosen=chosen, tasks=list(tasks),
        separation=separation)


def decide(config: TreeConfig, task_affinity: torch.Tensor, lam: float, *, layer: int | None = None,
           unit_cost: float = 1.0, exhaustive_limit: int = EXHAUSTIVE_LIMIT, separation: str = "mean"
           ) -> WideningDecision:
    """The widening decision at ``layer`` (default: the active layer) of the tree ``config``."""
    if layer is None:
        layer = config.active_layer()
        if layer is None:
            raise ValueError("every layer is already branched: there is no active layer to widen")
    _check_active(config, layer)
    return make_decision(config.junction_branches(layer), task_affinity, lam, layer=layer,
                         pools_above=config.pools_above(layer), unit_cost=unit_cost,
                         exhaustive_limit=exhaustive_limit, tasks=config.tasks, separation=separation)


def _check_active(config: TreeConfig, layer: int) -> None:
    if not 0 <= layer < config.num_layers:
        raise ValueError(f"layer {layer} is not a hidden layer (0..{config.num_layers - 1})")
    if len(config.branches[layer]) != 1:
        raise ValueError(f"layer {layer} is already branched ({len(config.branches[layer])} branches): "
                         "only a layer that is one trunk can be widened")


@torch.no_grad()
def widen(net: BranchedNet, decision: WideningDecision) -> BranchedNet:
    """A new network in which the decision's layer is copied once per chosen group, every copy holding the
    layer's current weights and statistics: it computes the same function as ``net`` (same device, mode)."""
    config = net.config
    layer = decision.layer
    _check_active(config, layer)
    junction = config.junction_branches(layer)
    if tuple(tuple(b) for b in decision.branches) != junction:
        raise ValueError(f"the decision grouped the branches {decision.branches} at layer {layer}, but this "
                         f"network's junction there has {[list(b) for b in junction]}")
    widened = BranchedNet(config.widened(layer, decision.task_groups))
    widened.to(next(net.parameters()).device)
    state, new_state = net.state_dict(), {}
    prefix = f"layers.{layer}.0."
    for key, value in state.items():
        if key.startswith(prefix):
            for b in range(decision.d):
                new_state[f"layers.{layer}.{b}.{key[len(prefix):]}"] = value.clone()
        elif not key.startswith("heads."):
            new_state[key] = value.clone()
    # heads: one row (and bias) per task, regrouped as the top layer's branches now are
    rows = {t: (head, r) for head, group in zip(cast(list[nn.Linear], net.heads), config.branches[-1], strict=True)
            for r, t in enumerate(group)}
    for b, group in enumerate(widened.config.branches[-1]):
        new_state[f"heads.{b}.weight"] = torch.stack([rows[t][0].weight[rows[t][1]] for t in group])
        new_state[f"heads.{b}.bias"] = torch.stack([rows[t][0].bias[rows[t][1]] for t in group])
    widened.load_state_dict(new_state)
    return widened.train(net.training)
