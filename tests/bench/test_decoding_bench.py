"""``jaxar bench decoding``: registered; the predicted speed-up is the MATHS.md s.9 formula."""

import pytest

from jaxar.bench import BENCHMARKS
from jaxar.bench.decoding import predicted_speedup


def test_decoding_is_registered_and_prediction_matches_formula():
    assert BENCHMARKS["decoding"] == "jaxar.bench.decoding"
    # alpha = 0.8, K = 4: (1 - 0.8^5) / 0.2 = 3.3616 tokens per call; c K + 1 = 2
    assert predicted_speedup(0.8, 4, 0.25) == pytest.approx(3.3616 / 2.0)
    assert predicted_speedup(1.0, 4, 0.0) == 5.0  # every draft accepted, free drafts
    assert predicted_speedup(0.0, 8, 0.5) == pytest.approx(1.0 / 5.0)  # all rejected
    # a verification priced at v one-token calls: the round costs c K + v
    assert predicted_speedup(0.8, 4, 0.25, v=2.0) == pytest.approx(3.3616 / 3.0)
