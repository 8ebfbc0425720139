"""trainables/images.py: every input is written here at run time (PNG, JPEG, DICOM, npz), nothing is
downloaded, and every expected value is computed independently of the module (by hand, with
Pillow, pydicom or scikit-learn)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from trainables.errors import UserError
from trainables.images import (
    SYNTHETIC_IMAGE_TASKS,
    ImageSet,
    digits_task,
    is_image_source,
    load_image_table,
    load_medmnist,
    resize_images,
    synthetic_images,
)


def _raises(match: str):
    """A UserError whose one line contains ``match`` (a regex)."""
    return pytest.raises(UserError, match=match)


def _one_line(info: pytest.ExceptionInfo) -> str:
    text = str(info.value)
    assert "\n" not in text
    return text


# --------------------------------------------------------------------------- resize_images
def test_resize_matches_pillow_bilinear_when_shrinking():
    # Pillow's BILINEAR filter widens with the scale when shrinking (antialiasing); torch's
    # antialias=True was written to match it: an independent implementation of the same filter.
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(6, 6)).astype(np.float64)
    smooth = np.kron(base, np.ones((7, 7)))[:40, :40] + rng.normal(0, 10, (40, 40))
    img = np.clip(smooth, 0, 255).astype(np.uint8)
    for size in (20, 13, 7):
        ours = resize_images(img[None, None], size)
        assert ours.shape == (1, 1, size, size) and ours.dtype == np.uint8
        ref = np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR)).astype(int)
        diff = np.abs(ours[0, 0].astype(int) - ref)
        assert diff.max() <= 2 and diff.mean() < 0.6, (size, diff.max(), diff.mean())


def test_resize_keeps_constants_channels_and_same_size():
    images = np.full((3, 3, 17, 11), 77, dtype=np.uint8)
    out = resize_images(images, 9)
    assert out.shape == (3, 3, 9, 9) and (out == 77).all()
    same = np.random.default_rng(1).integers(0, 256, (2, 1, 8, 8)).astype(np.uint8)
    assert np.array_equal(resize_images(same, 8), same)
    with pytest.raises(ValueError):
        resize_images(same.astype(np.float32), 4)  # a programming error, not the user's


# --------------------------------------------------------------------------- MedMNIST
def _medmnist(tmp_path: Path, name: str = "m.npz", *, rgb: bool = False, k: int = 1, **override) -> Path:
    rng = np.random.default_rng(3)
    arrays = {}
    for split, n in (("train", 5), ("val", 3), ("test", 4)):
        shape = (n, 12, 12, 3) if rgb else (n, 12, 12)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape).astype(np.uint8)
        labels = np.zeros((n, k), dtype=np.uint8)
        labels[::2] = 1  # both classes in every split
        arrays[f"{split}_labels"] = labels
    arrays.update(override)
    arrays = {key: v for key, v in arrays.items() if v is not None}
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_medmnist_keeps_its_splits_and_pixels(tmp_path):
    path = _medmnist(tmp_path)
    with np.load(path) as z:
        images = np.concatenate([z[f"{s}_images"] for s in ("train", "val", "test")])
        labels = np.concatenate([z[f"{s}_labels"] for s in ("train", "val", "test")])
    got = load_medmnist(path)
    assert isinstance(got, ImageSet)
    assert got.images.shape == (12, 1, 12, 12) and got.images.dtype == np.uint8 and got.images.flags.c_contiguous
    assert np.array_equal(got.images[:, 0], images)
    assert got.labels.dtype == np.float32 and np.array_equal(got.labels, labels.astype(np.float32))
    assert {s: r.tolist() for s, r in got.splits.items()} == {
        "train": [0, 1, 2, 3, 4], "val": [5, 6, 7], "test": [8, 9, 10, 11]}
    assert got.label_names == ["label_0"] and got.groups is None
    assert got.digest == hashlib.sha256(path.read_bytes()).digest() and got.source == str(path)


def test_medmnist_colour_and_label_names(tmp_path):
    path = _medmnist(tmp_path, rgb=True, k=2, label_names=np.array(["effusion", "mass"]))
    with np.load(path) as z:
        first = z["train_images"][0]
    got = load_medmnist(path)
    assert got.images.shape == (12, 3, 12, 12) and got.images.flags.c_contiguous
    assert np.array_equal(got.images[0], first.transpose(2, 0, 1))
    assert got.label_names == ["effusion", "mass"] and got.labels.shape == (12, 2)


def test_medmnist_image_size_resizes_every_split(tmp_path):
    path = _medmnist(tmp_path)
    full = load_medmnist(path)
    got = load_medmnist(path, image_size=6)
    assert got.images.shape == (12, 1, 6, 6)
    assert np.array_equal(got.images, resize_images(full.images, 6))
    with _raises("--image-size"):
        load_medmnist(path, image_size=0)


@pytest.mark.parametrize("override, match", [
    ({"val_labels": None}, r"lacks the MedMNIST key\(s\) val_labels; expected .*found .*train_images"),
    ({"train_labels": np.zeros((4, 1), np.uint8)}, r"'train_labels' .* shape \(4, 1\) but 'train_images' holds 5"),
    ({"val_images": np.zeros((3, 12, 12), np.float32)}, r"'val_images' .* float32 .* expected uint8"),
    ({"val_images": np.zeros((3, 12, 12, 2), np.uint8)}, r"C = 1 or 3"),
    ({"test_images": np.zeros((0, 12, 12), np.uint8), "test_labels": np.zeros((0, 1), np.uint8)},
     r"split 'test' .* has no images"),
    ({"train_labels": np.array([[0], [1], [2], [3], [1]], np.uint8)},
     r"values 0, 1, 2, 3 \(a multi-class task\); losstune needs binary labels per column"),
    ({"val_images": np.zeros((3, 10, 10), np.uint8)}, r"differ between splits.*--image-size"),
    ({"label_names": np.array(["a", "b"])}, r"'label_names' .* 2 name\(s\) for 1 label"),
])
def test_medmnist_bad_archives_are_one_line(tmp_path, override, match):
    path = _medmnist(tmp_path, **override)
    with _raises(match) as info:
        load_medmnist(path)
    _one_line(info)


def test_medmnist_file_that_is_not_an_archive(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("not a zip archive")
    with _raises(r"'.*notes.npz' is not an .npz archive"):
        load_medmnist(text)
    single = tmp_path / "single.npz"
    with single.open("wb") as f:
        np.save(f, np.zeros(3))
    with _raises("holds a single array"):
        load_medmnist(single)
    with _raises("does not exist"):
        load_medmnist(tmp_path / "absent.npz")


# --------------------------------------------------------------------------- tables of image paths
def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _greys(n: int, h: int = 10, w: int = 12, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w)).astype(np.uint8) for _ in range(n)]


def _load(frame: pd.DataFrame, root: Path, **kw) -> ImageSet:
    kw.setdefault("label_cols", ["sick"] if "sick" in frame.columns else None)
    return load_image_table(frame, table="t.csv", image_col="path", image_root=root, **kw)


def test_table_of_grey_pngs_labels_and_groups(tmp_path):
    greys = _greys(4)
    for i, g in enumerate(greys):
        _png(tmp_path / "img" / f"{i}.png", g)
    frame = pd.DataFrame({"path": [f"img/{i}.png" for i in range(4)], "sick": ["yes", "no", "no", "YES"],
                          "Patient ID": [7, 7, 9, 11]})
    got = _load(frame, tmp_path, group_col="Patient ID")
    assert got.images.shape == (4, 1, 10, 12) and got.images.flags.c_contiguous
    assert all(np.array_equal(got.images[i, 0], greys[i]) for i in range(4))
    assert got.labels.tolist() == [[1.0], [0.0], [0.0], [1.0]] and got.label_names == ["sick"]
    assert got.groups.tolist() == ["7", "7", "9", "11"] and got.splits is None and got.source == "t.csv"
    # the digest follows the images' bytes: same files, same digest; one pixel changed, another
    assert _load(frame, tmp_path, group_col="Patient ID").digest == got.digest
    changed = greys[2].copy()
    changed[0, 0] ^= 1
    _png(tmp_path / "img" / "2.png", changed)
    assert _load(frame, tmp_path, group_col="Patient ID").digest != got.digest


def test_table_mixed_grey_and_colour(tmp_path):
    grey = _greys(1)[0]
    colour = np.random.default_rng(5).integers(0, 256, (10, 12, 3)).astype(np.uint8)
    _png(tmp_path / "g.png", grey)
    _png(tmp_path / "c.png", colour)
    frame = pd.DataFrame({"path": ["g.png", "c.png", "g.png"], "sick": [1, 0, 1]})
    both = _load(frame, tmp_path)  # channels None: one colour image makes the set RGB
    assert both.images.shape == (3, 3, 10, 12)
    assert all(np.array_equal(both.images[i, c], grey) for i in (0, 2) for c in range(3))
    assert np.array_equal(both.images[1], colour.transpose(2, 0, 1))
    luma = _load(frame, tmp_path, channels=1)
    # ITU-R 601-2 luma, as Pillow documents for convert("L"): L = R*299/1000 + G*587/1000 + B*114/1000
    expected = colour.astype(float) @ np.array([0.299, 0.587, 0.114])
    assert luma.images.shape == (3, 1, 10, 12)
    assert np.abs(luma.images[1, 0].astype(float) - expected).max() <= 1.0
    assert np.array_equal(luma.images[0, 0], grey)


def test_table_findings_chestxray_style(tmp_path):
    _png(tmp_path / "a.png", _greys(1)[0])
    frame = pd.DataFrame({"path": ["a.png"] * 4,
                          "Finding Labels": ["Mass|Effusion", "No Finding", "Effusion", "Nodule|Mass"]})
    got = _load(frame, tmp_path, labels_from="Finding Labels")
    assert got.label_names == ["Effusion", "Mass", "Nodule"]
    assert got.labels.tolist() == [[1, 1, 0], [0, 0, 0], [1, 0, 0], [0, 1, 1]]
    with _raises("one way"):
        _load(frame.assign(sick=[0, 1, 0, 1]), tmp_path, labels_from="Finding Labels")
    with _raises("one way"):
        _load(frame, tmp_path, label_cols=None)
    with _raises(r"empty in 1 row\(s\) \(rows 1,.*write 'No Finding'"):
        _load(frame.assign(**{"Finding Labels": ["Mass", "", "Mass", "No Finding"]}), tmp_path,
              labels_from="Finding Labels")


def test_table_mixed_sizes_need_image_size(tmp_path):
    small, large = _greys(1, 10, 12)[0], _greys(1, 16, 20, seed=1)[0]
    _png(tmp_path / "s.png", small)
    _png(tmp_path / "l.png", large)
    frame = pd.DataFrame({"path": ["s.png", "s.png", "l.png"], "sick": [0, 1, 1]})
    with _raises(r"'s.png' \(row 0\) is 12x10 and 'l.png' \(row 2\) is 20x16 .*--image-size") as info:
        _load(frame, tmp_path)
    _one_line(info)
    got = _load(frame, tmp_path, image_size=8)
    assert got.images.shape == (3, 1, 8, 8)
    assert np.array_equal(got.images[0], resize_images(small[None, None], 8)[0])
    assert np.array_equal(got.images[2], resize_images(large[None, None], 8)[0])


def test_table_jpeg_decodes_close_to_what_was_written(tmp_path):
    yy, xx = np.mgrid[0:32, 0:32]
    smooth = np.stack([yy * 7, xx * 7, (yy + xx) * 3], axis=-1).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "x.jpg", quality=95)
    got = _load(pd.DataFrame({"path": ["x.jpg", "x.jpg"], "sick": [0, 1]}), tmp_path)
    assert got.images.shape == (2, 3, 32, 32)
    assert np.abs(got.images[0].transpose(1, 2, 0).astype(int) - smooth).mean() < 3  # JPEG is lossy


def test_table_16_bit_png_maps_its_own_range(tmp_path):
    # Pillow's convert("L") would clip 16-bit values at 255; the image's range maps onto 0..255 instead
    values = np.array([[1000, 2000], [2500, 4000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    got = _load(pd.DataFrame({"path": ["deep.png", "deep.png"], "sick": [0, 1]}), tmp_path)
    assert got.images[0, 0].tolist() == [[0, 85], [128, 255]]  # (v - 1000) / 3000 * 255, rounded


# --------------------------------------------------------------------------- DICOM
def _dicom(path: Path, stored: np.ndarray, *, slope: float = 1.0, intercept: float = 0.0, center=None, width=None,
           photometric: str = "MONOCHROME2") -> Path:
    """A minimal uncompressed single-frame DICOM file, as pydicom's 'write a new file' example builds one."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if center is not None:
        ds.WindowCenter, ds.WindowWidth = center, width
    ds.PixelData = stored.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


STORED = np.array([[0, 400, 480, 500], [512, 530, 560, 600], [700, 1000, 2000, 4095]], dtype=np.uint16)


def _by_hand(stored: np.ndarray, slope: float, intercept: float, c: float, w: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1, value by value: HU = slope * stored + intercept, then the linear window."""
    out = np.empty(stored.shape, dtype=int)
    for idx, s in np.ndenumerate(stored):
        x = slope * float(s) + intercept
        if x <= c - 0.5 - (w - 1) / 2:
            out[idx] = 0
        elif x > c - 0.5 + (w - 1) / 2:
            out[idx] = 255
        else:
            out[idx] = round(((x - (c - 0.5)) / (w - 1) + 0.5) * 255)
    return out


def test_dicom_rescale_then_window(tmp_path):
    _dicom(tmp_path / "ct.dcm", STORED, slope=2.0, intercept=-1024.0, center=40, width=400)
    got = _load(pd.DataFrame({"path": ["ct.dcm", "ct.dcm"], "sick": [0, 1]}), tmp_path)
    assert got.images.shape == (2, 1, 3, 4)
    expected = _by_hand(STORED, 2.0, -1024.0, 40, 400)
    assert got.images[0, 0].tolist() == expected.tolist()
    assert 0 < expected[1, 1] < 255 and expected[0, 0] == 0 and expected[2, 3] == 255  # all three regimes
    # pydicom's own rescale and windowing (another implementation), brought onto 0..255 by its extremes
    import pydicom
    from pydicom.pixels import apply_rescale, apply_windowing

    ds = pydicom.dcmread(tmp_path / "ct.dcm")
    ref = apply_windowing(apply_rescale(ds.pixel_array, ds), ds)
    ref = (ref - ref.min()) / (ref.max() - ref.min()) * 255
    assert np.abs(got.images[0, 0] - ref).max() <= 1.0


def test_dicom_first_of_several_windows_and_monochrome1(tmp_path):
    _dicom(tmp_path / "a.dcm", STORED, slope=1.0, intercept=-500.0, center=[40, 300], width=[400, 1500],
           photometric="MONOCHROME1")
    got = _load(pd.DataFrame({"path": ["a.dcm", "a.dcm"], "sick": [0, 1]}), tmp_path)
    # MONOCHROME1: the lowest value is white, so the windowed image is inverted
    assert got.images[0, 0].tolist() == (255 - _by_hand(STORED, 1.0, -500.0, 40, 400)).tolist()


def test_dicom_without_window_maps_its_range(tmp_path):
    _dicom(tmp_path / "r.dcm", STORED, slope=3.0, intercept=100.0)
    got = _load(pd.DataFrame({"path": ["r.dcm", "r.dcm"], "sick": [0, 1]}), tmp_path, channels=3)
    x = 3.0 * STORED.astype(float) + 100.0
    expected = np.rint((x - x.min()) / (x.max() - x.min()) * 255)
    assert got.images.shape == (2, 3, 3, 4)
    assert all(got.images[0, c].tolist() == expected.tolist() for c in range(3))


# --------------------------------------------------------------------------- bad tables
def _good_table(tmp_path: Path, n: int = 6) -> pd.DataFrame:
    for i, g in enumerate(_greys(n)):
        _png(tmp_path / "img" / f"{i}.png", g)
    return pd.DataFrame({"path": [f"img/{i}.png" for i in range(n)], "sick": [i % 2 for i in range(n)],
                         "pid": [f"p{i // 2}" for i in range(n)]})


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


def test_columns_that_do_not_exist(tmp_path):
    frame = _good_table(tmp_path)
    with _raises(r"--image-col 'file' is not a column of 't.csv'; columns are: path, sick, pid"):
        load_image_table(frame, table="t.csv", image_col="file", image_root=tmp_path, label_cols=["sick"])
    with _raises(r"--group-col 'Patient ID' is not a column .*columns are: path, sick, pid"):
        _load(frame, tmp_path, group_col="Patient ID")
    with _raises(r"label column 'copd' is not in 't.csv'"):
        _load(frame, tmp_path, label_cols=["copd"])
    with _raises(r"--group-col 'pid' .* empty in 1 row\(s\) \(rows 3,"):
        _load(frame.assign(pid=["a", "a", "b", None, "c", "c"]), tmp_path, group_col="pid")


def test_paths_that_leave_the_image_root(tmp_path):
    root = tmp_path / "root"
    frame = _good_table(root)
    outside = _png(tmp_path / "secret.png", _greys(1)[0])  # exists: refused for where it is, not for being absent
    for written in ("../secret.png", str(outside), "img/../../secret.png"):
        bad = frame.assign(path=["img/0.png", written, *frame.path[2:]])
        with _raises(r"row 1 of 't.csv' .* leads outside --image-root") as info:
            _load(bad, root)
        _one_line(info)
    inside = frame.assign(path=[str(root / "img" / "0.png"), *frame.path[1:]])  # absolute but inside: fine
    assert _load(inside, root).images.shape == (6, 1, 10, 12)


def test_missing_file_unsupported_format_and_empty_path(tmp_path):
    frame = _good_table(tmp_path)
    with _raises(r"image file '.*img/nope.png' named in row 2 of 't.csv' .* does not exist"):
        _load(frame.assign(path=[*frame.path[:2], "img/nope.png", *frame.path[3:]]), tmp_path)
    (tmp_path / "img" / "x.bmp").write_bytes(b"BM")
    with _raises(r"image 'img/x.bmp' in row 4 .* unsupported format '.bmp'; supported: .png, .jpg, .jpeg, .dcm"):
        _load(frame.assign(path=[*frame.path[:4], "img/x.bmp", *frame.path[5:]]), tmp_path)
    with _raises(r"column 'path' is empty in row 1"):
        _load(frame.assign(path=[frame.path[0], None, *frame.path[2:]]), tmp_path)


def test_truncated_and_broken_images_name_file_and_row(tmp_path):
    frame = _good_table(tmp_path)
    _truncate(tmp_path / "img" / "3.png")
    with _raises(r"cannot decode image 'img/3.png' \(row 3 of 't.csv'\)") as info:
        _load(frame, tmp_path)
    _one_line(info)
    (tmp_path / "img" / "3.png").write_text("just text")
    with _raises(r"cannot decode image 'img/3.png' \(row 3"):
        _load(frame, tmp_path)
    (tmp_path / "img" / "bad.dcm").write_bytes(b"not a dicom file at all")
    with _raises(r"cannot read image 'img/bad.dcm' \(row 0 of 't.csv'\) as DICOM"):
        _load(frame.assign(path=["img/bad.dcm", *frame.path[1:]]), tmp_path)


def test_first_error_is_the_lowest_row_and_paths_are_checked_before_decoding(tmp_path):
    frame = _good_table(tmp_path, n=60)  # more rows than the decoding threads hold in flight
    for i in (57, 11, 40):
        _truncate(tmp_path / "img" / f"{i}.png")
    for _ in range(3):  # whichever thread finishes first, row 11 is named
        with _raises(r"\(row 11 of"):
            _load(frame, tmp_path)
    # row 0 is broken, row 50 is missing: the missing file is found before anything is decoded
    _truncate(tmp_path / "img" / "0.png")
    with _raises(r"'.*img/gone.png' named in row 50"):
        _load(frame.assign(path=[*frame.path[:50], "img/gone.png", *frame.path[51:]]), tmp_path)


@pytest.mark.parametrize("side", [12, 30])  # limit 130: 144 pixels, Pillow only warns; 900 (> 2 × 130), it raises
def test_decompression_bomb_is_refused(tmp_path, monkeypatch, side):
    frame = _good_table(tmp_path)
    _png(tmp_path / "img" / "big.png", np.zeros((side, side), np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 130)  # the good images have 120
    with _raises(r"image 'img/big.png' \(row 5 of 't.csv'\) .*decompression bomb") as info:
        _load(frame.assign(path=[*frame.path[:5], "img/big.png"]), tmp_path)
    _one_line(info)


# --------------------------------------------------------------------------- synthetic images
def _auroc_of_pixels(s: ImageSet, label: int = 0) -> float:
    """Logistic regression on the raw pixels, held-out AUROC: a reference learner, not the project's."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split

    x = s.images.reshape(len(s.images), -1).astype(np.float64) / 255
    y = s.labels[:, label]
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.5, stratify=y, random_state=0)
    model = LogisticRegression(C=0.01, max_iter=2000).fit(x_tr, y_tr)
    return float(roc_auc_score(y_te, model.predict_proba(x_te)[:, 1]))


def test_synthetic_rare_is_learnable_at_the_asked_prevalence():
    s = synthetic_images("synthetic-images:rare?n=3000")
    assert s.images.shape == (3000, 1, 32, 32) and s.images.dtype == np.uint8 and s.images.flags.c_contiguous
    assert s.labels.shape == (3000, 1) and s.label_names == ["finding"]
    assert abs(s.labels.mean() - 0.02) <= 1 / 3000  # exactly round(n × prevalence) positives
    auroc = _auroc_of_pixels(s)
    assert auroc > 0.7, auroc


def test_synthetic_screening_labels_are_independent_shapes():
    s = synthetic_images("synthetic-images:screening?n=4000&labels=4&prevalence=0.2")
    assert s.label_names == ["disc", "square", "cross", "bar"] and s.labels.shape == (4000, 4)
    assert np.abs(s.labels.mean(axis=0) - 0.2).max() <= 1 / 4000
    joint = (s.labels[:, :, None] * s.labels[:, None, :]).mean(axis=0)[np.triu_indices(4, 1)]
    assert np.abs(joint - 0.04).max() < 0.015  # independent: P(a and b) = 0.2 × 0.2, sd of the estimate 0.003
    aurocs = [_auroc_of_pixels(s, j) for j in range(4)]
    assert min(aurocs) > 0.6, aurocs


def test_synthetic_difficulty_lowers_the_signal():
    def gap(d: float) -> float:
        s = synthetic_images(f"synthetic-images:rare?n=2000&prevalence=0.2&difficulty={d}")
        brightness = s.images.reshape(len(s.images), -1).mean(axis=1)
        pos = s.labels[:, 0] == 1
        return float(brightness[pos].mean() - brightness[~pos].mean())

    easy, hard = gap(0), gap(1)
    assert easy > 3 * hard > 0, (easy, hard)


def test_synthetic_is_deterministic_and_canonical():
    a = synthetic_images("synthetic-images:rare?seed=4&n=500")
    b = synthetic_images("synthetic-images:rare?n=500&seed=4")
    c = synthetic_images("synthetic-images:rare?n=500&seed=5")
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)
    assert a.source == "synthetic-images:rare?n=500&size=32&prevalence=0.02&seed=4&difficulty=0.5&channels=1"
    assert a.digest == b.digest == hashlib.sha256(a.source.encode()).digest() != c.digest
    rgb = synthetic_images("synthetic-images:screening?n=200&labels=2&channels=3&size=24")
    assert rgb.images.shape == (200, 3, 24, 24) and rgb.label_names == ["disc", "square"]
    assert set(SYNTHETIC_IMAGE_TASKS) == {"rare", "screening"}


@pytest.mark.parametrize("spec, match", [
    ("synthetic-images:common", r"unknown synthetic image task 'common'; known: synthetic-images:rare, "
                                r"synthetic-images:screening"),
    ("synthetic-images:rare?labels=3", r"unknown option 'labels'; options are n, size, prevalence, seed, "
                                       r"difficulty, channels"),
    ("synthetic-images:screening?colour=1", r"options are n, size, prevalence, labels, seed, difficulty, channels"),
    ("synthetic-images:rare?n=many", r"option 'n' must be a number, got 'many'"),
    ("synthetic-images:rare?n=1e400", r"option 'n' must be a finite number"),
    ("synthetic-images:rare?size=31.5", r"option 'size' must be a whole number"),
    ("synthetic-images:rare?prevalence=0.7", r"need n >= 100, 16 <= size <= 256, 0 < prevalence < 0.5"),
    ("synthetic-images:screening?labels=7", r"1 <= labels <= 6"),
    ("synthetic-images:rare?channels=2", r"channels 1 or 3"),
])
def test_synthetic_bad_specs(spec, match):
    with _raises(match) as info:
        synthetic_images(spec)
    _one_line(info)


# --------------------------------------------------------------------------- digits
def test_digits_task_is_one_digit_against_the_rest():
    from sklearn.datasets import load_digits

    ref = load_digits()
    got = digits_task("digits:3")
    assert got.images.shape == (1797, 1, 8, 8) and got.images.dtype == np.uint8
    assert np.array_equal(got.labels[:, 0], (ref.target == 3).astype(np.float32))
    assert 0.09 < got.labels.mean() < 0.11  # about 1:9
    assert np.array_equal(got.images[:, 0].astype(int), np.rint(ref.images * 255 / 16).astype(int))
    assert got.images.max() == 255 and got.label_names == ["digit_3"] and got.source == "digits:3"
    assert got.digest != digits_task("digits:4").digest


@pytest.mark.parametrize("spec", ["digits", "digits:", "digits:10", "digits:x", "digits:-1"])
def test_digits_needs_one_digit(spec):
    with _raises(r"write digits:D with D from 0 to 9"):
        digits_task(spec)


# --------------------------------------------------------------------------- is_image_source
def test_is_image_source(tmp_path, monkeypatch):
    medmnist = _medmnist(tmp_path)
    features = tmp_path / "features.npz"
    np.savez(features, X=np.zeros((4, 2)), y=np.zeros(4))
    (tmp_path / "t.csv").write_text("a,b\n1,2\n")
    yes = ["synthetic-images:rare", "synthetic-images:screening?labels=2", "digits:3", "digits", str(medmnist)]
    no = ["synthetic:rare", str(features), str(tmp_path / "t.csv"), str(tmp_path / "absent.npz"), "s3://b/m.npz"]
    assert [is_image_source(s) for s in yes] == [True] * len(yes)
    assert [is_image_source(s) for s in no] == [False] * len(no)
    # cheap: only the archive's member names are read, never an array
    def no_arrays(self, key):
        raise AssertionError(f"read {key}")

    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", no_arrays)
    assert is_image_source(str(medmnist)) and not is_image_source(str(features))
