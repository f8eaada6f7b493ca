"""What a task is to the service, declared once: options and bounds, tensors, answers, telemetry.

Every door reads the same spec: the JSON API (``service/doors/json_api.py``) for its request
fields and result entries, the Open Inference Protocol doors for model metadata, input tensors
and output tensors, telemetry for the input sizes it records and the labels it counts. A new task
is one runtime (``modelkit/runtimes``) plus one ``TaskSpec`` subclass registered in
``service/tasks/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar, NamedTuple

import numpy as np

from modelkit.manifest import Manifest

from ..errors import ServiceError


@dataclass(frozen=True)
class Option:
    """One request option (JSON field, OIP request parameter): its default and bounds from the manifest."""

    name: str
    description: str
    default: Callable[[Manifest], int | None]
    maximum: Callable[[Manifest], int]
    minimum: int = 1

    def resolve(self, manifest: Manifest, value: Any) -> int | None:
        """The value to use; 422 naming the option and the bound it broke."""
        if value is None:
            return self.default(manifest)
        hi = self.maximum(manifest)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ServiceError(422, f"{self.name} must be an integer from {self.minimum} to {hi}, got {value!r}",
                               field=self.name, limit=hi)
        if not self.minimum <= value <= hi:
            raise ServiceError(422, f"{self.name} must be from {self.minimum} to {hi} for model {manifest.name}, "
                               f"got {value}", field=self.name, limit=hi if value > hi else self.minimum)
        return value


@dataclass(frozen=True)
class Tensor:
    """An OIP input or output: name, datatype and shape (``-1`` = any size) for a given model."""

    name: str
    datatype: str
    shape: Callable[[Manifest], list[int]]
    description: str

    def metadata(self, manifest: Manifest) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": self.shape(manifest)}


class TensorValues(NamedTuple):  # a tuple: a frozen dataclass's __init__ cost more than building the values
    """A tensor as its shape and its elements, flat and row-major, as Python values: every BYTES tensor
    (inputs' elements ``bytes``, outputs' ``str``) and every output. The REST door's JSON sends outputs as
    they are; bytes are made only for binary data and gRPC. For one item, numpy's object and float arrays
    cost more than the values themselves (benchmarks/RESULTS.md)."""

    shape: tuple[int, ...]
    values: list


def batch_of(*dims: Callable[[Manifest], int] | int) -> Callable[[Manifest], list[int]]:
    """A shape ``[-1, *dims]``; each dim a number or a function of the manifest."""
    return lambda m: [-1, *(d(m) if callable(d) else d for d in dims)]


def n_labels(manifest: Manifest) -> int:
    return len(manifest.labels)


class TaskSpec:
    """Base of every task spec; subclasses set the class attributes and the conversions."""

    task: ClassVar[str]  # the manifest's task
    json_endpoint: ClassVar[str]  # the JSON API path that serves it
    items_field: ClassVar[str]  # the JSON field holding the items ("texts", "images")
    options: ClassVar[tuple[Option, ...]] = ()
    inputs: ClassVar[tuple[Tensor, ...]]
    outputs: ClassVar[tuple[Tensor, ...]]
    # runtime feature -> kind of modelserve_input_size (tokens, pixels, generated_tokens)
    size_features: ClassVar[Mapping[str, str]] = {}

    @cached_property
    def input_tensors(self) -> dict[str, Tensor]:
        """``inputs`` by name."""
        return {t.name: t for t in self.inputs}

    @cached_property
    def output_tensors(self) -> dict[str, Tensor]:
        """``outputs`` by name."""
        return {t.name: t for t in self.outputs}

    @cached_property
    def option_names(self) -> frozenset[str]:
        return frozenset(o.name for o in self.options)

    def resolve_options(self, manifest: Manifest, given: Mapping[str, Any]) -> dict[str, Any]:
        """Every option with its value or default, checked against its bounds."""
        return {o.name: o.resolve(manifest, given.get(o.name)) for o in self.options}

    def runtime_options(self, manifest: Manifest, options: Mapping[str, Any]) -> dict[str, Any]:
        """Options passed to ``Runtime.predict``; requests with equal ones share a batch."""
        return dict(options)

    def json_result(self, result: dict, options: Mapping[str, Any]) -> dict:
        """One entry of the JSON API's ``results`` list."""
        raise NotImplementedError

    def items_from_tensors(self, manifest: Manifest, tensors: Mapping[str, np.ndarray | TensorValues]
                           ) -> tuple[list[Any], str]:
        """OIP input tensors (already checked against ``inputs``; BYTES as ``TensorValues``) -> (items, the
        tensor they came from)."""
        raise NotImplementedError

    def output(self, name: str, results: Sequence[dict], manifest: Manifest) -> TensorValues:
        """The OIP output tensor ``name`` for a batch of results."""
        raise NotImplementedError

    def agrees(self, a: dict, b: dict) -> bool:
        """Whether two versions' results for one item agree (shadow rollouts count this)."""
        raise NotImplementedError

    def predicted_labels(self, result: dict) -> list[str] | None:
        """Labels counted by modelserve_predictions_total for one item (None: the task predicts none)."""
        return None

    def model_parameters(self, manifest: Manifest) -> dict[str, str]:
        """Extra model metadata (OIP ``parameters`` / ``properties``)."""
        return {"task": self.task}


def bytes_items(tensor: TensorValues, name: str) -> list[bytes]:
    """The elements of a BYTES tensor of shape [N] or [N, 1]."""
    shape = tensor.shape
    if not (len(shape) == 1 or len(shape) == 2 and shape[1] == 1):
        raise ServiceError(422, f"input {name!r} must have shape [N] or [N, 1], got {list(shape)}",
                           field=name, limit=[-1])
    return tensor.values


def text_items(tensor: TensorValues, name: str) -> list[str]:
    """A BYTES tensor of UTF-8 texts -> str items; 422 naming the element that is not UTF-8."""
    values = bytes_items(tensor, name)
    try:
        return [raw.decode("utf-8") for raw in values]
    except UnicodeDecodeError:
        for i, raw in enumerate(values):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ServiceError(422, f"{name}[{i}] is not UTF-8 text: {exc}", field=f"{name}[{i}]",
                                   limit="UTF-8") from None
        raise


def text_values(values: list[str]) -> TensorValues:
    """A BYTES [N] output of texts."""
    return TensorValues((len(values),), values)


def score_values(results: Sequence[dict], manifest: Manifest) -> TensorValues:
    """FP32 [N, C]: every label's score per item, in the manifest's label order (runtimes build ``scores``
    from their label list)."""
    return TensorValues((len(results), len(manifest.labels)), [v for r in results for v in r["scores"].values()])
