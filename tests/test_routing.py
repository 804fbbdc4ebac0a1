"""One routing rule, held by the same tie cases in every implementation: model.route (torch, training and
the reference), runtime.select_experts (NumPy, the device side), and the Kotlin and Swift cores (their tests
read tests/data/routing_ties.json too)."""

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch

from vmoe_export.model import route
from vmoe_export.runtime import select_experts
from vmoe_export.split import torch_select

def softmax(x: np.ndarray) -> np.ndarray:
    """The rule's softmax in NumPy: the reference select_experts' plain-Python gates are held to, bit for bit."""
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


CASES = json.loads((Path(__file__).parent / "data" / "routing_ties.json").read_text())["cases"]


@pytest.mark.parametrize("case", CASES, ids=[c["why"] for c in CASES])
def test_every_python_routing_applies_the_tie_rule(case):
    logits = np.array(case["logits"], dtype=np.float32)
    want = case["experts"]
    gates, experts = route(torch.from_numpy(logits)[None], case["k"])
    assert experts[0].tolist() == want
    ids, np_gates = select_experts(logits, case["k"])
    assert ids == want
    assert torch_select(case["k"])(torch.from_numpy(logits)[None])[0] == want
    probs = softmax(logits.astype(np.float64))
    np.testing.assert_allclose(np_gates, probs[want], rtol=1e-6)
    np.testing.assert_allclose(gates[0].numpy(), probs[want], rtol=1e-5)


def test_routing_is_decided_on_logits_not_rounded_probabilities():
    """The case the old rule (top-k of float32 softmax) got wrong: logits one ulp apart whose float32
    probabilities round equal, so the tie-break, not the larger logit, picked the expert."""
    case = next(c for c in CASES if c["why"].startswith("one ulp apart at a small"))
    probs = torch.tensor(case["logits"], dtype=torch.float32).softmax(-1)
    assert probs[0] == probs[1], "the fixture no longer exercises a probability tie"
    assert route(torch.tensor([case["logits"]]), case["k"])[1][0].tolist() == case["experts"]


def test_the_kotlin_and_swift_cores_read_the_same_cases():
    root = Path(__file__).parents[1]
    kotlin = (root / "android_demo/core/src/test/kotlin/dev/vmoe/core/CoreTest.kt").read_text()
    swift = (root / "ios_demo/VMoECore/Tests/VMoECoreTests/RoutingTieTests.swift").read_text()
    assert "routing_ties.json" in (root / "android_demo/core/run_tests.sh").read_text() and "vmoe.routingTies" in kotlin
    assert "routing_ties.json" in swift


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(-60, 60, width=32), min_size=2, max_size=12), st.integers(1, 3), st.data())
def test_plain_python_routing_equals_the_numpy_rule(values, k, data):
    """select_experts works on a Python list (NumPy's per-call cost was most of an image's routing time): the same
    experts as a stable argsort of the float32 logits, and bit for bit the same float32 gates as NumPy's float64
    softmax, ties included."""
    k = min(k, len(values))
    if data.draw(st.booleans()):  # an exact tie with a later expert
        values[data.draw(st.integers(1, len(values) - 1))] = values[0]
    logits = np.array(values, dtype=np.float32)
    ids, gates = select_experts(logits[None], k)
    want = np.argsort(-logits, kind="stable")[:k]
    assert ids == want.tolist()
    assert np.array_equal(np.array(gates, dtype=np.float32), softmax(logits.astype(np.float64))[want].astype(np.float32))
