"""Supervised pretraining learns, and a killed run resumes to the same weights."""

import pytest
import torch

from harness.errors import HarnessError
from harness.models import build_backbone
from harness.pretrain.supervised import pretrain_supervised


def pairs(n: int = 4, size: int = 40):
    g = torch.Generator().manual_seed(0)
    clear = [torch.rand(3, size, size, generator=g) for _ in range(n)]
    hazy = [0.6 * c + 0.4 for c in clear]  # uniform haze with airlight 1, transmission 0.6
    return hazy, clear


def train(tmp_path, steps, progress=None, lr=2e-3):
    torch.manual_seed(0)
    model = build_backbone("aod_net", "tiny")
    hazy, clear = pairs()
    model, _ = pretrain_supervised(model, hazy, clear, steps=steps, lr=lr, batch_size=2, patch_size=32, seed=0,
                                   state_path=tmp_path / "state.pt", checkpoint_every=5, progress=progress)
    return model


def l1(model):
    hazy, clear = pairs()
    with torch.no_grad():
        return float(torch.stack([(model(h[None])[0] - c).abs().mean() for h, c in zip(hazy, clear)]).mean())


def test_pretraining_reduces_l1(tmp_path):
    torch.manual_seed(0)
    before = l1(build_backbone("aod_net", "tiny"))
    after = l1(train(tmp_path, 60))
    assert after < 0.7 * before


def test_resume_after_kill_matches_uninterrupted(tmp_path):
    full = train(tmp_path / "a", 20)

    class Killed(Exception):
        pass

    def kill_at_12(done, total, info):
        if done == 12:
            raise Killed

    with pytest.raises(Killed):
        train(tmp_path / "b", 20, progress=kill_at_12)
    assert torch.load(tmp_path / "b" / "state.pt", weights_only=False)["step"] == 10
    resumed = train(tmp_path / "b", 20)
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_nan_loss_is_a_clear_error(tmp_path):
    with pytest.raises(HarnessError, match="pretraining loss is nan at step 0.*pretrain_lr"):
        torch.manual_seed(0)
        model = build_backbone("aod_net", "tiny")
        hazy, clear = pairs()
        hazy[0] = hazy[0] * float("nan")
        hazy = [hazy[0]] * 4
        pretrain_supervised(model, hazy, clear, steps=3, lr=1e-3, batch_size=2, patch_size=32, seed=0,
                            state_path=tmp_path / "s.pt")
