"""Tests for the real-CelebA loader (mist_core.data.celeba), through torchvision's own reader.

Each test writes a tiny CelebA folder in the official on-disk format into ``tmp_path``: six
178 x 218 JPEGs of distinct flat colours (one of them grayscale) and the five annotation
files. Its annotation files cannot have the official MD5s, so, as torchvision's own test
suite does, tests that load it replace ``torchvision.datasets.celeba.check_integrity``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torchvision.datasets.celeba as tv_celeba
from PIL import Image
from torch.utils.data import DataLoader

from mist_core.data.celeba import (
    GENERATED_MARKER,
    LANDMARKS,
    CelebALandmarks,
    CelebAMissingError,
    expected_files,
    is_generated,
)

HEIGHT, WIDTH = 218, 178
ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
    "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses "
    "Goatee Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache "
    "Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks "
    "Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick "
    "Wearing_Necklace Wearing_Necktie Young"
).split()
NAMES = [f"{i:06d}.jpg" for i in range(1, 7)]
PARTITION = [0, 1, 0, 2, 1, 2]  # interleaved, so a positional mix-up would show
SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}
COLOURS = [
    (200, 30, 40),
    (30, 180, 60),
    (40, 60, 210),
    (220, 200, 40),
    (128, 128, 128),
    (20, 200, 200),
]
GRAYSCALE = {4}  # 000005.jpg is written as a mode "L" JPEG
ANNOTATIONS = (
    "list_attr_celeba.txt",
    "identity_CelebA.txt",
    "list_bbox_celeba.txt",
    "list_landmarks_align_celeba.txt",
    "list_eval_partition.txt",
)


def _landmarks(i: int) -> list[int]:
    """The 10 ints written for image i: lefteye_x lefteye_y righteye_x ... rightmouth_y."""
    return [69 + i, 109 + i, 106 - i, 113, 77, 142 + i, 73, 152 - i, 108 + i, 154]


def write_fake_celeba(root: Path) -> Path:
    """Write a 6-image CelebA into ``root/celeba`` in the official format; return ``root``."""
    base = root / "celeba"
    (base / "img_align_celeba").mkdir(parents=True)
    for i, (name, colour) in enumerate(zip(NAMES, COLOURS, strict=True)):
        image = Image.new("RGB", (WIDTH, HEIGHT), colour)
        if i in GRAYSCALE:
            image = image.convert("L")
        image.save(base / "img_align_celeba" / name, quality=95)
    n = len(NAMES)
    # Count line, header line (with the trailing space of the official file), aligned columns.
    attr_rows = [
        name + " " + " ".join(f"{1 if (i + j) % 3 == 0 else -1:2d}" for j in range(40))
        for i, name in enumerate(NAMES)
    ]
    (base / "list_attr_celeba.txt").write_text(
        "\n".join([str(n), " ".join(ATTRIBUTES) + " ", *attr_rows]) + "\n"
    )
    (base / "identity_CelebA.txt").write_text(
        "".join(f"{name} {1000 + i % 2}\n" for i, name in enumerate(NAMES))
    )
    bbox_rows = [f"{name} {95 + i:5d} {71:3d} {226:3d} {313:3d}" for i, name in enumerate(NAMES)]
    (base / "list_bbox_celeba.txt").write_text(
        "\n".join([str(n), "image_id x_1 y_1 width height", *bbox_rows]) + "\n"
    )
    landmark_rows = [
        name + " " + "".join(f"{v:5d}" for v in _landmarks(i)) for i, name in enumerate(NAMES)
    ]
    header = (
        "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y "
        "rightmouth_x rightmouth_y"
    )
    (base / "list_landmarks_align_celeba.txt").write_text(
        "\n".join([str(n), header, *landmark_rows]) + "\n"
    )
    (base / "list_eval_partition.txt").write_text(
        "".join(f"{name} {code}\n" for name, code in zip(NAMES, PARTITION, strict=True))
    )
    return root


def _indices(split: str) -> list[int]:
    """Rows of the fake files that belong to ``split``, in file order."""
    if split == "all":
        return list(range(len(NAMES)))
    return [i for i, code in enumerate(PARTITION) if code == SPLIT_CODES[split]]


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    return write_fake_celeba(tmp_path)


@pytest.fixture
def integrity_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make torchvision's MD5 test pass; record the paths it was asked about."""
    calls: list[str] = []

    def check_integrity(fpath: str, md5: str | None = None) -> bool:
        calls.append(str(fpath))
        return Path(fpath).is_file()

    monkeypatch.setattr(tv_celeba, "check_integrity", check_integrity)
    return calls


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "valid", "test", "all"])
def test_loads_split_through_torchvision(
    fake_root: Path, integrity_calls: list[str], split: str
) -> None:
    dataset = CelebALandmarks(fake_root, split=split)
    # torchvision's real integrity code ran on our files
    assert sorted(Path(p).name for p in integrity_calls) == sorted(ANNOTATIONS)
    rows = _indices(split)
    assert len(dataset) == len(rows)
    assert dataset.filenames == [NAMES[i] for i in rows]
    for k, i in enumerate(rows):
        item = dataset[k]
        assert set(item) == {"image", *LANDMARKS}
        image = item["image"]
        assert image.shape == (3, HEIGHT, WIDTH)
        assert image.dtype == torch.float32
        assert 0.0 <= image.min() and image.max() <= 1.0
        expected_colour = torch.tensor(COLOURS[i], dtype=torch.float32) / 255
        centre = image[:, HEIGHT // 2, WIDTH // 2]
        assert torch.allclose(centre, expected_colour, atol=4 / 255), (NAMES[i], centre * 255)
        assert torch.allclose(image.mean(dim=(1, 2)), expected_colour, atol=4 / 255)
        values = _landmarks(i)
        for j, name in enumerate(LANDMARKS):
            assert item[name].shape == (2,)
            assert item[name].dtype == torch.float32
            assert item[name].tolist() == [values[2 * j], values[2 * j + 1]]


def test_landmarks_property_matches_file(fake_root: Path, integrity_calls: list[str]) -> None:
    dataset = CelebALandmarks(fake_root, split="valid")
    table = dataset.landmarks
    assert table.shape == (2, 5, 2)
    assert table.dtype == torch.float32
    expected = torch.tensor([_landmarks(i) for i in _indices("valid")], dtype=torch.float32)
    assert torch.equal(table, expected.reshape(2, 5, 2))
    assert torch.equal(table[1, LANDMARKS.index("nose")], dataset[1]["nose"])
    table.zero_()  # a copy: the dataset is unaffected
    assert dataset.landmarks.abs().sum() > 0


def test_grayscale_jpeg_becomes_rgb(fake_root: Path, integrity_calls: list[str]) -> None:
    dataset = CelebALandmarks(fake_root, split="valid")
    k = dataset.filenames.index(NAMES[4])
    with Image.open(dataset.image_folder / NAMES[4]) as image:
        assert image.mode == "L"
    rgb = dataset[k]["image"]
    assert rgb.shape == (3, HEIGHT, WIDTH)
    assert torch.equal(rgb[0], rgb[1]) and torch.equal(rgb[1], rgb[2])


def test_accepts_the_celeba_folder_itself(fake_root: Path, integrity_calls: list[str]) -> None:
    dataset = CelebALandmarks(fake_root / "celeba", split="test")
    assert dataset.root == fake_root.absolute()
    assert len(dataset) == 2
    assert expected_files(fake_root / "celeba") == expected_files(fake_root)
    assert dataset[0]["image"].shape == (3, HEIGHT, WIDTH)


def test_dataloader_batches(fake_root: Path, integrity_calls: list[str]) -> None:
    loader = DataLoader(CelebALandmarks(fake_root, split="all"), batch_size=2, shuffle=False)
    batches = list(loader)
    assert len(batches) == 3
    for batch in batches:
        assert batch["image"].shape == (2, 3, HEIGHT, WIDTH)
        for name in LANDMARKS:
            assert batch[name].shape == (2, 2)
            assert batch[name].dtype == torch.float32
    assert batches[2]["right_mouth"].tolist() == [[112.0, 154.0], [113.0, 154.0]]


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_expected_files_lists_all_six(tmp_path: Path) -> None:
    base = tmp_path.absolute() / "celeba"
    assert expected_files(tmp_path) == [
        base / "img_align_celeba",
        *(base / a for a in ANNOTATIONS),
    ]


def test_missing_folder_names_every_expected_path(tmp_path: Path) -> None:
    with pytest.raises(CelebAMissingError) as info:
        CelebALandmarks(tmp_path / "nowhere")
    assert isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    expected = expected_files(tmp_path / "nowhere")
    assert list(info.value.missing) == expected
    for path in expected:
        assert str(path) in message
    assert "img_align_celeba/" in message
    assert "mmlab.ie.cuhk.edu.hk" in message and "download=True" in message


@pytest.mark.parametrize("missing", ["img_align_celeba", *ANNOTATIONS])
def test_one_missing_entry_is_named(
    fake_root: Path, integrity_calls: list[str], missing: str
) -> None:
    path = fake_root / "celeba" / missing
    if path.is_dir():
        for jpeg in path.iterdir():
            jpeg.unlink()
        path.rmdir()
    else:
        path.unlink()
    with pytest.raises(CelebAMissingError) as info:
        CelebALandmarks(fake_root)
    assert list(info.value.missing) == [path.absolute()]
    assert f"MISSING {path.absolute()}" in str(info.value)
    assert not integrity_calls  # raised before torchvision ran


def test_files_directly_in_a_wrongly_named_folder_get_a_hint(tmp_path: Path) -> None:
    write_fake_celeba(tmp_path)
    (tmp_path / "celeba").rename(tmp_path / "CelebA")
    with pytest.raises(CelebAMissingError, match="named exactly 'celeba'"):
        CelebALandmarks(tmp_path / "CelebA")


def test_missing_jpeg_raises_on_getitem(fake_root: Path, integrity_calls: list[str]) -> None:
    jpeg = fake_root / "celeba" / "img_align_celeba" / NAMES[2]
    jpeg.unlink()
    dataset = CelebALandmarks(fake_root, split="train")  # lazily checked: construction works
    assert dataset[0]["image"].shape == (3, HEIGHT, WIDTH)
    with pytest.raises(FileNotFoundError, match=NAMES[2]) as info:
        dataset[1]
    assert info.value.filename == str(jpeg.absolute())


def test_wrong_checksums_without_patch(fake_root: Path) -> None:
    with pytest.raises(CelebAMissingError, match="checksums") as info:
        CelebALandmarks(fake_root)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert "Dataset not found or corrupted" in str(info.value.__cause__)
    assert info.value.missing == ()
    for name in ANNOTATIONS:  # none of the fake files has the official MD5
        assert str(fake_root.absolute() / "celeba" / name) in str(info.value)


def test_generated_marker_skips_only_the_md5_test(
    fake_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A folder marked as generated loads without patching; the global check_integrity is
    untouched, a missing annotation file is still reported, and without the marker the MD5
    test applies again."""
    marker = fake_root / "celeba" / GENERATED_MARKER
    marker.write_text("drawn faces\n")
    original = tv_celeba.check_integrity
    with caplog.at_level(logging.INFO, logger="mist_core.data.celeba"):
        dataset = CelebALandmarks(fake_root, split="all")
    assert tv_celeba.check_integrity is original
    assert dataset.generated and is_generated(fake_root)
    assert "generated folder" in caplog.text
    assert len(dataset) == len(NAMES)
    assert dataset.landmarks[2].reshape(-1).tolist() == _landmarks(2)
    (fake_root / "celeba" / "list_bbox_celeba.txt").unlink()
    with pytest.raises(CelebAMissingError, match="MISSING"):
        CelebALandmarks(fake_root, split="all")
    write_fake_celeba(fake_root / "other")
    with pytest.raises(CelebAMissingError, match="checksums"):
        CelebALandmarks(fake_root / "other", split="all")
    assert not is_generated(fake_root / "other")


@pytest.mark.parametrize("split", ["training", "val", "TRAIN", ""])
def test_bad_split(fake_root: Path, integrity_calls: list[str], split: str) -> None:
    with pytest.raises(ValueError, match="'train', 'valid', 'test', 'all'"):
        CelebALandmarks(fake_root, split=split)
