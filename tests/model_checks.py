"""Checks every backbone family's tests share."""

import torch


def assert_state_dict_round_trip(source: torch.nn.Module, target: torch.nn.Module, x: torch.Tensor) -> None:
    """``target`` (another seed) differs from ``source`` until it loads its state dict, then equals it;
    the forward is deterministic."""
    with torch.no_grad():
        before = target(x)
        target.load_state_dict(source.state_dict())
        assert not torch.equal(before, target(x))  # different seeds really differ
        assert torch.equal(source(x), target(x))
        assert torch.equal(source(x), source(x))
