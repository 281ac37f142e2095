"""The image pipeline's resize-and-crop step (ImageNet 256 / CIFAR-10 preprocessing)."""

import jax
import numpy as np
import pytest

from jaxar.data import images, pipeline, sources
from jaxar.train import config as config_lib


def _ramp(h, w, c=3):
    """A smooth uint8 image (resampling filters agree on it up to rounding)."""
    y, x = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    planes = [x * y, x, 1 - y][:c]
    return np.round(np.stack(planes, -1) * 255).astype(np.uint8)


def test_center_crop_is_numpy_slicing():
    img = np.random.default_rng(0).integers(0, 256, (37, 50, 3), dtype=np.uint8)
    np.testing.assert_array_equal(images.center_crop(img, 32), img[2:34, 9:41])
    np.testing.assert_array_equal(images.center_crop(img, 37), img[:, 6:43])


@pytest.mark.parametrize(
    "shape,short,method", [((30, 60), 16, "bicubic"), ((45, 30), 60, "bilinear")]
)
def test_resize_short_side_matches_jax_image_resize(shape, short, method):
    """PIL's antialiased resize == ``jax.image.resize(antialias=True)`` up to rounding."""
    img = _ramp(*shape)
    out = images.resize_short_side(img, short, method)
    h, w = shape
    want_hw = (short, round(w * short / h)) if h <= w else (round(h * short / w), short)
    assert out.shape == (*want_hw, 3) and out.dtype == np.uint8
    ref = jax.image.resize(
        img.astype(np.float32), out.shape, "cubic" if method == "bicubic" else "linear"
    )
    assert np.abs(out.astype(np.float32) - np.asarray(ref)).max() <= 1.5
    assert images.resize_short_side(out, short) is out  # already that size: unchanged


def test_prep_makes_variable_shapes_one_fixed_shape():
    prep = images.ImagePrep(16, ratio=1.125)
    rng = np.random.default_rng(1)
    for h, w, c in [(40, 24, 3), (24, 40, 3), (16, 16, 3), (9, 13, 3), (30, 50, 1)]:
        img = rng.integers(0, 256, (h, w, c), dtype=np.uint8)
        out = prep(img)
        assert out.shape == (16, 16, c) and out.dtype == np.uint8
        resized = images.resize_short_side(img, 18)
        np.testing.assert_array_equal(out, images.center_crop(resized, 16))
    const = np.full((40, 70, 3), 200, np.uint8)  # range kept: a flat image stays flat
    assert (prep(const) == 200).all()


def test_random_crops_and_flips_are_windows_of_the_resized_image():
    img = np.random.default_rng(2).integers(0, 256, (30, 44, 3), dtype=np.uint8)
    prep = images.ImagePrep(20, random_crop=True, flip=True)
    resized = images.resize_short_side(img, 20)  # (20, 29)
    windows = [resized[:, x : x + 20] for x in range(resized.shape[1] - 19)]
    seen = set()
    for seed in range(40):
        out = prep(img, np.random.default_rng(seed))
        flipped = next((x for x, win in enumerate(windows) if (win[:, ::-1] == out).all()), None)
        plain = next((x for x, win in enumerate(windows) if (win == out).all()), None)
        assert (flipped, plain) != (None, None)
        seen.add((plain is None, plain if plain is not None else flipped))
    assert len({f for f, _ in seen}) == 2 and len({x for _, x in seen}) > 3
    with pytest.raises(ValueError, match="needs rng"):
        prep(img)


def test_pipeline_augments_per_batch_reproducibly_and_evaluates_the_centre():
    prep = images.ImagePrep(6, ratio=4 / 3, random_crop=True, flip=True)  # 8x8: crops of 6
    src, info = sources.load("digits", "test", seq_len=2, image=prep)
    assert info.image_shape == (6, 6, 1) and info == sources.describe("digits", image=prep)
    raw = sources.load("digits", "test", seq_len=2)[0][3]["image"]
    np.testing.assert_array_equal(src[3]["image"], raw[1:7, 1:7])  # deterministic: centre
    one = pipeline.batched(src, 8, seed=5)
    hosts = [pipeline.batched(src, 8, seed=5, host=pipeline.HostShard(p, 2)) for p in (0, 1)]
    first = one[0]
    assert first["image"].shape == (8, 6, 6, 1) and first["image"].dtype == np.uint8
    np.testing.assert_array_equal(one[0]["image"], first["image"])  # same batch, same crops
    np.testing.assert_array_equal(
        np.concatenate([h[0]["image"] for h in hosts]), first["image"]
    )  # 2 hosts draw the crops 1 host does
    it = pipeline.DataIterator(one, prefetch=0)
    next(it)
    state = it.get_state()
    want = next(it)["image"]
    it2 = pipeline.DataIterator(pipeline.batched(src, 8, seed=5), prefetch=0)
    it2.set_state(state)
    np.testing.assert_array_equal(next(it2)["image"], want)  # a resumed iterator replays
    centre = pipeline.batched(src, 8, shuffle=False)[0]["image"]  # evaluation: central crops
    np.testing.assert_array_equal(centre, np.stack([src[i]["image"] for i in range(8)]))


def test_data_config_builds_the_train_and_eval_preps():
    d = config_lib.DataConfig(
        name="tfds:imagenet2012", image_size=256, image_ratio=1.125, random_crop=True
    )
    assert d.image_prep(train=True) == images.ImagePrep(256, 1.125, random_crop=True)
    assert d.image_prep(train=False) == images.ImagePrep(256, 1.125)
    assert config_lib.DataConfig().image_prep(train=True) is None


@pytest.mark.parametrize(
    "fields,match",
    [
        (dict(image_size=-1), r"^config.data.image_size=-1 is invalid"),
        (dict(image_size=8, image_ratio=0.5), r"^config.data.image_ratio=0.5 is invalid"),
        (dict(image_size=8, resample="nearest"), r"^config.data.resample='nearest' is invalid"),
        (dict(random_flip=True), r"^config.data.image_size=0 is invalid; accepted: .* > 0 when"),
        (dict(random_crop=1), r"^config.data.random_crop=1 is invalid"),
    ],
)
def test_bad_data_image_fields(fields, match):
    with pytest.raises(ValueError, match=match):
        config_lib.DataConfig(name="digits", **fields)


def test_bad_images_and_crops():
    with pytest.raises(ValueError, match=r"dtype float32 .* accepted: uint8 \(H, W, C\)"):
        images.center_crop(np.zeros((8, 8, 3), np.float32), 4)
    with pytest.raises(ValueError, match=r"crop size=9 does not fit an image of 8x12"):
        images.center_crop(np.zeros((8, 12, 3), np.uint8), 9)
    with pytest.raises(ValueError, match=r"image size=0 is invalid"):
        images.ImagePrep(0)


def test_vq_sample_grid_reconstructs_images_at_the_models_size():
    """A tokenizer trained at data.image_size=16 on 8x8 digits reconstructs 16x16 images
    (the stored ones resized), and refuses images of another shape in one line."""
    from flax import nnx

    from jaxar.data import corpora
    from jaxar.models import vq
    from jaxar.train import tasks

    cfg = vq.VQConfig.preset("tiny", width=8, image_size=16)
    model = vq.VQ(cfg, rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
    want = np.stack([images.ImagePrep(16)(im) for im in corpora.digits("test")["image"][:2]])
    grid = tasks.sample_vq(model, jax.random.key(0), 2, images=want)  # as a run passes them
    assert grid.shape == (4, 16, 16, 1) and grid.dtype == np.uint8
    np.testing.assert_array_equal(grid[:2], want)  # originals as the model sees them
    with pytest.raises(ValueError):  # without the run's images: the raw 8x8 set is refused
        tasks.sample_vq(model, jax.random.key(0), 2)
    with pytest.raises(
        ValueError, match=r"images of shape \(2, 8, 8, 1\); accepted: \(B, 16, 16, 1\)"
    ):
        model.reconstruct(corpora.digits("test")["image"][:2])


def test_image_fields_on_text_data_or_unsized_tfds_images_are_one_line_errors(monkeypatch):
    prep = images.ImagePrep(8)
    with pytest.raises(ValueError, match=r"^config.data.image_size=8 .*name='stdlib' is text data"):
        sources.load("stdlib", "train", seq_len=8, image=prep)
    with pytest.raises(ValueError, match=r"^config.data.image_size=8 .*name='stdlib' is text data"):
        sources.describe("stdlib", image=prep)
    # a tfds image set whose images vary in shape (ImageNet) needs data.image_size
    varied = pipeline.MapRecords(
        [{"image": np.zeros((9 + i, 7, 3), np.uint8), "label": 0} for i in range(4)],
        lambda r: r, name="varied",
    )  # fmt: skip
    info = sources.DataInfo("image", image_shape=(None, None, 3), num_classes=1)
    monkeypatch.setattr(sources, "_tfds", lambda *a, **k: (varied, info))
    with pytest.raises(ValueError, match=r"^config.data.name='tfds:varied' has images of shape "):
        sources.load("tfds:varied", "train", seq_len=8)
    src, shaped = sources.load("tfds:varied", "train", seq_len=8, image=prep)
    assert shaped.image_shape == (8, 8, 3) and src[3]["image"].shape == (8, 8, 3)


def test_resize_treats_every_channel_alike():
    """Each channel is resized on its own: a 4th (alpha) channel of zeros leaves the colour
    channels as an RGB resize makes them (PIL's RGBA resize premultiplies by alpha)."""
    rgb = _ramp(12, 20)
    rgba = np.concatenate([rgb, np.zeros_like(rgb[..., :1])], -1)
    out = images.resize_short_side(rgba, 6)
    np.testing.assert_array_equal(out[..., :3], images.resize_short_side(rgb, 6))
    assert (out[..., 3] == 0).all()
    two = images.resize_short_side(rgba[..., 1:3], 6)  # 2 channels: each alike too
    np.testing.assert_array_equal(two, images.resize_short_side(rgb, 6)[..., 1:3])
