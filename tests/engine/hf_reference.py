"""The engine tests' independent side, `kvpager.verify.hf_reference` (a tiny random Llama
and transformers' own generation), skipped where transformers is not installed."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from kvpager.verify.hf_reference import *  # noqa: F403
