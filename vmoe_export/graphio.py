"""A graph's inputs and outputs as a bundle's manifest lists them: what a backend needs to load and run a
graph. Shared by the split (which writes them) and the device side (which reads them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, d: dict) -> "TensorSpec":
        return cls(d["name"], tuple(d["shape"]), d.get("dtype", "float32"))


@dataclass(frozen=True)
class GraphIO:
    """A graph's inputs and outputs in order: what a backend needs to load and run it."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @classmethod
    def from_manifest(cls, entry: dict) -> "GraphIO":
        return cls(tuple(map(TensorSpec.from_json, entry["inputs"])), tuple(map(TensorSpec.from_json, entry["outputs"])))

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]
