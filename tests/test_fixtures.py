"""The shared fixture models exist, load, and classify digits far above chance."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FIXTURE_MODELS

from pfcompile.reference import reference_session


@pytest.mark.parametrize("name", FIXTURE_MODELS)
def test_fixture_model_is_trained_and_runs(trained, digits, name):
    tm = trained(name)
    sess = reference_session(tm.onnx)
    logits = np.concatenate([sess.run(None, {"input": x[None]})[0] for x in digits.x_val[:100]])
    top1 = float((logits.argmax(1) == digits.y_val[:100]).mean())
    assert top1 > 0.5, f"{name} top1 {top1}"
    bn = reference_session(tm.onnx_bn)
    ref = bn.run(None, {"input": digits.x_val[:1]})[0]
    np.testing.assert_allclose(ref, logits[:1], rtol=1e-4, atol=1e-4)
