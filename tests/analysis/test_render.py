"""Activation maximization (pipeline.analysis.render) on tiny nets and 32x32 inputs: objectives rise, compose and
go to the right batch element; penalties, blur and projections do what they say; transforms shift by fractions of
the input size; colour statistics come from the given images; deep dream keeps the picture; filter grids tile."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from pipeline.analysis import render as R
from pipeline.models import build_model
from pipeline.models.normalize import to_tensor

HW = 32


pytestmark = pytest.mark.usefixtures("one_thread")  # (tests/analysis/conftest.py)


def tl_net(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("tl_classifier", 4, (HW, HW), width=0.25)


def colour_crops(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Crops whose class is a colour: a red, yellow or green disk, or none ("off"), on dark noise."""
    colours = np.array([[230, 30, 30], [230, 200, 30], [30, 220, 60]], np.float64)
    yy, xx = np.mgrid[:HW, :HW]
    labels = rng.integers(0, 4, n)
    images = rng.normal(40, 15, (n, HW, HW, 3))
    for i, c in enumerate(labels):
        if c < 3:
            cy, cx, r = rng.uniform(10, 22), rng.uniform(10, 22), rng.uniform(4, 8)
            images[i][(yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2] = colours[c]
    return np.clip(images, 0, 255).astype(np.uint8), labels


@pytest.fixture(scope="module")
def trained():
    """A TLClassifier trained for 60 steps on colour crops: beyond its random init, and above chance."""
    net = tl_net(1)
    rng = np.random.default_rng(0)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    for _ in range(60):
        images, labels = colour_crops(32, rng)
        loss = F.cross_entropy(net(to_tensor(images)), torch.from_numpy(labels))
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    images, labels = colour_crops(128, rng)
    with torch.no_grad():
        accuracy = (net(to_tensor(images)).argmax(1).numpy() == labels).mean()
    assert accuracy > 0.5, accuracy
    return net


def channel_values(net, name: str, images: np.ndarray) -> np.ndarray:
    """(images, channels): each channel's spatial mean on each uint8 image."""
    with torch.no_grad():
        return net.features_at(to_tensor(images), [name])[name].mean((2, 3)).numpy()


# ------------------------------------------------------------------------------------------------- objectives

@pytest.mark.parametrize("which", ["random", "trained"])
@pytest.mark.parametrize("kind", ["channel", "class_logit"])
@pytest.mark.parametrize("param", [R.Pixels, R.Fourier])
def test_objective_rises_during_optimisation(which, kind, param, trained):
    net = tl_net() if which == "random" else trained
    objective = R.channel("conv3", 2) if kind == "channel" else R.class_logit(R.head_of(net), 0)
    images, history = R.optimize(net, objective, param(2, HW, seed=0), steps=30, lr=0.05,
                                 transforms=[R.jitter(0.05)], generator=0)
    assert images.shape == (2, HW, HW, 3) and images.dtype == np.uint8
    assert history.shape == (30, 2)
    assert (history[-1] > history[0]).all(), history[[0, -1]]
    # the returned images score higher than the start, evaluated afresh (no transform)
    with torch.no_grad():
        assert (R.evaluate(net.eval(), objective, to_tensor(images)).numpy() > history[0]).all()


def test_unit_and_detector_heatmap_rise():
    net = tl_net()
    _, history = R.optimize(net, R.unit("conv2", 3, 8, 8), R.Pixels(1, HW), steps=25)
    assert history[-1, 0] > history[0, 0]
    torch.manual_seed(0)
    detector = build_model("tl_detector", width=0.25)
    _, history = R.optimize(detector, R.heatmap("heatmap", 4, 5), R.Pixels(1, HW), steps=25)
    assert history[-1, 0] > history[0, 0] + 0.1


def test_optimize_leaves_the_net_as_it_was():
    net = tl_net().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():                                          # the loop turns gradients on for itself
        _, history = R.optimize(net, R.channel("conv1", 0), R.Pixels(1, HW), steps=3)
    assert history[-1, 0] > history[0, 0]
    assert net.training and all(p.requires_grad for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_objectives_compose_and_read_the_right_values():
    g = torch.Generator().manual_seed(0)
    acts = {"c": torch.randn(3, 5, 4, 4, generator=g), "f": torch.randn(3, 7, generator=g),
            "heatmap": torch.randn(3, 1, 4, 4, generator=g)}
    a, b, c = R.channel("c", 1), R.unit("c", 2, 1, 3), R.unit("f", 4)
    assert torch.allclose(a.fn(acts), acts["c"][:, 1].mean((1, 2)))
    assert torch.equal(b.fn(acts), acts["c"][:, 2, 1, 3])
    assert torch.equal(R.unit("c", 2).fn(acts), acts["c"][:, 2, 2, 2])          # default: the centre
    assert torch.equal(c.fn(acts), acts["f"][:, 4])
    assert torch.equal(R.channel("f", 4).fn(acts), acts["f"][:, 4])
    assert torch.allclose(R.layer("c").fn(acts), acts["c"].pow(2).mean((1, 2, 3)))
    assert torch.equal(R.class_logit("f", 2).fn(acts), acts["f"][:, 2])
    assert torch.equal(R.heatmap("heatmap", 3, 1).fn(acts), acts["heatmap"][:, 0, 3, 1])
    with pytest.raises(ValueError):
        R.unit("f", 4, 0, 0).fn(acts)

    fa, fb, fc = a.fn(acts), b.fn(acts), c.fn(acts)
    combined = 2 * a - b
    assert combined.layers == ("c",)
    assert torch.allclose(combined.fn(acts), 2 * fa - fb)
    assert torch.allclose((-a + c / 4 - 1).fn(acts), -fa + fc / 4 - 1)
    assert torch.allclose((a * 3 + 0.5).fn(acts), 3 * fa + 0.5)
    assert torch.allclose(sum([a, b, c]).fn(acts), fa + fb + fc)
    assert torch.allclose(R.Objective.sum([a, c]).fn(acts), fa + fc)
    assert (a - c).layers == ("c", "f")

    per = R.batched([a, b, c])
    assert per.layers == ("c", "f")
    values = per.fn(acts)
    assert values.shape == (3,)
    assert torch.allclose(values, torch.stack([fa[0], fb[1], fc[2]]))
    with pytest.raises(ValueError):
        R.batched([a, b]).fn(acts)

    net = tl_net()
    x = torch.randn(2, 3, HW, HW, generator=g)
    objective = R.channel("conv2", 1) - 0.5 * R.class_logit("fc6", 3)
    with torch.no_grad():
        acts = net.eval().features_at(x, ["conv2", "fc6"])
        expected = acts["conv2"][:, 1].mean((1, 2)) - 0.5 * acts["fc6"][:, 3]
        assert torch.allclose(R.evaluate(net, objective, x), expected)


def test_diversity_rewards_a_batch_whose_elements_differ():
    g = torch.Generator().manual_seed(0)
    one = torch.rand(1, 4, 5, 5, generator=g)
    same = R.diversity("c").fn({"c": one.repeat(3, 1, 1, 1)})
    assert torch.allclose(same, torch.full((3,), -1.0), atol=1e-5)
    disjoint = torch.zeros(3, 4, 5, 5)
    for i in range(3):
        disjoint[i, i] = torch.rand(5, 5, generator=g)
    assert torch.allclose(R.diversity("c").fn({"c": disjoint}), torch.zeros(3), atol=1e-6)
    partly = torch.cat([one, one, torch.rand(1, 4, 5, 5, generator=g)])
    values = R.diversity("c").fn({"c": partly})
    assert (values > -1).all() and values[2] > values[0]
    assert torch.allclose(R.diversity("f").fn({"f": torch.eye(3)}), torch.zeros(3))


# ----------------------------------------------------------------------------------- penalties and projections

def high_frequency_energy(images: np.ndarray) -> float:
    """FFT energy above half the Nyquist frequency (|f| > 0.25 cycles per pixel on either axis)."""
    x = to_tensor(images).double()
    x = x - x.mean((2, 3), keepdim=True)
    power = torch.fft.fft2(x).abs() ** 2
    fy, fx = torch.fft.fftfreq(x.shape[2]).abs(), torch.fft.fftfreq(x.shape[3]).abs()
    high = (fy[:, None] > 0.25) | (fx[None, :] > 0.25)
    return float(power[..., high].sum())


def run(net, **kw):
    return R.optimize(net, R.channel("conv3", 2), R.Pixels(2, HW, seed=3), steps=40, lr=0.05, **kw)[0]


def variation(images: np.ndarray) -> float:
    """Total variation measured independently of the library: mean |vertical| + mean |horizontal| steps."""
    x = images.astype(float)
    return float(np.abs(np.diff(x, axis=1)).mean() + np.abs(np.diff(x, axis=2)).mean())


def test_penalty_values():
    stripes = torch.zeros(1, 3, 4, 4)
    stripes[..., 1::2] = 1.0                                       # vertical stripes: horizontal steps only
    assert torch.allclose(R.total_variation(stripes), torch.tensor([1.0]))
    assert torch.allclose(R.total_variation(stripes.transpose(2, 3)), torch.tensor([1.0]))
    assert torch.allclose(R.total_variation(stripes + stripes.transpose(2, 3)), torch.tensor([2.0]))
    assert torch.allclose(R.l2(torch.full((2, 3, 4, 4), 3.0)), torch.tensor([9.0, 9.0]))
    x0 = torch.ones(1, 3, 4, 4)
    assert torch.allclose(R.tether(x0)(3 * x0), torch.tensor([4.0]))


def test_penalties_and_blur_do_what_they_say():
    net = tl_net()
    plain = run(net)
    tv = run(net, penalties=((1.0, R.total_variation),))
    assert variation(tv) < 0.7 * variation(plain)
    blurred = run(net, blur_every=2, blur_sigma=1.0)
    assert high_frequency_energy(blurred) < 0.5 * high_frequency_energy(plain)
    decayed = run(net, penalties=((1.0, R.l2),))
    assert R.l2(to_tensor(decayed)).mean() < 0.7 * R.l2(to_tensor(plain)).mean()


def test_blur_and_clip_small_functions():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, HW, HW, generator=g)
    assert torch.equal(R.blur(x, 0), x)
    smooth = R.blur(x, 1.0)
    assert smooth.shape == x.shape
    assert torch.allclose(smooth.mean(), x.mean(), atol=0.05)
    assert R.total_variation(smooth).max() < 0.5 * R.total_variation(x).min()

    clipped = R.clip_small(x, 50)
    zero = (clipped == 0).all(1)
    assert torch.allclose(zero.float().mean((1, 2)), torch.full((2,), 0.5), atol=0.01)
    norms = x.norm(dim=1)
    for i in range(2):                                  # the smallest norms went

        assert norms[i][zero[i]].max() <= norms[i][~zero[i]].min()
    grad = torch.zeros_like(x)
    grad[:, :, :, : HW // 4] = 1.0                     # only the left quarter matters to the objective
    kept = ~(R.clip_small(x, 0, 70, grad) == 0).all(1)
    assert not kept[:, :, HW // 4:].any() and kept[:, :, : HW // 4].float().mean() > 0.5
    with pytest.raises(ValueError):
        R.clip_small(x, 0, 50)


def test_projections_run_in_the_loop_with_the_gradient():
    net = tl_net()
    images, _ = R.optimize(net, R.channel("conv3", 2), R.Pixels(1, HW, seed=1), steps=10,
                           projections=((1, lambda x, g: R.clip_small(x, 40, 20, g)),))
    grey = (np.abs(images.astype(int) - 128) <= 1).all(-1).mean()
    assert grey >= 0.4


def test_center_bias_penalises_the_border():
    centre, border = torch.zeros(1, 3, HW, HW), torch.zeros(1, 3, HW, HW)
    centre[..., 12:20, 12:20] = 1.0
    border[..., :8, :8] = 1.0
    assert R.center_bias(border) > 5 * R.center_bias(centre)
    net = tl_net()
    free = run(net)
    biased = run(net, penalties=((2.0, R.center_bias),))
    def outer_share(images):
        e = to_tensor(images).pow(2).sum(1)
        inner = e[:, 8:24, 8:24].sum()
        return float(1 - inner / e.sum())
    assert outer_share(biased) < outer_share(free)


# ---------------------------------------------------------------------------------------------- transforms

def blob(size: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    c, s = size / 2, size / 16
    return torch.exp(-((yy - c) ** 2 + (xx - c) ** 2) / (2 * s ** 2)).expand(1, 3, size, size).clone()


def centroid(x: torch.Tensor) -> np.ndarray:
    w = x[0, 0].double()
    yy, xx = torch.meshgrid(torch.arange(w.shape[0]).double(), torch.arange(w.shape[1]).double(), indexing="ij")
    return np.array([(w * yy).sum() / w.sum(), (w * xx).sum() / w.sum()])


def test_jitter_shifts_by_the_same_fraction_at_every_size():
    shifts = {}
    for size in (HW, 128):
        x = blob(size)
        moved = R.jitter(0.1)(x, torch.Generator().manual_seed(7))
        assert moved.shape == x.shape
        shifts[size] = (centroid(moved) - centroid(x)) / size
    assert np.abs(shifts[HW]).max() > 0.02                       # it did move, by a good part of 0.1
    assert np.abs(shifts[HW]).max() <= 0.1 + 1e-6
    np.testing.assert_allclose(shifts[HW], shifts[128], atol=1e-3)


def test_transforms_are_reproducible_with_a_generator():
    x = torch.randn(2, 3, HW, HW, generator=torch.Generator().manual_seed(0))
    t = R.compose([R.jitter(0.05), R.scale((0.9, 1.1)), R.rotate(10), R.jitter(0.02)])
    a = t(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape
    assert torch.equal(a, t(x, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, t(x, torch.Generator().manual_seed(2)))
    # scale and rotate act about the centre: a centred blob stays centred
    for tf in (R.scale((0.8, 1.2)), R.rotate(30)):
        np.testing.assert_allclose(centroid(tf(blob(HW), torch.Generator().manual_seed(3))), centroid(blob(HW)),
                                   atol=1e-3)
    # rotation is rigid in pixels also on a non-square input: an off-centre blob keeps its distance to the centre
    yy, xx = torch.meshgrid(torch.arange(32) + 0.5, torch.arange(64) + 0.5, indexing="ij")
    spot = torch.exp(-((yy - 16) ** 2 + (xx - 48) ** 2) / 8).expand(1, 3, 32, 64).clone()
    turned = R.rotate(40)(spot, torch.Generator().manual_seed(4))
    before, after = centroid(spot) - [16, 32], centroid(turned) - [16, 32]
    assert abs(np.linalg.norm(after) - np.linalg.norm(before)) < 0.2
    assert np.linalg.norm(after - before) > 1.0                   # and it did turn
    # no rotation, no zoom: the identity
    assert torch.allclose(R.rotate(0)(x, None), x, atol=1e-5)
    assert torch.allclose(R.scale((1.0, 1.0))(x, None), x, atol=1e-5)


# --------------------------------------------------------------------------------------- parameterizations

def correlated_images(spread: float = 0.1) -> np.ndarray:
    """Pixels whose channels follow one luminance: a strong colour correlation."""
    rng = np.random.default_rng(0)
    lum = rng.normal(0.0, spread, (64, 8, 8, 1))
    rgb = np.array([0.45, 0.5, 0.55]) + lum * np.array([1.0, 0.8, 0.5]) + rng.normal(0, 0.015, (64, 8, 8, 3))
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def rgb_cov(param) -> np.ndarray:
    with torch.no_grad():
        rgb = (param.image() * 0.25 + 0.5).permute(0, 2, 3, 1).reshape(-1, 3).double().numpy()
    return np.cov(rgb, rowvar=False)


def correlation(cov: np.ndarray) -> np.ndarray:
    d = np.sqrt(np.diag(cov))
    return cov / np.outer(d, d)


def test_color_stats_reproduce_the_covariance_of_the_given_images():
    images = correlated_images()
    stats = R.ColorStats.fit(images)
    pixels = images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(stats.mean, pixels.mean(0), atol=1e-9)
    np.testing.assert_allclose(stats.cov, np.cov(pixels, rowvar=False), atol=1e-9)
    np.testing.assert_allclose(stats.sqrt_cov @ stats.sqrt_cov, stats.cov, atol=1e-4)
    assert correlation(stats.cov)[0, 2] > 0.9

    for param in (R.Pixels, R.Fourier):
        drawn = rgb_cov(param(64, 16, decorrelated=stats, std=1.0, seed=1))
        assert np.linalg.norm(drawn - stats.cov) < 0.12 * np.linalg.norm(stats.cov), (param, drawn, stats.cov)
        np.testing.assert_allclose(correlation(drawn), correlation(stats.cov), atol=0.03)
    # without the decorrelation the channels are independent: the test above would fail
    assert np.abs(correlation(rgb_cov(R.Pixels(64, 16, std=1.0, seed=1)))[np.triu_indices(3, 1)]).max() < 0.1
    with pytest.raises(ValueError):
        R.ColorStats.fit(images.astype(np.float32))


def test_fourier_noise_is_pink_and_pixel_noise_white():
    f = torch.fft.fftfreq(HW).abs()
    high = (f[:, None] > 0.25) | (f[None, :] > 0.25)
    white = float(high.double().mean())                            # the high band's share of a flat spectrum

    def high_share(p):
        with torch.no_grad():
            power = torch.fft.fft2(p._field().double()).abs() ** 2
        return float(power[..., high].sum() / power.sum())
    assert abs(high_share(R.Pixels(8, HW, std=1.0)) - white) < 0.03
    assert abs(high_share(R.Fourier(8, HW, std=1.0, decay=0.0)) - white) < 0.03
    assert high_share(R.Fourier(8, HW, std=1.0)) < 0.3 * white
    with torch.no_grad():                                          # unit variance at every pixel, any decay
        for decay in (0.0, 1.0, 1.5):
            var = R.Fourier(64, (HW, 24), std=1.0, decay=decay, seed=2)._field().var(0).mean()
            assert abs(float(var) - 1) < 0.1, (decay, var)


@pytest.mark.parametrize("param", [R.Pixels, R.Fourier])
@pytest.mark.parametrize("decorrelate", [False, True])
def test_parameterizations_start_from_an_image_or_seeded_noise(param, decorrelate):
    stats = R.ColorStats.fit(correlated_images()) if decorrelate else None
    image = np.random.default_rng(0).integers(10, 246, (2, 12, 20, 3), dtype=np.uint8)
    p = param.from_image(image, decorrelated=stats)
    with torch.no_grad():
        np.testing.assert_allclose(p.image().numpy(), to_tensor(image).numpy(), atol=1e-3)
    single = param.from_image(torch.from_numpy(image[0]), decorrelated=stats)
    assert single.image().shape == (1, 3, 12, 20)
    a, b, c = (param(2, (12, 20), decorrelated=stats, seed=s) for s in (5, 5, 6))
    assert torch.equal(a.image(), b.image()) and not torch.equal(a.image(), c.image())
    assert a.image().abs().max() < 0.1 + (1.0 if decorrelate else 0.0)      # near grey / near the mean colour
    assert all(t.requires_grad for t in a.params())


# --------------------------------------------------------------------------------------------------- dream

def structured_image() -> np.ndarray:
    yy, xx = np.mgrid[:HW, :HW]
    img = np.zeros((HW, HW, 3))
    img[..., 0] = 40 + 6 * xx
    img[..., 1] = 30 + 5 * yy
    img[(yy - 12) ** 2 + (xx - 20) ** 2 < 36] = [230, 220, 40]
    img[22:28, 4:14] = [20, 20, 200]
    return np.clip(img, 0, 255).astype(np.uint8)


def test_dream_keeps_the_structure_while_the_layer_rises():
    image = structured_image()
    dreamed, history = R.dream(tl_net(), image, "conv3", steps=15, lr=0.05)
    assert dreamed.shape == image.shape and dreamed.dtype == np.uint8
    assert history[-1, 0] > history[0, 0] * 1.2
    assert np.abs(dreamed.astype(int) - image).mean() > 2                 # it changed the picture...
    r = np.corrcoef(dreamed.astype(float).ravel(), image.astype(float).ravel())[0, 1]
    assert r > 0.5, r                                                     # ... but kept it


# ------------------------------------------------------------------------------------------------- batched

def test_batched_channels_each_element_maximizes_its_own_channel():
    net = tl_net()
    channels = [0, 2, 5, 7]
    objective = R.batched([R.channel("conv3", c) for c in channels])
    images, history = R.optimize(net, objective, R.Pixels(4, HW, seed=2), steps=40, lr=0.05,
                                 transforms=[R.jitter(0.05)], generator=0)
    assert (history[-1] > history[0]).all()
    values = channel_values(net, "conv3", images)[:, channels]        # values[i, j]: image i, channel j
    normalised = values / values.mean(0, keepdims=True)              # channels have different scales
    own = np.diag(normalised)
    others = (normalised.sum(1) - own) / 3
    assert own.mean() > others.mean() * 1.5
    assert (values.argmax(0) == np.arange(4)).all(), values          # image i is the best one for channel i


# ----------------------------------------------------------------------------------------------- filter grid

def test_filter_grid_tiles_lanenet_conv1():
    torch.manual_seed(0)
    net = build_model("lane_classifier", 4, (128, 128), width=0.25)
    c, _, k, _ = net.conv1.weight.shape
    assert (c, k) == (16, 7)
    grid = R.filter_grid(net)
    assert grid.shape == (4 * (7 + 1) + 1, 4 * (7 + 1) + 1, 3) and grid.dtype == np.uint8
    w = net.conv1.weight.detach().double().numpy()
    for i in (0, 5, 15):
        r, q = divmod(i, 4)
        tile = grid[1 + r * 8: 1 + r * 8 + 7, 1 + q * 8: 1 + q * 8 + 7]
        f = w[i].transpose(1, 2, 0)
        np.testing.assert_array_equal(tile, np.round((f - f.min()) / (f.max() - f.min()) * 255).astype(np.uint8))
        assert tile.min() == 0 and tile.max() == 255
    assert (grid[0] == 255).all() and (grid[:, 8] == 255).all()
    with pytest.raises(ValueError):
        R.filter_grid(net, "conv2")
