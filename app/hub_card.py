"""The ``README.md`` model card a Hub push writes (huggingface_hub's ``ModelCard`` and ``ModelCardData``,
whose YAML metadata the Hub reads), and the pieces it is made of: the method's arXiv id, the metrics of the
checkpoint's card, the command that trains it again."""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Mapping
from typing import Any

LIBRARY_NAME = "adaptive-vision-studio"
# The Hub task of each built-in method's checkpoints (a plugin may store ``pipeline_tag`` in its metadata).
PIPELINE_TAGS = {"blockdrop": "image-classification", "s3pool": "image-classification",
                 "multitask": "image-classification", "vgan": "unconditional-image-generation"}
# The studio's datasets that are Hub datasets; the procedural ones (shapes, persons) are named as they are.
HUB_DATASETS = {"cifar10": "uoft-cs/cifar10", "cifar100": "uoft-cs/cifar100", "mnist": "ylecun/mnist",
                "svhn": "ufldl-stanford/svhn"}
ARXIV_ID = re.compile(r"(?:arxiv\.org/(?:abs|pdf)/|arXiv:\s*)(\d{4}\.\d{4,5})", re.IGNORECASE)
SPLITS = {"val": "validation", "valid": "validation", "validation": "validation", "test": "test", "train": "train"}


def arxiv_id(method: Any) -> str | None:
    """The arXiv id of a method's paper (from ``paper_url``, else ``arXiv:ID`` in ``paper``), or None."""
    for text in (getattr(method, "paper_url", ""), getattr(method, "paper", "")):
        match = ARXIV_ID.search(text or "")
        if match:
            return match.group(1)
    return None


def _format_value(value: Any) -> str:
    """A config value as ``avstudio train --set key=VALUE`` reads it (lists comma-separated)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(_format_value(v) for v in value)
    return str(value)


def train_command(studio: Mapping[str, Any]) -> str | None:
    """The ``avstudio train`` command that reproduces a checkpoint's run, from its card (None without one)."""
    method, recipe, config = studio.get("method"), studio.get("recipe"), studio.get("config")
    if not method or not recipe or recipe == "hub-pull":
        return None
    parts = ["avstudio", "train", str(method), str(recipe)]
    for key, value in (config or {}).items() if isinstance(config, Mapping) else ():
        if value is not None and not isinstance(value, Mapping):
            parts += ["--set", f"{key}={_format_value(value)}"]
    return " ".join(shlex.quote(p) for p in parts)


def _split_of(key: str, default: str | None) -> str | None:
    prefix = key.split("_", 1)[0].lower() if "_" in key else ""
    return SPLITS.get(prefix) or (SPLITS.get(str(default).lower()) if default else None)


def _metrics(studio: Mapping[str, Any], metadata: Mapping[str, Any]) -> dict[str, float]:
    raw = studio.get("metrics") or metadata.get("metrics") or {}
    return {str(k): float(v) for k, v in sorted(raw.items()) if isinstance(v, (int, float))
            and not isinstance(v, bool) and math.isfinite(float(v))} if isinstance(raw, Mapping) else {}


README_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

A **{{ method_title }}** checkpoint (`{{ method }}/{{ name }}`) saved by Adaptive Vision Studio (`avstudio`),
which shows and retrains adaptive, efficient vision networks. {{ summary }}

Paper: [{{ paper }}]({{ paper_link }}){% if arxiv %} (arXiv:{{ arxiv }}){% endif %}.

{% if slot_description %}In the studio's {{ method }} demo it fills the checkpoint slot `{{ slot_pattern }}`: {{ slot_description }}.
{% endif %}
## Files

- `{{ name }}.safetensors`: the tensors, as safetensors (loading it runs no code).
- `{{ name }}.json`: the studio's card (format {{ card_format }}): the run's method, recipe, config, dataset,
  commit, device and final metrics (`studio`), and what the plugin stored to rebuild the network (`metadata`).

## Use it in the studio

```bash
avstudio hub pull {{ repo_id }} --slot {{ method }}/{{ name }}
```

The pull downloads only `*.safetensors`, `*.json` and `README.md`, checks the card and the slot's own check,
and promotes it: the {{ method }} demo then uses it. A Space can pull it at start-up with
`AVSTUDIO_HUB_MODELS={{ repo_id }}`.

## Reproduce it

{% if command %}```bash
{{ command }}
```
{% else %}The card records no recipe to train it again.
{% endif %}
{% if provenance %}Trained {{ provenance }}.
{% endif %}
## Training data

{{ dataset_text }}

## Metrics

{% if metrics %}Final values logged by the run (from the card; also in this card's `model-index`):

| metric | split | value |
|---|---|---|
{% for m in metrics %}| `{{ m.key }}` | {{ m.split or "-" }} | {{ m.value }} |
{% endfor %}{% else %}The card records no metrics.
{% endif %}"""


def model_card(source: Any, repo_id: str, registry: Any) -> Any:
    """The repository's ``README.md``: a huggingface_hub ``ModelCard`` whose ``ModelCardData`` the Hub reads
    (``library_name``, ``tags`` with the paper's ``arxiv:`` id, ``datasets``, ``pipeline_tag`` where one
    fits, the metrics as ``model-index`` via ``EvalResult``) and whose text says how to use and reproduce it."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    studio, metadata = source.studio, source.metadata
    method = registry.methods.get(source.method)
    arxiv = arxiv_id(method) if method is not None else None
    pipeline_tag = metadata.get("pipeline_tag") or PIPELINE_TAGS.get(source.method)
    dataset = studio.get("dataset") or metadata.get("dataset") or (studio.get("config") or {}).get("dataset")
    spec = registry.datasets.get(dataset) if dataset else None
    hub_dataset = HUB_DATASETS.get(dataset, dataset) if dataset else None
    metrics = _metrics(studio, metadata)
    eval_split = metadata.get("eval_split")
    tags = [LIBRARY_NAME, source.method, "safetensors", "pytorch"]
    if arxiv:
        tags.append(f"arxiv:{arxiv}")
    if pipeline_tag and pipeline_tag not in tags:
        tags.append(pipeline_tag)
    eval_results = [
        EvalResult(task_type=pipeline_tag or source.method, dataset_type=hub_dataset,
                   dataset_name=getattr(spec, "title", None) or str(dataset), metric_type=key, metric_name=key,
                   metric_value=round(value, 6), dataset_split=_split_of(key, eval_split))
        for key, value in metrics.items()] if hub_dataset else None
    data = ModelCardData(library_name=LIBRARY_NAME, tags=tags, datasets=[hub_dataset] if hub_dataset else None,
                         pipeline_tag=pipeline_tag, model_name=f"{source.method}-{source.name}",
                         eval_results=eval_results or None)
    declared = method.slot(source.name) if method is not None else None
    if spec is not None and dataset not in HUB_DATASETS and getattr(spec, "builtin", False):
        dataset_text = (f"`{dataset}`: {spec.description} It is generated by the studio from a seed "
                        f"(`avstudio datasets show {dataset}`), not a Hub dataset.")
    elif dataset:
        dataset_text = f"`{dataset}`" + (f" ({spec.title})" if spec is not None else "") + "."
    else:
        dataset_text = "The card does not name a dataset."
    where = [f"on {studio['device']}" if studio.get("device") else "",
             f"with torch {studio['torch']}" if studio.get("torch") else "",
             f"at commit `{studio['commit']}`" if studio.get("commit") else "",
             f"as run {studio['run_id']} of the studio that trained it" if studio.get("run_id") is not None else "",
             f"({studio['created']})" if studio.get("created") else ""]
    return ModelCard.from_template(
        data, template_str=README_TEMPLATE, title=f"{getattr(method, 'title', source.method)}: {source.name}",
        method=source.method, method_title=getattr(method, "title", source.method), name=source.name,
        summary=getattr(method, "summary", "") or "", paper=getattr(method, "paper", "") or "",
        paper_link=(getattr(method, "paper_url", "") or (f"https://arxiv.org/abs/{arxiv}" if arxiv else "")),
        arxiv=arxiv, repo_id=repo_id, card_format=source.card.get("format", 1),
        slot_pattern=getattr(declared, "name", source.name), slot_description=getattr(declared, "description", ""),
        command=train_command(studio), provenance=" ".join(w for w in where if w), dataset_text=dataset_text,
        metrics=[{"key": k, "value": f"{v:.4g}", "split": _split_of(k, eval_split)} for k, v in metrics.items()])
