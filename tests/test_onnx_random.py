"""ONNX export on random networks: onnxruntime equals the simulator on every spike, u and v, for the
differential tests' generators (cycles, delays up to 63, graded payloads up to 24 bits, every sign mode and
weight width, biases with shifts; random conv geometries with stride, padding, dilation and groups).

The generators live in ``test_differential*.py``, which skip without Lava; this module follows them (the
golden constructs, the demo network and the float export are in ``test_onnx_export.py``, which does not
need Lava)."""
from __future__ import annotations

import pytest

pytest.importorskip("onnxruntime")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from test_differential import networks, random_inputs  # noqa: E402
from test_differential_conv import conv_networks  # noqa: E402
from test_onnx_export import assert_equal_runs  # noqa: E402

from snn2hw.onnx import export_integer, run_sequence  # noqa: E402


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(networks(), st.integers(1, 40), st.integers(1, 3), st.integers(0, 2**31))
def test_random_networks_equal_simulator(graph, steps, batch, seed):
    x = random_inputs(graph, batch, steps, seed)
    assert_equal_runs(graph, x, run_sequence(export_integer(graph, record_state=True), x), "random network")


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(conv_networks(), st.integers(1, 12), st.integers(0, 2**31))
def test_random_conv_networks_equal_simulator(graph, steps, seed):
    x = random_inputs(graph, 2, steps, seed)
    assert_equal_runs(graph, x, run_sequence(export_integer(graph, record_state=True), x), "random conv network")
