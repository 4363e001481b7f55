"""Multi-task weightings against their papers' formulas, computed here independently."""
from __future__ import annotations

import math

import pytest
import torch

from autoloss import weighting
from autoloss.weighting import WeightingError


def losses(cls: float, reg: float, **more) -> dict[str, torch.Tensor]:
    out = {"cls": torch.tensor(cls, dtype=torch.float64),
           "reg": torch.tensor(reg, dtype=torch.float64)}
    out.update({k: torch.tensor(v, dtype=torch.float64) for k, v in more.items()})
    return out


def test_registry_lists_every_weighting_with_its_paper():
    assert weighting.names() == ["fixed", "uncertainty", "gradnorm", "dwa", "self_balance"]
    for name in weighting.names():
        entry = weighting.get(name)
        assert entry.paper and entry.id == name
        built = weighting.build(name, ("cls", "reg"))
        assert isinstance(built, weighting.Weighting) and built.tasks == ("cls", "reg")


def test_bad_input_gets_a_clear_error():
    with pytest.raises(WeightingError, match="unknown weighting 'nope'.*fixed"):
        weighting.build("nope", ("cls",))
    with pytest.raises(WeightingError, match="unknown parameters \\['gamma'\\]"):
        weighting.build("dwa", ("cls", "reg"), gamma=1)
    with pytest.raises(WeightingError, match="reference 'box'"):
        weighting.build("self_balance", ("cls", "reg"), reference="box")
    w = weighting.build("fixed", ("cls", "reg"))
    with pytest.raises(WeightingError, match="missing \\['reg'\\]"):
        w({"cls": torch.tensor(1.0)})
    with pytest.raises(WeightingError, match="must be a scalar"):
        w({"cls": torch.ones(3), "reg": torch.tensor(1.0)})
    with pytest.raises(WeightingError, match="bind"):
        weighting.build("gradnorm", ("cls", "reg"))(losses(1.0, 1.0))


def test_fixed_is_the_weighted_sum():
    w = weighting.build("fixed", ("cls", "reg"), weights={"reg": 2.5})
    assert float(w(losses(1.5, 2.0))) == pytest.approx(1.5 + 2.5 * 2.0)
    assert w.weights() == {"cls": 1.0, "reg": 2.5}
    with pytest.raises(WeightingError, match="unknown tasks"):
        weighting.build("fixed", ("cls",), weights={"iou": 1.0})


def test_uncertainty_is_kendall_s_gaussian_form_and_learns_the_loss_scale():
    w = weighting.build("uncertainty", ("cls", "reg")).double()
    with torch.no_grad():
        w.log_var.copy_(torch.tensor([0.3, -0.7], dtype=torch.float64))
    total = w(losses(2.0, 0.5)).detach()
    expect = sum(0.5 * math.exp(-s) * l + 0.5 * s for s, l in ((0.3, 2.0), (-0.7, 0.5)))
    assert float(total) == pytest.approx(expect, rel=1e-12)
    # with the losses fixed, the optimum of 0.5 exp(-s) L + 0.5 s is s = log L
    opt = torch.optim.Adam(w.parameters(), lr=0.05)
    for _ in range(2000):
        opt.zero_grad()
        w(losses(2.0, 0.5)).backward()
        opt.step()
    assert w.log_var.detach().tolist() == pytest.approx([math.log(2.0), math.log(0.5)], abs=1e-3)
    w.reset()
    assert w.log_var.detach().tolist() == [0.0, 0.0]


def _two_heads():
    torch.manual_seed(0)
    shared = torch.nn.Linear(4, 8).double()
    heads = [torch.nn.Linear(8, 1).double(), torch.nn.Linear(8, 1).double()]
    x = torch.randn(16, 4, dtype=torch.float64)
    return shared, heads, x


def test_gradnorm_moves_the_weights_as_the_paper_s_gradient_loss_says():
    shared, heads, x = _two_heads()
    w = weighting.build("gradnorm", ("cls", "reg"), alpha=1.5, lr=0.01).bind(shared.parameters())
    for step in range(3):
        h = shared(x)
        l_cls = heads[0](h).pow(2).mean()
        l_reg = 10 * heads[1](h).abs().mean()  # a task with larger gradients on the shared layer
        before = w.w.clone()
        # the reference: the paper's L_grad with autograd through G_k = || d(w_k L_k)/dW ||,
        # the target held constant
        wk = before.clone().double().requires_grad_(True)
        gs = [torch.autograd.grad(l, list(shared.parameters()), retain_graph=True)
              for l in (l_cls, l_reg)]
        g = torch.stack([torch.sqrt(sum((t ** 2).sum() for t in gr)) for gr in gs])
        G = wk * g
        if step == 0:
            initial = torch.stack([l_cls.detach(), l_reg.detach()])
        ratio = torch.stack([l_cls.detach(), l_reg.detach()]) / initial
        r = ratio / ratio.mean()
        target = (G.mean() * r ** 1.5).detach()
        (G - target).abs().sum().backward()
        ref_grad = wk.grad.clone()
        total = w({"cls": l_cls, "reg": l_reg})
        assert float(total.detach()) == pytest.approx(float(before[0] * l_cls.detach()
                                                           + before[1] * l_reg.detach()))
        # the weights moved against the reference gradient, then were renormalised to sum 2
        assert float(w.w.sum()) == pytest.approx(2.0)
        moved = (w.w - before).double()
        assert torch.sign(moved[0] - moved[1]) == -torch.sign(ref_grad[0] - ref_grad[1])
    # the task with the larger gradient norm lost weight
    assert w.w[1] < w.w[0]


def test_dwa_follows_the_loss_descent_rate_of_the_last_two_periods():
    w = weighting.build("dwa", ("cls", "reg"), temperature=2.0, period=2)
    seen = []
    for cls, reg in ((4.0, 4.0), (4.0, 4.0), (2.0, 3.0), (2.0, 3.0), (1.0, 1.0)):
        w(losses(cls, reg))
        seen.append(list(w.weights().values()))
    assert seen[:4] == [[1.0, 1.0]] * 4  # the first two periods
    r = torch.tensor([2.0 / 4.0, 3.0 / 4.0])
    expect = (2 * torch.softmax(r / 2.0, 0)).tolist()
    assert seen[4] == pytest.approx(expect, rel=1e-6)
    assert seen[4][1] > seen[4][0]  # the slower task weighs more
    w.reset()
    w(losses(1.0, 1.0))
    assert list(w.weights().values()) == [1.0, 1.0]


def test_self_balance_per_step_is_rs_loss_s_ratio():
    w = weighting.build("self_balance", ("cls", "reg", "iou"))
    total = w(losses(0.6, 0.2, iou=0.3))
    assert w.weights() == pytest.approx({"cls": 1.0, "reg": 3.0, "iou": 2.0})
    assert float(total) == pytest.approx(0.6 + 3.0 * 0.2 + 2.0 * 0.3)


def test_self_balance_per_period_is_alrp_s_running_balance():
    w = weighting.build("self_balance", ("cls", "reg"), period=2, init=50.0)
    w(losses(1.0, 0.5))
    assert w.weights()["reg"] == 50.0
    w(losses(1.0, 0.25))
    assert w.weights()["reg"] == 50.0  # the period ends after this step
    w(losses(1.0, 1.0))
    assert w.weights()["reg"] == pytest.approx((2.0 + 4.0) / 2)


def test_weights_carry_no_gradient_except_the_learnable_ones():
    l_cls = torch.tensor(2.0, requires_grad=True)
    l_reg = torch.tensor(3.0, requires_grad=True)
    for name in ("dwa", "self_balance", "fixed"):
        w = weighting.build(name, ("cls", "reg"))
        total = w({"cls": l_cls, "reg": l_reg})
        gc, gr = torch.autograd.grad(total, (l_cls, l_reg))
        got = w.weights()
        assert (float(gc), float(gr)) == pytest.approx((got["cls"], got["reg"]))


# ------------------------------------------------------------------------- in digits
@pytest.mark.parametrize("name", ["uncertainty", "gradnorm", "dwa", "self_balance"])
def test_digits_trains_under_each_weighting(name):
    from autoloss import zoo
    from autoloss.proxies.digits import Digits

    proxy = Digits(weighting=name, quality_branch=name == "self_balance",
                   weighting_params={"period": 5} if name == "dwa" else None)
    metrics = proxy.run({"cls": zoo.compiled("focal"), "reg": zoo.compiled("giou")},
                        budget=12, seed=0, scale=0.02)
    assert math.isfinite(metrics.value)
    used = proxy.combine.weights()
    assert set(used) == ({"cls", "reg", "iou"} if name == "self_balance" else {"cls", "reg"})
    if name == "uncertainty":  # its log-variances were trained by the detector's optimiser
        assert proxy.combine.log_var.detach().abs().max() > 0
    if name == "gradnorm":  # the weights moved from 1 and still sum to the task count
        assert used != {"cls": 1.0, "reg": 1.0} and sum(proxy.combine.w.tolist()) == \
            pytest.approx(2.0)


def test_digits_refuses_a_bad_weighting_clearly():
    from autoloss.proxies.digits import Digits

    with pytest.raises(ValueError, match="unknown weighting 'kendall'"):
        Digits(weighting="kendall")
    with pytest.raises(ValueError, match="unknown parameters \\['tau'\\]"):
        Digits(weighting="dwa", weighting_params='{"tau": 2}')
