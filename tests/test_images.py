"""Image data: decoding every mode, bad files collected or skipped, layouts, tables of paths."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from graft.config import DataConfig
from graft.data import read_dataset, read_inputs
from graft.data.images import check_image, load_image
from graft.errors import ContractError, DataError


def _rgb(size=(20, 10), colour=(200, 30, 30)):
    return Image.new("RGB", size, colour)


def test_every_mode_decodes_to_8bit_rgb(tmp_path):
    files = {}
    _rgb().save(tmp_path / "rgb.jpg")
    files["rgb.jpg"] = (20, 10)
    Image.new("L", (9, 7), 128).save(tmp_path / "gray.png")
    pal = Image.new("P", (8, 8))
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.putpixel((1, 1), 1)
    pal.save(tmp_path / "palette.gif", transparency=0)
    Image.new("CMYK", (6, 6), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    Image.new("RGBA", (5, 5), (0, 0, 255, 0)).save(tmp_path / "clear.png")
    Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)).save(tmp_path / "deep16.png")
    for name in ("rgb.jpg", "gray.png", "palette.gif", "cmyk.jpg", "clear.png", "deep16.png"):
        image = load_image(tmp_path / name)
        assert image.mode == "RGB", name
        assert check_image(tmp_path / name) is None
    # transparent pixels are composited on white, 16-bit white stays white, CMYK red is red
    assert load_image(tmp_path / "clear.png").getpixel((0, 0)) == (255, 255, 255)
    assert load_image(tmp_path / "deep16.png").getpixel((0, 0)) == (255, 255, 255)
    assert load_image(tmp_path / "palette.gif").getpixel((0, 0)) == (255, 255, 255)
    assert load_image(tmp_path / "palette.gif").getpixel((1, 1)) == (255, 0, 0)
    r, g, b = load_image(tmp_path / "cmyk.jpg").getpixel((3, 3))
    assert r > 200 and g < 60 and b < 60
    assert load_image(tmp_path / "gray.png", channels=1).mode == "L"


def test_exif_orientation_is_applied(tmp_path):
    image = _rgb((30, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    assert load_image(tmp_path / "rotated.jpg").size == (10, 30)


def _bad_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    _rgb((64, 64)).save(folder / "full.jpg", quality=90)
    data = (folder / "full.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "noise.jpg").write_bytes(np.random.default_rng(0).bytes(500))
    (folder / "empty.png").write_bytes(b"")
    (folder / "full.jpg").unlink()
    return ["truncated.jpg", "noise.jpg", "empty.png"]


def test_bad_images_are_reported_all_at_once(tmp_path, image_folder):
    names = _bad_files(image_folder / "red")
    with pytest.raises(DataError) as info:
        read_dataset(image_folder)
    message = str(info.value)
    assert "3 of 39 image files cannot be decoded" in message and "--skip-bad" in message
    for name in names:
        assert name in message
    assert "truncated" in message


def test_skip_bad_leaves_them_out_and_lists_them(tmp_path, image_folder):
    _bad_files(image_folder / "green")
    ds = read_dataset(image_folder, DataConfig(skip_bad=True))
    assert len(ds) == 36
    assert len(ds.report.skipped) == 3
    assert any("noise.jpg" in s for s in ds.report.skipped)
    assert "3 skipped with --skip-bad" in ds.report.summary()


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    import graft.data.images as images

    Image.new("RGB", (300, 300)).save(tmp_path / "big.png")
    monkeypatch.setattr(images, "MAX_PIXELS", 10_000)
    assert "decompression bomb" in check_image(tmp_path / "big.png")


def test_class_folders_and_split_trees(tmp_path):
    from graft.data import layout_splits
    from tests.conftest import make_image_folder

    root = tmp_path / "tree"
    make_image_folder(root / "train", 6)
    make_image_folder(root / "val", 2, seed=1)
    make_image_folder(root / "test", 2, seed=2)
    parts = layout_splits(root)
    assert set(parts) == {"train", "val", "test"}
    ds = read_dataset(parts["train"])
    assert ds.modality == "image" and ds.label_space == ("blue", "green", "red") and len(ds) == 18
    assert layout_splits(root / "train") == {}


def test_loose_files_need_a_label_regex(tmp_path):
    folder = tmp_path / "flat"
    folder.mkdir()
    for i in range(4):
        _rgb().save(folder / f"{'cat' if i % 2 else 'dog'}_{i}.png")
    with pytest.raises(DataError, match="--label-regex"):
        read_dataset(folder)
    ds = read_dataset(folder, DataConfig(label_regex=r"^([a-z]+)_"))
    assert ds.label_space == ("cat", "dog")
    with pytest.raises(DataError, match="does not match --label-regex"):
        read_dataset(folder, DataConfig(label_regex=r"^(\d+)_"))


def test_table_of_paths_relative_to_the_file(tmp_path, image_folder):
    rows = ["file,label"]
    for path in sorted(image_folder.rglob("*.png")):
        rows.append(f"images/{path.parent.name}/{path.name},{path.parent.name}")
    (tmp_path / "index.csv").write_text("\n".join(rows) + "\n")
    ds = read_dataset(tmp_path / "index.csv")
    assert ds.modality == "image" and len(ds) == 36 and ds.text_col == "file"
    rows.append("images/red/missing.png,red")
    (tmp_path / "index.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"line 38: file not found[\s\S]*--skip-bad"):
        read_dataset(tmp_path / "index.csv")
    ds = read_dataset(tmp_path / "index.csv", DataConfig(skip_bad=True))
    assert len(ds) == 36 and ds.rows[-1] == 37
    assert len(ds.report.skipped) == 1 and ds.report.skipped[0].startswith("line 38: file not found")


def _netpbm_faces(root, suffix=".pgm", n_per_class=6, size=16):
    """Class folders of small Netpbm pictures (the ORL faces ship as .pgm)."""
    rng = np.random.default_rng(0)
    mode = {".pgm": "L", ".ppm": "RGB", ".pbm": "1"}[suffix]
    for k, name in enumerate(("s1", "s2", "s3")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            pixels = rng.integers(0, 90, (size, size)) + 80 * k
            Image.fromarray(pixels.astype("uint8"), mode="L").convert(mode).save(root / name / f"{i}{suffix}")
    return root


def test_netpbm_folders_and_tables_of_netpbm_paths(tmp_path):
    from graft.data import detect_modality

    ds = read_dataset(_netpbm_faces(tmp_path / "faces"))
    assert ds.modality == "image" and len(ds) == 18 and ds.label_space == ("s1", "s2", "s3")
    _netpbm_faces(tmp_path / "colour", ".ppm")
    rows = ["file,person"] + [f"colour/{p.parent.name}/{p.name},{p.parent.name}"
                              for p in sorted((tmp_path / "colour").rglob("*.ppm"))]  # fmt: skip
    (tmp_path / "index.csv").write_text("\n".join(rows) + "\n")
    assert detect_modality(str(tmp_path / "index.csv")) == "image"
    ds = read_dataset(tmp_path / "index.csv")
    assert ds.modality == "image" and len(ds) == 18 and ds.text_col == "file"
    assert load_image(ds.examples[0]).mode == "RGB"
    assert read_dataset(_netpbm_faces(tmp_path / "bits", ".pbm")).modality == "image"


def test_fit_on_pgm_class_folders(tmp_path):
    import graft
    from graft.config import RunConfig

    cfg = RunConfig().replace("train", epochs=1, workers=0)
    faces = _netpbm_faces(tmp_path / "faces", n_per_class=10)
    model = graft.fit(faces, backbone="arch:small_cnn", strategy="linear_probe", config=cfg, progress=False)
    assert model.modality == "image" and model.label_space == ("s1", "s2", "s3")
    assert len(model.predict(faces / "s2")) == 10


def test_image_formats_are_what_pillow_opens():
    from graft.data.formats import audio_suffixes, image_suffixes
    from graft.data.text import TABLE_SUFFIXES

    images = set(image_suffixes())
    assert {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"} <= images
    assert {".pgm", ".ppm", ".pbm", ".pnm", ".tga", ".ico", ".jp2", ".mpo"} <= images
    # stubs that need a handler, Ghostscript, video, and a suffix that usually means something else
    assert not images & {".h5", ".grib", ".bufr", ".wmf", ".emf", ".eps", ".ps", ".mpg", ".fit", ".pdf"}
    assert not images & set(audio_suffixes()) and not images & set(TABLE_SUFFIXES)


def test_importing_the_cli_loads_neither_pillow_nor_soundfile():
    import subprocess
    import sys

    code = "import sys, graft.cli, graft.data; print(sorted({'PIL', 'soundfile'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_mixed_media_folder_is_refused(tmp_path, image_folder):
    import soundfile as sf

    sf.write(image_folder / "red" / "beep.wav", np.zeros(800, dtype=np.float32), 8000)
    with pytest.raises(DataError, match="mixes input types"):
        read_dataset(image_folder)


def test_prediction_inputs_are_checked_against_the_modality(tmp_path, image_folder):
    paths = read_inputs(image_folder / "red", "image")
    assert len(paths) == 12
    with pytest.raises(ContractError, match="takes image files"):
        read_inputs(["a sentence about ants"], "image")
    with pytest.raises(ContractError, match="inputs are image files"):
        read_inputs([str(p) for p in sorted((image_folder / "red").glob("*.png"))], "text")
    with pytest.raises(ContractError, match="holds image files"):
        read_inputs(image_folder, "audio")


def test_real_hymenoptera_reads_with_its_palette_gif(tmp_path):
    from tests.conftest import shared

    ds = read_dataset(shared("images", "hymenoptera", "train"))
    assert len(ds) == 245 and ds.label_space == ("ants", "bees")
    gif = [p for p in ds.examples if p.endswith("imageNotFound.gif")]
    assert gif and load_image(gif[0]).mode == "RGB"


def test_every_pillow_filter_and_non_square_sizes(tmp_path):
    from graft.backbones.preprocess import INTERPOLATIONS, ImagePreprocess

    _rgb((40, 10)).save(tmp_path / "wide.png")
    for interpolation in INTERPOLATIONS:
        out = ImagePreprocess(size=(8, 8), interpolation=interpolation)([str(tmp_path / "wide.png")])
        assert out["pixel_values"].shape == (1, 3, 8, 8)
    # a tall target from a wide image: covered, centre-cropped, never padded (no black border)
    pre = ImagePreprocess(size=(12, 6), mean=(0, 0, 0), std=(1, 1, 1))
    pixels = pre([str(tmp_path / "wide.png")])["pixel_values"][0]
    assert pixels.shape == (3, 12, 6) and pixels[0].min() > 0.7
