import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pfcompile.errors import PassError
from pfcompile.quantexec.requant import requant_offset, requant_scale, requantize_ref


@given(st.floats(min_value=1e-6, max_value=100.0), st.integers(-(2**24), 2**24))
@settings(max_examples=300, deadline=None)
def test_float32_requant_matches_exact_rounding_within_float_error(m, acc):
    s = requant_scale(np.array([m]))
    assert s.dtype == np.float32
    got = int(requantize_ref(np.array([[acc]]), s, 0, -(2**40), 2**40)[0, 0])
    exact = acc * m
    assert abs(got - exact) <= 0.5 + 1e-6 * max(1.0, abs(exact))


def test_round_half_to_even_on_exact_ties():
    s = requant_scale(np.array([0.5]))  # exact in float32
    acc = np.array([[1, 3, 5, -1, -3, 7]])
    got = requantize_ref(acc, s, 0, -100, 100)
    np.testing.assert_array_equal(got, np.round(acc * 0.5))  # numpy rounds half to even
    np.testing.assert_array_equal(got[0], [0, 2, 2, 0, -2, 4])


def test_saturates_and_adds_zero_point():
    s = requant_scale(np.array([1.0, 1.0]))
    acc = np.array([[300, -300]]).reshape(1, 2)
    got = requantize_ref(acc, s, 10, 0, 255)
    np.testing.assert_array_equal(got, [[255, 0]])


def test_bad_scales_raise():
    with pytest.raises(PassError, match="channel 1"):
        requant_scale(np.array([0.5, -1.0]))


@given(st.integers(-(2**20), 2**20), st.floats(-50.0, 50.0), st.integers(0, 255),
       st.floats(1e-4, 1e-2), st.floats(1e-3, 1e-1))
@settings(max_examples=300, deadline=None)
def test_float_bias_fraction_goes_into_the_offset(acc, b, zy, acc_scale, sy):
    """A float bias ``b``: its whole accumulator units go into the integer bias, the rest into
    the offset, so the requantised value is the exact ``rint((acc * sxsw + b) / sy) + zy``
    up to float32 error (1e-5 of a step here), not up to half an accumulator unit."""
    sxsw = np.array([acc_scale], np.float64)
    bias = np.rint(b / sxsw).astype(np.int64)
    off = requant_offset(zy, np.array([b]), bias, sxsw, sy)
    m = requant_scale(sxsw / sy)
    got = int(requantize_ref(np.array([[acc + int(bias[0])]]), m, off, -(2**40), 2**40)[0, 0])
    exact = (acc * acc_scale + b) / sy + zy
    assert abs(got - exact) <= 0.5 + 1e-5 * max(1.0, abs(exact))
    if abs(exact) < 1000 and abs(abs(exact - np.floor(exact)) - 0.5) > 1e-3:  # in range, not near a tie
        assert got == int(np.floor(exact + 0.5))
