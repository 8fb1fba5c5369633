"""RowSparseAdamW against torch's AdamW: the same parameters and moments, bit for bit."""

import copy

import torch
from torch import nn

from harness.engine.optim import RowSparseAdamW


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(500, 32)
        self.head = nn.Linear(32, 3)

    def forward(self, tokens):
        return self.head(self.table(tokens).mean(1))


def train(model, optimiser, steps, seed=0, vocabulary=40):
    """Steps on token batches from a small vocabulary that grows: rows are first touched mid-way.
    Returns the number of distinct tokens seen, step by step."""
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=0.05, total_steps=40)
    rng = torch.Generator().manual_seed(seed)
    seen, counts = set(), []
    for step in range(steps):
        tokens = torch.randint(vocabulary + 3 * step, (8, 5), generator=rng)
        labels = torch.randint(3, (8,), generator=rng)
        seen |= set(tokens.flatten().tolist())
        counts.append(len(seen))
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(tokens), labels).backward()
        optimiser.step()
        schedule.step()
    return counts


def optimisers(model):
    stock = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    twin = copy.deepcopy(model)
    sparse = RowSparseAdamW(twin.parameters(), tables=[twin.table.weight], lr=0.05, weight_decay=0.1)
    return (model, stock), (twin, sparse)


def assert_same(a, b):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name


def test_same_parameters_and_moments_as_adamw(monkeypatch):
    """Bit for bit AdamW's, and the table's Adam step runs on the rows seen so far only (counted from
    the batches), not on all 500: the class is not AdamW under another name."""
    import harness.engine.optim as optim

    rows = []
    adam = optim.adam
    monkeypatch.setattr(optim, "adam", lambda params, *a, **k: (rows.append(len(params[0])), adam(params, *a, **k)))
    torch.manual_seed(0)
    (model, stock), (twin, sparse) = optimisers(Tagger())
    train(model, stock, 30)
    assert rows == []  # torch's AdamW never calls it
    seen = train(twin, sparse, 30)
    assert rows == seen and seen[-1] < 500
    assert_same(model, twin)
    for p, q in zip(model.parameters(), twin.parameters()):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(stock.state[p][key], sparse.state[q][key]), key
    untouched = sparse.state[twin.table.weight]["exp_avg_sq"].eq(0).all(1)
    assert 100 < int(untouched.sum()) < 500  # some rows skipped, and the decay still reached them:
    assert not torch.equal(twin.table.weight[untouched], Tagger().table.weight[untouched])


def test_resumes_from_an_adamw_checkpoint():
    """Both optimisers continue from one AdamW checkpoint (its moments say which rows were touched)."""
    torch.manual_seed(0)
    model = Tagger()
    stock = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    train(model, stock, 12)
    resumed = []
    for sparse in (False, True):
        twin = Tagger()
        twin.load_state_dict(model.state_dict())
        optimiser = (RowSparseAdamW(twin.parameters(), tables=[twin.table.weight], lr=0.05, weight_decay=0.1)
                     if sparse else torch.optim.AdamW(twin.parameters(), lr=0.05, weight_decay=0.1))
        optimiser.load_state_dict(copy.deepcopy(stock.state_dict()))  # loading shares the moments
        train(twin, optimiser, 10, seed=1, vocabulary=200)
        resumed.append(twin)
    assert_same(*resumed)


def test_loading_a_checkpoint_into_a_stepped_optimiser_forgets_the_rows_it_had_touched():
    """An optimiser that touched rows 0-10 loads a checkpoint whose moments cover rows 0-232; the
    steps after it, whose gradients reach only rows 0-14, match AdamW's from the same checkpoint."""
    torch.manual_seed(0)
    model = Tagger()
    stock = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    train(model, stock, 12, vocabulary=200)
    weights, moments = copy.deepcopy(model.state_dict()), stock.state_dict()
    twin = Tagger()
    sparse = RowSparseAdamW(twin.parameters(), tables=[twin.table.weight], lr=0.05, weight_decay=0.1)
    train(twin, sparse, 3, seed=2, vocabulary=5)
    reference = Tagger()
    for net, optimiser in ((reference, torch.optim.AdamW(reference.parameters(), lr=0.05, weight_decay=0.1)),
                           (twin, sparse)):
        net.load_state_dict(weights)
        optimiser.load_state_dict(copy.deepcopy(moments))
        train(net, optimiser, 5, seed=1, vocabulary=3)
    assert_same(reference, twin)
