"""The paged-attention test matrix for the backend tests: `kvpager.verify.matrix` (shared
with benchmarks/gpu_verify.py) plus pytest parametrisation.

Use:
    from kernel_matrix import full_matrix, case_params, make_inputs, ...

    @pytest.mark.gpu
    @pytest.mark.parametrize("case", case_params(full_matrix()))
    def test_my_backend(case): ...
"""

from __future__ import annotations

import pytest

from kvpager.verify.matrix import *  # noqa: F403
from kvpager.verify.matrix import AttentionCase


def case_params(cases: list[AttentionCase], *marks: pytest.MarkDecorator) -> list:
    return [pytest.param(c, id=c.id, marks=marks) for c in cases]
