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
    "fraction of the ideal, range over 5 rounds": lambda f: "{:.2f}–{:.2f}; {:.2f}–{:.2f}".format(
        *f["speedup_b1_cpu_fraction_of_ideal_range"], *f["speedup_b64_cpu_fraction_of_ideal_range"]),
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


INFERENCE_PATHS = {"the training modules": "modules", "batch norm folded": "folded", "the same, channels-last": "channels_last"}


def test_the_inference_path_table_quotes_the_gamma_1_report():
    figures = json.loads((RESULTS / "blockdrop.json").read_text())["figures"]
    table = next((t for t in _all_tables((REPO / "docs" / "blockdrop.md").read_text())
                  if t[0][0].startswith("inference path (γ = 1")), None)
    assert table is not None, "docs/blockdrop.md has no inference-path table"
    assert figures["gamma"] == 1 and len(table) == 1 + len(INFERENCE_PATHS)
    for row in table[1:]:
        path = next(p for label, p in INFERENCE_PATHS.items() if row[0].startswith(label))
        b1, b64 = figures["timing"]["b1_cpu"][path], figures["timing"]["b64_cpu"][path]
        expected = [f"{b1['full_ms_median']:.2f} / {b1['blockdrop_ms_median']:.2f}", f"{b1['fraction_of_ideal_median']:.2f}",
                    f"{b64['full_ms_median']:.1f} / {b64['blockdrop_ms_median']:.1f}", f"{b64['fraction_of_ideal_median']:.2f}"]
        assert row[1:] == expected, f"row {row[0]!r} says {row[1:]}, the report says {expected}"
    # the headline figures are the deployed path's: channels-last at batch 1, NCHW in a batch
    assert figures["timing"]["b1_cpu"]["deployed"] == "channels_last" and figures["timing"]["b64_cpu"]["deployed"] == "folded"
    assert figures["speedup_b1_cpu"] == figures["timing"]["b1_cpu"]["channels_last"]["speedup_median"]
    readme = " ".join((REPO / "README.md").read_text().split())  # the prose quotes the same medians
    assert (f"{figures['speedup_b1_cpu']:.2f}× faster per image and {figures['speedup_b64_cpu']:.2f}× per batch of 64"
            in readme)
    assert f"that is {figures['speedup_b1_cpu_fraction_of_ideal']:.2f} of the FLOPs-ideal speedup" in readme


def test_the_blockdrop_targets_paragraph_quotes_the_reports():
    """docs/blockdrop.md's "Targets" prose and README's range: every figure from the γ reports."""
    reports = _reports()
    g1, g05, g2 = reports["γ = 1"], reports["γ = 0.5"], reports["γ = 2"]
    doc = " ".join((REPO / "docs" / "blockdrop.md").read_text().split())
    share = g1["mean_blocks"] / g1["num_blocks"]
    b1_lo, b1_hi = g1["speedup_b1_cpu_fraction_of_ideal_range"]
    quoted = [
        f"At γ = 1: {g1['accuracy_blockdrop']:.3f} against the full ResNet's {g1['accuracy_full']:.3f} at "
        f"{g1['mean_blocks']:.2f} of {g1['num_blocks']} blocks ({share:.1%})",
        f"FirstK ({g1['accuracy_firstk']:.3f}) and RandomK ({g1['accuracy_randomk']:.3f})",
        f"Spearman(blocks, difficulty) {g1['spearman_blocks_difficulty']:.2f} — met",
        f"**{g1['speedup_b64_cpu_fraction_of_ideal']:.2f} of the ideal at batch 64 (target 0.9, met) and "
        f"{g1['speedup_b1_cpu_fraction_of_ideal']:.2f} at batch 1 (target 0.85, met);** range over the rounds "
        f"{b1_lo:.2f}–{b1_hi:.2f}",
        f"γ = 0.5 uses fewer blocks ({g05['mean_blocks']:.2f}) but is "
        f"{(g05['accuracy_full'] - g05['accuracy_blockdrop']) * 100:.1f} points below",
        f"γ = 2 is the most accurate ({g2['accuracy_blockdrop']:.3f}) at {g2['mean_blocks']:.2f} blocks",
        f"(Spearman {g1['spearman_blocks_difficulty']:.2f} at γ = 1,",
        f"just at {g05['speedup_b1_cpu_fraction_of_ideal']:.2f}",
    ]
    for text in quoted:
        assert text in doc, f"docs/blockdrop.md should say: {text}"
    assert g1["speedup_b1_cpu_fraction_of_ideal"] >= 0.85 and g1["speedup_b64_cpu_fraction_of_ideal"] >= 0.9
    readme = " ".join((REPO / "README.md").read_text().split())
    assert f"range over the rounds {b1_lo:.2f}–{b1_hi:.2f}" in readme


def test_the_figures_from_before_the_strided_policy_quote_that_report():
    """docs/blockdrop.md compares with the report of the ResNet-8 policies (commit d9c19d6), kept as it was
    committed then under benchmarks/results/history/ (``git show d9c19d6:benchmarks/results/blockdrop.json``)."""
    before = json.loads((RESULTS / "history" / "blockdrop-d9c19d6.json").read_text())["figures"]
    assert before["gamma"] == 1 and before["policy"] == "policy-g1.safetensors"
    doc = " ".join((REPO / "docs" / "blockdrop.md").read_text().split())
    assert f"was {before['spearman_blocks_difficulty']:.2f}; still above the 0.3 target" in doc
    assert (f"The previous report (ResNet-8 policies, commit `d9c19d6`) measured "
            f"{before['speedup_b1_cpu_fraction_of_ideal']:.2f} of the ideal at batch 1 for γ = 1") in doc


@pytest.fixture(scope="module")
def shapes_test(tmp_path_factory):
    from plugins.datasets.shapes import load_shapes
    return load_shapes("test", tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def full_accuracy(shapes_test):
    """The shipped full ResNet's test accuracy, evaluated once for every report."""
    from plugins.blockdrop.evaluation import infer
    from plugins.blockdrop.model import backbone_from_checkpoint
    from trainer.checkpoints import load_checkpoint

    full = load_checkpoint(REPO / "assets" / "blockdrop" / "backbone.safetensors")
    logits, _ = infer(backbone_from_checkpoint(full).eval(), None, shapes_test.images)
    return (logits.argmax(1) == shapes_test.targets.long()).float().mean().item()


@pytest.mark.parametrize("report", sorted(p.name for p in RESULTS.glob("blockdrop*.json")))
def test_shipped_checkpoints_reproduce_their_report(report, shapes_test, full_accuracy):
    """The committed reports describe the checkpoints in assets/: re-evaluating them on the test split gives
    the reported accuracies and block counts (so assets and reports cannot drift apart)."""
    from plugins.blockdrop.analysis import evaluate_policy
    from plugins.blockdrop.model import backbone_from_checkpoint, policy_from_checkpoint
    from trainer.checkpoints import load_checkpoint

    figures = json.loads((RESULTS / report).read_text())["figures"]
    tuned = load_checkpoint(REPO / "assets" / "blockdrop" / figures["policy"])
    images, targets = shapes_test.images, shapes_test.targets.long()
    result = evaluate_policy(backbone_from_checkpoint(tuned), policy_from_checkpoint(tuned),
                             images, targets, tuned.card.get("free_blocks"))
    # One mismatched image of 5,000 is 0.0002: allow float differences between CPUs, nothing more.
    assert full_accuracy == pytest.approx(figures["accuracy_full"], abs=6e-4)
    assert result["correct"].float().mean().item() == pytest.approx(figures["accuracy_blockdrop"], abs=6e-4)
    assert result["policy"].sum(1).mean().item() == pytest.approx(figures["mean_blocks"], abs=0.01)


# -- S3Pool -------------------------------------------------------------------------------------------

S3POOL_REPORT = RESULTS / "s3pool.json"
S3POOL_LABELS = {"strided": "strided convolution", "max": "max pooling", "stochastic": "stochastic pooling",
                 "s3pool": "S3Pool 16-8"}


def _s3pool_table(text: str) -> list[list[str]]:
    """The Markdown table whose header starts with ``downsampling`` and names training-set sizes."""
    table = next((t for t in _all_tables(text) if t[0][0] == "downsampling" and "images" in t[0][1]), None)
    assert table is not None, "no S3Pool test-error table (header 'downsampling | N images | ...')"
    return table


def _all_tables(text: str) -> list[list[list[str]]]:
    tables, current = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


def _s3pool_rows(table: list[list[str]], figures: dict, key: str, cell) -> None:
    """Every row of ``table`` names a pooling of the report, every pooling of the report has a row, and each
    cell (one per training-set size in the header) equals ``cell(figures, key, pooling, size)``."""
    header, *rows = table
    sizes = [h.split()[0].replace(",", "") for h in header[1:]]
    assert sizes == [str(s) for s in figures["setup"]["sizes"]]
    by_label = {row[0]: row[1:] for row in rows}
    labels = {label: pooling for pooling, label in S3POOL_LABELS.items()}
    assert set(by_label) <= set(labels), f"rows of no reported pooling: {set(by_label) - set(labels)}"
    assert {labels[label] for label in by_label} == set(figures[key]), "a reported pooling has no row"
    for label, cells in by_label.items():
        pooling = labels[label]
        expected = [cell(figures, key, pooling, s) if s in figures[key][pooling] else "—" for s in sizes]
        assert cells == expected, f"{label} says {cells}, the report says {expected}"


@pytest.mark.skipif(not S3POOL_REPORT.exists(), reason="no committed S3Pool report yet")
@pytest.mark.parametrize("doc", ["README.md", "docs/s3pool.md"])
def test_s3pool_table_matches_the_committed_report(doc):
    figures = json.loads(S3POOL_REPORT.read_text())["figures"]
    _s3pool_rows(_s3pool_table((REPO / doc).read_text()), figures, "test_error",
                 lambda f, k, p, s: f"{f[k][p][s]:.3f} ± {f['test_error_std'][p][s]:.3f}")


@pytest.mark.skipif(not S3POOL_REPORT.exists(), reason="no committed S3Pool report yet")
def test_s3pool_training_errors_and_plateaus_are_quoted_as_reported():
    figures = json.loads(S3POOL_REPORT.read_text())["figures"]
    text = (REPO / "docs" / "s3pool.md").read_text()
    tables = {t[0][0]: t for t in _all_tables(text)}
    _s3pool_rows(tables["training error"], figures, "train_error", lambda f, k, p, s: f"{f[k][p][s]:.3f}")
    _s3pool_rows(tables["training error stops falling at step"], figures, "train_error_plateau_step",
                 lambda f, k, p, s: f"{f[k][p][s]:,}")
    plateau, held_out = figures["train_error_plateau_step"], figures["val_error_plateau_step"]
    prose = " ".join(text.split())
    assert (f"max pooling's training error stops falling at step {plateau['max']['1000']:,}" in prose
            and f"S3Pool's keeps falling until step {plateau['s3pool']['1000']:,}" in prose)
    assert (f"held-out error goes on improving until step {held_out['s3pool']['1000']:,}" in prose
            and f"(max pooling's until step {held_out['max']['1000']:,}," in prose)
    paired = ", ".join(f"{g:.1f}" for g in figures["paired_gain_pts"]["1000"])
    assert f"ahead on every one of them ({paired} points at 1,000 images" in prose
    # converged: every pooling's training error has stopped falling before the schedule's end
    steps = figures["setup"]["steps"]
    assert all(step < steps for by_size in figures["train_error_plateau_step"].values() for step in by_size.values())


@pytest.mark.skipif(not S3POOL_REPORT.exists(), reason="no committed S3Pool report yet")
def test_the_s3pool_demo_ships_the_committed_report():
    shipped = REPO / "assets" / "s3pool" / "benchmark-report.json"
    assert json.loads(shipped.read_text()) == json.loads(S3POOL_REPORT.read_text())


@pytest.mark.skipif(not S3POOL_REPORT.exists(), reason="no committed S3Pool report yet")
def test_s3pool_sweep_gain_and_overhead_are_quoted_as_reported():
    report = json.loads(S3POOL_REPORT.read_text())
    figures, targets = report["figures"], report["targets"]
    text = (REPO / "docs" / "s3pool.md").read_text()
    for grid, values in figures["grid_sweep"].items():
        row = f"| {grid} | {values['train_error']:.3f} | {values['test_error']:.3f} |"
        assert row in text, f"docs/s3pool.md lacks the sweep row {row!r}"
    assert f"{figures['layer_overhead']:.2f}×" in text
    low, high = min(figures["layer_overhead_rounds"]), max(figures["layer_overhead_rounds"])
    assert f"{low:.2f}–{high:.2f}×" in text
    prose, readme = " ".join(text.split()), " ".join((REPO / "README.md").read_text().split())
    for size, gain in targets["s3pool_gain_pts"].items():
        sentence = f"{gain:.1f} points at {int(size):,} images"
        assert sentence in prose, f"docs/s3pool.md lacks {sentence!r}"
        assert sentence in readme, f"README.md lacks {sentence!r}"
    assert f"The layer costs {figures['layer_overhead']:.2f}× a max pool" in readme
    assert report["commit"][:7] in text


# -- VGAN ---------------------------------------------------------------------------------------------

VGAN_REPORT = RESULTS / "vgan.json"
VGAN_KINDS = ("vgan", "vcd", "gan")
VGAN_ROWS = {
    "linear probe error on φ": lambda x: f"{x['probe_error']:.3f}",
    "Fréchet distance, shapes-classifier features": lambda x: f"{x['frechet_distance']:.1f}",
    "classes covered among 1,000 samples": lambda x: f"{x['classes_covered']}",
    "samples per second": lambda x: f"{x['samples_per_s']:,.0f}",
    "1,000-label classifier test error": lambda x: (
        f"{x['semi_supervised']['no_augmentation']:.3f} / {x['semi_supervised']['vcd_augmentation']:.3f}"
        if x["semi_supervised"]["vcd_augmentation"] is not None else "—"),
}


@pytest.mark.skipif(not VGAN_REPORT.exists(), reason="no committed VGAN report yet")
@pytest.mark.parametrize("doc", ["README.md", "docs/vgan.md"])
def test_vgan_table_matches_the_committed_report(doc):
    figures = json.loads(VGAN_REPORT.read_text())["figures"]
    table = next((t for t in _all_tables((REPO / doc).read_text()) if t[0][1:] == ["VGAN", "VCD", "GAN"]), None)
    assert table is not None, f"{doc} has no VGAN results table (header '| | VGAN | VCD | GAN |')"
    checked = set()
    for row in table[1:]:
        label = next((lab for lab in VGAN_ROWS if row[0].startswith(lab)), None)
        if label is not None:
            expected = [VGAN_ROWS[label](figures[kind]) for kind in VGAN_KINDS]
            assert row[1:] == expected, f"{doc}: row {row[0]!r} says {row[1:]}, the report says {expected}"
            checked.add(label)
    assert checked == set(VGAN_ROWS), f"{doc}: rows missing from the VGAN table: {set(VGAN_ROWS) - checked}"
    real = f"{figures['reference']['frechet_distance_train_vs_test']:.2f}"
    assert f"real train against real test: {real}" in " ".join((REPO / doc).read_text().split())


@pytest.mark.skipif(not VGAN_REPORT.exists(), reason="no committed VGAN report yet")
def test_the_vgan_report_measured_the_shipped_checkpoints_and_its_targets_follow_its_figures():
    from trainer.checkpoints import load_checkpoint

    report = json.loads(VGAN_REPORT.read_text())
    figures, targets = report["figures"], report["targets"]
    assert report["mode"] == "shipped"
    for kind in VGAN_KINDS:  # the report's cards are the shipped ones: assets and report cannot drift apart
        card = load_checkpoint(REPO / "assets" / "vgan" / f"{kind}.safetensors")
        assert report["checkpoints"][kind]["card_metrics"] == card.metadata["metrics"], kind
        budget = {key: report["budget"][key] for key in ("steps", "batch_size", "k")}
        assert card.metadata["budget"] == budget, kind
    assert targets["vgan_probe_error_below_gan"]["met"] == (figures["vgan"]["probe_error"] < figures["gan"]["probe_error"])
    assert targets["vgan_frechet_distance_below_gan"]["met"] == (
        figures["vgan"]["frechet_distance"] < figures["gan"]["frechet_distance"])
    assert targets["vgan_covers_all_10_classes"]["met"] == (figures["vgan"]["classes_covered"] == 10)
    semi = figures["vcd"]["semi_supervised"]
    assert targets["vcd_augmentation_error_at_most_no_augmentation"]["met"] == (
        semi["vcd_augmentation"] <= semi["no_augmentation"])


# -- multi-task widening --------------------------------------------------------------------------------

MULTITASK_REPORT = RESULTS / "multitask.json"
MULTITASK_HEADER = ["wide", "thin", "thin-random"]  # then "branched λ = <λ>" per branched model, by λ


def _multitask_keys(figures: dict) -> list[str]:
    branched = sorted((k for k in figures["models"] if k.startswith("branched_")), key=lambda k: float(k.split("_")[1]))
    return ["wide", "thin", "thin_random", *branched]


def _split(figures: dict, key: str) -> str:
    if not key.startswith("branched_"):
        return "—"
    pick = lambda name: figures[name][key] if isinstance(figures[name], dict) else figures[name]  # noqa: E731
    if pick("first_split_layer") is None:
        return "never branched"
    return f"{pick('first_split_layer')} · {pick('first_split_groups')} · {pick('first_split_purity'):.2f}"


MULTITASK_ROWS = {
    "mean test accuracy (14 attributes)": lambda f, k: f"{f['models'][k]['mean_accuracy']:.3f}",
    "parameters": lambda f, k: f"{f['models'][k]['params']:,}",
    "FLOPs per image (M)": lambda f, k: f"{f['models'][k]['flops'] / 1e6:.1f}",
    "CPU latency, batch 1, one thread (ms)": lambda f, k: f"{f['models'][k]['latency_ms']:.2f}",
    "first split of the tree: layer · groups · head/body purity": _split,
    "mean accuracy on a second test set": lambda f, k: f"{f['second_test']['models'][k]['mean_accuracy']:.3f}",
}


@pytest.mark.skipif(not MULTITASK_REPORT.exists(), reason="no committed multitask report yet")
@pytest.mark.parametrize("doc", ["README.md", "docs/multitask.md"])
def test_multitask_table_matches_the_committed_report(doc):
    figures = json.loads(MULTITASK_REPORT.read_text())["figures"]
    keys = _multitask_keys(figures)
    table = next((t for t in _all_tables((REPO / doc).read_text()) if t[0][1:4] == MULTITASK_HEADER), None)
    assert table is not None, f"{doc} has no multitask results table (header '| | wide | thin | thin-random | ...')"
    lams = [f"branched λ = {float(k.split('_')[1]):g}" for k in keys[3:]]
    assert table[0][1:] == MULTITASK_HEADER + lams, f"{doc}: the table's models differ from the report's"
    checked = set()
    for row in table[1:]:
        label = next((lab for lab in MULTITASK_ROWS if row[0].startswith(lab)), None)
        if label is not None:
            expected = [MULTITASK_ROWS[label](figures, k) for k in keys]
            assert row[1:] == expected, f"{doc}: row {row[0]!r} says {row[1:]}, the report says {expected}"
            checked.add(label)
    assert checked == set(MULTITASK_ROWS), f"{doc}: rows missing from the multitask table: {set(MULTITASK_ROWS) - checked}"


@pytest.mark.skipif(not MULTITASK_REPORT.exists(), reason="no committed multitask report yet")
def test_the_multitask_report_measured_the_shipped_checkpoints_and_its_targets_follow_its_figures():
    from trainer.checkpoints import load_checkpoint

    report = json.loads(MULTITASK_REPORT.read_text())
    figures, targets = report["figures"], report["targets"]
    assert report["mode"] == "shipped"
    shipped = {p.stem for p in (REPO / "assets" / "multitask").glob("*.safetensors")}
    assert {k.replace("_", "-").replace("branched-", "branched-l") for k in figures["models"]} == shipped
    for key, entry in report["checkpoints"].items():  # the report's models are the shipped files, unchanged
        card = load_checkpoint(REPO / entry["file"])
        assert entry["config"] == card.metadata["config"], key
        assert figures["models"][key]["params"] == card.metadata["params"], key
    models = figures["models"]
    branched = [k for k in models if k.startswith("branched_")]
    small = [k for k in branched if models[k]["params"] <= models["wide"]["params"] / 5
             and models[k]["flops"] <= models["wide"]["flops"] / 5]
    close = [k for k in small if models[k]["mean_accuracy"] >= models["wide"]["mean_accuracy"] - 0.01
             and models[k]["mean_accuracy"] > models["thin"]["mean_accuracy"]]
    met = {name: t["met"] for name, t in targets.items() if isinstance(t, dict)}
    assert any(bool(close) == value for name, value in met.items() if "wide" in name), met
    assert any((models["thin"]["mean_accuracy"] > models["thin_random"]["mean_accuracy"]) == value
               for name, value in met.items() if "random" in name), met


@pytest.mark.skipif(not MULTITASK_REPORT.exists(), reason="no committed multitask report yet")
def test_the_multitask_prose_quotes_the_report():
    figures = json.loads(MULTITASK_REPORT.read_text())["figures"]
    models = figures["models"]
    text = " ".join((REPO / "README.md").read_text().split())
    gap = models["wide"]["mean_accuracy"] - max(models[k]["mean_accuracy"] for k in models if k.startswith("branched_"))
    assert f"{100 * gap:.1f} points below the wide network" in text
    second = figures["second_test"]
    assert f"second `persons` test set (seed {second['seed']}, {second['test_images']:,} images)" in text


MULTITASK_CURVES = RESULTS / "multitask-curves.json"


@pytest.mark.skipif(not MULTITASK_CURVES.exists(), reason="no committed multitask curves yet")
def test_the_multitask_curves_are_quoted_as_reported_and_cover_every_shipped_model():
    report = json.loads(MULTITASK_CURVES.read_text())
    models = report["figures"]["models"]
    shipped = {p.stem for p in (REPO / "assets" / "multitask").glob("*.safetensors")}
    assert set(models) == shipped
    assert (REPO / report["picture"]).is_file()
    text = " ".join((REPO / "docs" / "multitask.md").read_text().split())
    for name, m in models.items():
        quoted = (f"{name}: best validation accuracy {m['val_best']:.3f} at epoch {m['val_best_epoch']} of "
                  f"{m['epochs']}, the last 5 epochs added {round(100 * m['val_gain_last_5'], 1) + 0.0:.1f} points")
        assert quoted in text, f"docs/multitask.md lacks {quoted!r}"


def test_the_persons_baseline_is_quoted_as_reported():
    figures = json.loads((RESULTS / "datasets.json").read_text())["figures"]
    readme = " ".join((REPO / "README.md").read_text().split())
    quoted = (f"multi-task CNN reaches {figures['persons_mean_accuracy']:.3f} mean attribute accuracy against "
              f"{figures['persons_mean_accuracy_width16']:.3f} at width 16, every attribute at least "
              f"{figures['persons_min_gain_over_majority']:.2f} above its majority rate")
    assert quoted in readme
    for key in ("within_head", "within_body", "head_body"):
        assert f"({figures['persons_affinity_' + key]:.3f})" in readme or f"{figures['persons_affinity_' + key]:.3f})" in readme


# -- BlockDrop's policy network (docs/blockdrop.md) -----------------------------------------------------


def test_the_policy_network_figures_are_quoted_as_reported():
    figures = json.loads((RESULTS / "blockdrop.json").read_text())["figures"]
    text = " ".join((REPO / "docs" / "blockdrop.md").read_text().split())
    for key in ("policy_net_b1_cpu", "policy_net_b1_cpu_compared"):
        share = figures[key]
        quoted = (f"{share['policy_ms']:.2f} ms, {100 * share['time_share']:.1f}% of the full network's time for "
                  f"{100 * share['flops_share']:.1f}% of its FLOPs")
        assert quoted in text, f"docs/blockdrop.md should quote {key}: {quoted!r}"


# -- Load (docs/hosting.md) ----------------------------------------------------------------------------

LOAD_REPORT = RESULTS / "load.json"


def test_the_load_table_and_sentence_quote_the_report():
    report = json.loads(LOAD_REPORT.read_text())
    figures = report["figures"]
    endpoints = [name for name in figures if name != "total"]
    table = next(t for t in _all_tables((REPO / "docs" / "hosting.md").read_text()) if t[0][0] == "endpoint")
    rows = {row[0].strip("`"): row[1:] for row in table[1:]}
    assert set(rows) == set(endpoints)
    for name in endpoints:
        f = figures[name]
        (rps_lo, rps_hi), (p95_lo, p95_hi) = f["throughput_rps_range"], f["p95_ms_range"]
        expected = [f"{f['throughput_rps']:g}", f"{rps_lo:g}–{rps_hi:g}", f"{f['p50_ms'] / 1000:.2f} s",
                    f"{f['p95_ms'] / 1000:.2f} s", f"{p95_lo / 1000:.2f}–{p95_hi / 1000:.2f} s", f"{f['errors']}",
                    f"{f['server_cpu_ms_per_request']:g} ms"]
        assert rows[name] == expected, f"docs/hosting.md: {name} says {rows[name]}, the report says {expected}"
    setup = report["setup"]
    command = f"python benchmarks/load.py --clients {setup['clients']} --calls {setup['calls_per_client']} " \
              f"--repeats {setup['repeats']}"
    assert report["command"].startswith(command) and len(report["runs"]) == setup["repeats"]
    hosting = " ".join((REPO / "docs" / "hosting.md").read_text().split())
    assert f"Measured (`{command}`," in hosting
    slowest = min((figures[n]["throughput_rps_range"][0], n) for n in endpoints)
    met = report["targets"]["met"]
    assert (f"**The targets are met**: the slowest endpoint in its slowest run, `{slowest[1]}`, answered "
            f"{slowest[0]:g} requests/s." in hosting) == met
    readme = " ".join((REPO / "README.md").read_text().split())
    rps = sorted(figures[n]["throughput_rps"] for n in endpoints)
    p95 = sorted(figures[n]["p95_ms"] / 1000 for n in endpoints)
    assert f"{rps[0]:g}–{rps[-1]:g} requests/s with p95 {p95[0]:.2f}–{p95[-1]:.2f} s" in readme
    errors = "no errors" if figures["total"]["errors"] == 0 else f"{figures['total']['errors']} errors"
    assert f"{errors} (median of {setup['repeats']} runs)" in readme
    assert ("meeting the 25 requests/s and 2 s targets" in readme) == met
    assert ("short of the 25 requests/s and 2 s targets" in readme) == (not met)


S3POOL_LOAD_REPORT = RESULTS / "load-s3pool.json"


@pytest.mark.skipif(not S3POOL_LOAD_REPORT.exists(), reason="no committed S3Pool load report yet")
def test_the_s3pool_demo_load_is_quoted_as_reported():
    report = json.loads(S3POOL_LOAD_REPORT.read_text())
    f = report["figures"]["s3pool_run"]
    assert report["command"].startswith("python benchmarks/load.py --only s3pool_run --repeats 3")
    lo, hi = f["throughput_rps_range"]
    sentence = (f"answered {f['throughput_rps']:g} requests/s (median of {report['setup']['repeats']} runs, "
                f"range {lo:g}–{hi:g}) with p95 {f['p95_ms'] / 1000:.2f} s")
    text = " ".join((REPO / "docs" / "s3pool.md").read_text().split())
    assert sentence in text, f"docs/s3pool.md lacks {sentence!r}"
    assert ("at least 30 requests/s: met" in text) == (f["throughput_rps"] >= 30)


# -- Distributed training (docs/gpu.md) ----------------------------------------------------------------


def test_the_distributed_scaling_is_quoted_as_reported():
    figures = json.loads((RESULTS / "distributed.json").read_text())["figures"]
    readme = " ".join((REPO / "README.md").read_text().split())
    assert f"{figures['scaling_2_vs_1_process']:.2f}× the samples/s of one" in readme


# -- VCD sweep (docs/vgan.md) --------------------------------------------------------------------------

VCD_SWEEP_REPORT = RESULTS / "vcd-sweep.json"
VCD_SWEEP_HEADER = ["variant", "changed from the shipped config", "reconstruction BCE", "label kept: reconstruction",
                    "after 1 transition", "after 2", "after 5", "classes at 2%"]


@pytest.mark.skipif(not VCD_SWEEP_REPORT.exists(), reason="no committed VCD sweep yet")
def test_the_vcd_sweep_table_quotes_the_report():
    report = json.loads(VCD_SWEEP_REPORT.read_text())
    variants = report["figures"]["variants"]
    table = next((t for t in _all_tables((REPO / "docs" / "vgan.md").read_text()) if t[0] == VCD_SWEEP_HEADER), None)
    assert table is not None, "docs/vgan.md has no VCD sweep table"
    rows = {row[0].strip("`"): row[1:] for row in table[1:]}
    assert set(rows) == set(variants), "the table's variants differ from the report's"
    for name, v in variants.items():
        kept = v["label_kept"]
        changed = ", ".join(f"{k}={val}" for k, val in v["changed"].items()) or "—"
        expected = [changed, f"{v['reconstruction_bce']:.3f}", f"{kept['reconstruction']:.3f}",
                    f"{kept['chain'][0]:.3f}", f"{kept['chain'][1]:.3f}", f"{kept['chain'][4]:.3f}",
                    f"{v['classes_with_2pct']}"]
        assert rows[name] == expected, f"docs/vgan.md: {name} says {rows[name]}, the report says {expected}"
    text = " ".join((REPO / "docs" / "vgan.md").read_text().split())
    assert "python benchmarks/vcd_sweep.py" in text and report["commit"][:7] in text
