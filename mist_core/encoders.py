"""Image encoders: ResNet18 feature extractors and a small registry of named presets.

The seed notebook compares three ResNet18 encoders: a randomly initialised one (frozen), an
ImageNet-pretrained one (frozen) and a pretrained one that is fine-tuned by the MI objective.
:data:`ENCODER_PRESETS` holds those three, plus "trained" (random start, trained by the MI
objective: the offline stand-in for "finetuned"). :func:`build_encoder` turns a spec into a
module and :func:`list_encoders` says, without loading any network, which ones can be built.

Nothing here downloads anything. ImageNet weights are read from the file where torchvision's
hub cache keeps them (:func:`imagenet_weights_path`, which honours ``$TORCH_HOME``); when that
file is missing, :class:`WeightsNotFoundError` says where to put it. Weight files are always
read with ``torch.load(..., weights_only=True)`` (or as ``.safetensors``), so a weight file
can never run code.
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor, nn
from torchvision.models import ResNet18_Weights, resnet18

from mist_core.data.images import resize_images
from mist_core.freeze import freeze
from mist_core.precision import PRECISIONS

__all__ = [
    "ARCHITECTURES",
    "ENCODER_PRESETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INITS",
    "EncoderAvailability",
    "EncoderSpec",
    "ResNet18Encoder",
    "WeightsNotFoundError",
    "build_encoder",
    "encoder_availability",
    "imagenet_weights_path",
    "list_encoders",
    "load_state_dict_file",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Values of ``weights`` that mean "the official ImageNet weights".
_IMAGENET_ALIASES = frozenset({"default", "imagenet1k_v1", "imagenet"})

#: The official ImageNet weights of each architecture, as torchvision names them.
_IMAGENET_WEIGHTS = {"resnet18": ResNet18_Weights.IMAGENET1K_V1}

#: Prefixes stripped from state-dict keys when every key carries them: ``backbone.`` (a state
#: dict saved from :class:`ResNet18Encoder`) and ``module.`` (one saved from DataParallel).
_STRIPPABLE_PREFIXES = ("module.", "backbone.")


def _weights_enum(architecture: str) -> ResNet18_Weights:
    try:
        return _IMAGENET_WEIGHTS[architecture]
    except KeyError:
        valid = ", ".join(sorted(_IMAGENET_WEIGHTS))
        raise ValueError(
            f"no ImageNet weights known for architecture {architecture!r}; valid: {valid}"
        ) from None


def _weights_url(architecture: str) -> str:
    return str(_weights_enum(architecture).url)


def imagenet_weights_path(architecture: str = "resnet18") -> Path:
    """Where torchvision's hub cache keeps the official ImageNet weights of ``architecture``.

    ``<torch.hub.get_dir()>/checkpoints/<file name of the torchvision weights URL>``, e.g.
    ``~/.cache/torch/hub/checkpoints/resnet18-f37072fd.pth``; ``$TORCH_HOME`` moves it. The
    file may not exist: this only says where it would be.
    """
    file_name = Path(urlparse(_weights_url(architecture)).path).name
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name


def _how_to_get_imagenet_weights(architecture: str = "resnet18", path: Path | None = None) -> str:
    path = imagenet_weights_path(architecture) if path is None else path
    url = _weights_url(architecture)
    return (
        f"Place the file {path.name} at {path} (this machine has no internet, so it is never "
        f"downloaded here). It comes from {url}: on a machine with internet run "
        f"`python -c \"import torchvision; torchvision.models.{architecture}(weights='DEFAULT')\"`"
        f" and copy {path.name} from that machine's ~/.cache/torch/hub/checkpoints/ to "
        f"{path.parent}/ here (or set $TORCH_HOME so that <TORCH_HOME>/hub/checkpoints/ holds "
        "it). Alternatively pass the path to a state-dict file as the weights "
        '(ResNet18Encoder(weights="/path/to/file.pth"), or EncoderSpec(init="file", '
        'weights_path="/path/to/file.pth")).'
    )


class WeightsNotFoundError(FileNotFoundError):
    """The official ImageNet weights are not in torchvision's hub cache; says how to add them.

    Attributes ``path`` (where the file belongs) and ``architecture``; the message gives the
    full path, the URL the file comes from and how to get it onto an offline machine.
    """

    def __init__(self, architecture: str = "resnet18", path: str | Path | None = None) -> None:
        self.architecture = architecture
        self.path = Path(path) if path is not None else imagenet_weights_path(architecture)
        message = (
            f"ImageNet weights for {architecture} not found at {self.path}. "
            + _how_to_get_imagenet_weights(architecture, self.path)
        )
        super().__init__(message)
        self.filename = str(self.path)

    def __str__(self) -> str:
        # OSError would format "[Errno None] ..."; keep the plain message.
        return str(self.args[0])

    def __reduce__(self) -> tuple[type[WeightsNotFoundError], tuple[str, str]]:
        return (type(self), (self.architecture, str(self.path)))


def _load_error_detail(exc: BaseException) -> str:
    """The useful part of a torch.load error (torch's text also suggests unsafe loading)."""
    text = str(exc)
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n\n|$)", text, re.DOTALL)
    detail = match.group(1) if match else (text.strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {' '.join(detail.split())[:200]}"


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from ``path`` without ever executing code from the file.

    ``.safetensors`` files are read with :mod:`safetensors`; anything else with
    ``torch.load(path, map_location="cpu", weights_only=True)``. A checkpoint that wraps the
    state dict as ``{"state_dict": ...}`` or ``{"model": ...}`` is unwrapped.

    Raises:
        FileNotFoundError: ``path`` is not an existing file.
        ValueError: the file is not a plain state dict of tensors (e.g. a pickle that would
            build arbitrary objects, which ``weights_only=True`` refuses).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:  # pragma: no cover - safetensors is installed here
            raise ImportError(
                f"reading {path} needs the 'safetensors' package (pip install safetensors)"
            ) from exc
        try:
            loaded: object = load_file(str(path), device="cpu")
        except Exception as exc:
            raise ValueError(f"{path} is not a readable safetensors file: {exc}") from exc
    else:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError) as exc:
            raise ValueError(
                f"refusing to load {path}: it is not a plain state dict of tensors that "
                f"torch.load(weights_only=True) can read safely ({_load_error_detail(exc)}). "
                "Save weights with torch.save(model.state_dict(), path) or as .safetensors."
            ) from exc
    if isinstance(loaded, Mapping) and not all(isinstance(v, Tensor) for v in loaded.values()):
        for wrapper in ("state_dict", "model"):
            inner = loaded.get(wrapper)
            if isinstance(inner, Mapping):
                loaded = inner
                break
    if not isinstance(loaded, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in loaded.items()
    ):
        raise ValueError(
            f"{path} does not hold a state dict (a mapping of parameter names to tensors); "
            f"got {type(loaded).__name__}"
        )
    return dict(loaded)


def _normalise_keys(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Plain torchvision ResNet keys: strip shared prefixes, drop the classifier (``fc.*``)."""
    state = dict(state_dict)
    changed = True
    while changed and state:
        changed = False
        for prefix in _STRIPPABLE_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def _few(keys: Iterable[str], n: int = 5) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def _resnet18_backbone() -> nn.Module:
    """A torchvision ResNet18 whose classifier is removed: ``[B, 3, H, W] -> [B, 512]``."""
    backbone = resnet18(weights=None)
    backbone.fc = nn.Identity()
    return backbone


def _match_backbone_state(
    backbone: nn.Module, raw: Mapping[str, Tensor], where: str
) -> dict[str, Tensor]:
    """``raw`` with plain keys, checked against ``backbone`` (keys, shapes), in its dtypes.

    Raises:
        ValueError: keys or shapes do not match; lists a few missing/unexpected keys.
    """
    state = _normalise_keys(raw)
    own = backbone.state_dict()
    missing, unexpected = set(own) - set(state), set(state) - set(own)
    if missing or unexpected:
        raise ValueError(
            f"{where} does not match a ResNet18 backbone: "
            f"missing keys: {_few(missing) or 'none'}; "
            f"unexpected keys: {_few(unexpected) or 'none'}. Expected plain torchvision "
            "resnet18 keys (e.g. 'conv1.weight'; 'fc.*' is ignored) or keys saved from "
            "ResNet18Encoder (e.g. 'backbone.conv1.weight')."
        )
    wrong = sorted(k for k, v in state.items() if v.shape != own[k].shape)
    if wrong:
        details = ", ".join(
            f"{k}: {tuple(state[k].shape)} != {tuple(own[k].shape)}" for k in wrong[:5]
        )
        raise ValueError(f"{where} has tensors of the wrong shape for ResNet18: {details}")
    # Half-precision files etc. are cast to the module's dtypes.
    return {k: v.to(dtype=own[k].dtype) for k, v in state.items()}


def _check_image_size(image_size: Sequence[int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    size = tuple(image_size)
    if len(size) != 2 or not all(
        isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size
    ):
        raise ValueError(f"image_size must be (height, width) positive ints, got {image_size!r}")
    return (int(size[0]), int(size[1]))


class ResNet18Encoder(nn.Module):
    """ResNet18 without its classifier: images ``[B, 3, H, W]`` in [0, 1] -> ``[B, 512]``.

    Args:
        weights: ``None`` for a random initialisation (drawn from the caller's torch RNG);
            ``"DEFAULT"``, ``"IMAGENET1K_V1"`` or ``"imagenet"`` for the official ImageNet
            weights, read from :func:`imagenet_weights_path` (:class:`WeightsNotFoundError`
            if absent, never downloaded); or the path of a state-dict file (``.pth``/``.pt``
            read with ``weights_only=True``, or ``.safetensors``). Plain torchvision ResNet18
            keys (``conv1.weight``...; ``fc.*`` is ignored) and keys saved from this encoder
            (``backbone.conv1.weight``...) are both accepted.
        image_size: ``(H, W)`` to resize inputs to (bilinear, antialiased) before the
            network; ``None`` keeps the input size.
        normalize: apply ImageNet mean/std normalisation after resizing.
        precision: ``"float32"``, or ``"bfloat16"`` to run training steps (training mode
            with gradients on) under ``torch.autocast`` with channels-last inputs
            (:mod:`mist_core.precision`). Evaluation, frozen features and posterior maps
            always run in float32: bfloat16 convolutions are not bit-reproducible (oneDNN's
            results vary with buffer alignment), and a checkpoint must give the same table
            every time it is evaluated. The features are float32 either way. ``"auto"`` is
            resolved by the caller, who knows the device:
            ``resolve_precision("auto", device)``. Settable later.

    The network is ``self.backbone`` (a torchvision ResNet whose ``fc`` is ``nn.Identity``).
    """

    out_features: int = 512

    def __init__(
        self,
        weights: str | Path | None = None,
        image_size: tuple[int, int] | None = None,
        normalize: bool = True,
        precision: str = "float32",
    ) -> None:
        super().__init__()
        self.image_size = _check_image_size(image_size)
        self.normalize = bool(normalize)
        self.precision = precision
        self.out_features = 512
        self.weights_source: str | None = None
        path = self._resolve_weights(weights)
        if path is None:
            self.backbone = _resnet18_backbone()
        else:
            # Skip the random initialisation that the weights would overwrite: build on the
            # meta device (no memory, no RNG draws), then take the loaded tensors as they are.
            with torch.device("meta"):
                self.backbone = _resnet18_backbone()
            state = _match_backbone_state(self.backbone, load_state_dict_file(path), str(path))
            self.backbone.load_state_dict(state, strict=True, assign=True)
            self.weights_source = str(path)
        # Non-persistent: the state dict holds only the network, with "backbone." keys.
        self.register_buffer(
            "mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def precision(self) -> str:
        """``"float32"`` or ``"bfloat16"``: how :meth:`forward` runs the network."""
        return self._precision

    @precision.setter
    def precision(self, value: str) -> None:
        if value not in PRECISIONS or value == "auto":
            raise ValueError(
                f"precision must be 'float32' or 'bfloat16' (resolve 'auto' with "
                f"mist_core.precision.resolve_precision first), got {value!r}"
            )
        self._precision = value

    @staticmethod
    def _resolve_weights(weights: str | Path | None) -> Path | None:
        if weights is None:
            return None
        if isinstance(weights, str) and weights.lower() in _IMAGENET_ALIASES:
            path = imagenet_weights_path("resnet18")
            if not path.is_file():
                raise WeightsNotFoundError("resnet18")
            return path
        if not isinstance(weights, str | Path):
            raise TypeError(
                "weights must be None, 'DEFAULT'/'IMAGENET1K_V1'/'imagenet' or a path, "
                f"got {type(weights).__name__}"
            )
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"weights file not found: {path} (weights must be None, "
                "'DEFAULT'/'IMAGENET1K_V1'/'imagenet', or the path of a state-dict file)"
            )
        return path

    def load_weights(self, source: str | Path | Mapping[str, Tensor]) -> None:
        """Load backbone weights from a state-dict file or mapping (see the class docstring).

        Raises:
            ValueError: the keys or shapes do not match a ResNet18 backbone; the message lists
                some missing and unexpected keys.
        """
        where = "state dict" if isinstance(source, Mapping) else str(source)
        raw = source if isinstance(source, Mapping) else load_state_dict_file(source)
        self.backbone.load_state_dict(_match_backbone_state(self.backbone, raw, where))
        if not isinstance(source, Mapping):
            self.weights_source = str(source)

    def preprocess(self, images: Tensor) -> Tensor:
        """Resize (if ``image_size``) then normalise (if ``normalize``): ``[B, 3, H, W]``."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape [B, 3, H, W], got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise TypeError(f"expected float images in [0, 1], got dtype {images.dtype}")
        if self.image_size is not None:
            images = resize_images(images, self.image_size)
        if self.normalize:
            images = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        return images

    def forward(self, images: Tensor) -> Tensor:
        """Images ``[B, 3, H, W]`` float in [0, 1] -> pooled features ``[B, 512]`` float32."""
        images = self.preprocess(images)
        if self._precision == "float32" or not (self.training and torch.is_grad_enabled()):
            return self.backbone(images)
        # BatchNorm's running statistics move in this pass: keep them in case it fails
        statistics = [b.clone() for b in self.backbone.buffers()]
        with torch.autocast(device_type=images.device.type, dtype=torch.bfloat16):
            features = self.backbone(images.contiguous(memory_format=torch.channels_last))
        features = features.float()
        if bool(features.isfinite().all()):
            return features
        # oneDNN's bfloat16 convolutions can return NaN on tiny feature maps (seen on AMX
        # for 40 x 32 inputs, whose last maps are 2 x 1) while float32 is finite: redo the
        # step in float32 and stay there.
        warnings.warn(
            "bfloat16 gave non-finite features for this batch; the encoder continues in "
            "float32 (set precision='float32' to start there)",
            RuntimeWarning,
            stacklevel=4,  # past nn.Module's call machinery, to the caller
        )
        with torch.no_grad():
            for buffer, saved in zip(self.backbone.buffers(), statistics, strict=True):
                buffer.copy_(saved)
        self._precision = "float32"
        return self.backbone(images)

    def extra_repr(self) -> str:
        return (
            f"image_size={self.image_size}, normalize={self.normalize}, "
            f"precision={self._precision}, "
            f"weights={self.weights_source or 'random'}"
        )


#: Architectures by name; each is built as ``cls(weights=..., image_size=..., precision=...)``
#: where ``weights`` is None (random), "imagenet" or a file path, and has ``out_features``.
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"resnet18": ResNet18Encoder}

#: How an encoder's weights are initialised.
INITS: tuple[str, ...] = ("random", "imagenet", "file")


@dataclass(frozen=True)
class EncoderSpec:
    """A named encoder: architecture, initialisation, and whether it is trained.

    ``init`` is ``"random"`` (drawn from the torch RNG), ``"imagenet"`` (official weights from
    torchvision's hub cache) or ``"file"`` (a state-dict file at ``weights_path``).
    ``image_size`` ``(H, W)`` resizes inputs before the network.
    """

    name: str
    architecture: str = "resnet18"
    init: str = "random"  # "random" | "imagenet" | "file"
    weights_path: str | None = None
    trainable: bool = False
    image_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"EncoderSpec.name must be a non-empty string, got {self.name!r}")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"unknown architecture {self.architecture!r} for encoder {self.name!r}; "
                f"valid: {', '.join(sorted(ARCHITECTURES))}"
            )
        if self.init not in INITS:
            raise ValueError(
                f"unknown init {self.init!r} for encoder {self.name!r}; valid: {', '.join(INITS)}"
            )
        if self.init == "file":
            if not self.weights_path:
                raise ValueError(f"encoder {self.name!r}: init='file' needs weights_path")
            object.__setattr__(self, "weights_path", str(self.weights_path))
        elif self.weights_path is not None:
            raise ValueError(
                f"encoder {self.name!r}: weights_path is only used with init='file' "
                f"(init is {self.init!r})"
            )
        object.__setattr__(self, "image_size", _check_image_size(self.image_size))


#: The seed notebook's three encoders.
ENCODER_PRESETS: dict[str, EncoderSpec] = {
    "random_init": EncoderSpec("random_init", init="random", trainable=False),
    "pretrained": EncoderSpec("pretrained", init="imagenet", trainable=False),
    "finetuned": EncoderSpec("finetuned", init="imagenet", trainable=True),
    # Trained by the MI objective from a random start: the offline stand-in for
    # "finetuned" where no ImageNet weights are available (the demo-cpu preset).
    "trained": EncoderSpec("trained", init="random", trainable=True),
}


def _weights_argument(spec: EncoderSpec) -> str | None:
    if spec.init == "random":
        return None
    if spec.init == "imagenet":
        return "imagenet"
    return spec.weights_path


def build_encoder(
    spec: EncoderSpec,
    image_size: tuple[int, int] | None = None,
    precision: str = "float32",
) -> nn.Module:
    """Build the encoder ``spec`` describes; frozen (:func:`mist_core.freeze`) unless trainable.

    ``image_size`` overrides ``spec.image_size`` when given. The module maps images
    ``[B, 3, H, W]`` in [0, 1] to features ``[B, out_features]``. ``precision`` is
    ``"float32"`` or ``"bfloat16"`` (see :class:`ResNet18Encoder`).

    Raises:
        WeightsNotFoundError: ``init="imagenet"`` and the weights file is missing.
        FileNotFoundError / ValueError: ``init="file"`` and the file is missing or unusable.
    """
    size = _check_image_size(image_size) if image_size is not None else spec.image_size
    encoder = ARCHITECTURES[spec.architecture](
        weights=_weights_argument(spec), image_size=size, precision=precision
    )
    if spec.trainable:
        encoder.requires_grad_(True)
        return encoder
    return freeze(encoder)


@dataclass(frozen=True)
class EncoderAvailability:
    """Whether an encoder can be built here; if not, why and the fix.

    ``missing`` names what is missing in a few words (e.g. ``"ImageNet weights not found"``,
    one line for every encoder missing the same thing), ``reason`` adds where it was looked
    for and ``how_to_enable`` says what to do; all three are ``""`` when available.
    """

    name: str
    available: bool
    reason: str
    how_to_enable: str
    missing: str = ""


def encoder_availability(spec: EncoderSpec) -> EncoderAvailability:
    """Whether ``spec`` can be built here. Checks files only; never loads a network."""
    if spec.init == "random":
        return EncoderAvailability(spec.name, True, "", "")
    if spec.init == "imagenet":
        path = imagenet_weights_path(spec.architecture)
        if path.is_file():
            return EncoderAvailability(spec.name, True, "", "")
        missing = "ImageNet weights not found"
        return EncoderAvailability(
            spec.name,
            False,
            f"{missing} at {path}",
            _how_to_get_imagenet_weights(spec.architecture, path),
            missing,
        )
    path = Path(str(spec.weights_path)).expanduser()
    if path.is_file():
        return EncoderAvailability(spec.name, True, "", "")
    missing = "weights file not found"
    return EncoderAvailability(
        spec.name,
        False,
        f"{missing} at {path}",
        f"Place a {spec.architecture} state-dict file (.pth/.pt saved with "
        f"torch.save(model.state_dict(), path), or .safetensors) at {path}, or point "
        "weights_path at an existing one.",
        missing,
    )


def list_encoders(specs: Iterable[EncoderSpec] | None = None) -> list[EncoderAvailability]:
    """Availability of each spec (default: :data:`ENCODER_PRESETS`), in order."""
    chosen = ENCODER_PRESETS.values() if specs is None else specs
    return [encoder_availability(spec) for spec in chosen]
