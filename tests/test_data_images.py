"""Image datasets: skimage patches, local folders, upsampled digits."""

import pytest
import torch

from scorekit.data import make_dataset
from scorekit.data.images import digits, folder, patches

pytest.importorskip("skimage")


def test_patches_shape_range_and_seed():
    a = patches(50, torch.Generator().manual_seed(3), size=16)
    b = patches(50, torch.Generator().manual_seed(3), size=16)
    assert a.shape == (50, 1, 16, 16) and a.dtype == torch.float32
    assert a.min() >= -1 and a.max() <= 1 and a.std() > 0.05
    assert torch.equal(a, b)
    rgb = patches(5, torch.Generator().manual_seed(0), size=8, grayscale=False,
                  images=["astronaut", "camera"])
    assert rgb.shape == (5, 3, 8, 8)


def test_patches_rejects_unknown_image():
    with pytest.raises(ValueError, match="nope"):
        patches(2, images=["nope"])


def test_make_dataset_patches_is_image():
    data = make_dataset("patches", n_train=20, n_test=5, size=8)
    assert data.kind == "image" and data.sample_shape == (1, 8, 8) and data.dim == 64
    assert data.train.shape == (20, 1, 8, 8) and data.test.shape == (5, 1, 8, 8)


def _write_pngs(root, n, size=(20, 12)):
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for i in range(n):
        sub = root / f"class{i % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        arr = torch.randint(0, 256, (size[1], size[0], 3), generator=gen, dtype=torch.uint8)
        Image.fromarray(arr.numpy()).save(sub / f"{i}.png")


def test_folder_loads_recursively_resized(tmp_path):
    _write_pngs(tmp_path, 8)
    (tmp_path / "notes.txt").write_text("not an image")
    x = folder(str(tmp_path), size=8)
    assert x.shape == (8, 3, 8, 8) and x.min() >= -1 and x.max() <= 1
    assert folder(str(tmp_path), size=8, grayscale=True).shape == (8, 1, 8, 8)
    data = make_dataset("folder", root=str(tmp_path), size=8, n_test=2)
    assert data.train.shape == (6, 3, 8, 8) and data.test.shape == (2, 3, 8, 8)


def test_folder_constant_image_maps_to_its_value(tmp_path):
    from PIL import Image

    Image.new("L", (10, 14), color=255).save(tmp_path / "white.png")
    x = folder(str(tmp_path), size=4, grayscale=True)
    torch.testing.assert_close(x, torch.ones(1, 1, 4, 4))


def test_folder_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        folder(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match=str(tmp_path)):
        folder(str(tmp_path))
    with pytest.raises(ValueError, match="root="):
        folder()


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_digits_upsample(mode):
    base, up = digits(), digits(size=16, interpolation=mode)
    assert up.shape == (1797, 1, 16, 16) and up.min() >= -1 and up.max() <= 1
    if mode == "nearest":
        assert torch.equal(up[:, :, ::2, ::2], base)
    # 2x2 box average of a 2x upsampling returns the original image's mean exactly
    torch.testing.assert_close(up.mean(), base.mean(), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="size"):
        digits(size=12)
