"""Thin initialisation by simultaneous orthogonal matching pursuit (arXiv:1611.05377; docs/multitask.md, "The method").

A layer is y = σ(P(W) x), W a d × (input dim) matrix with one row per filter. Keeping d' < d rows is
a simultaneous sparse approximation problem: choose ω, |ω| = d', so that every row of W is well
approximated by a linear combination of the rows W_ω. SOMP (Tropp, Gilbert & Strauss 2006,
Algorithm 3.1) solves it greedily: each step adds the atom (a normalised row) whose correlations with
the residuals of all rows have the largest sum of absolute values, then re-fits every row on the
chosen atoms by least squares. :func:`thin_from_wide` does this per layer, bottom-up: the rows kept at
a layer fix the input channels of the layers above, so a layer's rows are restricted to those
channels before its own selection.

Choices where the description of the method leaves room (docs/multitask.md lists them too):

- **Batch norm is folded into the rows.** Our layers are conv/linear without bias, then BN. SOMP runs
  on the rows of the affine map each unit computes before its ReLU (eval-mode BN): [s·w_j, t_j] with
  s = γ/√(var + ε), t = β − s·μ — the analogue of the paper's VGG rows with their biases. The thin
  layer keeps W_ω and BN's parameters and running statistics at ω.
- **Folding the dropped units** (``fold=True``, our addition): SOMP's least-squares coefficients C
  (a d × d' matrix, rows ≈ C · rows_ω) say how every wide unit is made of the kept ones; the layer
  above then gets W' = W · C on its input channels instead of only W's columns at ω. This is exact
  when every dropped unit is a positive multiple of a kept one (ReLU and max-pool commute with
  positive scaling) and a first-order approximation otherwise. ``fold=False`` keeps only the columns
  at ω, which is what the paper is described as doing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from plugins.multitask.model import THIN_DIVISOR, BranchedNet, HiddenLayer


@dataclass
class SompResult:
    """What :func:`somp` chose and how well it reconstructs the signals."""

    indices: list[int]  # chosen atoms (rows of the dictionary), in the order they were picked
    coefficients: torch.Tensor  # m × k (float64): signals ≈ coefficients @ dictionary[indices]
    residual: float  # ‖signals − coefficients · dictionary[indices]‖_F / ‖signals‖_F (0 for zero signals)


def somp(signals: torch.Tensor, k: int, dictionary: torch.Tensor | None = None) -> SompResult:
    """Choose ``k`` rows of ``dictionary`` (default: the signals themselves) that jointly approximate every
    row of ``signals`` (m × n; higher dimensions are flattened): SOMP with the ℓ1 sum of correlations.

    Exact ties go to the lowest index (identical rows may still differ in the last bit after the product).
    """
    signals = signals.detach().double().flatten(1)
    atoms_raw = signals if dictionary is None else dictionary.detach().double().flatten(1)
    if atoms_raw.shape[1] != signals.shape[1]:
        raise ValueError(f"signals have dimension {signals.shape[1]}, the dictionary {atoms_raw.shape[1]}")
    if not 0 <= k <= len(atoms_raw):
        raise ValueError(f"cannot choose {k} of {len(atoms_raw)} atoms")
    norms = atoms_raw.norm(dim=1, keepdim=True)
    atoms = torch.where(norms > 0, atoms_raw / norms.clamp_min(1e-300), torch.zeros_like(atoms_raw))
    residual = signals.clone()
    basis = signals.new_zeros(0, signals.shape[1])  # orthonormal basis of the chosen atoms' span
    chosen: list[int] = []
    available = torch.ones(len(atoms), dtype=torch.bool)
    for _ in range(k):
        scores = (residual @ atoms.T).abs().sum(0)
        scores[~available] = -1.0
        j = int(scores.argmax())
        chosen.append(j)
        available[j] = False
        v = atoms[j]
        for _ in range(2):  # Gram–Schmidt, twice for stability
            v = v - basis.T @ (basis @ v)
        if v.norm() > 1e-10:
            q = v / v.norm()
            basis = torch.cat([basis, q[None]])
            residual = residual - (residual @ q)[:, None] * q[None]
    selected = atoms_raw[chosen]
    if chosen:  # least squares (minimum norm where chosen atoms are dependent): signals ≈ C · selected
        coefficients = torch.linalg.lstsq(selected.T.cpu(), signals.T.cpu(), driver="gelsd").solution.T
        coefficients = coefficients.to(signals.device)
    else:
        coefficients = signals.new_zeros(len(signals), 0)
    total = float(signals.norm())
    error = float((signals - coefficients @ selected).norm())
    return SompResult(chosen, coefficients, error / total if total > 0 else 0.0)


@dataclass
class Selection:
    """The units SOMP kept of one branch of one wide layer."""

    layer: int
    branch: int
    indices: list[int]  # kept units of the wide branch, ascending (the thin units' order)
    residual: float  # SOMP's relative reconstruction error of the layer's (input-restricted) rows


def _fold_inputs(weight: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
    """``weight`` (out × c_in × …, or out × c_in·r for a layer that flattens c_in maps of r pixels) with its
    input channels mapped through ``mix`` (c_in × c'): W'[:, k] = Σ_j W[:, j] · mix[j, k]."""
    out, c_in = weight.shape[0], mix.shape[0]
    folded = torch.einsum("ojr,jk->okr", weight.reshape(out, c_in, -1), mix)
    if weight.dim() == 2:
        return folded.reshape(out, -1)
    return folded.reshape(out, mix.shape[1], *weight.shape[2:])


def _effective_rows(layer: HiddenLayer, weight: torch.Tensor) -> torch.Tensor:
    """The rows [s·w_j, t_j] of the affine map (conv/linear then eval-mode BN) each unit computes."""
    bn = layer.bn
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("SOMP reads batch norm's running statistics; this layer tracks none")
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    shift = bn.bias.double() - scale * bn.running_mean.double()
    return torch.cat([scale[:, None] * weight.flatten(1), shift[:, None]], 1)


@torch.no_grad()
def _copy_thin(src: HiddenLayer, dst: HiddenLayer, weight: torch.Tensor, kept: list[int]) -> None:
    dst.op.weight.copy_(weight[kept].to(dst.op.weight.dtype))
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(dst.bn, name).copy_(getattr(src.bn, name)[kept])
    if dst.bn.num_batches_tracked is not None and src.bn.num_batches_tracked is not None:
        dst.bn.num_batches_tracked.copy_(src.bn.num_batches_tracked)


@torch.no_grad()
def thin_from_wide(wide: BranchedNet, widths: Sequence[int] | None = None, *, fold: bool = True
                   ) -> tuple[BranchedNet, list[Selection]]:
    """A thin network of ``wide``'s tree at ``widths`` (default: a quarter of its widths), initialised by SOMP
    layer by layer, bottom-up, plus what was kept of every branch. Both networks are in the same mode."""
    c = wide.config
    if widths is None:
        widths = tuple(max(1, w // THIN_DIVISOR) for w in c.widths)
    widths = tuple(int(w) for w in widths)
    if len(widths) != c.num_layers or any(not 1 <= t <= w for t, w in zip(widths, c.widths, strict=True)):
        raise ValueError(f"thin widths {list(widths)} must be one per layer, each in 1..the wide width "
                         f"{list(c.widths)}")
    thin = BranchedNet(dataclasses.replace(c, widths=widths)).to(next(wide.parameters()).device)
    selections: list[Selection] = []
    # mixes[b]: how each unit of branch b of the layer below is made of its kept units (c_in × c'_in)
    mixes = [torch.eye(c.channels, dtype=torch.float64, device=thin.mean.device)]
    for layer in range(c.num_layers):
        new_mixes = []
        for b, parent in enumerate(thin.branch_parents[layer]):
            src = wide.branch(layer, b)
            weight = _fold_inputs(src.op.weight.double(), mixes[parent])
            result = somp(_effective_rows(src, weight), widths[layer])
            order = sorted(range(len(result.indices)), key=lambda i: result.indices[i])
            kept = [result.indices[i] for i in order]
            _copy_thin(src, thin.branch(layer, b), weight, kept)
            if fold:
                mix = result.coefficients[:, order]
            else:
                mix = torch.zeros(c.widths[layer], len(kept), dtype=torch.float64, device=weight.device)
                mix[kept, torch.arange(len(kept))] = 1.0
            new_mixes.append(mix)
            selections.append(Selection(layer, b, kept, result.residual))
        mixes = new_mixes
    for b in range(len(thin.heads)):
        src_head, dst_head = wide.head(b), thin.head(b)
        weight = _fold_inputs(src_head.weight.double(), mixes[b])
        dst_head.weight.copy_(weight.to(dst_head.weight.dtype))
        dst_head.bias.copy_(src_head.bias)
    return thin.train(wide.training), selections
