"""GPU tests run only where an NVIDIA driver and a CUDA build of llama-cpp-python are present."""

from __future__ import annotations

import pytest

from appliance.telemetry.nvml import Nvml


def _gpu_ready() -> str | None:
    if Nvml.open() is None:
        return "no NVIDIA driver (NVML) on this machine"
    try:
        import llama_cpp
    except ImportError:
        return "llama-cpp-python is not installed"
    if not llama_cpp.llama_supports_gpu_offload():
        return "llama-cpp-python was built without GPU offload (reinstall with APPLIANCE_CUDA=1)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    why = _gpu_ready()
    for item in items:
        if "tests/gpu/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.gpu)
            if why:
                item.add_marker(pytest.mark.skip(reason=why))
