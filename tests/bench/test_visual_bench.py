"""jaxar bench visual: the sampling sizes (the timed runs are the benchmark itself)."""

import pytest

from jaxar.bench import visual


def test_sampling_sizes_share_one_backbone_per_size_and_refuse_others():
    assert set(visual.SIZES) == {"tiny", "base"}
    fields, codes = visual.SIZES["base"]
    assert fields == dict(d_model=768, num_layers=12, num_heads=12) and codes == 4096
    with pytest.raises(
        ValueError, match=r"size='huge' is not supported; accepted: \('tiny', 'base'\)"
    ):
        visual._sampling(1, 1, "huge")
    with pytest.raises(SystemExit):
        visual.main(["--size", "huge"])
