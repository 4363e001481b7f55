"""A worked example of "your own trainer" as an autoloss proxy.

A tiny box regressor: a linear layer maps noisy features of a box to its coordinates. The
candidate box loss trains it; the metric is the mean IoU on held-out boxes. Score zoo
losses or expressions on it with

    autoloss eval --proxy examples.my_trainer:train --loss reg=giou --seeds 3

(run from the repository root, so that ``examples`` is importable).
"""
import torch

from autoloss.proxies import proxy


@proxy(slots={"reg": "box"}, metric="iou", direction="maximize", budget=200)
def train(losses, budget, seed, report):
    g = torch.Generator().manual_seed(seed)

    def data(n):
        centre = torch.rand(n, 2, generator=g) * 50
        size = torch.rand(n, 2, generator=g) * 20 + 4
        boxes = torch.cat([centre - size / 2, centre + size / 2], 1)
        features = torch.cat([boxes, boxes ** 2 / 50], 1) + torch.randn(n, 8, generator=g) * 2
        return features, boxes

    x, y = data(2048)
    xv, yv = data(512)
    torch.manual_seed(seed)
    model = torch.nn.Linear(8, 4)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for step in range(1, budget + 1):
        pred = model(x)
        pred = torch.cat([pred[:, :2], torch.maximum(pred[:, 2:], pred[:, :2] + 0.1)], 1)
        loss = losses["reg"](pred, y, reduction="mean")
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            report(step, _iou(model, xv, yv))
    return {"iou": _iou(model, xv, yv)}


def _iou(model, x, y):
    with torch.no_grad():
        p = model(x)
        wh = (torch.minimum(p[:, 2:], y[:, 2:]) - torch.maximum(p[:, :2], y[:, :2])).clamp(min=0)
        inter = wh[:, 0] * wh[:, 1]
        area = lambda b: (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)  # noqa: E731
        return float((inter / (area(p) + area(y) - inter).clamp(min=1e-9)).mean())
