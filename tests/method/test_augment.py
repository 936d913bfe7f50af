"""SimCLR views: shapes, reproducibility, per-image independence, rates, and agreement of the
per-image and batched implementations (with each other and with a torchvision reference)."""

from __future__ import annotations

import colorsys
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms
from transform_oracle import eval_transform

from simclr_cli.data.datasets import ShapesDataset
from simclr_cli.errors import UsageError
from simclr_cli.method.augment import (
    P_BLUR,
    P_FLIP,
    P_GRAYSCALE,
    P_JITTER,
    BatchedSimCLRAugment,
    SimCLRAugment,
    TwoViews,
    blur_kernel_size,
    jitter_ranges,
)
from simclr_cli.method.augment_ops import shift_hue as _shift_hue
from simclr_cli.method.augment_ops import update_chosen as _update_chosen
from simclr_cli.method.preprocess import normalize_uint8, to_uint8_transform

SIZE = 16  # tiny images keep thousands of draws fast


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    dataset = ShapesDataset(size=64, image_size=SIZE, seed=3)
    return [dataset[i][0] for i in range(len(dataset))]


@pytest.fixture(scope="module")
def batch(images: list[Image.Image]) -> torch.Tensor:
    """(64, 3, 16, 16) uint8."""
    return torch.stack([torch.from_numpy(np.array(image)).permute(2, 0, 1) for image in images])


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batched_params_row(params: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    return {key: value[i : i + 1] for key, value in params.items()}


# -------------------------------------------------------------------------------------------
# shapes, dtypes, ranges, options


def test_blur_kernel_is_ten_percent_and_odd() -> None:
    assert [blur_kernel_size(s) for s in (8, 32, 96, 224)] == [3, 3, 9, 23]


def test_jitter_ranges_follow_the_paper() -> None:
    brightness, contrast, saturation, hue = jitter_ranges(0.5)
    assert brightness == contrast == saturation == pytest.approx((0.6, 1.4))
    assert hue == pytest.approx((-0.1, 0.1))
    assert jitter_ranges(1.5)[0][0] == 0.0  # factors never negative


@pytest.mark.parametrize("cls", [SimCLRAugment, BatchedSimCLRAugment])
def test_bad_options_are_usage_errors(cls: type) -> None:
    with pytest.raises(UsageError, match="--image-size"):
        cls(4)
    with pytest.raises(UsageError, match="--jitter-strength"):
        cls(32, jitter_strength=3.0)


def test_per_image_view_shape_dtype_range(images: list[Image.Image]) -> None:
    augment = SimCLRAugment(12, jitter_strength=1.0, blur=True)
    wide = Image.new("L", (40, 10), 128)  # grayscale, non-square input
    generator = seeded(0)
    for image in [*images[:8], wide] * 20:
        view = augment(image, generator)
        assert view.shape == (3, 12, 12) and view.dtype == torch.float32
        assert 0.0 <= view.min() and view.max() <= 1.0


def test_per_image_normalisation(images: list[Image.Image]) -> None:
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    plain = SimCLRAugment(SIZE)(images[0], seeded(1))
    normed = SimCLRAugment(SIZE, mean=mean, std=std)(images[0], seeded(1))
    expected = (plain - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(normed, expected)


def test_batched_view_shape_dtype_range(batch: torch.Tensor) -> None:
    augment = BatchedSimCLRAugment(12, blur=True)
    for x in (batch, batch.float() / 255.0, batch[:, :1]):
        views = augment(x, seeded(0))
        assert views.shape == (64, 3, 12, 12) and views.dtype == torch.float32
        assert views.min() >= 0.0 and views.max() <= 1.0


def test_batched_normalisation(batch: torch.Tensor) -> None:
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    plain = BatchedSimCLRAugment(SIZE)(batch, seeded(2))
    normed = BatchedSimCLRAugment(SIZE, mean=mean, std=std)(batch, seeded(2))
    expected = (plain - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(normed, expected)


def test_two_views_differ(images: list[Image.Image]) -> None:
    torch.manual_seed(0)
    first, second = TwoViews(SimCLRAugment(SIZE))(images[0])
    assert first.shape == second.shape == (3, SIZE, SIZE)
    assert not torch.equal(first, second)


def test_transforms_survive_pickling(images: list[Image.Image]) -> None:
    """DataLoader workers started with spawn/forkserver receive transforms by pickle."""
    import pickle

    for transform in (
        SimCLRAugment(SIZE, mean=(0.5,) * 3, std=(0.2,) * 3),
        TwoViews(SimCLRAugment(SIZE)),
        eval_transform(SIZE, (0.5,) * 3, (0.2,) * 3),
        to_uint8_transform(SIZE),
    ):
        copy = pickle.loads(pickle.dumps(transform))
        torch.manual_seed(3)
        expected = transform(images[0])
        torch.manual_seed(3)
        got = copy(images[0])
        for a, b in zip(
            got if isinstance(got, tuple) else (got,),
            expected if isinstance(expected, tuple) else (expected,),
            strict=True,
        ):
            assert torch.equal(a, b)


def test_eval_and_uint8_transforms() -> None:
    image = Image.fromarray(np.arange(40 * 20 * 3, dtype=np.uint8).reshape(20, 40, 3))
    tensor = eval_transform(10)(image)
    assert tensor.shape == (3, 10, 10) and tensor.dtype == torch.float32
    normed = eval_transform(10, mean=(0.5,) * 3, std=(0.25,) * 3)(image)
    torch.testing.assert_close(normed, (tensor - 0.5) / 0.25)
    as_tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    torch.testing.assert_close(eval_transform(10)(as_tensor), tensor, atol=1 / 255, rtol=0)
    fixed = to_uint8_transform(10)(image.convert("L"))
    assert fixed.shape == (3, 10, 10) and fixed.dtype == torch.uint8
    # a square image at the target size passes through unchanged
    square = Image.fromarray(np.random.default_rng(0).integers(0, 256, (10, 10, 3), np.uint8))
    assert torch.equal(
        to_uint8_transform(10)(square), torch.from_numpy(np.array(square)).permute(2, 0, 1)
    )


@pytest.mark.parametrize("stats", [None, ((0.4, 0.5, 0.6), (0.2, 0.25, 0.3))])
def test_uint8_crops_normalised_per_batch_equal_the_eval_transform(stats) -> None:
    """linear-eval/features crop to uint8 in the loader and normalise batches on the device."""
    rng = np.random.default_rng(1)
    shapes = [(10, 10), (20, 40), (37, 23), (12, 12)]  # as is, resized, resized + cropped
    images = [Image.fromarray(rng.integers(0, 256, (*hw, 3), np.uint8)) for hw in shapes]
    mean, std = stats if stats else (None, None)
    expected = torch.stack([eval_transform(10, mean, std)(im) for im in images])
    crops = torch.stack([to_uint8_transform(10)(im) for im in images])
    got = normalize_uint8(crops, mean, std)
    assert got.dtype == torch.float32 and crops.dtype == torch.uint8
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_grayscale_tensors_give_three_channels() -> None:
    # As the batched pipeline does: the encoder's first conv takes 3 channels.
    gray = torch.rand(1, 20, 24, generator=torch.Generator().manual_seed(0))
    views = [SimCLRAugment(16)(gray, generator=torch.Generator().manual_seed(s)) for s in range(8)]
    views += [eval_transform(16)(gray), to_uint8_transform(16)(gray).float()]
    for view in views:
        assert view.shape == (3, 16, 16)
        assert torch.equal(view[0], view[1]) and torch.equal(view[1], view[2])


def test_sixteen_bit_pil_images_are_rescaled_not_clipped() -> None:
    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    image = Image.fromarray(ramp)  # mode I;16: PIL's convert("RGB") would clip it to white
    want = torch.from_numpy(np.round(ramp / 257.0) / 255.0).float()
    got = eval_transform(32)(image)
    assert got.shape == (3, 32, 32)
    torch.testing.assert_close(got[0], want, atol=1.5 / 255, rtol=0)
    augment = SimCLRAugment(32)
    params = augment.sample_params(32, 32, seeded(0))
    params.update(crop=(0, 0, 32, 32), flip=False, jitter=False, grayscale=False, blur=False)
    torch.testing.assert_close(augment.apply(image, params)[0], want, atol=1.5 / 255, rtol=0)


# -------------------------------------------------------------------------------------------
# reproducibility and independence


def test_reproducible_under_a_seed(images: list[Image.Image], batch: torch.Tensor) -> None:
    per_image = SimCLRAugment(SIZE, blur=True)
    assert torch.equal(per_image(images[0], seeded(5)), per_image(images[0], seeded(5)))
    assert not torch.equal(per_image(images[0], seeded(5)), per_image(images[0], seeded(6)))
    batched = BatchedSimCLRAugment(SIZE, blur=True)
    assert torch.equal(batched(batch, seeded(5)), batched(batch, seeded(5)))
    assert not torch.equal(batched(batch, seeded(5)), batched(batch, seeded(6)))


def test_batched_parameters_are_independent_per_image() -> None:
    params = BatchedSimCLRAugment(SIZE, blur=True).sample_params(2000, 64, 64, seeded(0))
    crops = params["crop"]
    assert len({tuple(row) for row in crops.tolist()}) > 1500  # not one draw for the batch
    # flags of neighbouring images are uncorrelated
    for key in ("flip", "jitter", "grayscale", "blur"):
        flags = params[key].float()
        corr = torch.corrcoef(torch.stack([flags[:-1], flags[1:]]))[0, 1]
        assert abs(corr) < 0.1, key
        assert 0 < flags.sum() < len(flags), key
    assert len({tuple(row) for row in params["order"].tolist()}) == 24  # all orders appear


def test_batched_views_of_one_image_differ(batch: torch.Tensor) -> None:
    same = batch[:1].expand(32, -1, -1, -1)
    views = BatchedSimCLRAugment(SIZE, blur=True)(same, seeded(0)).flatten(1)
    distinct = torch.cdist(views, views) + torch.eye(32) > 1e-3
    assert distinct.all()


def test_batched_images_do_not_interact(batch: torch.Tensor) -> None:
    """Each output depends only on its own input and parameters."""
    augment = BatchedSimCLRAugment(SIZE, blur=True)
    params = augment.sample_params(len(batch), SIZE, SIZE, seeded(1))
    together = augment.apply(batch, params)
    for i in (0, 17, 63):
        alone = augment.apply(batch[i : i + 1], batched_params_row(params, i))
        torch.testing.assert_close(together[i : i + 1], alone, atol=1e-6, rtol=0)


# -------------------------------------------------------------------------------------------
# rates and crop geometry


def _rate(flags: torch.Tensor | list[bool]) -> float:
    return float(torch.as_tensor(flags, dtype=torch.float32).mean())


def test_batched_rates_match_probabilities() -> None:
    n = 4000  # binomial std <= 0.008; tolerance 0.035 is > 4 std
    params = BatchedSimCLRAugment(SIZE, blur=True).sample_params(n, SIZE, SIZE, seeded(0))
    for key, p in (("flip", P_FLIP), ("jitter", P_JITTER), ("grayscale", P_GRAYSCALE)):
        assert _rate(params[key]) == pytest.approx(p, abs=0.035), key
    assert _rate(params["blur"]) == pytest.approx(P_BLUR, abs=0.035)
    unblurred = BatchedSimCLRAugment(SIZE, blur=False).sample_params(n, SIZE, SIZE, seeded(0))
    assert not unblurred["blur"].any()
    sigma = params["sigma"]
    assert 0.1 <= sigma.min() and sigma.max() <= 2.0 and sigma.mean() == pytest.approx(1.05, 0.05)
    lo, hi = jitter_ranges(1.0)[0]
    factors = params["factors"]
    assert lo <= factors[:, :3].min() and factors[:, :3].max() <= hi
    assert factors[:, 3].abs().max() <= 0.2


def test_per_image_rates_match_probabilities() -> None:
    augment = SimCLRAugment(SIZE, blur=True)
    generator = seeded(0)
    draws = [augment.sample_params(SIZE, SIZE, generator) for _ in range(3000)]
    for key, p in (("flip", P_FLIP), ("jitter", P_JITTER), ("grayscale", P_GRAYSCALE)):
        assert _rate([d[key] for d in draws]) == pytest.approx(p, abs=0.04), key
    assert _rate([d["blur"] for d in draws]) == pytest.approx(P_BLUR, abs=0.04)


def test_flip_and_grayscale_rates_seen_in_pixels() -> None:
    """Measured on outputs, not parameters: a gray left-to-right ramp shows flips (jitter keeps
    it monotone) and a saturated image shows grayscale (jitter never fully desaturates)."""
    ramp = torch.linspace(0, 255, SIZE).round().to(torch.uint8).expand(3, SIZE, SIZE)
    colour = torch.zeros(3, SIZE, SIZE, dtype=torch.uint8)
    colour[0], colour[1, :, : SIZE // 2] = 220, 120
    n = 2000
    augment = BatchedSimCLRAugment(SIZE, jitter_strength=0.5)
    ramps = augment(ramp.expand(n, -1, -1, -1), seeded(0))
    flipped = ramps[:, 0, :, 0].mean(1) > ramps[:, 0, :, -1].mean(1)
    assert _rate(flipped) == pytest.approx(P_FLIP, abs=0.045)
    colours = augment(colour.expand(n, -1, -1, -1), seeded(1))
    gray = (colours.amax(1) - colours.amin(1)).amax((1, 2)) < 1e-6
    assert _rate(gray) == pytest.approx(P_GRAYSCALE, abs=0.035)

    per_image = SimCLRAugment(SIZE, jitter_strength=0.5)
    ramp_pil = Image.fromarray(ramp.permute(1, 2, 0).numpy())
    torch.manual_seed(0)
    views = torch.stack([per_image(ramp_pil) for _ in range(1000)])
    flipped = views[:, 0, :, 0].mean(1) > views[:, 0, :, -1].mean(1)
    assert _rate(flipped) == pytest.approx(P_FLIP, abs=0.065)


@pytest.mark.parametrize("height,width", [(64, 64), (40, 100), (12, 90)])
def test_crop_area_and_ratio(height: int, width: int) -> None:
    crops = BatchedSimCLRAugment(SIZE).sample_params(3000, height, width, seeded(0))["crop"]
    top, left, h, w = crops.T.double()
    area = h * w / (height * width)
    assert area.max() <= 1.0 and (top >= 0).all() and (left >= 0).all()
    assert (top + h <= height).all() and (left + w <= width).all()
    if height == width:
        # rounding to whole pixels moves the fraction by at most ~2/64 of a side
        assert area.min() >= 0.08 - 0.04
        assert area.mean() == pytest.approx(0.5, abs=0.06)  # U(0.08, 1) minus rejected crops
        ratio = w / h
        assert ratio.min() >= 0.75 * 0.9 and ratio.max() <= 4 / 3 / 0.9


def test_crop_distribution_matches_torchvision() -> None:
    """Area fraction and log aspect ratio of our crops vs RandomResizedCrop.get_params."""
    n, height, width = 3000, 60, 80
    torch.manual_seed(0)
    image = torch.zeros(1, height, width)
    theirs = torch.tensor(
        [
            transforms.RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3])[2:]
            for _ in range(n)
        ],
        dtype=torch.float64,
    )
    ours = BatchedSimCLRAugment(SIZE).sample_params(n, height, width, seeded(0))["crop"][:, 2:]

    def stats(hw: torch.Tensor) -> torch.Tensor:  # (n, 2): area fraction, log(w / h)
        hw = hw.double()
        return torch.stack([hw[:, 0] * hw[:, 1] / (height * width), (hw[:, 1] / hw[:, 0]).log()], 1)

    a, b = stats(ours), stats(theirs)
    se = torch.sqrt((a.var(0) + b.var(0)) / n)
    assert ((a.mean(0) - b.mean(0)).abs() < 4 * se).all()
    assert ((a.std(0) - b.std(0)).abs() < 4 * se).all()


def test_crop_fallback_clips_extreme_images() -> None:
    """A 3x90 image fits no 3/4..4/3 crop of scale >= 0.08: centre crop of ratio 4/3."""
    crops = BatchedSimCLRAugment(SIZE).sample_params(50, 3, 90, seeded(0))["crop"]
    assert (crops == torch.tensor([0, 43, 3, 4])).all()
    single = SimCLRAugment(SIZE).sample_params(3, 90, seeded(0))["crop"]
    assert single == (0, 43, 3, 4)


# -------------------------------------------------------------------------------------------
# the two implementations agree


@pytest.mark.parametrize("height,width", [(16, 16), (20, 12), (9, 50), (96, 96)])
def test_same_seed_same_parameters(height: int, width: int) -> None:
    """Row i of a batch == the i-th per-image draw from the same generator."""
    per_image = SimCLRAugment(SIZE, blur=True)
    generator = seeded(height * width)
    singles = [per_image.sample_params(height, width, generator) for _ in range(200)]
    batched = BatchedSimCLRAugment(SIZE, blur=True)
    params = batched.sample_params(200, height, width, seeded(height * width))
    for i, single in enumerate(singles):
        assert tuple(params["crop"][i].tolist()) == single["crop"]
        assert tuple(params["order"][i].tolist()) == single["order"]
        for key in ("flip", "jitter", "grayscale", "blur"):
            assert bool(params[key][i]) == single[key]
        assert params["factors"][i].tolist() == pytest.approx(single["factors"], abs=1e-6)
        assert float(params["sigma"][i]) == pytest.approx(single["sigma"], abs=1e-6)


def test_same_parameters_same_pixels(batch: torch.Tensor) -> None:
    """On float tensors the batched pipeline reproduces torchvision's per-image ops exactly
    (crops never shrink here, as with inputs from ``to_uint8_transform``)."""
    per_image = SimCLRAugment(SIZE, blur=True, mean=(0.5,) * 3, std=(0.25,) * 3)
    batched = BatchedSimCLRAugment(SIZE, blur=True, mean=(0.5,) * 3, std=(0.25,) * 3)
    x = batch.float() / 255.0
    params = batched.sample_params(len(x), SIZE, SIZE, seeded(4))
    assert params["jitter"].any() and params["blur"].any() and params["grayscale"].any()
    views = batched.apply(batch, params)
    generator = seeded(4)
    for i in range(len(x)):
        expected = per_image.apply(x[i], per_image.sample_params(SIZE, SIZE, generator))
        torch.testing.assert_close(views[i], expected, atol=2e-5, rtol=0)


def _view_statistics(views: torch.Tensor) -> torch.Tensor:
    """Per-view mean, std and horizontal gradient energy: (N, 3)."""
    gradient = (views[..., 1:] - views[..., :-1]).abs().mean((1, 2, 3))
    return torch.stack([views.mean((1, 2, 3)), views.std((1, 2, 3)), gradient], dim=1)


def _torchvision_reference(size: int, strength: float) -> transforms.Compose:
    """The paper's pipeline written with stock torchvision transforms (appendix A)."""
    s = strength
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(size, scale=(0.08, 1.0)),
            transforms.RandomHorizontalFlip(),
            transforms.RandomApply(
                [transforms.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], 0.8
            ),
            transforms.RandomGrayscale(0.2),
            transforms.RandomApply(
                [transforms.GaussianBlur(blur_kernel_size(size), (0.1, 2.0))], 0.5
            ),
            transforms.ToTensor(),
        ]
    )


def test_implementations_agree_in_distribution(
    images: list[Image.Image], batch: torch.Tensor
) -> None:
    """Mean/std of per-view statistics: ours (PIL path, batched) vs stock torchvision.

    Tolerance: 4 standard errors, plus 0.004 on the mean brightness for PIL's uint8 rounding.
    (Halving the jitter strength or raising the grayscale rate to 0.5 fails this test.)
    """
    repeats = 16  # 64 images x 16 = 1024 views per implementation
    n = len(images) * repeats
    torch.manual_seed(0)
    reference = _torchvision_reference(SIZE, 1.0)
    ref = _view_statistics(torch.stack([reference(image) for image in images * repeats]))
    per_image = SimCLRAugment(SIZE, blur=True)
    ours = torch.stack([per_image(image) for image in images * repeats])
    batched = BatchedSimCLRAugment(SIZE, blur=True)(batch.repeat(repeats, 1, 1, 1), seeded(0))
    allowance = torch.tensor([0.004, 0.0, 0.0])
    for stats in (_view_statistics(ours), _view_statistics(batched)):
        se_mean = torch.sqrt((stats.var(0) + ref.var(0)) / n)
        se_std = torch.sqrt((stats.var(0) + ref.var(0)) / (2 * n))
        assert ((stats.mean(0) - ref.mean(0)).abs() <= 4 * se_mean + allowance).all()
        assert ((stats.std(0) - ref.std(0)).abs() <= 4 * se_std + allowance).all()


def test_hue_shift_matches_colorsys() -> None:
    """The vectorised HSV hue rotation against Python's colorsys in float64."""
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 1, (50, 3))
    pixels[:5] = [[0.5, 0.5, 0.5], [1, 0, 0], [0, 1, 1], [0.2, 0.2, 0.9], [0, 0, 0]]
    shifts = rng.uniform(-0.5, 0.5, 50)
    x = torch.tensor(pixels).view(50, 3, 1, 1)
    out = _shift_hue(x, torch.tensor(shifts)).view(50, 3).numpy()
    for pixel, shift, got in zip(pixels, shifts, out, strict=True):
        h, s, v = colorsys.rgb_to_hsv(*pixel)
        expected = colorsys.hsv_to_rgb(math.fmod(h + shift + 1.0, 1.0), s, v)
        np.testing.assert_allclose(got, expected, atol=1e-9)


def test_index_and_mask_paths_agree() -> None:
    x = torch.rand(12, 3, 5, 5, generator=seeded(0))
    chosen = torch.tensor([True, False] * 6)
    shift = torch.linspace(-0.4, 0.4, 12)
    indexed = _update_chosen(x, chosen, _shift_hue, shift, masked=False)
    masked = _update_chosen(x, chosen, _shift_hue, shift, masked=True)
    torch.testing.assert_close(indexed, masked, atol=0, rtol=0)
    assert torch.equal(_update_chosen(x, chosen & False, _shift_hue, shift, masked=False), x)
    assert torch.equal(indexed[~chosen], x[~chosen]) and not torch.equal(indexed[chosen], x[chosen])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batched_on_cuda_matches_cpu(batch: torch.Tensor) -> None:
    augment = BatchedSimCLRAugment(SIZE, blur=True)
    params = augment.sample_params(len(batch), SIZE, SIZE, seeded(0))
    cpu = augment.apply(batch, params)
    gpu = augment.to("cuda").apply(batch.cuda(), params)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)
    views = augment(batch.cuda(), torch.Generator("cuda").manual_seed(0))
    assert views.device.type == "cuda" and views.shape == (64, 3, SIZE, SIZE)


# -------------------------------------------------------------------------------------------
# user-set crop scale and flip


def test_crop_scale_option_matches_torchvision_in_both_pipelines() -> None:
    """--crop-scale 0.3,0.9: the area distribution of RandomResizedCrop(scale=(0.3, 0.9)),
    and the per-image pipeline draws the same crops as the batched one from the same numbers."""
    n, height, width, scale = 3000, 64, 64, (0.3, 0.9)
    torch.manual_seed(0)
    image = torch.zeros(1, height, width)
    theirs = torch.tensor(
        [
            transforms.RandomResizedCrop.get_params(image, list(scale), [3 / 4, 4 / 3])[2:]
            for _ in range(n)
        ],
        dtype=torch.float64,
    )
    batched = BatchedSimCLRAugment(SIZE, crop_scale=scale)
    ours = batched.sample_params(n, height, width, seeded(0))["crop"]
    area = ours[:, 2].double() * ours[:, 3] / (height * width)
    theirs_area = theirs[:, 0] * theirs[:, 1] / (height * width)
    assert area.min() >= 0.3 - 0.04 and area.max() <= 0.9 + 0.04
    se = torch.sqrt((area.var() + theirs_area.var()) / n)
    assert (area.mean() - theirs_area.mean()).abs() < 4 * se
    per_image = SimCLRAugment(SIZE, crop_scale=scale)
    generator = seeded(5)
    single = [per_image.sample_params(height, width, generator)["crop"] for _ in range(20)]
    rows = batched.sample_params(20, height, width, seeded(5))["crop"]
    assert [tuple(r) for r in rows.tolist()] == single


def test_no_flip_never_mirrors() -> None:
    batched = BatchedSimCLRAugment(SIZE, flip=False).sample_params(500, 32, 32, seeded(0))
    assert not batched["flip"].any()
    assert BatchedSimCLRAugment(SIZE).sample_params(500, 32, 32, seeded(0))["flip"].any()
    per_image = SimCLRAugment(SIZE, flip=False)
    assert not any(per_image.sample_params(32, 32, seeded(s))["flip"] for s in range(200))


@pytest.mark.parametrize("scale", [(0.0, 1.0), (0.5, 0.4), (0.2, 1.5)])
def test_bad_crop_scale_is_a_usage_error(scale: tuple[float, float]) -> None:
    for cls in (SimCLRAugment, BatchedSimCLRAugment):
        with pytest.raises(UsageError, match="--crop-scale"):
            cls(SIZE, crop_scale=scale)
