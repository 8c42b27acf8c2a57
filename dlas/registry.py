"""One small registry type shared by every layer: ``name -> factory`` with a clear error.

Each layer exposes a single door in the style of ``torchvision.models.get_model``:
``dlas.data.get_datamodule``, ``dlas.models.get_model``, ``dlas.compression.get_compression``.
An unknown name fails before any work starts, naming the value and the valid choices.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, layer: str) -> None:
        self.layer = layer
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def add(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.layer} {name!r} is registered twice")
            self._factories[name] = factory
            return factory

        return add

    def names(self) -> list[str]:
        return sorted(self._factories)

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._factories[name]
        except KeyError:
            raise ValueError(
                f"unknown {self.layer} {name!r}; valid choices: {', '.join(self.names())}"
            ) from None

    def build(self, name: str, **kwargs) -> T:
        return self.get(name)(**kwargs)


def check_fraction(what: str, value: float, *, upper_inclusive: bool = False) -> float:
    """Fail early on a fraction outside [0, 1) (or [0, 1])."""
    ok = 0.0 <= value <= 1.0 if upper_inclusive else 0.0 <= value < 1.0
    if not ok:
        bound = "]" if upper_inclusive else ")"
        raise ValueError(f"{what}={value} is outside [0, 1{bound}")
    return float(value)
