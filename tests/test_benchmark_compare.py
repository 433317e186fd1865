"""The sign test `python -m benchmarks.compare` prints beside each ratio."""

from fractions import Fraction

from benchmarks.compare import sign_test


def test_the_chance_of_a_split_is_the_two_sided_binomial_tail():
    """13 of 16 rounds lower happens by chance about 2 % of the time; an even split always; either side alike."""
    assert round(sign_test(13, 16), 4) == round(float(2 * Fraction(560 + 120 + 16 + 1, 2**16)), 4) == 0.0213
    assert sign_test(8, 16) == 1.0
    assert sign_test(3, 16) == sign_test(13, 16)
    assert sign_test(16, 16) == sign_test(0, 16) == 2 / 2**16
    assert sign_test(0, 1) == 1.0
