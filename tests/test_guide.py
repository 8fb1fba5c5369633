"""Guide loading (no downloads, clear errors), the embedded guide cache, and the H2C loss by hand."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.errors import HarnessError
from harness.guide import build_guide
from harness.guide.h2c import H2CLoss
from harness.guide.model import TINY_MODEL, load_open_clip


@pytest.fixture(scope="module")
def guide():
    torch.manual_seed(0)
    return load_open_clip(TINY_MODEL, None)


def hand_h2c(guide, out, inp, pos="a clear photo", neg="a photo with haze", mode="both"):
    """The losses written out from the paper (Sec. 3.2 and 6.1), with one resize + normalisation per image."""
    mean = torch.tensor(guide.mean).view(1, 3, 1, 1)
    std = torch.tensor(guide.std).view(1, 3, 1, 1)

    def embed(x):
        x = F.interpolate(x, size=(guide.image_size,) * 2, mode="bilinear", align_corners=False, antialias=True)
        e = guide.model.encode_image((x - mean) / std)
        return e / e.norm(dim=-1, keepdim=True)

    tokens = guide.tokenizer([pos, neg])
    t = guide.model.encode_text(tokens)
    t = t / t.norm(dim=-1, keepdim=True)
    if mode == "positive":  # align E(out) with T(pos); no input term
        return (1 - embed(out) @ t[0]).mean()
    if mode == "negative":  # only push E(out) away from T(neg)
        return (1 + embed(out) @ t[1]).mean()
    d = t[0] - t[1]
    delta = embed(out) - embed(inp)
    cos = (delta @ d) / (delta.norm(dim=-1) * d.norm())
    return (1 - cos).mean()


@pytest.mark.parametrize("mode", ["both", "positive", "negative"])
def test_h2c_equals_hand_computation(guide, mode):
    g = torch.Generator().manual_seed(1)
    inp = torch.rand(3, 3, 40, 52, generator=g)
    out = (inp * 1.3 - 0.1).clamp(0, 1)
    loss = H2CLoss(guide, mode=mode)(out, inp)
    assert abs(loss.item() - hand_h2c(guide, out, inp, mode=mode).item()) < 1e-6
    assert 0 <= loss.item() <= 2


def test_modes_differ_and_double_normalisation_would_show(guide):
    g = torch.Generator().manual_seed(2)
    inp = torch.rand(2, 3, 32, 32, generator=g)
    out = inp.flip(-1)
    losses = {m: H2CLoss(guide, mode=m)(out, inp).item() for m in ("both", "positive", "negative")}
    assert len({round(v, 6) for v in losses.values()}) == 3
    # normalising the input a second time (the authors' defect) changes the loss: our single pass is what is tested
    mean = torch.tensor(guide.mean).view(1, 3, 1, 1)
    std = torch.tensor(guide.std).view(1, 3, 1, 1)
    twice = H2CLoss(guide)((out - mean) / std, (inp - mean) / std).item()
    assert abs(twice - losses["both"]) > 1e-4


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_ablations_ignore_the_input(guide, mode):
    """Positive-/negative-only have no input term (paper Sec. 6.1): another input, the same loss."""
    g = torch.Generator().manual_seed(4)
    out, inp, other = (torch.rand(2, 3, 32, 32, generator=g) for _ in range(3))
    loss = H2CLoss(guide, mode=mode)
    assert loss(out, inp).item() == pytest.approx(loss(out, other).item(), abs=1e-7)
    assert H2CLoss(guide)(out, inp).item() != pytest.approx(H2CLoss(guide)(out, other).item(), abs=1e-4)


def test_input_embedding_is_a_constant(guide):
    """E(in) is computed without a graph: no gradient reaches the input even when it asks for one."""
    g = torch.Generator().manual_seed(5)
    inp = torch.rand(2, 3, 32, 32, generator=g).requires_grad_(True)
    out = torch.rand(2, 3, 32, 32, generator=g).requires_grad_(True)
    H2CLoss(guide)(out, inp).backward()
    assert inp.grad is None and out.grad.abs().sum() > 0


def test_views_are_crops_and_flips_shared_by_output_and_input(guide):
    """With view_scale 1 on a 128-px square, every view is the whole image at 64 px (a 2x2 average,
    by hand), mirrored or not; output and input get the same views."""
    views = dataclasses.replace(guide, views=6, view_scale=1.0)
    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(6))
    torch.manual_seed(0)
    vx, vy = views.views_of(x, x * 0.5 + 0.25)
    assert vx.shape == (12, 3, 64, 64) and torch.allclose(vy, vx * 0.5 + 0.25, atol=1e-6)
    small = F.avg_pool2d(x, 2).repeat(6, 1, 1, 1)
    straight = (vx - small).abs().flatten(1).amax(1) < 1e-5
    mirrored = (vx - small.flip(-1)).abs().flatten(1).amax(1) < 1e-5
    assert bool((straight | mirrored).all()) and straight.any() and mirrored.any()
    torch.manual_seed(0)
    crops = dataclasses.replace(guide, views=6, view_scale=0.5).views_of(x)[0]
    assert not torch.allclose(crops, vx, atol=1e-3)  # smaller crops are not the whole image


def test_views_average_the_loss(guide):
    """With several views the loss is the mean of the per-view losses (each one view of both images)."""
    g = torch.Generator().manual_seed(7)
    inp = torch.rand(2, 3, 96, 96, generator=g)
    out = (inp * 1.2).clamp(0, 1)
    multi = dataclasses.replace(guide, views=4)
    torch.manual_seed(3)
    vo, vi = multi.views_of(out, inp)
    by_hand = torch.stack([hand_h2c(guide, vo[k * 2:(k + 1) * 2], vi[k * 2:(k + 1) * 2]) for k in range(4)]).mean()
    torch.manual_seed(3)
    assert H2CLoss(multi)(out, inp).item() == pytest.approx(by_hand.item(), abs=1e-5)


def test_missing_weights_file_names_path_and_key(tmp_path):
    with pytest.raises(HarnessError) as err:
        build_guide("open_clip", model="ViT-B-32", pretrained=str(tmp_path / "nope.pt"))
    assert "nope.pt" in str(err.value) and "guide.pretrained" in str(err.value)


def test_uncached_tag_names_the_cache_and_key(tmp_path):
    with pytest.raises(HarnessError) as err:
        build_guide("open_clip", model="ViT-B-32", pretrained="openai", cache_dir=tmp_path)
    msg = str(err.value)
    assert str(tmp_path) in msg and "guide.pretrained" in msg and "not cached" in msg
    with pytest.raises(HarnessError, match="no pretrained tag 'nonsense'"):
        build_guide("open_clip", model="ViT-B-32", pretrained="nonsense", cache_dir=tmp_path)


def test_local_weights_file_loads(tmp_path, guide):
    path = tmp_path / "tiny.pt"
    torch.save(guide.model.state_dict(), path)
    loaded = build_guide("open_clip", model=TINY_MODEL, pretrained=str(path))
    assert loaded.info["pretrained"] == str(path) and len(loaded.info["sha256"]) == 64
    x = torch.rand(1, 3, 64, 64)
    assert torch.allclose(loaded.encode_image(x), guide.encode_image(x), atol=1e-6)


def test_embedded_guide_trains_once_then_loads_from_cache(tmp_path, monkeypatch):
    import importlib

    embedded_module = importlib.import_module("harness.guide.embedded")
    first = build_guide("embedded", steps=3, cache_dir=tmp_path)

    def no_training(*args, **kwargs):
        raise AssertionError("the cached guide was trained again")

    monkeypatch.setattr(embedded_module, "train_embedded", no_training)
    second = build_guide("embedded", steps=3, cache_dir=tmp_path)
    assert first.info["sha256"] == second.info["sha256"] and second.info["type"] == "embedded"
    assert len(list((tmp_path / "guides").glob("*.safetensors"))) == 1
    x = torch.rand(1, 3, 64, 64)
    assert torch.allclose(first.encode_image(x), second.encode_image(x), atol=1e-6)
    with pytest.raises(AssertionError, match="trained again"):  # another setting is not in the cache
        build_guide("embedded", steps=4, cache_dir=tmp_path)


@pytest.mark.slow
def test_embedded_guide_separates_clear_from_hazy(shared_data):
    from harness.data import synth
    from harness.data.io import read_image, to_tensor

    g = build_guide("embedded")
    t_pos, t_neg = g.encode_text(["a clear photo", "a photo with haze"])
    rng = np.random.default_rng(0)

    def margin(arr):
        e = g.encode_image(to_tensor(arr)[None])[0]
        return float(e @ t_pos - e @ t_neg)

    with torch.no_grad():
        pairs = [(margin(c), margin(synth.asm_haze(c, rng)))
                 for c in (read_image(p) for p in sorted((shared_data / "clean_kodak24").glob("*.png")))]
        real = [margin(read_image(p)) for p in sorted((shared_data / "real_hazy").iterdir())]
    assert np.mean([c > h for c, h in pairs]) >= 0.9
    assert np.mean([[c > r for r in real] for c, _ in pairs]) >= 0.8


class KnownEmbeddings:
    """A stand-in guide whose image embedding is the unit-norm mean colour and whose texts embed to
    fixed axes, so H2C can be worked out by hand."""

    views = 1
    model = torch.nn.Identity()
    texts = {"a clear photo": [1.0, 0.0, 0.0], "a photo with haze": [0.0, 1.0, 0.0]}

    def encode_text(self, prompts):
        return torch.tensor([self.texts[p] for p in prompts])

    def encode_image(self, images):
        return F.normalize(images.mean((2, 3)), dim=-1)

    encode_constant = encode_image

    def views_of(self, *images):
        return list(images)


def flat(rgb, size=4):
    return torch.tensor(rgb).view(1, 3, 1, 1).expand(1, 3, size, size).clone()


def test_h2c_on_known_embeddings_by_hand():
    """E(out) = (3, 4, 0)/5, E(in) = (0, 1, 0), T(pos) = (1, 0, 0), T(neg) = (0, 1, 0).

    both: d = (1, -1, 0)/sqrt2, E(out) - E(in) = (0.6, -0.2, 0), |.| = sqrt(0.4),
          cos = (0.6 + 0.2)/(sqrt2 * sqrt0.4) = 0.8/sqrt0.8 = sqrt0.8, loss = 1 - sqrt(0.8);
    positive: 1 - E(out).T(pos) = 1 - 0.6 = 0.4 (no input term);
    negative: 1 + E(out).T(neg) = 1 + 0.8 = 1.8 (only pushes away from haze)."""
    out, inp = flat([0.3, 0.4, 0.0]), flat([0.0, 0.5, 0.0])
    guide = KnownEmbeddings()
    assert H2CLoss(guide, mode="both")(out, inp).item() == pytest.approx(1 - 0.8 ** 0.5, abs=1e-6)
    assert H2CLoss(guide, mode="positive")(out, inp).item() == pytest.approx(0.4, abs=1e-6)
    assert H2CLoss(guide, mode="negative")(out, inp).item() == pytest.approx(1.8, abs=1e-6)
    # the ablations ignore the input: any other input, the same values
    other = flat([0.9, 0.1, 0.2])
    assert H2CLoss(guide, mode="positive")(out, other).item() == pytest.approx(0.4, abs=1e-6)
    assert H2CLoss(guide, mode="negative")(out, other).item() == pytest.approx(1.8, abs=1e-6)


def test_h2c_distance_term_by_hand():
    """Same embeddings: E(out) - E(in) = (0.6, -0.2, 0), d = (1, -1, 0)/sqrt2, so the way moved along d
    is 0.8/sqrt2 and, with weight 0.5, the loss is 1 - sqrt(0.8) - 0.5 * 0.8/sqrt2. A farther, bent
    move, E(out2) = (0.6, 0, 0.8): E(out2) - E(in) = (0.6, -1, 0.8), |.| = sqrt2, along d 1.6/sqrt2,
    cos = 1.6/2 = 0.8 (below sqrt0.8), loss 1 - 0.8 - 0.5 * 1.6/sqrt2."""
    out, inp, out2 = flat([0.3, 0.4, 0.0]), flat([0.0, 0.5, 0.0]), flat([0.3, 0.0, 0.4])
    guide = KnownEmbeddings()
    loss = H2CLoss(guide, distance_weight=0.5)
    assert loss(out, inp).item() == pytest.approx(1 - 0.8 ** 0.5 - 0.5 * 0.8 / 2 ** 0.5, abs=1e-6)
    assert loss(out2, inp).item() == pytest.approx(1 - 0.8 - 0.5 * 1.6 / 2 ** 0.5, abs=1e-6)
    # the cosine alone prefers the shorter, purer move; the distance term turns the order round
    assert H2CLoss(guide)(out, inp) < H2CLoss(guide)(out2, inp)
    assert loss(out2, inp) < loss(out, inp)
    # unchanged output: the distance term is 0, the loss stays 1
    assert loss(inp, inp).item() == pytest.approx(1.0, abs=1e-6)


def test_h2c_cosine_turns_a_move_and_never_lengthens_it():
    """Hand derivation (docs/guide.md): d cos(delta, d) / d delta = (d - cos * delta/|delta|) / |delta|,
    whose dot product with delta is 0. With embeddings linear in the pixels (the raw mean colour),
    the pixel gradient of H2C is that derivative spread over the pixels, so it has no component along
    the move itself; the distance term adds one that lengthens the move (a negative dot product)."""
    class RawMean(KnownEmbeddings):
        def encode_image(self, images):
            return images.mean((2, 3))

        encode_constant = encode_image

    inp = flat([0.2, 0.5, 0.1])
    out = flat([0.5, 0.4, 0.3]).requires_grad_(True)  # moved partly towards "clear" (1, -1, 0)/sqrt2
    move = (out - inp).detach()
    for weight, sign in ((0.0, 0), (2.0, -1)):
        out.grad = None
        H2CLoss(RawMean(), distance_weight=weight)(out, inp).backward()
        along = float((out.grad * move).sum())
        assert (along == pytest.approx(0.0, abs=1e-6)) if sign == 0 else along < -0.1  # float32 rounding: 1e-7
        assert out.grad.abs().max() > 1e-3  # the cosine still turns the move


def test_h2c_distance_term_needs_the_paper_mode():
    with pytest.raises(HarnessError, match="distance_weight"):
        H2CLoss(KnownEmbeddings(), mode="positive", distance_weight=1.0)


def test_training_the_embedded_guide_inside_a_run_reports_as_a_task(tmp_path):
    """Issue 10 item 6: with stdout to a file the guide's training (minutes) printed nothing."""
    import io

    from harness.ui.progress import RunProgress

    out = io.StringIO()
    with RunProgress(stream=out, live=False, interval=0.0):
        build_guide("embedded", steps=3, cache_dir=tmp_path)
    lines = out.getvalue().splitlines()
    assert any(line.endswith("embedded guide training: started") for line in lines)
    assert any("embedded guide training: step " in line for line in lines)
    assert any("embedded guide training: done 3/3 steps" in line for line in lines)
    out = io.StringIO()
    with RunProgress(stream=out, live=False, interval=0.0):
        build_guide("embedded", steps=3, cache_dir=tmp_path)  # cached: nothing to report
    assert "embedded guide training" not in out.getvalue()


def test_identity_output_is_finite_and_gradients_reach_output_only(guide):
    """At out == in the image direction is zero: the loss is exactly 1 with a finite gradient, not NaN."""
    inp = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    out = inp.clone().requires_grad_(True)
    loss = H2CLoss(guide)(out, inp)
    loss.backward()
    assert loss.item() == pytest.approx(1.0, abs=1e-6)
    assert torch.isfinite(out.grad).all()
    assert all(not p.requires_grad and p.grad is None for p in guide.model.parameters())
    moved = (inp * 0.8).requires_grad_(True)
    H2CLoss(guide)(moved, inp).backward()
    assert moved.grad.abs().sum() > 0



def test_weights_id_names_the_weights_a_built_guide_has(tmp_path, guide, monkeypatch):
    """What adapted results record about their guide must match the guide actually built, and change
    when its weights do: the embedded guide's cache file is named by it, an open_clip guide's file
    has it as sha256."""
    import importlib

    from harness.guide import weights_id

    embedded_module = importlib.import_module("harness.guide.embedded")  # the package's `embedded` is the guide
    built = build_guide("embedded", steps=3, cache_dir=tmp_path)
    assert built.info["config_hash"] == weights_id("embedded", steps=3, cache_dir=tmp_path)
    assert weights_id("embedded", steps=3, views=4) == weights_id("embedded", steps=3)  # views: the loss, not the weights
    assert weights_id("embedded", steps=4) != weights_id("embedded", steps=3)
    # the ranking term is off by default and leaves the default's hash (and every cached guide) as it was
    assert weights_id("embedded", steps=3, rank_weight=0.0) == weights_id("embedded", steps=3)
    assert weights_id("embedded", steps=3, rank_weight=1.0) != weights_id("embedded", steps=3)
    assert weights_id("embedded", steps=3, adversarial_steps=1, align_radius=0.0) == weights_id("embedded", steps=3)
    assert weights_id("embedded", steps=3, adversarial_steps=3) != weights_id("embedded", steps=3)
    assert weights_id("embedded", steps=3, align_radius=0.25) != weights_id("embedded", steps=3)
    assert weights_id("embedded", steps=3, blur=0.0, global_chroma=False) == weights_id("embedded", steps=3)
    assert weights_id("embedded", steps=3, blur=1.0) != weights_id("embedded", steps=3, blur=1.5)
    assert weights_id("embedded", steps=3, global_chroma=True) != weights_id("embedded", steps=3)
    assert weights_id("embedded", steps=3, cast_weight=0.0) == weights_id("embedded", steps=3)
    assert weights_id("embedded", steps=3, cast_weight=1.0) != weights_id("embedded", steps=3)
    assert weights_id("embedded", steps=3, grey=0.0) == weights_id("embedded", steps=3)
    assert weights_id("embedded", steps=3, grey=0.1) != weights_id("embedded", steps=3)
    monkeypatch.setattr(embedded_module, "VERSION", embedded_module.VERSION + 1)  # a changed data recipe
    assert weights_id("embedded", steps=3) != built.info["config_hash"]
    path = tmp_path / "tiny.pt"
    torch.save(guide.model.state_dict(), path)
    loaded = build_guide("open_clip", model=TINY_MODEL, pretrained=str(path))
    assert weights_id("open_clip", model=TINY_MODEL, pretrained=str(path)) == loaded.info["sha256"]
    assert weights_id("open_clip", model=TINY_MODEL, pretrained=None) is None


def test_a_grey_share_makes_that_share_of_the_clean_crops_monochrome_and_casts_stay_tinted():
    """``grey``: about that share of the clean crops has R = G = B exactly (none without it: photos,
    procedural scenes and the per-channel jitter are never exactly neutral); a clear crop is its
    clean crop, and a cast of a monochrome crop is tinted, so it still cannot read as clear."""
    from harness.guide.pairs import CAPTION_CLASSES, make_pairs

    rng = np.random.default_rng(0)
    photos = [(rng.uniform(0, 1, (40, 40, 3)).astype(np.float32), None) for _ in range(3)]

    def monochrome(t):
        return (t.amax(1) - t.amin(1)).flatten(1).amax(1) == 0

    names = [c for c, _ in CAPTION_CLASSES]
    plain = make_pairs(240, 16, 0, photos=photos)
    assert not monochrome(plain.clean).any()
    data = make_pairs(240, 16, 0, photos=photos, grey=0.5)
    mono = monochrome(data.clean)
    assert 0.35 < mono.float().mean() < 0.65  # binomial, n = 240: 4 standard deviations either side
    clear = data.labels == names.index("clear")
    assert torch.equal(data.images[clear], data.clean[clear]) and monochrome(data.images[clear & mono]).all()
    cast = (data.labels == names.index("cast")) & mono
    assert cast.any() and not monochrome(data.images[cast]).any()


def test_imperfect_versions_of_a_constant_grey_crop_by_hand():
    """On a constant grey crop every contrast, saturation and blur change is the identity, so each
    imperfect version must be the crop itself, the crop darkened by a gamma in [1.4, 2.2], a
    checkerboard of amplitude 0.03-0.08 around it, or per-channel gains whose mean is 1."""
    from harness.guide.training import _imperfect

    grey = torch.full((400, 3, 8, 8), 0.5)
    out = _imperfect(grey, torch.Generator().manual_seed(0))
    kinds = set()
    for o in out:
        if torch.allclose(o, grey[0], atol=1e-6):
            kinds.add("identity")
        elif torch.allclose(o, o.flatten()[0].expand_as(o), atol=1e-6) and 0.5 ** 2.2 - 1e-6 <= o[0, 0, 0] <= 0.5 ** 1.4 + 1e-6:
            kinds.add("gamma")
        elif torch.allclose(o[:, 0, 0], o[:, 1, 1]) and torch.allclose(o[:, 0, 1] - 0.5, 0.5 - o[:, 0, 0], atol=1e-6):
            amplitude = float((o[0, 0, 1] - 0.5).abs())
            assert 0.03 - 1e-6 <= amplitude <= 0.08 + 1e-6
            kinds.add("checkerboard")
        else:
            gains = o[:, 0, 0] / 0.5
            assert torch.allclose(o, o[:, :1, :1].expand_as(o), atol=1e-6)  # a uniform cast, no pattern
            assert float(gains.mean()) == pytest.approx(1.0, abs=1e-5) and float(gains.std()) > 0
            kinds.add("cast")
    assert kinds == {"identity", "gamma", "checkerboard", "cast"}


def test_recoloured_crops_by_hand():
    """Each recoloured crop of a two-colour image is either the image times per-channel gains in
    [0.4, 1.6]/mean with mean 1 (the ratio of the two pixels kept in every channel), or its luma
    times a tint with mean 1 (both pixels of one hue)."""
    from harness.guide.training import _recoloured

    image = torch.tensor([[0.1, 0.4, 0.2], [0.45, 0.2, 0.3]]).T.reshape(1, 3, 1, 2).repeat(200, 1, 1, 1)  # no clipping
    out = _recoloured(image, torch.Generator().manual_seed(0))
    luma = (image[0] * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0).flatten()
    kinds = set()
    for o in out:
        first, second = o[:, 0, 0], o[:, 0, 1]
        if torch.allclose(first / luma[0], second / luma[1], atol=1e-5):  # one hue: a tinted monochrome
            assert float((first / luma[0]).mean()) == pytest.approx(1.0, abs=1e-5)
            kinds.add("monochrome")
        else:
            gains = first / image[0, :, 0, 0]
            assert torch.allclose(second, image[0, :, 0, 1] * gains, atol=1e-5)
            assert float(gains.mean()) == pytest.approx(1.0, abs=1e-5) and float(gains.std()) > 0.01
            kinds.add("cast")
    assert kinds == {"monochrome", "cast"}


def test_pgd_attack_ends_on_the_radius_where_the_loss_is_linear():
    """Hand computation: for a loss linear in the pixels, ``sum(w * x)``, every PGD step moves each
    pixel by ``2.5 r / k`` along sign(w); from a random start within ``r`` the total of ``2.5 r``
    reaches the box, so the attack ends at ``x + r sign(w)`` (clipped to [0, 1])."""
    from harness.guide.training import GuideStepper

    torch.manual_seed(0)
    x = torch.rand(4, 3, 8, 8) * 0.6 + 0.2
    w = torch.randn(4, 3, 8, 8)
    stepper = GuideStepper.__new__(GuideStepper)
    stepper.adversarial, stepper.adversarial_steps = 0.25, 3
    stepper.trained = type("Trained", (), {"model": None})()
    stepper._loss = lambda model, images, y, text: (w * images).sum()
    adv = stepper._attack(x, None, None, torch.Generator().manual_seed(1))
    assert torch.allclose(adv, (x + 0.25 * w.sign()).clamp(0, 1), atol=1e-6)
    stepper.adversarial_steps = 1  # FGSM: one step of 1.25 r from the random start, inside the box
    fgsm = stepper._attack(x, None, None, torch.Generator().manual_seed(1))
    assert ((fgsm - x).abs() <= 0.25 + 1e-6).all() and ((fgsm - x) * w.sign() > 0.25 * 0.25 - 1e-6).all()


def test_input_filter_global_chroma_by_hand():
    """Hand computation on a 1x2-pixel image: the channel mean (luma) stays per pixel, the rest
    (chroma) is replaced by its mean over the image."""
    from harness.guide.model import InputFilter

    x = torch.tensor([[0.9, 0.3], [0.0, 0.3], [0.0, 0.3]]).view(1, 3, 1, 2)  # a red pixel, a grey one
    # luma 0.3 and 0.3; chroma (0.6, -0.3, -0.3) and (0, 0, 0), mean (0.3, -0.15, -0.15)
    expected = torch.tensor([[0.6, 0.6], [0.15, 0.15], [0.15, 0.15]]).view(1, 3, 1, 2)
    assert torch.allclose(InputFilter(global_chroma=True)(x), expected, atol=1e-6)
    assert torch.equal(InputFilter()(x), x)


def test_input_filter_blur_is_a_gaussian_of_that_standard_deviation():
    """An impulse comes out as exp(-d^2 / 2 sigma^2), normalised, out to 3 sigma (hand formula)."""
    from harness.guide.model import InputFilter

    x = torch.zeros(1, 3, 15, 15)
    x[:, :, 7, 7] = 1.0
    out = InputFilter(blur=1.0)(x)[0, 0]
    d = torch.arange(-3, 4, dtype=torch.float32)
    g = torch.exp(-d ** 2 / 2)
    g /= g.sum()
    assert torch.allclose(out[4:11, 4:11], g[:, None] * g[None], atol=1e-6)
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-5) and float(out[7, 3]) == 0.0  # nothing past 3 sigma


def test_a_tower_with_global_chroma_has_a_pixel_gradient_constant_in_colour():
    """Behind the filter, the image tower's pixel gradient (any score) minus its channel mean is the
    same at every pixel, so descent on it can shift colour only as a whole; without it, it varies."""
    from harness.guide.model import create_model, with_input_filter

    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64)

    def chroma_gradient(model):
        xg = x.clone().requires_grad_(True)
        model.encode_image(xg, normalize=True)[:, 0].sum().backward()
        return xg.grad - xg.grad.mean(1, keepdim=True)

    plain = chroma_gradient(create_model(TINY_MODEL))
    assert plain.flatten(2).std(2).max() > 1e-4
    torch.manual_seed(0)
    filtered = chroma_gradient(with_input_filter(create_model(TINY_MODEL), blur=1.0, global_chroma=True))
    assert filtered.abs().max() > 1e-6
    assert torch.allclose(filtered, filtered[:, :, :1, :1].expand_as(filtered), atol=1e-7)


def test_a_cached_filtered_guide_loads_with_its_filter(tmp_path):
    """The cache holds weights only; loading must put the input filter back, or the loaded guide
    would see other inputs than the one trained (its embeddings would differ)."""
    first = build_guide("embedded", steps=2, cache_dir=tmp_path, blur=1.0, global_chroma=True)
    second = build_guide("embedded", steps=2, cache_dir=tmp_path, blur=1.0, global_chroma=True)
    x = torch.rand(2, 3, 64, 64)
    assert torch.allclose(first.encode_image(x), second.encode_image(x), atol=1e-6)
    unfiltered = second.model.visual.input_filter
    second.model.visual.input_filter = torch.nn.Identity()
    assert not torch.allclose(first.encode_image(x), second.encode_image(x), atol=1e-4)
    second.model.visual.input_filter = unfiltered


def test_a_filtered_gradient_leaves_the_loss_and_filters_the_gradient_by_hand(guide):
    """``gradient_global_chroma``: the H2C loss is the tower's own, bit for bit, and the gradient that
    reaches the pixels is the tower's through the filter's adjoint. That filter is symmetric (channel
    mean + spatial mean of the rest), so by hand a gradient ``g`` at the tower's input arrives as
    ``(mean_c(g) + mean_xy(g - mean_c(g))) / std``: its colour part constant over the image."""
    filtered = dataclasses.replace(guide, gradient_global_chroma=True)
    torch.manual_seed(1)
    x, hazy = torch.rand(2, 3, guide.image_size, guide.image_size), torch.rand(2, 3, guide.image_size, guide.image_size)
    assert torch.equal(H2CLoss(guide)(x, hazy), H2CLoss(filtered)(x, hazy))

    g = torch.randn(2, 3, guide.image_size, guide.image_size)  # any gradient at the tower's input
    std = torch.tensor(guide.std).view(1, 3, 1, 1)

    def arriving(at_guide):
        xg = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(at_guide.preprocess(xg), xg, g)  # x is at the guide's size: no resize
        return grad

    assert torch.allclose(arriving(guide), g / std, atol=1e-6)
    luma = g.mean(1, keepdim=True)
    assert torch.allclose(arriving(filtered), (luma + (g - luma).mean((2, 3), keepdim=True)) / std, atol=1e-6)


def test_a_filtered_gradient_is_low_passed_and_its_forward_is_the_identity(guide):
    """``gradient_blur``: the preprocessed image is the same tensor values, and a gradient impulse
    comes back as the blur's (Gaussian) spread of it: nothing beyond 3 sigma."""
    blurred = dataclasses.replace(guide, gradient_blur=1.0)
    x = torch.rand(1, 3, guide.image_size, guide.image_size, requires_grad=True)
    out = blurred.preprocess(x)
    assert torch.equal(out, guide.preprocess(x))
    impulse = torch.zeros_like(out)
    impulse[0, 1, 10, 10] = 1.0
    (grad,) = torch.autograd.grad(out, x, impulse)
    std = torch.tensor(guide.std).view(1, 3, 1, 1)
    spread = (grad * std)[0, 1]  # undo the normalisation's 1/std
    assert float(spread[10, 10]) == pytest.approx(float(spread.max()))
    assert float(spread[10, 14]) == 0.0 and float(spread[10, 13]) > 0  # 3 sigma = 3 px
    assert float(spread.sum()) == pytest.approx(1.0, abs=1e-5)


def test_a_gradient_blur_wider_than_the_guide_input_is_refused(guide):
    with pytest.raises(HarnessError, match="gradient_blur"):
        dataclasses.replace(guide, gradient_blur=guide.image_size / 3)


def test_the_embedded_default_gradient_filter_is_in_the_adaptation_key_and_off_gives_the_old_key():
    """Results adapted before the default filter existed must not be reused for the new default, and
    an entry that turns it off must keep those results' keys (the earlier spec: type, H2C, given keys)."""
    from harness.recipe import GuideConfig

    default = GuideConfig(type="embedded").spec()
    assert default["gradient_blur"] == 3.0 and default["gradient_global_chroma"] is True
    off = GuideConfig(type="embedded", gradient_blur=0, gradient_global_chroma=False).spec()
    earlier = {"type": "embedded", "positive": "a clear photo", "negative": "a photo with haze", "mode": "both"}
    assert off == earlier
    assert GuideConfig(type="embedded", gradient_blur=2).spec() == {**earlier, "gradient_blur": 2.0,
                                                                    "gradient_global_chroma": True}
    assert GuideConfig(type="open_clip").spec() == {**earlier, "type": "open_clip"}  # off by default there


def test_a_filtered_gradient_refuses_a_second_derivative():
    """Its backward is first-order only; differentiating it again must fail, not return a wrong number."""
    from harness.guide.model import InputFilter, _FilteredGradient

    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    (grad,) = torch.autograd.grad((_FilteredGradient.apply(x, InputFilter(1.0, True)) ** 2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        grad.sum().backward()


def test_alignment_on_a_subset_is_the_alignment_of_those_crops(guide):
    """``align_batch: 2`` on a batch whose degraded crops are 0, 2 and 3 (1 is clear) gives the full
    alignment of crops 0-2 alone, with the same random draws."""
    from harness.guide.training import GuideStepper

    stepper = GuideStepper.__new__(GuideStepper)
    stepper.clear_index, stepper.align_radius = 0, 0.0
    stepper.negative_of = torch.tensor([1, 1, 2])
    stepper.mean = stepper.std = torch.full((1, 3, 1, 1), 0.5)
    stepper.trained = type("Trained", (), {"model": guide.model})()
    with torch.enable_grad():
        for p in guide.model.parameters():
            p.requires_grad_(True)
        torch.manual_seed(0)
        x, clean = torch.rand(4, 3, 64, 64), torch.rand(4, 3, 64, 64)
        y, text = torch.tensor([2, 0, 1, 2]), guide.tokenizer(["clear", "haze", "heavy haze"])
        stepper.align_batch = 2
        subset = stepper._alignment(x, y, clean, text, torch.Generator().manual_seed(1))
        stepper.align_batch = 0
        alone = stepper._alignment(x[:3], y[:3], clean[:3], text, torch.Generator().manual_seed(1))
        every = stepper._alignment(x, y, clean, text, torch.Generator().manual_seed(1))
        for p in guide.model.parameters():
            p.requires_grad_(False)
    assert torch.allclose(subset, alone, atol=1e-6) and not torch.allclose(subset, every, atol=1e-4)
