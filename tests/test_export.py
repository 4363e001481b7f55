"""Export: standalone modules for every zoo entry, round trip, TorchScript, drop-in, safety."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

from autoloss import export, runtime, zoo
from autoloss.errors import AutolossError, ExpressionError
from autoloss.evaluate import resolve_loss
from conftest import ZOO_IDS, sample, zoo_sample

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("exported")
    paths = {}
    for loss_id in ZOO_IDS:
        paths[loss_id] = export.to_file(zoo.compiled(loss_id), folder / f"{loss_id}.py",
                                        provenance=export.zoo_provenance(loss_id))
    return paths


def test_every_zoo_entry_round_trips_in_a_fresh_process(exported):
    items = [(exported[i], zoo.compiled(i), None) for i in ZOO_IDS]
    reports = export.check_many(items, rtol=1e-6, atol=1e-9)
    for loss_id, report in zip(ZOO_IDS, reports):
        assert report["value"] <= 1e-6 and report["grad"] <= 1e-6, (loss_id, report)


@pytest.mark.parametrize("loss_id", ZOO_IDS)
def test_exported_module_matches_and_scripts(exported, loss_id):
    module = export.load(exported[loss_id])
    cls = getattr(module, module.__all__[1])
    func = getattr(module, module.__all__[0])
    inputs = list(zoo_sample(loss_id, 40, 5))
    a = [x.clone().requires_grad_(True) if i == 0 else x for i, x in enumerate(inputs)]
    b = [x.clone().requires_grad_(True) if i == 0 else x for i, x in enumerate(inputs)]
    mine = cls()(*a)
    theirs = zoo.build(loss_id)(*b)
    torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-9)
    (ga,) = torch.autograd.grad(mine.sum(), a[0])
    (gb,) = torch.autograd.grad(theirs.sum(), b[0])
    torch.testing.assert_close(ga, gb, rtol=1e-6, atol=1e-9)
    scripted = torch.jit.script(cls(reduction="mean"))
    c = [x.clone().requires_grad_(True) if i == 0 else x for i, x in enumerate(inputs)]
    value = scripted(*c)
    torch.testing.assert_close(value, theirs.mean(), rtol=1e-6, atol=1e-9)
    (gc,) = torch.autograd.grad(value, c[0])
    torch.testing.assert_close(gc, gb / theirs.numel(), rtol=1e-6, atol=1e-9)
    # the functional form with mmdetection's weight and avg_factor
    w = torch.rand(theirs.shape, dtype=theirs.dtype)
    torch.testing.assert_close(func(*inputs, reduction="mean", weight=w, avg_factor=7.0),
                               zoo.build(loss_id, reduction="mean")(*inputs, weight=w, avg_factor=7.0))


def test_exported_module_depends_on_torch_only(exported):
    code = (f"import sys, importlib.util; spec = importlib.util.spec_from_file_location('m', "
            f"{str(exported['giou'])!r}); m = importlib.util.module_from_spec(spec); "
            "spec.loader.exec_module(m); assert 'autoloss' not in sys.modules; print(m.__doc__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    doc = out.stdout
    for piece in ("1 - iou + (enclose - union) / (enclose + eps)", "Rezatofighi", r"\mathrm{IoU}",
                  "pred: (N, 4)", "canonical hash", "eps = 1e-07"):
        assert piece in doc, piece


def test_parameters_are_shipped_and_can_be_trainable(tmp_path):
    compiled = zoo.compiled("focal")
    path = export.to_file(compiled, tmp_path / "f.py", "TunedFocal", params={"gamma": 1.5},
                          trainable_constants=True)
    module = export.load(path)
    loss = module.TunedFocal()
    assert isinstance(loss.gamma, torch.nn.Parameter) and loss.gamma.item() == 1.5
    x, t = sample("sigmoid", 16, 1)
    value = loss(x, t).sum()
    value.backward()
    assert loss.gamma.grad is not None and torch.isfinite(loss.gamma.grad)
    torch.testing.assert_close(value.detach(), zoo.build("focal", gamma=1.5)(x, t).sum())
    assert export.check(path, compiled, {"gamma": 1.5})["value"] <= 1e-6
    torch.jit.script(module.TunedFocal())


def test_large_batches_take_the_chunked_fused_path(tmp_path):
    path = export.to_file(zoo.compiled("diou"), tmp_path / "d.py", "BigDIoU")
    module = export.load(path)
    pred, target = sample("box", 200_000, 3, dtype=torch.float32)
    a, b = pred.clone().requires_grad_(True), pred.clone().requires_grad_(True)
    torch.testing.assert_close(module.BigDIoU()(a, target), zoo.build("diou")(b, target))
    torch.testing.assert_close(torch.autograd.grad(module.big_diou_loss(a, target).sum(), a)[0],
                               torch.autograd.grad(zoo.build("diou")(b, target).sum(), b)[0])


def test_target_gradients_fall_back_to_autograd(tmp_path):
    path = export.to_file(zoo.compiled("giou"), tmp_path / "g.py", "G")
    module = export.load(path)
    pred, target = sample("box", 8, 2)
    t1, t2 = target.clone().requires_grad_(True), target.clone().requires_grad_(True)
    (ga,) = torch.autograd.grad(module.G()(pred, t1).sum(), t1)
    (gb,) = torch.autograd.grad(zoo.build("giou")(pred, t2).sum(), t2)
    torch.testing.assert_close(ga, gb)


def test_drop_in_demo_trains_the_digits_detector_identically(tmp_path):
    from autoloss.proxies import get

    cls_path = export.to_file(zoo.compiled("focal"), tmp_path / "cls.py", "DemoFocal")
    reg_path = export.to_file(zoo.compiled("giou"), tmp_path / "reg.py", "DemoGIoU")
    cls_module, reg_module = export.load(cls_path), export.load(reg_path)
    proxy = get("digits")
    from_disk = proxy.run({"cls": cls_module.demo_focal_loss, "reg": reg_module.demo_giou_loss},
                          budget=60, seed=1, scale=0.05)
    in_process = proxy.run({"cls": zoo.compiled("focal"), "reg": zoo.compiled("giou")},
                           budget=60, seed=1, scale=0.05)
    assert from_disk.value == in_process.value and from_disk.extra == in_process.extra


HOSTILE = '"""\nimport os\nos.system("touch PWNED")\n"""\\'


def test_hostile_text_cannot_inject_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prov = export.Provenance(source=HOSTILE, run=HOSTILE, proxy=HOSTILE, title=HOSTILE,
                             paper=HOSTILE, formula=HOSTILE, notes=HOSTILE,
                             extra={HOSTILE: HOSTILE})
    path = export.to_file(zoo.compiled("iou"), tmp_path / "h.py", "Safe", provenance=prov)
    module = export.load(path)
    assert not (tmp_path / "PWNED").exists()
    assert 'os.system("touch PWNED")' in module.__doc__
    compile(path.read_text(), str(path), "exec")
    for bad in ("Bad Name", "x'); import os; ('", "lower", "_Private", "Name\n"):
        with pytest.raises(ExpressionError):
            export.to_source(zoo.compiled("iou"), bad)


def test_hostile_expressions_and_parameter_names_are_rejected():
    with pytest.raises(AutolossError):
        resolve_loss("__import__('os').system('x')", ("box",))
    with pytest.raises(AutolossError):
        resolve_loss("iou * gamma", ("box",), params={"gamma); import os; (": 1.0})
    with pytest.raises(AutolossError):
        export.to_source(zoo.compiled("focal"), "Ok", params={"gamma = 1; import os": 1.0})


def test_export_cli(tmp_path):
    out = subprocess.run([sys.executable, "-m", "autoloss.cli", "export", "--zoo", "ciou", "-o",
                          str(tmp_path / "c.py"), "--name", "MyCIoU", "--check"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "values and gradients agree" in out.stdout
    assert (tmp_path / "c.py").exists()
    expr = subprocess.run([sys.executable, "-m", "autoloss.cli", "export", "--expr",
                           "1 - iou ** gamma", "--signature", "box", "--param", "gamma=2",
                           "-o", str(tmp_path / "e.py"), "--check"],
                          capture_output=True, text=True, timeout=300)
    assert expr.returncode == 0, expr.stderr
    missing = subprocess.run([sys.executable, "-m", "autoloss.cli", "export", "--expr", "1 - iou"],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "--signature" in missing.stderr


def test_joint_search_exports_one_module_with_a_class_per_slot(tmp_path):
    losses = {"cls": zoo.compiled("focal"), "reg": zoo.compiled("giou")}
    names = {"cls": "SearchedClsLoss", "reg": "SearchedRegLoss"}
    source = export.to_source_joint(losses, names, {"cls": {"gamma": 1.5}, "reg": {}},
                                    {"cls": 1.0, "reg": 2.0}, {"assigner": "center_sampling"},
                                    export.Provenance(source="test", run="r", trial=3))
    path = tmp_path / "joint.py"
    path.write_text(source)
    module = export.load(path)
    assert module.WEIGHTS == {"cls": 1.0, "reg": 2.0}
    assert module.CHOICES == {"assigner": "center_sampling"}
    x, t = sample("sigmoid", 10, 0)
    p, g = sample("box", 10, 0)
    torch.testing.assert_close(module.SearchedClsLoss()(x, t), zoo.build("focal", gamma=1.5)(x, t))
    torch.testing.assert_close(module.searched_reg_loss(p, g), zoo.build("giou")(p, g))
    torch.jit.script(module.SearchedClsLoss())
    torch.jit.script(module.SearchedRegLoss())
    # --check of a joint run: each slot's function against its compiled loss
    reports = export.check_many([(path, losses["cls"], {"gamma": 1.5}, "searched_cls_loss"),
                                 (path, losses["reg"], {}, "searched_reg_loss")])
    assert [r["cases"] for r in reports] == [3, 4]  # the box slot also gets the unit probe
    assert "units" not in reports[0] and reports[1]["units"] == "invariant"
    with pytest.raises(AutolossError, match="values differ"):
        export.check_many([(path, losses["cls"], {"gamma": 2.0}, "searched_cls_loss")])
    with pytest.raises(AutolossError):
        export.to_source_joint(losses, names, {}, {"cls": 1.0}, {"x": "a'); import os; ('"},
                               export.Provenance())


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_exported_and_compiled_reductions_are_one_runtime(exported, reduction):
    """Same values and the same refusals for weight and avg_factor on every reduction."""
    module = export.load(exported["focal"])
    func, compiled = module.focal_loss, zoo.compiled("focal")
    x, t = sample("sigmoid", 30, 3)
    for weight in (None, torch.rand(x.shape, dtype=x.dtype), torch.rand(x.shape[0], dtype=x.dtype)):
        torch.testing.assert_close(func(x, t, reduction=reduction, weight=weight),
                                   compiled(x, t, reduction=reduction, weight=weight))
    bad_weight = torch.rand(x.shape[0] + 1, dtype=x.dtype)
    with pytest.raises(ValueError, match="weight must have the loss's shape"):
        func(x, t, reduction=reduction, weight=bad_weight)
    with pytest.raises(AutolossError, match="weight must have the loss's shape"):
        compiled(x, t, reduction=reduction, weight=bad_weight)
    if reduction == "mean":
        torch.testing.assert_close(func(x, t, reduction="mean", avg_factor=4.0),
                                   compiled(x, t, reduction="mean", avg_factor=4.0))
    else:
        with pytest.raises(ValueError, match="avg_factor"):
            func(x, t, reduction=reduction, avg_factor=4.0)
        with pytest.raises(AutolossError, match="avg_factor"):
            compiled(x, t, reduction=reduction, avg_factor=4.0)


def test_exported_runtime_is_the_compiled_one():
    """The exported module carries autoloss.runtime's code, not a copy that can drift."""
    source = export.to_source(zoo.compiled("giou"), name="G")
    assert runtime.source() in source
    for name in ("reduce", "run_chunks", "CHUNK", "pool"):  # every runtime name made private
        assert re.search(rf"^(def |){name}\b", source, re.M) is None, name
        assert re.search(rf"^(def |)_{name}\b", source, re.M), name


def test_exported_chunked_path_matches(tmp_path, monkeypatch):
    """Batches beyond two chunks run the shared chunked loop in the exported module too."""
    path = export.to_file(zoo.compiled("ciou"), tmp_path / "c.py", name="C")
    module = export.load(path)
    monkeypatch.setattr(module, "_CHUNK", 40)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # the threaded split too
    pred, target = sample("box", 500, 4)
    a, b = pred.clone().requires_grad_(True), pred.clone().requires_grad_(True)
    mine, theirs = module.c_loss(a, target), zoo.build("ciou")(b, target)
    torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(torch.autograd.grad(mine.sum(), a)[0],
                               torch.autograd.grad(theirs.sum(), b)[0], rtol=1e-6, atol=1e-9)
