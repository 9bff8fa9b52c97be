"""The operators' build specs from the typed config: operators take small dataclasses of their own
(they import nothing from ``pipeline``), and their config sections carry the same fields."""

from __future__ import annotations

import dataclasses
from typing import TypeVar

from pydantic import BaseModel

from operators.specs import AudioEncoderSpec, FusionSpec, VisionSpec

Spec = TypeVar("Spec")


def spec_of(section: BaseModel, spec_type: type[Spec]) -> Spec:
    """``spec_type`` filled from the config section's fields of the same names."""
    names = {field.name for field in dataclasses.fields(spec_type)}
    return spec_type(**section.model_dump(include=names))


__all__ = ["AudioEncoderSpec", "FusionSpec", "VisionSpec", "spec_of"]
