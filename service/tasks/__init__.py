"""Task specs by manifest task (see base.py). Adding a task: a runtime plus one spec here."""

from __future__ import annotations

from .base import Option, TaskSpec, Tensor
from .image_classification import ImageClassification
from .multi_label import MultiLabelClassification
from .text_classification import TextClassification
from .translation import Translation

SPECS: dict[str, TaskSpec] = {
    spec.task: spec
    for spec in (TextClassification(), MultiLabelClassification(), Translation(), ImageClassification())
}


def spec_for(task: str) -> TaskSpec:
    return SPECS[task]


def endpoint_tasks() -> dict[str, tuple[str, ...]]:
    """JSON API path -> the tasks it serves."""
    out: dict[str, tuple[str, ...]] = {}
    for spec in SPECS.values():
        out[spec.json_endpoint] = (*out.get(spec.json_endpoint, ()), spec.task)
    return out


__all__ = ["SPECS", "Option", "TaskSpec", "Tensor", "endpoint_tasks", "spec_for"]
