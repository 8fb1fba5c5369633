"""AdamW that updates only the touched rows of embedding tables, with torch's result bit for bit.

Why our own: a CLIP text tower's token table (49,408 rows) holds most of a small CLIP's parameters
(6.3 M of the embedded guide's 7.8 M), yet its captions use 35 of its rows. torch's AdamW
updates every element each step. For a row whose gradient and both moments are zero, that update is
the weight decay alone: the Adam term adds exactly -0.0. So the decay is applied to the whole table
and the Adam step, torch's own function, to the touched rows only. ``torch.optim.SparseAdam`` needs
sparse gradients and has no weight decay, and lazy-Adam variants change the result.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim.adam import adam


class RowSparseAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` whose parameters in ``tables`` (2-D, one row per token) skip the Adam
    step on rows that have never had a nonzero gradient. Checkpoints are AdamW's."""

    def __init__(self, params, tables: Iterable[torch.Tensor] = (), **options):
        super().__init__(params, **options)
        self._tables = {id(t) for t in tables}
        self._touched: dict[int, torch.Tensor] = {}  # per table: rows with a gradient or moments so far

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._touched.clear()  # the loaded moments say which rows were touched

    def _sparse(self, group: dict, p: torch.Tensor) -> bool:
        plain = not (group["amsgrad"] or group["maximize"] or group["capturable"] or group["differentiable"]
                     or group["fused"] or torch.is_complex(p))
        return id(p) in self._tables and p.grad is not None and p.dim() == 2 and plain

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        held = []
        for group in self.param_groups:
            for p in group["params"]:
                if self._sparse(group, p):
                    self._table_step(group, p)
                    held.append((p, p.grad))
                    p.grad = None  # AdamW's step below skips it
        super().step()
        for p, grad in held:
            p.grad = grad
        return loss

    def _table_step(self, group: dict, p: torch.Tensor) -> None:
        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        self._init_group({**group, "params": [p]}, params, grads, exp_avgs, exp_avg_sqs, [], steps)
        grad, exp_avg, exp_avg_sq = grads[0], exp_avgs[0], exp_avg_sqs[0]
        touched = self._touched.get(id(p))
        if touched is None:  # first step, or resumed from a checkpoint: the rows its moments hold
            touched = exp_avg.ne(0).any(1) | exp_avg_sq.ne(0).any(1)
        touched |= grad.ne(0).any(1)
        self._touched[id(p)] = touched
        rows = touched.nonzero().flatten()
        sub = [t.index_select(0, rows) for t in (p, grad, exp_avg, exp_avg_sq)]
        p.mul_(1 - group["lr"] * group["weight_decay"])  # all a row without gradient or moments gets
        beta1, beta2 = group["betas"]
        adam([sub[0]], [sub[1]], [sub[2]], [sub[3]], [], steps, amsgrad=False, has_complex=False,
             beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"],
             maximize=False, foreach=group["foreach"], capturable=False, differentiable=False, fused=None,
             decoupled_weight_decay=True)
        for full, part in zip((p, exp_avg, exp_avg_sq), (sub[0], sub[2], sub[3])):
            full.index_copy_(0, rows, part)
