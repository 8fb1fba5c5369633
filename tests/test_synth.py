import numpy as np
import pytest

from harness.data import synth
from harness.errors import HarnessError


@pytest.fixture
def scene():
    return synth.procedural_scene(64, np.random.default_rng(3))


def test_asm_identity_at_zero_beta_and_airlight_at_zero_transmission(scene):
    clear, depth = scene
    assert np.allclose(synth.scatter(clear, synth.transmission(depth, 0.0), 0.9), clear)
    assert np.allclose(synth.scatter(clear, np.zeros(depth.shape), [0.7, 0.8, 0.9]),
                       np.broadcast_to([0.7, 0.8, 0.9], clear.shape))


def test_transmission_decreases_monotonically_with_depth_and_beta():
    d = np.linspace(0, 1, 50)
    t = synth.transmission(d, 1.2)
    assert np.all(np.diff(t) < 0) and t[0] == 1.0 and np.isclose(t[-1], np.exp(-1.2))
    assert np.all(synth.transmission(d[1:], 1.8) < synth.transmission(d[1:], 0.6))


def test_haze_brings_far_pixels_closer_to_airlight(scene):
    clear, depth = scene
    hazy = synth.scatter(clear, synth.transmission(depth, 1.5), 1.0)
    gap = np.abs(hazy - 1.0).mean(axis=2)
    near, far = depth < 0.2, depth > 0.8
    assert gap[far].mean() < gap[near].mean()


@pytest.mark.parametrize("kind", list(synth.KINDS))
def test_every_kind_is_deterministic_given_the_seed(scene, kind):
    clear, depth = scene
    a = synth.synthesize(clear, kind, np.random.default_rng(7), depth=depth)
    b = synth.synthesize(clear, kind, np.random.default_rng(7), depth=depth)
    c = synth.synthesize(clear, kind, np.random.default_rng(8), depth=depth)
    assert a.shape == clear.shape and a.dtype == np.float32
    assert a.min() >= 0 and a.max() <= 1
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_published_parameter_ranges():
    rng = np.random.default_rng(0)
    its = np.array([synth.ITS.sample(rng) for _ in range(2000)])
    assert its[:, 0].min() >= 0.7 and its[:, 0].max() <= 1.0 and its[:, 1].min() >= 0.6 and its[:, 1].max() <= 1.8
    assert its[:, 1].max() - its[:, 1].min() > 1.1  # the draws span the range
    ots = np.array([synth.OTS.sample(rng) for _ in range(500)])
    assert set(np.round(ots[:, 0], 2)) == {0.8, 0.85, 0.9, 0.95, 1.0}
    assert set(np.round(ots[:, 1], 2)) <= {0.04, 0.06, 0.08, 0.1, 0.12, 0.16, 0.2}
    h4k = np.array([synth.HAZE4K.sample(rng) for _ in range(2000)])
    assert h4k[:, 0].min() >= 0.5 and h4k[:, 1].min() >= 0.5 and h4k[:, 1].max() <= 2.0
    assert synth.RIDCP_GAMMA == (1.5, 3.0) and synth.RIDCP_BETA == (0.3, 1.5) and synth.RIDCP_QUALITY == (30, 95)


def test_light_haze_on_a_black_image_at_full_depth_is_airlight_times_one_minus_t():
    # J = 0, d = 1: I = A (1 - exp(-beta)); A in [0.7, 1] and beta in [0.2, 0.6] bound I by hand to
    # [0.7 (1 - e^-0.2), 1 - e^-0.6] = [0.1269, 0.4512]; ITS's beta in [0.6, 1.8] starts at 0.7 (1 - e^-0.6) = 0.3158
    black, depth = np.zeros((8, 8, 3), np.float32), np.ones((8, 8), np.float32)
    light = np.array([synth.synthesize(black, "light", np.random.default_rng(i), depth=depth)[0, 0, 0]
                      for i in range(300)])
    assert light.min() >= 0.1269 - 1e-4 and light.max() <= 0.4512 + 1e-4
    assert light.max() - light.min() > 0.2  # the draws span the range
    its = np.array([synth.synthesize(black, "asm", np.random.default_rng(i), depth=depth)[0, 0, 0] for i in range(300)])
    assert its.min() >= 0.3158 - 1e-4 and np.median(its) > np.median(light) + 0.2


def test_ridcp_haze_stays_within_its_airlight_range_on_a_black_image():
    black = np.zeros((32, 32, 3), np.float32)
    far = np.ones((32, 32), np.float32)  # depth 1 -> disparity 0 -> t = 1: no haze at all
    out = synth.ridcp_haze(black, np.random.default_rng(0), depth=far)
    assert out.max() < 0.2  # only noise/JPEG, never airlight
    near = np.zeros((32, 32), np.float32)  # disparity 1 -> t = exp(-beta) in [0.22, 0.74]
    vals = [synth.ridcp_haze(black, np.random.default_rng(s), depth=near).mean() for s in range(20)]
    assert 0.25 * (1 - np.exp(-0.3)) - 0.05 < min(vals) and max(vals) < 1.025 * (1 - np.exp(-1.5)) + 0.05


def test_nonuniform_haze_varies_across_a_constant_scene():
    flat = np.full((64, 64, 3), 0.2, np.float32)
    out = synth.nonuniform_haze(flat, np.random.default_rng(1), depth=np.full((64, 64), 0.8, np.float32))
    smooth = out.mean(axis=2)
    assert smooth[:16].mean() != pytest.approx(smooth[-16:].mean(), abs=0.01) or \
        smooth[:, :16].mean() != pytest.approx(smooth[:, -16:].mean(), abs=0.01)
    channel_means = out.reshape(-1, 3).mean(axis=0)
    assert np.ptp(channel_means) > 0.005  # coloured airlight


def test_night_haze_is_dark_with_bright_glow(scene):
    clear, depth = scene
    out = synth.night_haze(clear, np.random.default_rng(2), depth=depth, lights=2)
    assert out.mean() < 0.5 * clear.mean()
    assert out.max() > 0.8  # the light sources


def test_random_field_and_estimated_depth_are_normalised_and_smooth():
    f = synth.random_field((64, 80), np.random.default_rng(0), cells=4)
    assert f.shape == (64, 80) and f.min() == 0 and f.max() == 1
    assert np.abs(np.diff(f, axis=0)).max() < 0.2
    flat = np.full((40, 30, 3), 0.5, np.float32)
    d = synth.estimate_depth(flat)
    assert d.min() >= 0 and d.max() <= 1 and d[0].mean() > d[-1].mean()  # top rows are farther


def test_procedural_scene_has_sky_at_infinity_and_objects_nearer():
    image, depth = synth.procedural_scene(96, np.random.default_rng(5))
    assert image.shape == (96, 96, 3) and depth.shape == (96, 96)
    assert depth[0].min() == 1.0 and depth.min() < 0.5


def test_bad_input_is_a_harness_error():
    with pytest.raises(HarnessError, match="unknown haze kind 'fog'"):
        synth.synthesize(np.zeros((8, 8, 3)), "fog", np.random.default_rng(0))
    with pytest.raises(HarnessError, match="HxWx3"):
        synth.asm_haze(np.zeros((8, 8)), np.random.default_rng(0))
