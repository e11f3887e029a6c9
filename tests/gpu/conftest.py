"""Fixtures of the GPU tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_kernel_build_failed():
    """A CUDA kernel whose build fails warns once, and for the rest of the process its callers run
    their other kernel (``FallibleBuild``): every later test of that kernel would check the fallback
    and pass. Each GPU test ends with an error instead while a build has failed in this process."""
    yield
    from rnnlab.ops.registry import FallibleBuild

    if failed := FallibleBuild.failures():
        pytest.fail("a CUDA kernel's build failed in this process, so the tests after it check its fallback: "
                    + "; ".join(failed), pytrace=False)
