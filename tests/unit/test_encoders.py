"""Image encoders: ResNet18 features, weight loading (safely, never downloading), registry."""

from __future__ import annotations

import pathlib
import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from mist_core import is_frozen
from mist_core.encoders import (
    ARCHITECTURES,
    ENCODER_PRESETS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    EncoderAvailability,
    EncoderSpec,
    ResNet18Encoder,
    WeightsNotFoundError,
    build_encoder,
    encoder_availability,
    imagenet_weights_path,
    list_encoders,
)

HUB_FILE = "resnet18-f37072fd.pth"


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Iterator[None]:
    """Tiny inputs: one intra-op thread is faster, and far faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty $TORCH_HOME: no ImageNet weights in the hub cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="module")
def reference_state() -> dict[str, torch.Tensor]:
    """A plain torchvision resnet18 state dict (fc included), from a seeded model."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        model = torchvision.models.resnet18(weights=None)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def reference_file(
    tmp_path_factory: pytest.TempPathFactory, reference_state: dict[str, torch.Tensor]
) -> Path:
    """``reference_state`` saved as a plain torchvision state-dict file."""
    path = tmp_path_factory.mktemp("weights") / "reference.pth"
    torch.save(reference_state, path)
    return path


@pytest.fixture(scope="module")
def reference_model(reference_state: dict[str, torch.Tensor]) -> nn.Module:
    """Torchvision resnet18 with ``reference_state``, fc removed, in eval mode."""
    with torch.device("meta"):
        model = torchvision.models.resnet18(weights=None)
    model.load_state_dict(reference_state, assign=True)
    model.fc = nn.Identity()
    return model.eval()


@pytest.fixture
def hub_weights(torch_home: Path, reference_state: dict[str, torch.Tensor]) -> Path:
    """``reference_state`` placed where torchvision's hub cache keeps the ImageNet weights."""
    path = torch_home / "hub" / "checkpoints" / HUB_FILE
    path.parent.mkdir(parents=True)
    torch.save(reference_state, path)
    return path


def _reference_features(
    model: nn.Module,
    images: torch.Tensor,
    size: tuple[int, int] | None = None,
    normalize: bool = True,
) -> torch.Tensor:
    if size is not None:
        images = F.interpolate(
            images, size=size, mode="bilinear", antialias=True, align_corners=False
        )
    if normalize:
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        images = (images - mean) / std
    with torch.no_grad():
        return model(images)


def _images(b: int = 2, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _assert_backbone_equals(encoder: ResNet18Encoder, state: dict[str, torch.Tensor]) -> None:
    own = encoder.backbone.state_dict()
    assert set(own) == {k for k in state if not k.startswith("fc.")}
    for key, value in own.items():
        assert torch.equal(value, state[key]), key


# --- random init ---------------------------------------------------------------------------


def test_random_encoder_output_shape() -> None:
    torch.manual_seed(0)
    encoder = ResNet18Encoder().eval()
    assert encoder.out_features == 512
    with torch.no_grad():
        out = encoder(_images(3))
    assert out.shape == (3, 512)
    assert torch.isfinite(out).all()
    assert isinstance(encoder.backbone.fc, nn.Identity)


def test_random_init_follows_torch_seed() -> None:
    torch.manual_seed(1)
    a = ResNet18Encoder()
    torch.manual_seed(1)
    b = ResNet18Encoder()
    torch.manual_seed(2)
    c = ResNet18Encoder()
    assert torch.equal(a.backbone.conv1.weight, b.backbone.conv1.weight)
    assert not torch.equal(a.backbone.conv1.weight, c.backbone.conv1.weight)
    x = _images()
    with torch.no_grad():
        assert torch.equal(a.eval()(x), b.eval()(x))


def test_state_dict_holds_only_the_backbone() -> None:
    keys = ResNet18Encoder().state_dict().keys()
    assert all(k.startswith("backbone.") for k in keys)
    assert not any(k.startswith("backbone.fc.") for k in keys)


# --- ImageNet weights from the hub cache ---------------------------------------------------


def test_imagenet_weights_path_follows_torch_home(torch_home: Path) -> None:
    assert imagenet_weights_path() == torch_home / "hub" / "checkpoints" / HUB_FILE
    with pytest.raises(ValueError, match="resnet18"):
        imagenet_weights_path("vgg11")


@pytest.mark.parametrize("weights", ["DEFAULT", "IMAGENET1K_V1", "imagenet"])
def test_missing_imagenet_weights_raise_with_path(torch_home: Path, weights: str) -> None:
    expected = torch_home / "hub" / "checkpoints" / HUB_FILE
    with pytest.raises(WeightsNotFoundError) as info:
        ResNet18Encoder(weights=weights)
    message = str(info.value)
    assert str(expected) in message
    assert "https://download.pytorch.org/models/" + HUB_FILE in message
    assert "weights='DEFAULT'" in message
    assert "state-dict file" in message
    assert isinstance(info.value, FileNotFoundError)
    assert not expected.exists(), "nothing is downloaded"


def test_list_encoders_without_imagenet_weights(torch_home: Path) -> None:
    expected = torch_home / "hub" / "checkpoints" / HUB_FILE
    report = {a.name: a for a in list_encoders()}
    assert list(report) == ["random_init", "pretrained", "finetuned", "trained"]
    assert report["random_init"] == EncoderAvailability("random_init", True, "", "")
    assert report["trained"] == EncoderAvailability("trained", True, "", "")
    for name in ("pretrained", "finetuned"):
        entry = report[name]
        assert not entry.available
        assert entry.reason == f"ImageNet weights not found at {expected}"
        assert entry.missing == "ImageNet weights not found", "the words without the path"
        assert str(expected) in entry.how_to_enable
        assert "weights='DEFAULT'" in entry.how_to_enable
    with pytest.raises(WeightsNotFoundError):
        build_encoder(ENCODER_PRESETS["pretrained"])


def test_hub_cache_file_is_used_as_imagenet(
    hub_weights: Path, reference_state: dict[str, torch.Tensor], reference_model: nn.Module
) -> None:
    encoder = ResNet18Encoder(weights="imagenet").eval()
    _assert_backbone_equals(encoder, reference_state)
    x = _images()
    with torch.no_grad():
        assert torch.allclose(encoder(x), _reference_features(reference_model, x), atol=1e-5)
    assert all(a.available and a.reason == "" for a in list_encoders())
    # The seed's call.
    from mist_core import freeze

    frozen = freeze(ResNet18Encoder(weights="DEFAULT"))
    assert is_frozen(frozen)
    _assert_backbone_equals(frozen, reference_state)


def test_loading_weights_does_not_advance_the_callers_rng(hub_weights: Path) -> None:
    torch.manual_seed(5)
    ResNet18Encoder(weights="imagenet")
    after_load = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after_load, torch.rand(3))


# --- state-dict files ----------------------------------------------------------------------


def test_file_weights_pth_and_encoder_format(
    tmp_path: Path, reference_state: dict[str, torch.Tensor], reference_file: Path
) -> None:
    plain = reference_file
    encoder = build_encoder(EncoderSpec("mine", init="file", weights_path=str(plain)))
    _assert_backbone_equals(encoder, reference_state)
    # A state dict saved from the encoder itself ("backbone." keys) round-trips, str or Path.
    own = tmp_path / "own.pt"
    torch.save(encoder.state_dict(), own)
    again = ResNet18Encoder(weights=own)
    _assert_backbone_equals(again, reference_state)
    assert ResNet18Encoder(weights=str(own)).weights_source == str(own)


def test_load_weights_from_mapping(
    reference_file: Path, reference_state: dict[str, torch.Tensor]
) -> None:
    torch.manual_seed(0)
    encoder = ResNet18Encoder()
    # DataParallel-style "module." prefixes on top of "backbone." ones are stripped too.
    saved = ResNet18Encoder(weights=reference_file).state_dict()
    encoder.load_weights({"module." + k: v.half() for k, v in saved.items()})
    assert encoder.backbone.conv1.weight.dtype == torch.float32
    assert torch.allclose(
        encoder.backbone.conv1.weight, reference_state["conv1.weight"], atol=1e-2
    )
    with pytest.raises(ValueError, match="missing keys"):
        encoder.load_weights({"conv1.weight": reference_state["conv1.weight"]})


def test_file_weights_safetensors(
    tmp_path: Path, reference_state: dict[str, torch.Tensor]
) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in reference_state.items()}, str(path))
    encoder = build_encoder(EncoderSpec("st", init="file", weights_path=str(path)))
    _assert_backbone_equals(encoder, reference_state)


def test_wrong_keys_give_value_error(
    tmp_path: Path, reference_state: dict[str, torch.Tensor]
) -> None:
    state = dict(reference_state)
    state["extra.weight"] = torch.zeros(1)
    del state["layer1.0.conv1.weight"]
    path = tmp_path / "wrong.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as info:
        ResNet18Encoder(weights=path)
    assert "layer1.0.conv1.weight" in str(info.value)
    assert "extra.weight" in str(info.value)


def test_wrong_shapes_give_value_error(
    tmp_path: Path, reference_state: dict[str, torch.Tensor]
) -> None:
    state = dict(reference_state)
    state["conv1.weight"] = torch.zeros(8, 3, 7, 7)
    path = tmp_path / "shape.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="conv1.weight"):
        ResNet18Encoder(weights=path)


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        ResNet18Encoder(weights=tmp_path / "nope.pth")
    spec = EncoderSpec("x", init="file", weights_path=str(tmp_path / "nope.pth"))
    entry = encoder_availability(spec)
    assert not entry.available
    assert str(tmp_path / "nope.pth") in entry.reason
    assert entry.missing == "weights file not found" and str(tmp_path) not in entry.missing
    assert entry.how_to_enable


class _Malicious:
    """Unpickling this would create ``marker`` (a harmless stand-in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (pathlib.Path.touch, (self.marker,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_malicious_pickle_is_refused(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pth"
    payload = {"conv1.weight": _Malicious(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    assert not marker.exists()
    with pytest.raises(ValueError, match="refusing to load"):
        ResNet18Encoder(weights=path)
    assert not marker.exists(), "the weights file ran code"
    # The same through the registry.
    with pytest.raises(ValueError, match="refusing"):
        build_encoder(EncoderSpec("evil", init="file", weights_path=str(path)))
    assert not marker.exists()


# --- preprocessing -------------------------------------------------------------------------


def test_resize_and_normalize(reference_file: Path, reference_model: nn.Module) -> None:
    x = _images(2, 218, 178)
    encoder = ResNet18Encoder(weights=reference_file, image_size=(64, 48)).eval()
    with torch.no_grad():
        out = encoder(x)
        expected = _reference_features(reference_model, x, size=(64, 48))
    assert out.shape == (2, 512)
    assert torch.allclose(out, expected, atol=1e-5)
    resized = F.interpolate(x, size=(64, 48), mode="bilinear", antialias=True, align_corners=False)
    assert encoder.preprocess(x).shape == (2, 3, 64, 48)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(encoder.preprocess(x), (resized - mean) / std)


def test_normalize_false_skips_normalisation(
    reference_file: Path, reference_model: nn.Module
) -> None:
    x = _images()
    encoder = ResNet18Encoder(weights=reference_file, normalize=False).eval()
    assert torch.equal(encoder.preprocess(x), x)
    with torch.no_grad():
        expected = _reference_features(reference_model, x, normalize=False)
        assert torch.allclose(encoder(x), expected, atol=1e-5)
    assert not torch.allclose(ResNet18Encoder(weights=reference_file).preprocess(x), x)


def test_bad_inputs(reference_file: Path) -> None:
    encoder = ResNet18Encoder(weights=reference_file)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        encoder(torch.rand(3, 64, 64))
    with pytest.raises(TypeError, match="float"):
        encoder(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="image_size"):
        ResNet18Encoder(image_size=(64,))  # type: ignore[arg-type]


# --- registry ------------------------------------------------------------------------------


def test_presets() -> None:
    assert ARCHITECTURES == {"resnet18": ResNet18Encoder}
    assert set(ENCODER_PRESETS) == {"random_init", "pretrained", "finetuned", "trained"}
    assert ENCODER_PRESETS["random_init"].init == "random"
    assert not ENCODER_PRESETS["random_init"].trainable
    assert ENCODER_PRESETS["pretrained"].init == "imagenet"
    assert not ENCODER_PRESETS["pretrained"].trainable
    assert ENCODER_PRESETS["finetuned"].init == "imagenet"
    assert ENCODER_PRESETS["finetuned"].trainable
    assert ENCODER_PRESETS["trained"].init == "random"
    assert ENCODER_PRESETS["trained"].trainable


def test_build_encoder_freezes_unless_trainable(hub_weights: Path) -> None:
    frozen = build_encoder(ENCODER_PRESETS["pretrained"])
    assert is_frozen(frozen)
    assert not any(p.requires_grad for p in frozen.parameters())
    frozen.train()
    assert not frozen.training
    random_init = build_encoder(ENCODER_PRESETS["random_init"])
    assert is_frozen(random_init)
    trainable = build_encoder(ENCODER_PRESETS["finetuned"])
    assert not is_frozen(trainable)
    assert all(p.requires_grad for p in trainable.parameters())
    out = trainable(_images())
    out.sum().backward()
    assert trainable.backbone.conv1.weight.grad is not None


def test_build_encoder_image_size_override(reference_file: Path) -> None:
    spec = EncoderSpec("small", init="file", weights_path=str(reference_file))
    assert build_encoder(spec).image_size is None
    spec = EncoderSpec("small", init="file", weights_path=str(reference_file), image_size=(32, 32))
    assert build_encoder(spec).image_size == (32, 32)
    assert build_encoder(spec, image_size=(48, 40)).image_size == (48, 40)


def test_encoder_spec_validation() -> None:
    with pytest.raises(ValueError, match="resnet18"):
        EncoderSpec("x", architecture="vit")
    with pytest.raises(ValueError, match="random.*imagenet.*file"):
        EncoderSpec("x", init="pretrained")
    with pytest.raises(ValueError, match="weights_path"):
        EncoderSpec("x", init="file")
    with pytest.raises(ValueError, match="weights_path"):
        EncoderSpec("x", init="imagenet", weights_path="/tmp/w.pth")
    with pytest.raises(ValueError, match="image_size"):
        EncoderSpec("x", image_size=(0, 10))
    with pytest.raises(ValueError, match="name"):
        EncoderSpec("")
    assert EncoderSpec("x", image_size=[32, 24]).image_size == (32, 24)  # type: ignore[arg-type]
