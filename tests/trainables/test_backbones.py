"""Image backbones: spec forms, feature shapes, first-conv adaptation, user factories, pretrained files."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import uuid

import numpy as np
import pytest
import torch
from torch import nn

from trainables.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageInput,
    adapt_first_conv_weight,
    build_backbone,
    check_backbone_spec,
    imagenet_stats,
    is_image_backbone,
    load_backbone_weights,
)
from trainables.errors import UserError
from trainables.model import load_pretrained

tvm = pytest.importorskip("torchvision.models")
timm = pytest.importorskip("timm")


def _images(batch: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


def _input_of(module: nn.Module, run) -> torch.Tensor:
    """What ``module`` receives while ``run()`` runs: the features a classifier is fed."""
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    try:
        with torch.no_grad():
            run()
    finally:
        handle.remove()
    return torch.flatten(seen[0], 1)


# --------------------------------------------------------------------------------------------- specs


@pytest.mark.parametrize("spec", ["mlp", "cnn", "torchvision:resnet18", "torchvision:vit_b_16", "timm:resnet18",
                                  "timm:resnet18.a1_in1k", "python:pkg.module:factory", "python:mod:make"])
def test_spec_forms_accepted(spec):
    check_backbone_spec(spec)
    assert is_image_backbone(spec) is (spec != "mlp")


@pytest.mark.parametrize("spec, message", [
    ("resnet18", "is not one of mlp, cnn, torchvision:NAME"),
    ("CNN", "is not one of"),
    (" cnn", "is not one of"),
    ("keras:resnet", "is not one of"),
    ("torchvision:", "names no model; write torchvision:NAME"),
    ("timm:", "names no model; write timm:NAME"),
    ("python:", "names no model"),
    ("torchvision:resnet/18", "not a torchvision model name"),
    ("timm:hf-hub:org/model", "hub names are refused"),
    ("python:pkg.module", "must read python:pkg.module:factory"),
    ("python:pkg..module:make", "must read python:pkg.module:factory"),
    ("python:pkg.module:", "must read python:pkg.module:factory"),
    ("python:pkg.module:1make", "must read python:pkg.module:factory"),
    (3, "must be a string"),
])
def test_spec_forms_refused_with_value_error(spec, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        check_backbone_spec(spec)
    with pytest.raises(UserError, match=re.escape(message)):
        build_backbone(spec, in_channels=1, image_size=28)


def test_checking_specs_and_the_cnn_never_import_torchvision_or_timm():
    script = textwrap.dedent("""
        import sys
        sys.modules["torchvision"] = None  # any import of them now fails
        sys.modules["timm"] = None
        import torch
        from trainables.backbones import build_backbone, check_backbone_spec, is_image_backbone
        for spec in ("mlp", "cnn", "torchvision:resnet18", "timm:resnet18", "python:a.b:c"):
            check_backbone_spec(spec)
        assert is_image_backbone("torchvision:resnet18")
        assert build_backbone("cnn", in_channels=1, image_size=28)(torch.zeros(2, 1, 28, 28)).shape == (2, 128)
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_mlp_and_bad_geometry_are_refused():
    with pytest.raises(ValueError, match="MLPBackbone"):
        build_backbone("mlp", in_channels=1, image_size=28)
    with pytest.raises(UserError, match="in_channels must be a positive integer, got 0"):
        build_backbone("cnn", in_channels=0, image_size=28)
    with pytest.raises(UserError, match="image_size must be a positive integer, got 2.5"):
        build_backbone("cnn", in_channels=1, image_size=2.5)


# -------------------------------------------------------------------------------------------- shapes

# Feature widths from the architectures' papers/sources, not from the code under test.
CASES = [("cnn", 128, 28), ("cnn", 128, 64), ("cnn", 128, 8), ("torchvision:resnet18", 512, 28),
         ("torchvision:resnet18", 512, 64), ("torchvision:densenet121", 1024, 32), ("timm:resnet18", 512, 28),
         ("timm:resnet18", 512, 64)]


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("spec, width, size", CASES)
def test_each_kind_gives_one_feature_vector_per_image(spec, width, size, channels):
    torch.manual_seed(0)
    bb = build_backbone(spec, in_channels=channels, image_size=size)
    assert bb.out_features == width and bb.training  # the probe gave train mode back
    x = _images(3, channels, size)
    out = bb.eval()(x)
    assert out.shape == (3, width) and torch.isfinite(out).all()
    # One vector per image: an image's features do not depend on the rest of the batch (eval mode).
    assert torch.allclose(bb(x[1:2]), out[1:2], atol=1e-5)
    assert not torch.allclose(out[0], out[1])
    bb.train()(x).sum().backward()  # BatchNorm in train mode too, and gradients reach the first layer
    first = next(m for m in bb.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == channels and first.weight.grad is not None and first.weight.grad.abs().sum() > 0


def test_cnn_pools_globally_over_its_last_block():
    bb = build_backbone("cnn", in_channels=1, image_size=28).eval()
    x = _images(2, 1, 28)
    with torch.no_grad():
        assert torch.allclose(bb(x), bb.features(x).mean(dim=(2, 3)), atol=1e-6)
        assert bb.features(x).shape[-1] == 4  # 28 → 14 → 7 → 4: no pixel dropped by the pools


@pytest.mark.parametrize("name, width", [("squeezenet1_1", 512), ("mobilenet_v3_small", 1024),
                                         ("efficientnet_b0", 1280)])
def test_torchvision_features_are_what_the_classifier_received(name, width):
    """Head removal for the Sequential and conv classifier families: the backbone's output equals
    the input of the original model's ImageNet classifier layer."""
    torch.manual_seed(1)
    ref = tvm.get_model(name, weights=None).eval()
    torch.manual_seed(1)
    bb = build_backbone(f"torchvision:{name}", in_channels=3, image_size=64).eval()
    x = _images(2, 3, 64)
    last = [m for m in ref.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]  # the 1000-way layer
    feats = _input_of(last, lambda: ref(x))
    if isinstance(last, nn.Conv2d):  # squeezenet classifies each pixel of the map: its features are the map's mean
        feats = feats.view(2, last.in_channels, -1).mean(dim=2)
    with torch.no_grad():
        out = bb(x)
    assert bb.out_features == width and out.shape == (2, width)
    assert torch.allclose(out, feats, atol=1e-5)


def test_resnet18_features_and_its_grey_twin():
    """3 channels: the features are fc's input in the original model. 1 channel: the summed first
    conv makes a grey image give what the RGB model gives on that image copied to R, G and B."""
    torch.manual_seed(2)
    ref = tvm.resnet18(weights=None).eval()
    torch.manual_seed(2)
    rgb = build_backbone("torchvision:resnet18", in_channels=3, image_size=32).eval()
    torch.manual_seed(2)
    grey = build_backbone("torchvision:resnet18", in_channels=1, image_size=32).eval()
    x = _images(2, 1, 32)
    expected = _input_of(ref.fc, lambda: ref(x.repeat(1, 3, 1, 1)))
    with torch.no_grad():
        assert torch.allclose(rgb(x.repeat(1, 3, 1, 1)), expected, atol=1e-5)
        assert torch.allclose(grey(x), expected, atol=1e-4)
    # The hand computation: conv1's weight summed over R, G, B.
    w = ref.conv1.weight.detach()
    assert torch.equal(grey.conv1.weight, w[:, 0:1] + w[:, 1:2] + w[:, 2:3])


@pytest.mark.parametrize("channels", [1, 2, 4, 5, 7])
def test_first_conv_adaptation_matches_a_hand_computation(channels):
    w = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(3))
    r, g, b = w[:, 0:1], w[:, 1:2], w[:, 2:3]
    expected = {1: r + g + b,
                2: torch.cat([r, g], 1) * 1.5,
                4: torch.cat([r, g, b, r], 1) * 0.75,
                5: torch.cat([r, g, b, r, g], 1) * 0.6,
                7: torch.cat([r, g, b, r, g, b, r], 1) * (3 / 7)}[channels]
    assert torch.allclose(adapt_first_conv_weight(w, channels), expected, atol=1e-6)
    assert torch.equal(adapt_first_conv_weight(w, 3), w)
    half = adapt_first_conv_weight(w.half(), channels)
    assert half.dtype == torch.float16 and torch.allclose(half.float(), expected, atol=1e-2)


def test_image_sizes_a_model_cannot_take_are_one_line():
    with pytest.raises(UserError, match=r"torchvision:vit_b_16 fails on a \[2, 1, 32, 32\] image batch "
                                        r"\(AssertionError: Wrong image height! Expected 224 but got 32!\)"):
        build_backbone("torchvision:vit_b_16", in_channels=1, image_size=32)


# --------------------------------------------------------------------------------------- unknown names


def test_unknown_torchvision_name_lists_close_names():
    with pytest.raises(UserError, match=r"'resnet19' is not a torchvision classification model; close names: "
                                        r"resnet18, [a-z0-9_, ]*resnet101") as err:
        build_backbone("torchvision:resnet19", in_channels=1, image_size=28)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="'fasterrcnn_resnet50_fpn' is a torchvision model but not a classification"):
        build_backbone("torchvision:fasterrcnn_resnet50_fpn", in_channels=3, image_size=64)


def test_unknown_timm_name_lists_close_names():
    with pytest.raises(UserError, match=r"'resnet19' is not a timm model; close names: resnet18"):
        build_backbone("timm:resnet19", in_channels=1, image_size=28)


# -------------------------------------------------------------------------------------- user factories


def _user_module(tmp_path, monkeypatch, source: str) -> str:
    name = f"user_backbone_{uuid.uuid4().hex[:8]}"  # a fresh name: sys.modules caches imports across tests
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


USER_MODULE = """
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, in_channels=3, image_size=None):
            super().__init__()
            self.in_channels, self.image_size = in_channels, image_size
            self.conv = nn.Conv2d(in_channels, 6, 3)
            self.out_features = 6

        def forward(self, x):
            return self.conv(x).amax(dim=(2, 3))

    def both(in_channels, image_size):
        return Net(in_channels, image_size)

    def channels_only(*, in_channels):
        return Net(in_channels)

    def bare():
        return Net()

    def anything(**kwargs):
        return Net(**kwargs)

    def no_width():
        net = Net()
        del net.out_features
        return net

    def float_width():
        net = Net()
        net.out_features = 6.0
        return net

    def wrong_width():
        net = Net()
        net.out_features = 5
        return net

    def not_a_module():
        return {"conv": 1}

    def raises():
        raise RuntimeError("no GPU here")

    NOT_CALLABLE = 3
"""


@pytest.mark.parametrize("factory, channels, expect", [
    ("both", 1, (1, 40)), ("channels_only", 2, (2, None)), ("bare", 3, (3, None)), ("anything", 1, (1, 40))])
def test_python_factory_gets_the_arguments_it_accepts(tmp_path, monkeypatch, factory, channels, expect):
    mod = _user_module(tmp_path, monkeypatch, USER_MODULE)
    bb = build_backbone(f"python:{mod}:{factory}", in_channels=channels, image_size=40)
    assert (bb.in_channels, bb.image_size) == expect and bb.out_features == 6
    x = _images(2, channels, 40)
    with torch.no_grad():
        assert torch.equal(bb(x), bb.conv(x).amax(dim=(2, 3)))


@pytest.mark.parametrize("target, message", [
    ("no_such_pkg_losstune.models:make", r"module 'no_such_pkg_losstune\.models' cannot be imported "
                                         r"\(ModuleNotFoundError: No module named 'no_such_pkg_losstune'\); "
                                         r"it must be importable on every node"),
    ("{mod}:missing", r"module '{mod}' \(.*{mod}\.py\) has no attribute 'missing'"),
    ("{mod}:NOT_CALLABLE", r"'NOT_CALLABLE' in '{mod}' is a int, not callable"),
    ("{mod}:not_a_module", r"not_a_module\(\) returned a dict, not a torch\.nn\.Module"),
    ("{mod}:no_width", r"the Net it returns has no positive int attribute out_features \(got None\)"),
    ("{mod}:float_width", r"no positive int attribute out_features \(got 6\.0\)"),
    ("{mod}:wrong_width", r"a \[2, 3, 40, 40\] batch gives \(2, 6\), not \[2, out_features=5\]"),
    ("{mod}:raises", r"raises\(\) raised RuntimeError: no GPU here"),
])
def test_python_factory_mistakes_are_one_line_each(tmp_path, monkeypatch, target, message):
    mod = _user_module(tmp_path, monkeypatch, USER_MODULE)
    with pytest.raises(UserError, match=message.format(mod=mod)) as err:
        build_backbone(f"python:{target.format(mod=mod)}", in_channels=3, image_size=40)
    assert "\n" not in str(err.value)


def test_python_module_that_fails_while_importing_names_the_cause(tmp_path, monkeypatch):
    mod = _user_module(tmp_path, monkeypatch, "import losstune_missing_dependency\n")
    with pytest.raises(UserError, match=rf"module '{mod}' cannot be imported \(ModuleNotFoundError: No module named "
                                        r"'losstune_missing_dependency'\); it must be importable on every node"):
        build_backbone(f"python:{mod}:make", in_channels=3, image_size=40)


# ----------------------------------------------------------------------------------- pretrained files

_NEW_DENSE_NAME = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.")


def _chexnet_state(old_names: bool) -> tuple[dict[str, torch.Tensor], nn.Module]:
    """CheXNet's layout: DenseNet-121 inside DataParallel inside a wrapper, 14 sigmoid outputs."""
    torch.manual_seed(4)
    src = tvm.densenet121(weights=None)
    src.classifier = nn.Sequential(nn.Linear(1024, 14), nn.Sigmoid())
    state = {}
    for key, value in src.state_dict().items():
        if old_names:
            key = _NEW_DENSE_NAME.sub(r"\1.\2.", key)
        state["module.densenet121." + key] = value.clone()
    return state, src


@pytest.mark.parametrize("old_names", [False, True])
def test_chexnet_checkpoint_loads_into_a_one_channel_densenet(tmp_path, old_names):
    state, src = _chexnet_state(old_names)
    assert any(".norm.1." in k for k in state) is old_names
    torch.save({"state_dict": state, "epoch": 7}, tmp_path / "chexnet.pth.tar")
    torch.manual_seed(5)  # another random init: every loaded tensor must come from the file
    bb = build_backbone("torchvision:densenet121", in_channels=1, image_size=32)
    report = load_backbone_weights(bb, torch.load(tmp_path / "chexnet.pth.tar", weights_only=True),
                                   spec="torchvision:densenet121", source="chexnet.pth.tar")
    own = bb.state_dict()
    assert report.loaded == len(own) and report.missing == [] and report.unexpected == []
    assert report.dropped == ["module.densenet121.classifier.0.bias", "module.densenet121.classifier.0.weight"]
    ref = src.state_dict()
    for key, value in own.items():
        if key == "features.conv0.weight":
            w = ref[key]
            assert value.shape == (64, 1, 7, 7) and torch.equal(value, w[:, 0:1] + w[:, 1:2] + w[:, 2:3])
        else:
            assert torch.equal(value, ref[key]), key
    # Behaviour, end to end: the grey backbone gives the file's model's features on R = G = B.
    src.eval(), bb.eval()
    x = _images(2, 1, 32)
    expected = _input_of(src.classifier, lambda: src(x.repeat(1, 3, 1, 1)))
    with torch.no_grad():
        assert torch.allclose(bb(x), expected, atol=1e-4)


def test_checkpoint_read_through_load_pretrained_loads_the_same(tmp_path):
    """The path the trainer takes: model.load_pretrained unwraps the file, then this loader maps it."""
    state, src = _chexnet_state(old_names=True)
    torch.save({"state_dict": state}, tmp_path / "c.pt")
    bb = build_backbone("torchvision:densenet121", in_channels=3, image_size=32)
    report = load_backbone_weights(bb, load_pretrained(tmp_path / "c.pt"), spec="torchvision:densenet121",
                                   source="c.pt")
    assert (report.loaded, report.missing, len(report.dropped)) == (len(bb.state_dict()), [], 2)
    assert torch.equal(bb.features.conv0.weight, src.features.conv0.weight)


def test_another_architectures_file_is_refused():
    torch.manual_seed(6)
    resnet = tvm.resnet18(weights=None).state_dict()
    bb = build_backbone("torchvision:densenet121", in_channels=1, image_size=32)
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    n_tensors = len(before)
    with pytest.raises(UserError, match=rf"resnet18\.pt matches almost nothing of the torchvision:densenet121 "
                                        rf"backbone: 0 of its {n_tensors} tensors loaded \(checkpoint keys e\.g\. "
                                        r"conv1\.weight, .*; backbone keys e\.g\. features\..*\): is it the checkpoint "
                                        r"of another architecture\?"):
        load_backbone_weights(bb, resnet, spec="torchvision:densenet121", source="resnet18.pt")
    assert all(torch.equal(v, before[k]) for k, v in bb.state_dict().items())  # refused before touching it


def test_prefixes_dtypes_and_wrong_shapes_in_a_timm_checkpoint():
    """A timm file under 'model' with 'model.' keys, in float16, with one tensor of another shape:
    the rest loads (converted to float32), the odd one is reported, not a crash."""
    torch.manual_seed(7)
    src = timm.create_model("resnet18", pretrained=False)
    state = {f"model.{k}": v.half() if v.is_floating_point() else v for k, v in src.state_dict().items()}
    state["model.layer1.0.conv1.weight"] = state["model.layer1.0.conv1.weight"][:32]
    bb = build_backbone("timm:resnet18", in_channels=1, image_size=28)
    report = load_backbone_weights(bb, {"model": state, "epoch": 3}, spec="timm:resnet18", source="t.pt")
    n_tensors = len(bb.state_dict())
    assert report.loaded == n_tensors - 1
    assert report.missing == ["layer1.0.conv1.weight"] and report.unexpected == ["model.layer1.0.conv1.weight"]
    assert report.dropped == ["model.fc.bias", "model.fc.weight"]
    assert bb.layer1[0].bn1.weight.dtype == torch.float32
    assert torch.equal(bb.layer1[0].bn1.weight, src.layer1[0].bn1.weight.half().float())
    w = src.conv1.weight.half().float()
    assert torch.allclose(bb.conv1.weight, w.sum(dim=1, keepdim=True), atol=1e-3)


def test_old_checkpoints_without_num_batches_tracked_are_complete():
    torch.manual_seed(8)
    state = {k: v for k, v in tvm.resnet18(weights=None).state_dict().items() if "num_batches_tracked" not in k}
    bb = build_backbone("torchvision:resnet18", in_channels=3, image_size=32)
    report = load_backbone_weights(bb, state, spec="torchvision:resnet18", source="old.pt")
    assert report.loaded == len(state) - 2 and report.missing == [] and report.unexpected == []


@pytest.mark.parametrize("state, message", [
    ({"epoch": 3}, "no tensors"),
    ({"state_dict": {"conv1.weight": torch.full((64, 3, 7, 7), float("nan"))}}, "NaN or infinite weights"),
])
def test_unusable_files_are_one_line(state, message):
    bb = build_backbone("cnn", in_channels=1, image_size=28)
    with pytest.raises(UserError, match=f"bad.pt holds {message}"):
        load_backbone_weights(bb, state, spec="cnn", source="bad.pt")


# -------------------------------------------------------------------------------------- normalisation


def test_image_input_uint8_against_a_hand_computation():
    rng = np.random.default_rng(9)
    pixels = rng.integers(0, 256, size=(2, 3, 5, 4), dtype=np.uint8)
    mean, std = [0.1, 0.5, 0.9], [0.2, 0.25, 0.5]
    expected = np.empty(pixels.shape, dtype=np.float64)
    for c in range(3):
        expected[:, c] = (pixels[:, c] / 255.0 - mean[c]) / std[c]
    out = ImageInput(mean, std)(torch.from_numpy(pixels))
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)
    floats = torch.from_numpy(pixels / 255.0)  # float64 in [0, 1]: not divided again
    np.testing.assert_allclose(ImageInput(mean, std)(floats).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_image_input_carries_its_normalisation_in_the_state_dict():
    saved = ImageInput([0.3], [0.1]).state_dict()
    assert set(saved) == {"mean", "std"}
    fresh = ImageInput([0.0], [1.0])
    fresh.load_state_dict(saved)
    assert torch.allclose(fresh(torch.full((1, 1, 2, 2), 0.5)), torch.full((1, 1, 2, 2), 2.0))
    with pytest.raises(ValueError, match=r"expects \[B, 1, H, W\] images, got \(1, 3, 2, 2\)"):
        fresh(torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="uint8 or float images, got torch.int16"):
        fresh(torch.zeros(1, 1, 2, 2, dtype=torch.int16))
    with pytest.raises(ValueError, match="std must be positive"):
        ImageInput([0.5], [0.0])


def test_imagenet_stats_follow_the_first_conv_adaptation():
    assert imagenet_stats(3) == (list(IMAGENET_MEAN), list(IMAGENET_STD))
    mean, std = imagenet_stats(1)
    assert mean == pytest.approx([(0.485 + 0.456 + 0.406) / 3]) and std == pytest.approx([(0.229 + 0.224 + 0.225) / 3])
    assert imagenet_stats(4)[0] == [0.485, 0.456, 0.406, 0.485]
