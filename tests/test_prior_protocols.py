"""Every registered flow and depth backend has the call signature and settings() of its protocol."""
from __future__ import annotations

import inspect
import typing

import numpy as np
import pytest

from recon4d.errors import PriorError
from recon4d.priors.depth import DEPTH_ESTIMATORS
from recon4d.priors.flow import FLOW_ESTIMATORS
from recon4d.priors.registry import BackendRegistry, config_from_options
from recon4d.priors.types import DepthEstimator, DepthResult, FlowEstimator, FlowResult


def _parameters(function) -> list[inspect.Parameter]:
    return list(inspect.signature(function).parameters.values())[1:]  # without self


def signature_mismatches(backend_type: type, protocol: type) -> list[str]:
    """What keeps `backend_type` from being called as `protocol` says (empty when nothing does)."""
    problems = []
    for method in ("__call__", "settings"):
        if not callable(getattr(backend_type, method, None)):
            problems.append(f"no {method}()")
            continue
        wanted, given = _parameters(getattr(protocol, method)), _parameters(getattr(backend_type, method))
        if [p.name for p in given[:len(wanted)]] != [p.name for p in wanted]:
            problems.append(f"{method}{[p.name for p in given]} does not start with {[p.name for p in wanted]}")
            continue
        for want, have in zip(wanted, given):
            if want.default is not inspect.Parameter.empty and have.default is inspect.Parameter.empty:
                problems.append(f"{method}: {have.name} needs a default")
        problems += [f"{method}: extra {p.name} needs a default" for p in given[len(wanted):]
                     if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        want_return = typing.get_type_hints(getattr(protocol, method)).get("return")
        have_return = typing.get_type_hints(getattr(backend_type, method)).get("return")
        if want_return != have_return:
            problems.append(f"{method} returns {have_return}, not {want_return}")
    if not isinstance(getattr(backend_type, "name", None), str):
        problems.append("no class attribute name")
    return problems


@pytest.mark.parametrize("registry, protocol", [(FLOW_ESTIMATORS, FlowEstimator), (DEPTH_ESTIMATORS, DepthEstimator)],
                         ids=["flow", "depth"])
def test_every_registered_backend_satisfies_its_protocol(registry: BackendRegistry, protocol: type) -> None:
    assert len(registry) >= 3
    for name, backend in registry.items():
        assert signature_mismatches(backend.backend_type, protocol) == [], name
        assert backend.backend_type.name == name  # the registry name is the one stored in cache keys


def test_protocols_declare_moving_masks_and_settings() -> None:
    depth_call = inspect.signature(DepthEstimator.__call__).parameters
    assert list(depth_call) == ["self", "frames", "flow", "intrinsics", "moving_masks"]
    assert depth_call["moving_masks"].default is None
    assert typing.get_type_hints(DepthEstimator.settings)["return"] == dict[str, typing.Any]
    assert typing.get_type_hints(FlowEstimator.settings)["return"] == dict[str, typing.Any]


def test_the_check_finds_a_backend_that_breaks_the_protocol() -> None:
    class NoMasks:
        name = "no-masks"

        def __call__(self, frames: np.ndarray, flow: FlowResult | None, intrinsics: np.ndarray | None) -> DepthResult:
            raise NotImplementedError

        def settings(self) -> dict[str, typing.Any]:
            return {}

    class NoSettings:
        name = "no-settings"

        def __call__(self, frames: np.ndarray) -> FlowResult:
            raise NotImplementedError

    assert signature_mismatches(NoMasks, DepthEstimator) == [
        "__call__['frames', 'flow', 'intrinsics'] does not start with ['frames', 'flow', 'intrinsics', 'moving_masks']"]
    assert signature_mismatches(NoSettings, FlowEstimator) == ["no settings()"]


def test_shared_registry_builds_nested_configs_and_rejects_unknown_names() -> None:
    from recon4d.priors.depth import DepthAnythingV2Config
    from recon4d.priors.flow import ConsistencyConfig, DISFlowConfig

    config = config_from_options(DISFlowConfig, {"patch_stride": 3, "consistency": {"beta": 0.25}}, "flow", "dis")
    assert config.patch_stride == 3 and config.consistency == ConsistencyConfig(beta=0.25)
    nested = config_from_options(DepthAnythingV2Config, {"video": {"smoothness": 1.5}}, "depth prior", "da")
    assert nested.video.smoothness == 1.5 and nested.video.max_frame_gap == 6
    with pytest.raises(PriorError, match=r"unknown option\(s\) for the depth prior 'da.video': smoothnes"):
        config_from_options(DepthAnythingV2Config, {"video": {"smoothnes": 1.5}}, "depth prior", "da")
    for registry in (FLOW_ESTIMATORS, DEPTH_ESTIMATORS):
        with pytest.raises(PriorError, match=f"unknown {registry.kind} 'nope'") as info:
            registry.make("nope")
        assert all(name in info.value.hint for name in registry)
