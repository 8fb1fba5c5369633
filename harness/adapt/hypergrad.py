"""First-order hypergradient for bilevel layer positioning.

Lower level: LoRA weights ``w`` minimise ``f(w, a)`` on the training split. Upper level: gates
``a`` minimise ``F(w*(a), a)`` on the validation split. The implicit function theorem gives

    dF/da = d_a F - H_aw H_ww^{-1} d_w F,      H_ww = d2f/dw2,  H_aw = d2f/(da dw).

Replacing both Hessian blocks by outer products of first derivatives (Gauss-Newton style:
``H_ww ~ g g^T``, ``H_aw ~ (d_a f) g^T`` with ``g = d_w f``) and using the pseudo-inverse
``(g g^T)^+ = g g^T / |g|^4`` collapses the correction to a rank-one term:

    h = d_a F - (<d_w F, d_w f> / |d_w f|^2) * d_a f.

Derivation: w*(a) solves d_w f(w*, a) = 0; differentiating, H_ww dw*/da + H_wa = 0, so
dw*/da = -H_ww^{-1} H_wa and dF(w*(a), a)/da = d_a F + (dw*/da)^T d_w F = d_a F - H_aw H_ww^{-1} d_w F.

When it is exact: for a quadratic lower level with H_ww = c I and d_w f = c (w - w*), we have
d_a f = H_aw (w - w*) and the rank-one term equals H_aw H_ww^{-1} P d_w F, where P projects onto
g = d_w f. It is therefore exact when d_w F is parallel to g (always, for a 1-D w), with g taken
at a point w != w* (at w* itself g = 0, the correction vanishes and ``eps`` keeps it finite).

The minus sign comes straight from the theorem (the authors' code flips it and multiplies the
term by the learning rate). Every gradient is taken with ``torch.autograd.grad`` so nothing stale
in ``.grad`` leaks in (under several ranks the caller averages them first, so the dot product is
over the global batch). With B = 0 at the start, ``d_a f = d_a F = 0`` exactly (the branch output
is zero whatever the gate), so callers warm the LoRA weights up before the first gate update.
"""

from __future__ import annotations

import torch


def _grads(loss: torch.Tensor, params: list[torch.Tensor], retain_graph: bool = False) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def hypergradient_from(gw_f: list[torch.Tensor], ga_f: list[torch.Tensor], gw_F: list[torch.Tensor],
                       ga_F: list[torch.Tensor], eps: float = 1e-12) -> list[torch.Tensor]:
    """``d_a F - (<d_w F, d_w f> / |d_w f|^2) d_a f`` from the four gradient lists.

    The search step takes ``d f/d(w, a)`` once and uses ``d_w f`` for the lower update as well.
    """
    dot = sum((x * y).sum() for x, y in zip(gw_F, gw_f))
    norm2 = sum((x * x).sum() for x in gw_f)
    coef = dot / (norm2 + eps)
    return [gF - coef * gf for gF, gf in zip(ga_F, ga_f)]


def hypergradient(lower_loss: torch.Tensor, upper_loss: torch.Tensor, w: list[torch.Tensor],
                  a: list[torch.Tensor], eps: float = 1e-12) -> list[torch.Tensor]:
    """``d_a F - (<d_w F, d_w f> / |d_w f|^2) d_a f`` for the lower loss f and upper loss F."""
    n = len(w)  # one backward pass per loss, over w and a together
    grads_f, grads_F = _grads(lower_loss, w + a, retain_graph=True), _grads(upper_loss, w + a, retain_graph=True)
    return hypergradient_from(grads_f[:n], grads_f[n:], grads_F[:n], grads_F[n:], eps)
