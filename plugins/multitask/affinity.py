"""Task affinity from per-example margins (arXiv:1611.05377; docs/multitask.md, "The method").

For example n and task i, with prediction p_i^n = σ(logit) and ground truth g_i^n ∈ {0, 1}:

- error margin m_i^n = |p_i^n − g_i^n|;
- difficulty e_i^n = 1 ("hard") when m_i^n ≥ E[m_i], the task's mean margin, else 0 ("easy");
- task affinity A(i, j) = P(e_i = 1, e_j = 1) + P(e_i = 0, e_j = 0) = E[e_i e_j + (1 − e_i)(1 − e_j)]:
  how often two tasks find the same example both hard or both easy;
- branch affinity, for branches k and l (sets of tasks): Ã_b(k, l) = mean_{i∈k} min_{j∈l} A(i, j) (a
  complete-linkage score), made symmetric as A_b(k, l) = (Ã_b(k, l) + Ã_b(l, k)) / 2.

The paper estimates the expectations on training examples during training. :class:`AffinityTracker`
does so online from the training batches' logits: the mean margin of each task is a running mean over
every example seen since the last :meth:`~AffinityTracker.reset` (this batch included), each batch's
examples are classified against it, and the joint frequencies are accumulated over the same examples.
With all examples in one batch this is exactly :func:`task_affinity` (our online estimate of the
expectations E[·]; the recipe resets the tracker after every widening so the statistics are the current
network's).

Choices: the margin is |σ(logit) − g| (not a signed margin y·logit nor the loss; all three
order one task's examples alike, but the mean threshold differs); "hard" is m ≥ the mean ("above" would differ
only on ties, which have measure zero for real-valued margins). The logits fed to the
tracker are the training batches' own (train mode), which costs nothing extra.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def error_margins(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """m = |σ(logit) − g| per example and task (N×T), in [0, 1]; large = wrong or unsure."""
    return (torch.sigmoid(logits.detach().float()) - targets.detach().float()).abs()


def hard_examples(margins: torch.Tensor, mean: torch.Tensor | None = None) -> torch.Tensor:
    """e = 1 where a task finds an example hard: its margin is at least the task's mean margin (N×T, float)."""
    return (margins >= (margins.mean(0) if mean is None else mean)).float()


def task_affinity(margins: torch.Tensor) -> torch.Tensor:
    """A(i, j) = P(both hard) + P(both easy) over the examples of ``margins`` (N×T): T×T, 1 on the diagonal."""
    hard = hard_examples(margins).double()
    return ((hard.T @ hard + (1 - hard).T @ (1 - hard)) / len(margins)).float()


def branch_affinity(affinity: torch.Tensor, branches: Sequence[Sequence[int]]) -> torch.Tensor:
    """A_b(k, l) = (Ã_b(k, l) + Ã_b(l, k)) / 2, Ã_b(k, l) = mean_{i∈k} min_{j∈l} A(i, j), for the task groups
    ``branches`` (n×n; the diagonal is a branch with itself, its own tasks' coherence)."""
    n = len(branches)
    directed = torch.empty(n, n, dtype=affinity.dtype)
    for k, tasks_k in enumerate(branches):
        rows = affinity[list(tasks_k)]
        for col, tasks_l in enumerate(branches):
            directed[k, col] = rows[:, list(tasks_l)].min(1).values.mean()
    return (directed + directed.T) / 2


class AffinityTracker:
    """Running estimate of the task affinity from the batches a trainer sees (see the module docstring)."""

    def __init__(self, num_tasks: int) -> None:
        self.num_tasks = num_tasks
        self.reset()

    def reset(self) -> None:
        """Forget every example seen (after a widening step, the statistics belong to the old network)."""
        t = self.num_tasks
        self.count = 0
        self.margin_sum = torch.zeros(t, dtype=torch.float64)
        self.both_hard = torch.zeros(t, t, dtype=torch.float64)
        self.both_easy = torch.zeros(t, t, dtype=torch.float64)

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch: logits and 0/1 targets, both N×T (any device; statistics are kept on the CPU)."""
        if logits.shape != targets.shape or logits.dim() != 2 or logits.shape[1] != self.num_tasks:
            raise ValueError(f"expected logits and targets of shape N×{self.num_tasks}, got "
                             f"{tuple(logits.shape)} and {tuple(targets.shape)}")
        margins = error_margins(logits, targets).cpu().double()
        self.count += len(margins)
        self.margin_sum += margins.sum(0)
        hard = hard_examples(margins, self.mean_margins)
        self.both_hard += hard.T @ hard
        self.both_easy += (1 - hard).T @ (1 - hard)

    @property
    def mean_margins(self) -> torch.Tensor:
        """E[m_i] per task so far (T; zeros before any example)."""
        return self.margin_sum / max(self.count, 1)

    def affinity(self) -> torch.Tensor:
        """A (T×T float32) over the examples seen since the last reset."""
        if not self.count:
            raise ValueError("no examples seen yet: call update() with training batches first")
        return ((self.both_hard + self.both_easy) / self.count).float()

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors to save with a resume state (:meth:`load_state` restores them)."""
        return {"count": torch.tensor(self.count), "margin_sum": self.margin_sum.clone(),
                "both_hard": self.both_hard.clone(), "both_easy": self.both_easy.clone()}

    def load_state(self, state: Mapping[str, torch.Tensor]) -> None:
        if state["margin_sum"].shape != (self.num_tasks,):
            raise ValueError(f"a tracker state of {state['margin_sum'].shape[0]} tasks, not {self.num_tasks}")
        self.count = int(state["count"])
        for name in ("margin_sum", "both_hard", "both_easy"):
            setattr(self, name, state[name].detach().double().cpu().clone())
