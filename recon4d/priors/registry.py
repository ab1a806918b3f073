"""Backends of a prior by name: one registry type shared by flow and depth.

A backend registers its class (what the protocol test inspects, see tests/test_prior_protocols.py) and a
factory taking the keyword options of ``make_flow_estimator`` / ``make_depth_estimator``. Options are
usually the fields of the backend's config dataclass; `config_from_options` builds it, nested configs
included, and turns unknown names into a one-line PriorError.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from recon4d.errors import PriorError

Estimator = TypeVar("Estimator")


@dataclasses.dataclass(frozen=True)
class Backend(Generic[Estimator]):
    """backend_type: the class the factory returns; factory(**options) -> an instance of it."""

    backend_type: type
    factory: Callable[..., Estimator]


class BackendRegistry(Mapping[str, Backend[Estimator]]):
    """Name -> Backend, in registration order; `make` builds one by name.

    kind names the prior in messages ("flow estimator", "depth prior").
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._backends: dict[str, Backend[Estimator]] = {}

    def register(self, name: str, backend_type: type, factory: Callable[..., Estimator]) -> None:
        self._backends[name] = Backend(backend_type, factory)

    def __getitem__(self, name: str) -> Backend[Estimator]:
        return self._backends[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._backends)

    def __len__(self) -> int:
        return len(self._backends)

    def make(self, name: str, **options: Any) -> Estimator:
        """The backend `name` built from `options`; unknown name or bad option values -> PriorError."""
        backend = self._backends.get(name)
        if backend is None:
            raise PriorError(f"unknown {self.kind} {name!r}", hint=f"choose one of: {', '.join(self._backends)}")
        try:
            return backend.factory(**options)
        except TypeError as error:  # a bad value type inside a config dataclass
            raise PriorError(f"bad options for {self.kind} {name!r}: {error}",
                             hint="check the option names and values") from error


def config_from_options(config_type: type, options: Mapping[str, Any], kind: str, backend: str) -> Any:
    """Build the dataclass `config_type` from keyword options; a nested config may be given as a dict.

    Unknown names -> PriorError naming the valid ones.
    """
    known = {f.name: f for f in dataclasses.fields(config_type)}
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise PriorError(f"unknown option(s) for the {kind} {backend!r}: {', '.join(unknown)}",
                         hint=f"valid: {', '.join(sorted(known))}")
    values = dict(options)
    for name, value in values.items():
        nested = known[name].default_factory
        if isinstance(value, dict) and dataclasses.is_dataclass(nested):
            values[name] = config_from_options(nested, value, kind, f"{backend}.{name}")
    return config_type(**values)
