"""``rbox``: rotated boxes (cx, cy, w, h, theta), theta in radians, one loss per pair.

Corners are ``c + R(theta) (+-w/2, +-h/2)`` with ``R(theta) = [[cos, -sin], [sin, cos]]``
(mmrotate). The columns are the ten box parameters (strided views of the inputs) and
``rinter``, the exact area of the intersection of the two rectangles, computed once per
batch by :mod:`autoloss.rotated` (vectorized, differentiable, TorchScript) from both inputs,
so its gradient flows to both (``column_input`` names the two). Everything else -- the
rotated IoU, an enclosing rectangle aligned with the target, the Gaussian (GWD/KLD) and
ProbIoU covariances -- is a terminal in the expression language, differentiated in closed
form by the compiler. Centres are positions, sizes lengths, angles dimensionless: a
rotated-box loss must not change when the image is scaled or shifted (``units``,
``rescale``).
"""
from __future__ import annotations

import math

import torch

from .. import rotated, units
from ..expr import Param
from .base import Curve, Input, Prepared, Signature, float_pair, terminals

Tensor = torch.Tensor

EPS = Param("eps", 1e-7)

COLUMNS = {
    "pcx": "predicted centre x", "pcy": "predicted centre y",
    "pw": "predicted width", "ph": "predicted height",
    "pt": "predicted angle theta (radians)",
    "tcx": "target centre x", "tcy": "target centre y",
    "tw": "target width", "th": "target height",
    "tt": "target angle theta (radians)",
    "rinter": "exact area of the intersection of the two rotated rectangles",
}

_COVARIANCES = [
    ("psxx", "(pw ** 2 * pcos ** 2 + ph ** 2 * psin ** 2) / 4",
     "predicted Gaussian covariance xx, R diag(w^2/4, h^2/4) R^T (mmrotate)"),
    ("psyy", "(pw ** 2 * psin ** 2 + ph ** 2 * pcos ** 2) / 4", "predicted covariance yy"),
    ("psxy", "(pw ** 2 - ph ** 2) * pcos * psin / 4", "predicted covariance xy"),
    ("tsxx", "(tw ** 2 * tcos ** 2 + th ** 2 * tsin ** 2) / 4", "target covariance xx"),
    ("tsyy", "(tw ** 2 * tsin ** 2 + th ** 2 * tcos ** 2) / 4", "target covariance yy"),
    ("tsxy", "(tw ** 2 - th ** 2) * tcos * tsin / 4", "target covariance xy"),
]

TERMINALS = [
    ("dt", "pt - tt", "angle difference (pred - target)"),
    ("pcos", "cos(pt)", "cos of the predicted angle"),
    ("psin", "sin(pt)", "sin of the predicted angle"),
    ("tcos", "cos(tt)", "cos of the target angle"),
    ("tsin", "sin(tt)", "sin of the target angle"),
    ("dcos", "cos(dt)", "cos of the angle difference"),
    ("dsin", "sin(dt)", "sin of the angle difference"),
    ("dx", "tcx - pcx", "centre offset x (target - pred)"),
    ("dy", "tcy - pcy", "centre offset y (target - pred)"),
    ("rho2", "dx ** 2 + dy ** 2", "squared centre distance rho^2"),
    ("parea", "pw * ph", "predicted area"),
    ("tarea", "tw * th", "target area"),
    ("runion", "parea + tarea - rinter", "union area U"),
    ("riou", "rinter / (runion + eps)", "rotated intersection over union"),
    # the enclosing rectangle aligned with the target (the axis-aligned enclosing box when
    # both boxes are axis-aligned; invariant to rotating the whole scene)
    ("ux", "tcos * (pcx - tcx) + tsin * (pcy - tcy)", "predicted centre x in the target frame"),
    ("uy", "tcos * (pcy - tcy) - tsin * (pcx - tcx)", "predicted centre y in the target frame"),
    ("ex", "(abs(pw * dcos) + abs(ph * dsin)) / 2", "predicted half-extent x in the target frame"),
    ("ey", "(abs(pw * dsin) + abs(ph * dcos)) / 2", "predicted half-extent y in the target frame"),
    ("rcw", "max(tw / 2, ux + ex) - min(-tw / 2, ux - ex)",
     "width of the enclosing rectangle aligned with the target"),
    ("rch", "max(th / 2, uy + ey) - min(-th / 2, uy - ey)",
     "height of the enclosing rectangle aligned with the target"),
    ("renclose", "rcw * rch", "area of the enclosing rectangle C"),
    ("rdiag2", "rcw ** 2 + rch ** 2", "squared diagonal of the enclosing rectangle c^2"),
    *_COVARIANCES,
    ("pdet", "(pw * ph) ** 2 / 16", "determinant of the predicted covariance"),
    ("tdet", "(tw * th) ** 2 / 16", "determinant of the target covariance"),
    ("ptr", "(pw ** 2 + ph ** 2) / 4", "trace of the predicted covariance"),
    ("ttr", "(tw ** 2 + th ** 2) / 4", "trace of the target covariance"),
    ("pqxx", "psxx / 3", "predicted ProbIoU covariance xx, R diag(w^2/12, h^2/12) R^T"),
    ("pqyy", "psyy / 3", "predicted ProbIoU covariance yy"),
    ("pqxy", "psxy / 3", "predicted ProbIoU covariance xy"),
    ("tqxx", "tsxx / 3", "target ProbIoU covariance xx"),
    ("tqyy", "tsyy / 3", "target ProbIoU covariance yy"),
    ("tqxy", "tsxy / 3", "target ProbIoU covariance xy"),
    ("trpt", "psxx * tsxx + 2 * psxy * tsxy + psyy * tsyy", "tr(Sp St)"),
    ("wcross", "sqrt(trpt + pw * ph * tw * th / 8)",
     "tr((Sp^1/2 St Sp^1/2)^1/2) = sqrt(tr(Sp St) + 2 sqrt(det Sp det St))"),
]


def prepare(loss: str, pred: Tensor, target: Tensor) -> Prepared:
    float_pair(loss, "pred", pred, "target", target, 5)
    n = pred.shape[0]
    # the geometry once, without autograd; the area keeps its graph under autograd (the
    # eager path), and ``backward`` rebuilds the small part that carries the gradient
    terms = rotated.intersection_terms(pred.detach(), target.detach())
    inter = rotated.intersection_from_terms(terms, pred, target)
    extra = {"terms": terms} if pred.requires_grad or target.requires_grad else {}
    # strided views: the compiled loss makes each row chunk contiguous while it is in cache
    columns = list(pred.unbind(1)) + list(target.unbind(1)) + [inter]
    return Prepared(columns, (pred, target), (n,), [(n, 5), (n, 5), (n,)], extra)


def backward(prep: Prepared, grads):
    """The box parameters are the inputs' columns; the intersection area's gradient
    (buffer 2) is chained into both inputs: autograd through its linear term, on detached
    copies of the inputs (:func:`rotated.intersection_from_terms`)."""
    out = list(grads[:2])
    if grads[2] is None or "terms" not in prep.extra:
        return out
    leaves = [x.detach().requires_grad_(x.requires_grad) for x in prep.inputs]
    wanted = [i for i, x in enumerate(leaves) if x.requires_grad]
    with torch.enable_grad():
        inter = rotated.intersection_from_terms(prep.extra["terms"], *leaves)
        chained = torch.autograd.grad(inter, [leaves[i] for i in wanted], grads[2])
    for i, g in zip(wanted, chained):
        out[i] = g if out[i] is None else out[i] + g
    return out


EXPORT_PREFIX = "_rotated_"

EXPORT_COLUMNS = ("pred: Tensor, target: Tensor", f'''\
    if pred.dim() != 2 or pred.shape[1] != 5:
        raise ValueError(f"pred must have shape (N, 5), got {{list(pred.shape)}}")
    if target.shape != pred.shape:
        raise ValueError(f"target must have pred's shape {{list(pred.shape)}}, got {{list(target.shape)}}")
    inter = {EXPORT_PREFIX}intersection_area(pred, target)
    return list(pred.unbind(1)) + list(target.unbind(1)) + [inter]''')


def _export_helpers() -> str:
    return rotated.source(EXPORT_PREFIX)


def _boxes(c: Tensor, wh: Tensor, theta: Tensor) -> Tensor:
    return torch.cat([c, wh, theta[:, None]], 1)


def _targets(n: int, generator, dtype):
    """Centres in a 20 x 20 field, sizes sqrt(area) 1-8 at aspect 1:4 ... 4:1 (log-uniform),
    angles over the whole period [-pi/2, pi/2)."""
    c = torch.rand(n, 2, generator=generator, dtype=dtype) * 20
    scale = torch.rand(n, generator=generator, dtype=dtype) * 7 + 1
    aspect = torch.exp((torch.rand(n, generator=generator, dtype=dtype) * 2 - 1) * math.log(4))
    wh = torch.stack([scale * aspect.sqrt(), scale / aspect.sqrt()], 1)
    theta = (torch.rand(n, generator=generator, dtype=dtype) - 0.5) * math.pi
    return c, wh, theta


def sample(n: int, generator=None, dtype=torch.float64, device="cpu"):
    """Targets as :func:`_targets`; predictions moved by about 1.5, sizes scaled by about
    exp(+-0.3), angles turned by about 0.5 rad (some across the +-pi/2 boundary)."""
    c, wh, theta = _targets(n, generator, dtype)
    pc = c + torch.randn(n, 2, generator=generator, dtype=dtype) * 1.5
    pwh = wh * torch.exp(torch.randn(n, 2, generator=generator, dtype=dtype) * 0.3)
    pt = theta + torch.randn(n, generator=generator, dtype=dtype) * 0.5
    return _boxes(pc, pwh, pt).to(device), _boxes(c, wh, theta).to(device)


def sample_near(n: int, generator=None, dtype=torch.float64, device="cpu"):
    """Targets as ``sample``; predictions with the centre moved by about a tenth of the size,
    each side scaled by about exp(+-0.15) and the angle turned by about 0.1 rad: rotated IoU
    mostly 0.5-0.95."""
    c, wh, theta = _targets(n, generator, dtype)
    pc = c + torch.randn(n, 2, generator=generator, dtype=dtype) * 0.1 * wh
    pwh = wh * torch.exp(torch.randn(n, 2, generator=generator, dtype=dtype) * 0.15)
    pt = theta + torch.randn(n, generator=generator, dtype=dtype) * 0.1
    return _boxes(pc, pwh, pt).to(device), _boxes(c, wh, theta).to(device)


def degenerate(dtype=torch.float64):
    """Pairs at the edges of the domain (the target is ``t`` unless given)."""
    a = 0.3
    ca, sa = math.cos(a), math.sin(a)
    t = [0.0, 0.0, 4.0, 2.0, a]
    pairs = [
        (t, t),                                              # identical
        ([0.0, 0.0, 4.0, 2.0, a + math.pi], t),              # the same box, theta + pi
        ([0.0, 0.0, 2.0, 4.0, a + math.pi / 2], t),          # the same box, (h, w, theta + pi/2)
        ([0.2 * ca, 0.2 * sa, 2.0, 1.0, a], t),              # nested inside
        ([0.0, 0.0, 6.0, 3.0, a - 0.1], t),                  # nesting the target
        ([4 * ca, 4 * sa, 4.0, 2.0, a], t),                  # touching edge
        ([4 * ca - 2 * sa, 4 * sa + 2 * ca, 4.0, 2.0, a], t),  # shared corner
        ([1e6, -1e6, 4.0, 2.0, 1.0], t),                     # disjoint, far apart
        ([0.5, 0.2, 4.0, 2.0, a + 1e-9], t),                 # near-parallel, tiny angle
        ([0.0, 0.0, 2.0, 2.0, 0.0],                          # coincident vertices
         [1.0, 1.0, 2 ** 0.5, 2 ** 0.5, math.pi / 4]),
        ([0.0, 0.0, 2.0, 2.0, 0.0], [2.0, 0.0, 2.0, 2.0, 0.0]),  # touching, axis-aligned
        ([0.5, 0.0, 0.0, 1.0, a], t),                        # zero-width prediction inside
        ([0.5, 0.0, 0.0, 0.0, a], t),                        # zero-size prediction
        (t, [0.5, 0.0, 0.0, 1.0, a]),                        # zero-width target
        ([0.1, 0.1, 1e-6, 1e-6, 1.0], t),                    # tiny prediction
        ([0.0, 0.0, 1e-4, 5.0, 1.2], t),                     # thin prediction crossing
    ]
    return (torch.tensor([p for p, _ in pairs], dtype=dtype),
            torch.tensor([q for _, q in pairs], dtype=dtype))


def rescale(pred: Tensor, target: Tensor, s: float, shift: float):
    scale = torch.tensor([s, s, s, s, 1.0], dtype=pred.dtype, device=pred.device)
    offset = torch.tensor([shift, -0.6 * shift, 0.0, 0.0, 0.0], dtype=pred.dtype,
                          device=pred.device)
    return pred * scale + offset, target * scale + offset


def convergence(steps, m: int, generator):
    """Each prediction's centre moved by up to its size, its sides stretched by up to e and
    its angle turned by up to pi/4, all by the step."""
    dt = torch.float64
    k, s = len(steps), torch.tensor(steps, dtype=dt).repeat_interleave(m)
    c, wh, theta = _targets(m, generator, dt)
    offset = (torch.rand(m, 2, generator=generator, dtype=dt) - 0.5) * 2.0 * wh
    stretch = torch.exp((torch.rand(m, 2, generator=generator, dtype=dt) - 0.5) * 2.0)
    turn = (torch.rand(m, generator=generator, dtype=dt) - 0.5) * math.pi / 2
    pred = _boxes(c.repeat(k, 1) + s[:, None] * offset.repeat(k, 1),
                  wh.repeat(k, 1) * stretch.repeat(k, 1) ** s[:, None],
                  theta.repeat(k) + s * turn.repeat(k))
    return pred, _boxes(c, wh, theta).repeat(k, 1)


def curve(n: int) -> Curve:
    """A 2:1 box at 30 degrees sliding along its long side onto its target:
    IoU = (1 - s) / (1 + s)."""
    dt = torch.float64
    s = torch.linspace(0.98, 0.0, n, dtype=dt)
    a = math.pi / 6
    target = torch.tensor([[0.0, 0.0, 2.0, 1.0, a]], dtype=dt).repeat(n, 1)
    direction = torch.tensor([2 * math.cos(a), 2 * math.sin(a), 0.0, 0.0, 0.0], dtype=dt)
    return Curve((target + s[:, None] * direction, target), (1 - s) / (1 + s),
                 "rotated IoU (a 2:1 box sliding along its long side onto its target)",
                 "shift", direction.repeat(n, 1))


def perfect(inputs):
    return inputs[1].clone(), inputs[1]


SIGNATURE = Signature(
    name="rbox",
    doc="Rotated boxes (cx, cy, w, h, theta), theta in radians (mmrotate's corners); one "
        "loss per box pair.",
    inputs=(Input("pred", "(N, 5)", "predicted rotated boxes, (cx, cy, w, h, theta)"),
            Input("target", "(N, 5)", "target rotated boxes, (cx, cy, w, h, theta)")),
    output="(N,)",
    columns=tuple(COLUMNS),
    terminals=terminals(COLUMNS, TERMINALS, {"eps": EPS}),
    params={"eps": EPS},
    prepare=prepare,
    backward=backward,
    column_input=(0, 0, 0, 0, 0, 1, 1, 1, 1, 1, (0, 1)),
    grad_slots=((0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (1, 0), (1, 1), (1, 2), (1, 3), (1, 4),
                (2, None)),
    sample=sample,
    degenerate=degenerate,
    units={**{c: units.POSITION for c in ("pcx", "pcy", "tcx", "tcy")},
           **{c: units.LENGTH for c in ("pw", "ph", "tw", "th")},
           "rinter": units.AREA, "eps": units.FREE},
    rescale=rescale,
    sample_near=sample_near,
    export_columns=EXPORT_COLUMNS,
    export_helpers=_export_helpers,
    convergence=convergence,
    curve=curve,
    perfect=perfect,
    from_detector=None,
)
