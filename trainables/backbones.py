"""Image backbones: a small CNN, torchvision and timm models, and the user's own factory.

Every image backbone is a feature extractor: float ``[B, C, H, W]`` in, ``[B, out_features]`` out,
with an int attribute ``out_features`` that the heads are sized from. torchvision and timm are
imported inside the functions that need them: most users train tables, and the CLI must start fast.
Nothing is ever downloaded: models are built with random weights, and pretrained weights come from a
file the user passes (``load_backbone_weights``).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType

import torch
from torch import Tensor, nn

from trainables.errors import UserError

__all__ = ["BACKBONE_KINDS", "IMAGENET_MEAN", "IMAGENET_STD", "ImageInput", "LoadReport", "SmallCNN",
           "adapt_first_conv_weight", "build_backbone", "check_backbone_spec", "imagenet_stats",
           "is_image_backbone", "load_backbone_weights"]

BACKBONE_KINDS = ("mlp", "cnn", "torchvision:NAME", "timm:NAME", "python:pkg.module:factory")
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_KINDS_TEXT = ", ".join(BACKBONE_KINDS)
_TORCHVISION_NAME = re.compile(r"[A-Za-z0-9_]+")
# An architecture with an optional pretrained tag (resnet18.a1_in1k); a hub name (hf-hub:org/x) has a
# ':' or '/' and fails here, on purpose: nothing is downloaded at run time.
_TIMM_NAME = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_-]+)?")
_DOTTED_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
# torchvision builds its ImageNet classifiers with 1000 outputs when no weights are given.
_IMAGENET_CLASSES = 1000
# Builders whose defaults would make the train-mode forward return a tuple (auxiliary logits), and
# whose default init warns when no weights are given.
_TORCHVISION_KWARGS: dict[str, dict[str, bool]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}
_PROBE_BATCH = 2


# --------------------------------------------------------------------------------------------- specs


def check_backbone_spec(spec: str) -> None:
    """Check a backbone spec's form (one of ``BACKBONE_KINDS``); raise ``ValueError`` otherwise.

    Only the text is checked: nothing is imported, so a config can be validated without
    torchvision or timm installed. Whether the named model exists is ``build_backbone``'s job.
    """
    if not isinstance(spec, str):
        raise ValueError(f"backbone must be a string such as 'cnn' or 'torchvision:resnet18', "
                         f"got {type(spec).__name__}")
    if spec in ("mlp", "cnn"):
        return
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in ("torchvision", "timm", "python"):
        raise ValueError(f"backbone '{spec}' is not one of {_KINDS_TEXT}")
    if not rest:
        example = {"torchvision": "torchvision:resnet18", "timm": "timm:resnet18",
                   "python": "python:mypkg.models:make_backbone"}[kind]
        raise ValueError(f"backbone '{spec}' names no model; write {kind}:NAME, e.g. {example}")
    if kind == "torchvision" and not _TORCHVISION_NAME.fullmatch(rest):
        raise ValueError(f"backbone '{spec}': '{rest}' is not a torchvision model name "
                         "(letters, digits and _ only, e.g. torchvision:resnet18)")
    if kind == "timm" and not _TIMM_NAME.fullmatch(rest):
        raise ValueError(f"backbone '{spec}': '{rest}' is not a timm model name (e.g. timm:resnet18); "
                         "hub names are refused because nothing is downloaded at run time")
    if kind == "python":
        module, sep, factory = rest.rpartition(":")
        if not sep or not _DOTTED_IDENTIFIER.fullmatch(module) or not _DOTTED_IDENTIFIER.fullmatch(factory):
            raise ValueError(f"backbone '{spec}' must read python:pkg.module:factory (an importable module path, "
                             "':', then the name of a function in it that returns an nn.Module)")


def is_image_backbone(spec: str) -> bool:
    """True for every backbone kind that takes images, i.e. all but ``mlp`` (after ``check_backbone_spec``)."""
    check_backbone_spec(spec)
    return spec != "mlp"


# -------------------------------------------------------------------------------------------- models


class SmallCNN(nn.Module):
    """Three Conv3x3 → BatchNorm → ReLU → MaxPool blocks, then global average pooling.

    Sized for 28–64 px scans on CPU; works for any image size (8×8 included) because the pools use
    ``ceil_mode``, which keeps a 1-px map at 1 px instead of pooling it away.
    """

    def __init__(self, *, in_channels: int, widths: tuple[int, ...] = (32, 64, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels
        for w in widths:
            # No conv bias: the BatchNorm right after it has its own shift.
            layers += [nn.Conv2d(width, w, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                       nn.MaxPool2d(2, ceil_mode=True)]
            width = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_features = width

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)


class ImageInput(nn.Module):
    """Images to normalised float32: ``x / 255`` for uint8, then ``(x - mean) / std`` per channel.

    ``mean`` and ``std`` are persistent buffers, so a saved model carries its own normalisation.
    """

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or not mean:
            raise ValueError(f"ImageInput needs one mean and one std per channel, got {len(mean)} and {len(std)}")
        if any(not s > 0 for s in std):
            raise ValueError(f"ImageInput's std must be positive for every channel, got {list(std)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=True)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=True)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.mean.shape[1]:
            raise ValueError(f"ImageInput expects [B, {self.mean.shape[1]}, H, W] images, got {tuple(x.shape)}")
        if x.dtype == torch.uint8:
            x = x.to(torch.float32) / 255.0
        elif x.is_floating_point():
            x = x.to(torch.float32)
        else:
            # uint16 scans and the like have no fixed range: scaling them is the data layer's choice.
            raise ValueError(f"ImageInput takes uint8 or float images, got {x.dtype}; scale them to floats first")
        return (x - self.mean) / self.std


def imagenet_stats(in_channels: int) -> tuple[list[float], list[float]]:
    """ImageNet's mean and std for ``in_channels`` channels, matching ``adapt_first_conv_weight``.

    One channel: the averages (a grey image stands for R = G = B, which the summed first conv
    sees). Other counts: the RGB values repeated, as the adapted weights repeat the RGB filters.
    """
    if in_channels == 1:
        return [sum(IMAGENET_MEAN) / 3], [sum(IMAGENET_STD) / 3]
    return ([IMAGENET_MEAN[i % 3] for i in range(in_channels)], [IMAGENET_STD[i % 3] for i in range(in_channels)])


def adapt_first_conv_weight(weight: Tensor, in_channels: int) -> Tensor:
    """An RGB first-conv weight ``[O, 3, kh, kw]`` adapted to ``in_channels`` inputs (timm's rule).

    1 channel: the sum over R, G, B, so a grey image gives what the RGB model gives on R = G = B.
    Otherwise the RGB filters repeated to cover the channels and scaled by 3 / in_channels, which
    keeps the response to an image whose channels are all equal.
    """
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise ValueError(f"expected an RGB conv weight [O, 3, kh, kw], got {tuple(weight.shape)}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if in_channels == 3:
        return weight
    w = weight.detach().to(torch.float32)  # half weights: sum in float32
    if in_channels == 1:
        out = w.sum(dim=1, keepdim=True)
    else:
        repeats = -(-in_channels // 3)
        out = w.repeat(1, repeats, 1, 1)[:, :in_channels] * (3.0 / in_channels)
    return out.to(weight.dtype)


def build_backbone(spec: str, *, in_channels: int, image_size: int) -> nn.Module:
    """An image feature extractor for ``spec``: float ``[B, C, H, W]`` → ``[B, out_features]``.

    ``cnn`` is ``SmallCNN``; ``torchvision:NAME`` and ``timm:NAME`` are built with random weights and
    their classifier removed; ``python:pkg.module:factory`` calls the user's function with the
    keyword arguments it accepts among ``in_channels`` and ``image_size``. Each is checked with a
    forward pass on a [2, in_channels, image_size, image_size] batch, so that a model that cannot
    take these images fails here, with one line, before any training.
    """
    try:
        check_backbone_spec(spec)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if spec == "mlp":
        raise ValueError("build_backbone builds image backbones; 'mlp' is DualHeadModel's MLPBackbone")
    _check_geometry(spec, in_channels=in_channels, image_size=image_size)
    kind, _, name = spec.partition(":")
    if kind == "cnn":
        model: nn.Module = SmallCNN(in_channels=in_channels)
    elif kind == "torchvision":
        model = _torchvision_backbone(spec, name, in_channels=in_channels)
    elif kind == "timm":
        model = _timm_backbone(spec, name, in_channels=in_channels)
    else:
        model = _python_backbone(spec, name, in_channels=in_channels, image_size=image_size)
    _probe(model, spec, in_channels=in_channels, image_size=image_size)
    return model


def _check_geometry(spec: str, *, in_channels: int, image_size: int) -> None:
    for what, value in (("in_channels", in_channels), ("image_size", image_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"backbone {spec}: {what} must be a positive integer, got {value!r}")


def _import_vision(module: str, spec: str) -> ModuleType:
    package = module.partition(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name == package:
            raise UserError(f"{spec} needs {package}: pip install 'losstune[vision]'") from None
        raise UserError(f"{spec}: {package} cannot be imported ({_one_line(exc)}); "
                        "reinstall it with pip install 'losstune[vision]'") from None
    except Exception as exc:  # a torchvision built for another torch fails with RuntimeError, not ImportError
        raise UserError(f"{spec}: {package} is installed but cannot be imported ({_one_line(exc)}); torch and "
                        "torchvision must be a matched pair: reinstall the torchvision built for this torch") from None


def _close_names(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name.lower(), names, n=5, cutoff=0.6)
    return f"close names: {', '.join(close)}" if close else "no close name"


def _torchvision_backbone(spec: str, name: str, *, in_channels: int) -> nn.Module:
    tv_models = _import_vision("torchvision.models", spec)
    names = tv_models.list_models(module=tv_models)
    if name.lower() not in names:
        other = "a torchvision model but not a classification model" if name.lower() in tv_models.list_models() \
            else "not a torchvision classification model"
        raise UserError(f"backbone {spec}: '{name}' is {other}; {_close_names(name, names)} "
                        "(all: torchvision.models.list_models(module=torchvision.models))")
    name = name.lower()
    model = tv_models.get_model(name, weights=None, **_TORCHVISION_KWARGS.get(name, {}))
    model.out_features = _remove_torchvision_head(model, spec)
    if in_channels != 3:
        _replace_first_conv(model, spec, in_channels=in_channels)
    return model


def _remove_torchvision_head(model: nn.Module, spec: str) -> int:
    """Replace the ImageNet classifier by Identity; the width of what it received."""
    linears = [(p, m) for p, m in model.named_modules()
               if isinstance(m, nn.Linear) and m.out_features == _IMAGENET_CLASSES]
    if linears:
        path, linear = linears[-1]
        _replace_with_identity(model, path)
        return linear.in_features
    convs = [(p, m) for p, m in model.named_modules()
             if isinstance(m, nn.Conv2d) and m.out_channels == _IMAGENET_CLASSES and "." in p]
    if convs:
        # SqueezeNet classifies with a 1x1 conv then pooling; Identity would leave a map whose size
        # depends on the image, so the whole classifier becomes a global average pool instead.
        path, conv = convs[-1]
        setattr(model, path.split(".")[0], nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1)))
        return conv.in_channels
    raise UserError(f"backbone {spec}: no {_IMAGENET_CLASSES}-way classifier layer was found to remove; this family "
                    "is not supported as a torchvision backbone: use timm:NAME or python:pkg.module:factory")


def _replace_with_identity(model: nn.Module, path: str) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    if isinstance(parent, nn.Sequential):
        # Whatever follows the classifier in its Sequential (an activation) goes with it; the
        # indices before it stay, so pretrained keys such as vgg's classifier.0 still match.
        names = list(parent._modules)
        for n in names[names.index(leaf):]:
            setattr(parent, n, nn.Identity())
    else:
        setattr(parent, leaf, nn.Identity())


def _replace_first_conv(model: nn.Module, spec: str, *, in_channels: int) -> None:
    found = next(((p, m) for p, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if found is None or found[1].in_channels != 3 or found[1].groups != 1:
        raise UserError(f"backbone {spec}: its first layer is not an RGB convolution, so it cannot be adapted to "
                        f"{in_channels} channels; convert the images to 3 channels or use timm:NAME")
    path, conv = found
    new = nn.Conv2d(in_channels, conv.out_channels, kernel_size=conv.kernel_size, stride=conv.stride,
                    padding=conv.padding, dilation=conv.dilation, bias=conv.bias is not None,
                    padding_mode=conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(adapt_first_conv_weight(conv.weight, in_channels))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    parent_path, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, leaf, new)


def _timm_backbone(spec: str, name: str, *, in_channels: int) -> nn.Module:
    timm = _import_vision("timm", spec)
    arch = name.partition(".")[0]
    if not timm.is_model(arch):
        raise UserError(f"backbone {spec}: '{arch}' is not a timm model; {_close_names(arch, timm.list_models())} "
                        "(all: timm.list_models())")
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_channels)
    except Exception as exc:  # an unknown pretrained tag, an architecture that refuses in_chans
        raise UserError(f"backbone {spec}: timm cannot build it (in_chans={in_channels}) "
                        f"({_one_line(exc)})") from None
    # With num_classes=0 a timm model returns its pooled features, whose width is head_hidden_size
    # when the head has a pre-logits layer (mobilenetv3: 1280, while num_features is 960).
    model.out_features = int(getattr(model, "head_hidden_size", None) or model.num_features)
    return model


def _python_backbone(spec: str, target: str, *, in_channels: int, image_size: int) -> nn.Module:
    module_name, _, attr = target.rpartition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise UserError(f"backbone {spec}: module '{module_name}' cannot be imported ({_one_line(exc)}); it must be "
                        "importable on every node that trains (installed in the image, or on PYTHONPATH)") from None
    factory: object = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise UserError(f"backbone {spec}: module '{module_name}' ({getattr(module, '__file__', '?')}) has no "
                            f"attribute '{attr}'; name a function in it that returns an nn.Module")
        factory = getattr(factory, part)
    if not callable(factory):
        raise UserError(f"backbone {spec}: '{attr}' in '{module_name}' is a {type(factory).__name__}, not callable; "
                        "name a function that returns an nn.Module")
    kwargs = _factory_kwargs(factory, in_channels=in_channels, image_size=image_size)
    try:
        model = factory(**kwargs)
    except Exception as exc:
        raise UserError(f"backbone {spec}: {attr}({_kwargs_text(kwargs)}) raised {_one_line(exc)}") from exc
    if not isinstance(model, nn.Module):
        raise UserError(f"backbone {spec}: {attr}({_kwargs_text(kwargs)}) returned a {type(model).__name__}, "
                        "not a torch.nn.Module")
    return model


def _factory_kwargs(factory: Callable, *, in_channels: int, image_size: int) -> dict[str, int]:
    offered = {"in_channels": in_channels, "image_size": image_size}
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin without a signature: call it bare
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return offered
    usable = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {k: v for k, v in offered.items() if k in params and params[k].kind in usable}


def _kwargs_text(kwargs: Mapping[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in kwargs.items())


def _probe(model: nn.Module, spec: str, *, in_channels: int, image_size: int) -> None:
    """One forward pass on a small random batch: the output must be [B, out_features]."""
    width = getattr(model, "out_features", None)
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise UserError(f"backbone {spec}: the {type(model).__name__} it returns has no positive int attribute "
                        f"out_features (got {width!r}); set self.out_features to the feature width in the module")
    shape = (_PROBE_BATCH, in_channels, image_size, image_size)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    # A local generator: the probe must not move the global RNG the trainer seeded.
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)
    was_training = model.training
    model.eval()  # BatchNorm in train mode refuses a 1-px map with a small batch
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:
        raise UserError(f"backbone {spec} fails on a {list(shape)} image batch ({_one_line(exc)}); check image_size "
                        "and in_channels against the sizes this model accepts") from None
    finally:
        model.train(was_training)
    got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
    if got != (_PROBE_BATCH, width):
        raise UserError(f"backbone {spec}: a {list(shape)} batch gives {got}, not [{_PROBE_BATCH}, out_features="
                        f"{width}]; the module must return one feature vector per image")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__


# ---------------------------------------------------------------------------------- pretrained weights

# Keys of the classifier a backbone no longer has (it was replaced by Identity), of auxiliary
# classifiers (inception, googlenet), and of losstune's own heads: dropped on purpose, and reported.
_HEAD_PREFIXES = ("fc.", "classifier.", "head.", "heads.", "head_dist.", "last_linear.", "AuxLogits.", "aux1.", "aux2.",
                  "main_head.", "aux_head.")
_WRAPPER_KEYS = ("state_dict", "model", "backbone")
# Old DenseNet checkpoints (CheXNet's too) name layers 'norm.1'; torchvision's own loader renames
# them with this pattern (torchvision/models/densenet.py, _load_state_dict), plus num_batches_tracked,
# which such a file carries once re-saved by a PyTorch >= 0.4.1.
_OLD_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
                               r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")
_MAX_PREFIX_PARTS = 3  # module.densenet121.features: the deepest wrapping seen in the wild


@dataclass
class LoadReport:
    """What ``load_backbone_weights`` did: tensors loaded, backbone tensors left as they were
    (``missing``), checkpoint tensors not used (``unexpected``: unknown names or other shapes), and
    classifier tensors removed on purpose (``dropped``). Names in ``unexpected`` and ``dropped`` are
    the checkpoint's; names in ``missing`` the backbone's."""

    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.loaded} tensors loaded, {len(self.missing)} missing, {len(self.unexpected)} unexpected, "
                f"{len(self.dropped)} classifier tensors dropped")


def load_backbone_weights(backbone: nn.Module, state: Mapping[str, Tensor], *, spec: str, source: str,
                          min_fraction: float = 0.5) -> LoadReport:
    """Load a torchvision, timm or CheXNet-style checkpoint into an image backbone, leniently.

    Accepts a state dict or one under ``state_dict``/``model``; strips wrapping prefixes
    (``module.``, ``model.``, ``backbone.``, ``densenet121.``…) when that makes more keys match;
    renames old DenseNet keys; drops the classifier; adapts an RGB first conv to the backbone's
    channels (``adapt_first_conv_weight``); converts dtypes to the backbone's. A tensor of another
    shape is reported, not loaded. Fewer than ``min_fraction`` of the backbone's tensors loaded is a
    ``UserError`` naming ``source``: the file is most likely another architecture's.
    """
    if not 0.0 <= min_fraction <= 1.0:
        raise ValueError(f"min_fraction must be in [0, 1], got {min_fraction}")
    tensors = _checkpoint_tensors(state, source=source)
    own = backbone.state_dict()
    prefix = _best_prefix(tensors, own)
    plan: dict[str, Tensor] = {}
    unexpected: list[str] = []
    dropped: list[str] = []
    for key, value in tensors.items():
        name = _backbone_key(key, prefix)
        fitted = _fit(value, own[name]) if name in own and name not in plan else None
        if fitted is not None:
            plan[name] = fitted
        elif name not in own and name.startswith(_HEAD_PREFIXES):
            dropped.append(key)
        else:
            unexpected.append(key)
    # BatchNorm's num_batches_tracked is absent from checkpoints older than PyTorch 0.4.1 (CheXNet's)
    # and only matters with momentum=None: in such a file its absence is neither "missing" nor counted.
    old_format = not any(k.endswith("num_batches_tracked") for k in tensors)
    ignored = {k for k in own if old_format and k.endswith("num_batches_tracked") and k not in plan}
    missing = sorted(k for k in own if k not in plan and k not in ignored)
    total = len(own) - len(ignored)
    if total and len(plan) < min_fraction * total:
        raise UserError(
            f"{source} matches almost nothing of the {spec} backbone: {len(plan)} of its {total} tensors loaded "
            f"(checkpoint keys e.g. {_examples(unexpected or dropped)}; backbone keys e.g. {_examples(missing)}): "
            "is it the checkpoint of another architecture? Pass weights saved from the same model")
    backbone.load_state_dict(plan, strict=False)
    return LoadReport(loaded=len(plan), missing=missing, unexpected=sorted(unexpected), dropped=sorted(dropped))


def _checkpoint_tensors(state: Mapping, *, source: str) -> dict[str, Tensor]:
    obj: object = state
    for _ in range(len(_WRAPPER_KEYS)):
        if not isinstance(obj, Mapping):
            break
        if any(isinstance(v, Tensor) for v in obj.values()):
            break
        obj = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), obj)
    if not isinstance(obj, Mapping):
        raise UserError(f"{source} holds a {type(obj).__name__}, not a state_dict mapping; save "
                        "model.state_dict() with torch.save")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise UserError(f"{source} holds no tensors; expected a state_dict (torch.save(model.state_dict(), path)), "
                        "or one under 'state_dict' or 'model'")
    broken = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise UserError(f"{source} holds NaN or infinite weights ({', '.join(broken[:5])}); it cannot be a starting "
                        "point: re-export it from a run that trained without diverging")
    return tensors


def _backbone_key(key: str, prefix: str) -> str:
    name = key[len(prefix):] if prefix and key.startswith(prefix) else key
    match = _OLD_DENSENET_KEY.match(name)
    return match.group(1) + match.group(2) if match else name


def _best_prefix(tensors: Mapping[str, Tensor], own: Mapping[str, Tensor]) -> str:
    """The leading key parts whose removal makes the most checkpoint keys name backbone tensors."""
    candidates = {""}
    for key in tensors:
        parts = key.split(".")
        for i in range(1, min(len(parts) - 1, _MAX_PREFIX_PARTS) + 1):
            candidates.add(".".join(parts[:i]) + ".")

    def score(prefix: str) -> int:
        return sum(_backbone_key(k, prefix) in own for k in tensors)

    # Ties go to the shorter prefix: nothing is stripped unless stripping helps.
    return max(sorted(candidates, key=lambda p: (p.count("."), p)), key=score)


def _fit(value: Tensor, target: Tensor) -> Tensor | None:
    """``value`` shaped and typed for ``target``, or None when it cannot stand for it."""
    if value.shape == target.shape:
        return value.detach().to(target.dtype)
    rgb_conv = value.ndim == 4 and target.ndim == 4 and value.shape[1] == 3 and target.shape[1] != 3
    if rgb_conv and value.shape[0] == target.shape[0] and value.shape[2:] == target.shape[2:]:
        return adapt_first_conv_weight(value.detach(), int(target.shape[1])).to(target.dtype)
    return None


def _examples(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "") if keys else "none"
