"""The BlockDrop tables in README.md and docs/blockdrop.md quote the committed benchmark reports: every
cell must equal the report's figure, rounded as printed, so a re-run benchmark cannot leave stale
numbers behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"

# row label prefix → the cell text of one report's figures
ROWS = {
    "accuracy: full ResNet-32 / BlockDrop": lambda f: f"{f['accuracy_full']:.3f} / {f['accuracy_blockdrop']:.3f}",
    "accuracy at the same budget: FirstK / RandomK":
        lambda f: f"{f['accuracy_firstk']:.3f} / {f['accuracy_randomk']:.3f}",
    "blocks used (of 15)": lambda f: f"{f['mean_blocks']:.2f}",
    "unique policies": lambda f: f"{f['unique_policies']}",
    "FLOPs ratio (policy net included": lambda f: f"{f['flops_ratio']:.3f}",
    "wall-clock speedup, batch 1 / batch 64": lambda f: f"{f['speedup_b1_cpu']:.2f} / {f['speedup_b64_cpu']:.2f}",
    "speedup as a fraction of the ideal":
        lambda f: f"{f['speedup_b1_cpu_fraction_of_ideal']:.2f} / {f['speedup_b64_cpu_fraction_of_ideal']:.2f}",
    "Spearman(blocks used, difficulty)": lambda f: f"{f['spearman_blocks_difficulty']:.2f}",
    "fine-tuned backbone, every block kept": lambda f: f"{f['accuracy_full_finetuned_backbone']:.3f}",
}


def _reports() -> dict[str, dict]:
    """γ as printed in the table header (``γ = 0.5``) → figures of the committed report for that γ."""
    reports = {}
    for path in RESULTS.glob("blockdrop*.json"):
        figures = json.loads(path.read_text())["figures"]
        reports[f"γ = {figures['gamma']:g}"] = figures
    return reports


def _tables(text: str) -> list[list[list[str]]]:
    """Markdown tables whose header row names γ values, as rows of stripped cells."""
    tables, current = [], None
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if current is None and any(c.startswith("γ = ") for c in cells):
                current = [cells]
            elif current is not None:
                current.append(cells)
        elif current is not None:
            tables.append(current)
            current = None
    if current is not None:
        tables.append(current)
    return tables


@pytest.mark.parametrize("doc", ["README.md", "docs/blockdrop.md"])
def test_blockdrop_tables_match_the_committed_reports(doc):
    reports = _reports()
    tables = _tables((REPO / doc).read_text())
    assert tables, f"{doc} has no BlockDrop results table"
    checked = 0
    for header, *rows in tables:
        gammas = header[1:]
        assert set(gammas) <= set(reports), f"{doc}: no committed report for {set(gammas) - set(reports)}"
        for row in rows:
            fmt = next((f for label, f in ROWS.items() if row[0].startswith(label)), None)
            if fmt is None:
                continue
            expected = [fmt(reports[g]) for g in gammas]
            assert row[1:] == expected, f"{doc}: row {row[0]!r} says {row[1:]}, the reports say {expected}"
            checked += 1
    assert checked >= 6, f"{doc}: only {checked} rows could be checked"


@pytest.fixture(scope="module")
def shapes_test(tmp_path_factory):
    from plugins.datasets.shapes import load_shapes
    return load_shapes("test", tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def full_accuracy(shapes_test):
    """The shipped full ResNet's test accuracy, evaluated once for every report."""
    from plugins.blockdrop.recipes import backbone_from_card, infer
    from trainer.checkpoints import load_checkpoint

    full = load_checkpoint(REPO / "assets" / "blockdrop" / "backbone.safetensors")
    logits, _ = infer(backbone_from_card(full.tensors, full.card).eval(), None, shapes_test.images)
    return (logits.argmax(1) == shapes_test.targets.long()).float().mean().item()


@pytest.mark.parametrize("report", sorted(p.name for p in RESULTS.glob("blockdrop*.json")))
def test_shipped_checkpoints_reproduce_their_report(report, shapes_test, full_accuracy):
    """The committed reports describe the checkpoints in assets/: re-evaluating them on the test split gives
    the reported accuracies and block counts (so assets and reports cannot drift apart)."""
    from plugins.blockdrop.analysis import evaluate_policy
    from plugins.blockdrop.recipes import backbone_from_card, policy_from_card
    from trainer.checkpoints import load_checkpoint

    figures = json.loads((RESULTS / report).read_text())["figures"]
    tuned = load_checkpoint(REPO / "assets" / "blockdrop" / figures["policy"])
    images, targets = shapes_test.images, shapes_test.targets.long()
    result = evaluate_policy(backbone_from_card(tuned.tensors, tuned.card), policy_from_card(tuned.tensors, tuned.card),
                             images, targets, tuned.card.get("free_blocks"))
    # One mismatched image of 5,000 is 0.0002: allow float differences between CPUs, nothing more.
    assert full_accuracy == pytest.approx(figures["accuracy_full"], abs=6e-4)
    assert result["correct"].float().mean().item() == pytest.approx(figures["accuracy_blockdrop"], abs=6e-4)
    assert result["policy"].sum(1).mean().item() == pytest.approx(figures["mean_blocks"], abs=0.01)
