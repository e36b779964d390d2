import io

import numpy as np
import pytest
import torch
from PIL import Image

from omniformer.config import ImageConfig
from omniformer.data.image import ImageError, ImagePreprocessor, load_image


def _save(im: Image.Image, path, **kwargs):
    im.save(path, **kwargs)
    return path


def _gradient(width=64, height=16, top=255):
    return np.tile(np.linspace(0, top, width), (height, 1))


MODES = {
    "1": lambda: Image.fromarray(_gradient() > 128),
    "L": lambda: Image.fromarray(_gradient().astype(np.uint8)),
    "LA": lambda: Image.fromarray(_gradient().astype(np.uint8)).convert("LA"),
    "P": lambda: Image.fromarray(np.dstack([_gradient().astype(np.uint8)] * 3)).convert("P"),
    "RGB": lambda: Image.new("RGB", (64, 16), (10, 200, 30)),
    "RGBA": lambda: Image.new("RGBA", (64, 16), (10, 200, 30, 255)),
    "CMYK": lambda: Image.new("CMYK", (64, 16), (0, 255, 255, 0)),
    "I;16": lambda: Image.fromarray(_gradient(top=65535).astype(np.uint16)),
    "I": lambda: Image.fromarray(_gradient(top=65535).astype(np.int32)),
    "F": lambda: Image.fromarray(_gradient(top=1.0).astype(np.float32)),
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_mode_decodes_to_rgb(tmp_path, mode):
    im = MODES[mode]()
    assert im.mode == mode
    suffix = {"CMYK": ".jpg", "F": ".tiff", "I": ".tiff"}.get(mode, ".png")
    path = _save(im, tmp_path / f"img{suffix}")
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (64, 16)
    assert ImagePreprocessor(32, [0.5] * 3, [0.5] * 3)(path).shape == (3, 32, 32)
    assert load_image(path.read_bytes()).size == (64, 16)


def test_cmyk_colour_survives(tmp_path):
    path = _save(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), tmp_path / "red.tiff")  # pure red in CMYK
    r, g, b = load_image(path).getpixel((4, 4))
    assert r > 200 and g < 50 and b < 50


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_high_depth_gradient_is_kept_not_clipped(tmp_path, mode):
    suffix = ".png" if mode == "I;16" else ".tiff"
    path = _save(MODES[mode](), tmp_path / f"grad{suffix}")
    row = np.asarray(load_image(path))[0, :, 0].astype(int)
    assert row[0] <= 2 and row[-1] >= 253  # the full range maps to 0..255
    assert np.all(np.diff(row) >= 0) and len(np.unique(row)) > 50  # still a smooth ramp, not all white
    assert abs(row[32] - 255 * 32 / 63) <= 2


def test_rgba_transparent_pixel_becomes_white(tmp_path):
    im = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    im.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black
    im.putpixel((1, 0), (0, 0, 0, 128))  # half-transparent black
    out = load_image(_save(im, tmp_path / "a.png"))
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert all(120 <= c <= 135 for c in out.getpixel((1, 0)))
    assert out.getpixel((3, 3)) == (255, 0, 0)


def test_palette_with_transparency(tmp_path):
    im = Image.new("P", (4, 4), 1)
    im.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 black, index 1 blue
    im.putpixel((0, 0), 0)
    im.info["transparency"] = 0
    path = _save(im, tmp_path / "p.png", transparency=0)
    assert Image.open(path).mode == "P"
    out = load_image(path)
    assert out.getpixel((0, 0)) == (255, 255, 255)  # transparent index -> white, not black
    assert out.getpixel((2, 2)) == (0, 0, 255)


def test_la_transparency(tmp_path):
    im = Image.new("LA", (4, 4), (0, 0))
    out = load_image(_save(im, tmp_path / "la.png"))
    assert out.getpixel((1, 1)) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = _save(im, tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    out = load_image(path)
    assert out.size == (20, 40)
    top, bottom = out.getpixel((10, 5)), out.getpixel((10, 35))
    assert top[2] > 200 and top[0] < 60  # the left (blue) half is now on top
    assert bottom[0] > 200 and bottom[2] < 60


def test_tiny_and_huge_images_resize():
    pre = ImagePreprocessor(16, [0.5] * 3, [0.5] * 3)
    tiny = pre(Image.new("RGB", (1, 1), (255, 0, 0)))
    assert tiny.shape == (3, 16, 16)
    assert torch.allclose(tiny[0], torch.ones(16, 16)) and torch.allclose(tiny[1], -torch.ones(16, 16))
    huge = pre(Image.new("RGB", (8000, 6000), (0, 255, 0)))
    assert huge.shape == (3, 16, 16)
    # Pillow's reducing_gap path may land one 8-bit step off a solid colour (254 for 255).
    assert torch.allclose(huge[1], torch.ones(16, 16), atol=0.01)
    assert torch.allclose(huge[0], -torch.ones(16, 16), atol=0.01)


def test_large_file_loads_when_allowed(tmp_path):
    path = _save(Image.new("L", (8000, 6000), 200), tmp_path / "big.png")
    with pytest.raises(ImageError, match="8000x6000"):
        load_image(path)  # 48 Mpx is over the default limit
    assert load_image(path, max_pixels=50_000_000).size == (8000, 6000)


def test_pixel_limit_checked_before_decoding(tmp_path):
    path = _save(Image.new("RGB", (300, 200)), tmp_path / "x.png")
    data = bytearray(path.read_bytes())
    bad = tmp_path / "bad_body.png"
    bad.write_bytes(bytes(data[:60]))  # a valid header with a truncated body
    with pytest.raises(ImageError, match=r"300x200.*max_pixels=1000") as e:
        load_image(bad, max_pixels=1000)
    assert "bad_body.png" in str(e.value)


@pytest.mark.parametrize("content", ["truncated", "random", "empty", "text"])
def test_broken_files_raise_image_error_naming_file(tmp_path, content):
    good = _save(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)),
                 tmp_path / "good.png").read_bytes()
    data = {"truncated": good[: len(good) // 2], "random": np.random.default_rng(1).bytes(1000),
            "empty": b"", "text": b"hello, not an image"}[content]
    path = tmp_path / f"broken_{content}.png"
    path.write_bytes(data)
    with pytest.raises(ImageError, match=f"broken_{content}.png"):
        load_image(path)
    with pytest.raises(ImageError, match="<bytes>"):
        load_image(data)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="nope.png"):
        load_image(tmp_path / "nope.png")


def test_normalisation_values():
    pre = ImagePreprocessor(8, [0.5] * 3, [0.5] * 3)
    grey = pre(Image.new("RGB", (20, 20), (128, 128, 128)))
    assert grey.dtype == torch.float32 and grey.abs().max() < 0.01
    pre2 = ImagePreprocessor(8, [0.2, 0.4, 0.6], [0.1, 0.2, 0.3])
    white = pre2(Image.new("RGB", (20, 20), (255, 255, 255)))
    expected = torch.tensor([(1 - 0.2) / 0.1, (1 - 0.4) / 0.2, (1 - 0.6) / 0.3])
    assert torch.allclose(white[:, 3, 3], expected, atol=1e-5)


def test_from_config_and_determinism(tmp_path):
    cfg = ImageConfig(size=32)
    pre = ImagePreprocessor.from_config(cfg)
    assert not pre.augment and not pre.flip
    im = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    a, b = pre(im), pre(im)
    assert a.shape == (3, 32, 32) and torch.equal(a, b)


def _left_marked_image():
    im = Image.new("RGB", (64, 64), (255, 255, 255))
    im.paste((0, 0, 0), (0, 0, 16, 64))  # a black bar on the left edge only
    return im


def test_flip_is_off_by_default_even_with_augmentation():
    pre = ImagePreprocessor(32, [0.5] * 3, [0.5] * 3, augment=True, color_jitter=0.2, seed=0)
    outs = [pre(_left_marked_image()) for _ in range(40)]
    for out in outs:
        assert out[:, :, :4].mean() < out[:, :, -4:].mean()  # left stays darker than right
    assert any(not torch.equal(outs[0], o) for o in outs[1:])  # augmentation did vary the crops


def test_flip_when_enabled_flips_sometimes():
    pre = ImagePreprocessor(32, [0.5] * 3, [0.5] * 3, flip=True, seed=0)
    flipped = [bool(pre(_left_marked_image())[:, :, :4].mean() > 0.5) for _ in range(40)]
    assert 5 < sum(flipped) < 35


def test_augmentation_is_reproducible_with_seed():
    im = Image.fromarray(np.random.default_rng(3).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    a = ImagePreprocessor(16, [0.5] * 3, [0.5] * 3, augment=True, color_jitter=0.3, seed=7)
    b = ImagePreprocessor(16, [0.5] * 3, [0.5] * 3, augment=True, color_jitter=0.3, seed=7)
    assert all(torch.equal(a(im), b(im)) for _ in range(5))


def test_grey_channel_option():
    pre = ImagePreprocessor(8, [0.5], [0.5], channels=1)
    assert pre(Image.new("RGB", (10, 10), (255, 255, 255))).shape == (1, 8, 8)


def test_bytes_input(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (10, 10), (0, 0, 0)).save(buf, format="PNG")
    out = ImagePreprocessor(4, [0.5] * 3, [0.5] * 3)(buf.getvalue())
    assert torch.allclose(out, -torch.ones(3, 4, 4))
