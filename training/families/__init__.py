"""Model families by model name.

Each module in ``FAMILY_MODULES`` defines ``MODELS: dict[str, Family]``. A module that does
not exist (yet) is skipped; one that exists but fails to import raises, so a broken family
is never silently dropped.
"""

from __future__ import annotations

import importlib
import importlib.util

from ..family import Family

FAMILY_MODULES = (
    "training.families.text_classifier",  # sentiment, topics
    "training.families.vit",  # fashion
    "training.families.translator",  # de-en, en-ko
)


def available_models() -> dict[str, Family]:
    """Every registered model name -> its family instance, in FAMILY_MODULES order."""
    models: dict[str, Family] = {}
    for module_name in FAMILY_MODULES:
        if importlib.util.find_spec(module_name) is None:
            continue
        module = importlib.import_module(module_name)
        for name, family in getattr(module, "MODELS", {}).items():
            if name in models:
                raise RuntimeError(f"model name {name!r} registered twice (second in {module_name})")
            models[name] = family
    return models


def default_models() -> list[str]:
    """Models trained when `train` gets no --models."""
    return [name for name, fam in available_models().items() if fam.in_default_run]
