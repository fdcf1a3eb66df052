"""Volumes: NIfTI / DICOM / TIFF stacks in and out, the napari reader, slice-to-slice propagation, the CLI."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from conftest import DATA_ROOT, sphere
from napari_matchseg.cli import main
from napari_matchseg.errors import InputError
from napari_matchseg.metrics import dice
from napari_matchseg.volume_io import read_volume, write_mask_volume

nib = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")
tifffile = pytest.importorskip("tifffile")

AFFINE = np.array([[-0.8, 0, 0, 90.0], [0, 0.8, 0, -120.0], [0, 0, 3.0, -40.0], [0, 0, 0, 1]])


def write_nifti(path, xyz, affine=AFFINE):
    nib.save(nib.Nifti1Image(xyz, affine), str(path))
    return path


# ------------------------------------------------------------------------------------------- NIfTI
def test_nifti_round_trip_keeps_the_affine_spacing_and_orientation(tmp_path):
    xyz = np.random.default_rng(0).integers(0, 4000, (40, 30, 12)).astype(np.int16)  # x, y, z
    vol = read_volume(write_nifti(tmp_path / "ct.nii.gz", xyz))
    assert vol.data.shape == (12, 30, 40) and vol.kind == "nifti"
    assert np.array_equal(vol.data[5], xyz[:, :, 5].T)  # data[z] is the axial slice, rows = y
    assert vol.spacing == pytest.approx((3.0, 0.8, 0.8)) and np.allclose(vol.affine, AFFINE)
    mask = vol.data > 2000
    write_mask_volume(tmp_path / "mask.nii.gz", mask, like=vol)
    back = nib.load(str(tmp_path / "mask.nii.gz"))
    assert np.allclose(back.affine, AFFINE) and back.shape == xyz.shape
    assert np.array_equal(np.asanyarray(back.dataobj).astype(bool), (xyz > 2000))
    assert back.get_data_dtype() == np.uint8
    with pytest.raises(InputError, match="exists"):
        write_mask_volume(tmp_path / "mask.nii.gz", mask, like=vol)
    write_mask_volume(tmp_path / "mask.nii.gz", ~mask, like=vol, overwrite=True)
    assert np.array_equal(read_volume(tmp_path / "mask.nii.gz").data, ~mask)
    with pytest.raises(InputError, match=r"\(11, 30, 40\) but its image volume is \(12, 30, 40\)"):
        write_mask_volume(tmp_path / "other.nii", mask[1:], like=vol)


def test_bad_nifti_files_give_clear_errors(tmp_path):
    good = write_nifti(tmp_path / "v.nii.gz", np.ones((16, 16, 8), np.uint8))
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(InputError, match="truncated or corrupt"):
        read_volume(cut)
    with pytest.raises(InputError, match="4 dimensions.*one time point"):
        read_volume(write_nifti(tmp_path / "4d.nii", np.ones((16, 16, 8, 3), np.float32)))
    nan = np.ones((16, 16, 8), np.float32)
    nan[3, 3, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        read_volume(write_nifti(tmp_path / "nan.nii", nan))
    (tmp_path / "text.nii.gz").write_bytes(gzip.compress(b"not a nifti file at all" * 20))
    with pytest.raises(InputError, match="not a readable NIfTI"):
        read_volume(tmp_path / "text.nii.gz")


# ------------------------------------------------------------------------------------------- DICOM
def write_dicom_series(folder, planes, spacing=(2.5, 0.7, 0.6), series_uid=None, slope=1.0, intercept=0.0,
                       order=None, description="T1"):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    order = order if order is not None else range(len(planes))
    for file_no, z in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"IM{file_no:04d}"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID, ds.SeriesDescription, ds.Modality = series_uid, description, "CT"
        ds.InstanceNumber = len(planes) - z  # deliberately not the spatial order
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-50.0, -60.0, 10.0 + z * spacing[0]]
        ds.PixelSpacing = [spacing[1], spacing[2]]
        ds.SliceThickness = spacing[0]
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.Rows, ds.Columns = planes[z].shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = planes[z].astype(np.uint16).tobytes()
        ds.save_as(folder / f"IM{file_no:04d}", enforce_file_format=True)


def test_a_dicom_series_is_read_in_slice_order_with_spacing_rescale_and_window(tmp_path):
    planes = [np.full((20, 24), 100 * (z + 1), np.uint16) for z in range(6)]
    planes[2][5, 7] = 7
    write_dicom_series(tmp_path / "series", planes, slope=2.0, intercept=-1024, order=[3, 0, 5, 1, 4, 2])
    vol = read_volume(tmp_path / "series")
    assert vol.kind == "dicom" and vol.data.shape == (6, 20, 24)
    assert vol.spacing == pytest.approx((2.5, 0.7, 0.6))
    assert [float(vol.data[z, 0, 0]) for z in range(6)] == [200.0 * (z + 1) - 1024 for z in range(6)]
    assert vol.data[2, 5, 7] == 7 * 2 - 1024
    assert vol.contrast_limits == (40 - 200, 40 + 200)
    assert np.array_equal(read_volume(tmp_path / "series" / "IM0000").data, vol.data)  # one file: its series
    write_mask_volume(tmp_path / "mask.nii.gz", vol.data > 0, like=vol)  # a DICOM's mask is written as NIfTI
    assert read_volume(tmp_path / "mask.nii.gz").spacing == pytest.approx(vol.spacing)


def test_files_that_are_not_dicom_in_a_series_are_left_out_and_reported(tmp_path, capsys):
    from napari_matchseg.cli import main
    from napari_matchseg.reader import read_volume_layer

    planes = [np.full((16, 16), 10 * (z + 1), np.uint16) for z in range(3)]
    write_dicom_series(tmp_path / "series", planes)
    (tmp_path / "series" / "README.txt").write_text("scanned 2024")
    (tmp_path / "series" / "preview.jpg").write_bytes(b"\xff\xd8\xff not a slice")
    vol = read_volume(tmp_path / "series")
    assert vol.data.shape == (3, 16, 16)
    assert vol.notes == ["series: left out 2 file(s) that are not DICOM: README.txt, preview.jpg"]
    with pytest.warns(UserWarning, match="left out 2 file"):  # napari shows it as a notification
        read_volume_layer(str(tmp_path / "series"))
    labels = np.zeros((3, 16, 16), np.uint8)
    labels[1, 4:10, 4:10] = 1
    write_mask_volume(tmp_path / "labels.nii.gz", labels, like=vol)
    main(["propagate", str(tmp_path / "series"), "--labels", str(tmp_path / "labels.nii.gz"),
          "--out", str(tmp_path / "out.nii.gz")])
    assert "note: series: left out 2 file(s) that are not DICOM" in capsys.readouterr().err


def test_a_folder_mixing_dicom_series_is_refused_naming_them(tmp_path):
    planes = [np.zeros((16, 16), np.uint16)] * 3
    write_dicom_series(tmp_path / "mixed", planes, description="T1")
    for i, p in enumerate(sorted((tmp_path / "mixed").iterdir())):
        p.rename(tmp_path / "mixed" / f"a{i}")
    write_dicom_series(tmp_path / "mixed", planes, description="FLAIR")
    with pytest.raises(InputError, match=r"mixes 2 DICOM series: FLAIR \(3 files\); T1 \(3 files\)\. Put each"):
        read_volume(tmp_path / "mixed")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(InputError, match="no DICOM files"):
        read_volume(tmp_path / "empty")


# -------------------------------------------------------------------------------------------- TIFF
def test_tiff_stack_round_trip_with_spacing(tmp_path):
    stack = np.random.default_rng(1).integers(0, 60000, (7, 32, 40)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", stack, imagej=True, resolution=(1 / 0.5, 1 / 0.5),
                     metadata={"spacing": 2.0, "axes": "ZYX"})
    vol = read_volume(tmp_path / "stack.tif")
    assert vol.kind == "tiff" and np.array_equal(vol.data, stack)
    assert vol.spacing == pytest.approx((2.0, 0.5, 0.5))
    write_mask_volume(tmp_path / "mask.tif", stack > 30000, like=vol)
    back = read_volume(tmp_path / "mask.tif")
    assert np.array_equal(back.data > 0, stack > 30000) and back.spacing == pytest.approx(vol.spacing)
    tifffile.imwrite(tmp_path / "flat.tif", stack[0])
    with pytest.raises(InputError, match="axes YX"):
        read_volume(tmp_path / "flat.tif")


def test_the_napari_reader_opens_a_volume_as_one_layer_with_its_spacing(tmp_path):
    from napari_matchseg.reader import get_folder_reader

    write_nifti(tmp_path / "brain.nii.gz", np.zeros((24, 20, 5), np.uint8))
    write_dicom_series(tmp_path / "series", [np.zeros((16, 16), np.uint16)] * 4)
    for path, shape, scale in ((tmp_path / "brain.nii.gz", (5, 20, 24), (3.0, 0.8, 0.8)),
                               (tmp_path / "series", (4, 16, 16), (2.5, 0.7, 0.6))):
        reader = get_folder_reader(str(path))
        assert reader is not None
        [(data, kwargs, kind)] = reader(str(path))
        assert kind == "image" and data.shape == shape and kwargs["scale"] == pytest.approx(scale)
        assert kwargs["metadata"]["volume"]["kind"] in ("nifti", "dicom")
    assert get_folder_reader(str(tmp_path / "brain.nii.gz"))(str(tmp_path / "brain.nii.gz"))[0][1]["name"] == "brain"


# ------------------------------------------------------------------------------------- propagation
@pytest.fixture(scope="module")
def matchseg_pipeline():
    from napari_matchseg.pipeline import Pipeline, PipelineConfig

    return Pipeline(PipelineConfig()).load()


def test_propagation_through_a_sphere_from_its_middle_slice_stops_at_its_ends(matchseg_pipeline):
    from napari_matchseg.propagation import propagate

    img, gt = sphere()
    labels = np.zeros_like(gt)
    labels[12] = gt[12]
    seen = []
    r = propagate(matchseg_pipeline, img, labels, progress=lambda d, t: seen.append((d, t)))
    assert dice(r.mask, gt) > 0.9
    assert r.status[12] == "given" and all(r.status[z] == "proposed" for z in range(4, 20) if z != 12)
    assert r.status[0] == "not reached" and r.status[23] == "not reached"  # it stopped before the volume's ends
    assert not r.mask[:2].any() and not r.mask[22:].any() and len(r.notes) == 2
    assert seen[-1][0] == seen[-1][1] and all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))
    # a corrected slice and propagating again from both: the slices between take the nearer one's proposal
    labels[6] = gt[6]
    again = propagate(matchseg_pipeline, img, labels)
    assert again.status[6] == "given" and dice(again.mask, gt) > 0.9


def test_each_label_value_propagates_as_its_own_object(matchseg_pipeline):
    from conftest import two_balls
    from napari_matchseg.propagation import propagate_objects

    img, truth = two_balls()
    labels = np.zeros_like(truth)
    labels[12] = truth[12]  # both objects painted on one slice, with their own values
    seen = []
    r = propagate_objects(matchseg_pipeline, img, labels, progress=lambda d, t: seen.append((d, t)))
    assert sorted(r.objects) == [1, 2] and set(np.unique(r.labels)) == {0, 1, 2}
    for v in (1, 2):
        assert dice(r.labels == v, truth == v) > 0.85, v  # neither object is merged into the other
    assert all(n.startswith(("object 1: ", "object 2: ")) for n in r.notes) and len(r.notes) == 4
    assert seen[-1][0] == seen[-1][1] and all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))
    assert 12 not in r.proposed_slices() and len(r.proposed_slices()) >= 10


def test_litemedsam_propagates_with_the_previous_slices_box_and_stops_on_its_predicted_iou():
    from napari_matchseg.pipeline import Pipeline, PipelineConfig
    from napari_matchseg.propagation import propagate

    img, gt = sphere(n=16, r=6.0)
    labels = np.zeros_like(gt)
    labels[8] = gt[8]
    r = propagate(Pipeline(PipelineConfig(proposer="litemedsam")).load(), img, labels)
    assert dice(r.mask, gt) > 0.9
    assert "stopped" in r.status and any("predicted quality" in n for n in r.notes)


def test_propagation_refuses_bad_input_and_can_be_cancelled(matchseg_pipeline):
    from napari_matchseg.propagation import propagate

    img, gt = sphere(n=12)
    with pytest.raises(InputError, match="no slice is labelled"):
        propagate(matchseg_pipeline, img, np.zeros_like(gt))
    with pytest.raises(InputError, match="must match"):
        propagate(matchseg_pipeline, img, gt[:, :50])
    labels = np.zeros_like(gt)
    labels[6] = gt[6]
    calls = []
    r = propagate(matchseg_pipeline, img, labels, cancel=lambda: len(calls) > 2, progress=lambda d, t: calls.append(d))
    assert r.proposed == 3 and "cancelled after 3 slices" in r.notes[-1] and r.status[6] == "given"


# -------------------------------------------------------------------------------------------- CLI
def real_volume():
    folder = DATA_ROOT / "volumes" / "lgg_flair_3d"
    if not (folder / "images").is_dir():
        pytest.skip(f"the real volumes are not at {folder} (set MATCHSEG_DATA to the shared data folder)")
    return min((folder / "images").glob("*.nii.gz"), key=lambda p: nib.load(str(p)).shape[2])


def test_propagate_and_segment_a_real_volume_through_the_cli(tmp_path, capsys, sample_triples):
    image = real_volume()
    gt = read_volume(image.parent.parent / "masks" / image.name)
    labels_xyz = np.zeros(gt.data.shape[::-1], np.uint8)
    z = int(gt.data.reshape(len(gt.data), -1).sum(1).argmax())
    labels_xyz[:, :, z] = gt.data[z].T
    write_nifti(tmp_path / "partial.nii.gz", labels_xyz, affine=nib.load(str(image)).affine)
    out = tmp_path / "propagated.nii.gz"
    code = main(["propagate", str(image), "--labels", str(tmp_path / "partial.nii.gz"), "--out", str(out), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "(LiteMedSAM propagated)" in captured.err  # the default, with no --proposer
    status = json.loads(captured.out.strip().splitlines()[-1])
    assert status["given"] == 1 and status["proposed"] >= 2 and len(status["status"]) == len(gt.data)
    back = nib.load(str(out))
    assert back.shape == nib.load(str(image)).shape and np.allclose(back.affine, nib.load(str(image)).affine)
    mask = read_volume(out).data
    assert np.array_equal(mask[z], gt.data[z] > 0) and mask.sum() > gt.data[z].astype(bool).sum()
    assert dice(mask, gt.data > 0) >= 0.85, dice(mask, gt.data > 0)  # LiteMedSAM's 0.90 here; MatchSeg v2's 0.14
    assert main(["propagate", str(image), "--labels", str(tmp_path / "partial.nii.gz"), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err

    from napari_matchseg.bank import ReferenceBank

    bank = ReferenceBank.create(tmp_path / "bank")
    bank.add_many((img, m, name) for name, img, m in sample_triples[:4])
    code = main(["segment", "--bank", str(tmp_path / "bank"), "--images", str(image), "--out", str(tmp_path / "seg")])
    assert code == 0, capsys.readouterr().err
    seg = nib.load(str(tmp_path / "seg" / image.name))
    assert seg.shape == nib.load(str(image)).shape and np.allclose(seg.affine, nib.load(str(image)).affine)


def test_the_bank_keeps_a_slices_source_volume_and_index_and_refuses_a_bad_one(tmp_path):
    from napari_matchseg.bank import ReferenceBank
    from napari_matchseg.errors import BankError

    img, gt = sphere(n=8)
    bank = ReferenceBank.create(tmp_path / "bank")
    ref = bank.add(img[4], gt[4], name="ball_0004", origin={"volume": "ball.nii.gz", "slice": 4, "axis": "z"})
    bank.add(img[5], gt[5], name="plain")
    again = ReferenceBank.open(tmp_path / "bank")
    assert again.get(ref.id).origin == {"volume": "ball.nii.gz", "slice": 4, "axis": "z"}
    assert again.get("plain").origin is None and "origin" not in again.get("plain").to_json()
    with pytest.raises(InputError, match="slice"):
        bank.add(img[6], gt[6], name="bad", origin={"volume": "ball.nii.gz", "slice": -1, "axis": "z"})
    text = (tmp_path / "bank" / "bank.json").read_text().replace('"axis": "z"', '"axis": "../../etc"')
    (tmp_path / "bank" / "bank.json").write_text(text)
    with pytest.raises(BankError, match="origin's axis"):
        ReferenceBank.open(tmp_path / "bank")


def test_a_2d_nifti_is_a_volume_of_one_slice(tmp_path):
    img = (np.random.default_rng(0).random((30, 20)) * 255).astype(np.uint8)
    nib.save(nib.Nifti1Image(img, np.diag([0.5, 0.7, 1.0, 1.0])), str(tmp_path / "flat.nii.gz"))
    vol = read_volume(tmp_path / "flat.nii.gz")
    assert vol.data.shape == (1, 20, 30) and vol.spacing == pytest.approx((1.0, 0.7, 0.5))


def test_labels_saved_from_napari_keep_the_source_volumes_geometry_and_object_values(tmp_path):
    import nibabel as nib

    from napari_matchseg.reader import read_volume_layer
    from napari_matchseg.widgets import write_labels_volume

    xyz = np.random.default_rng(1).integers(0, 1000, (30, 20, 9)).astype(np.int16)
    source = write_nifti(tmp_path / "t1.nii.gz", xyz)
    (_, image_meta, _), = read_volume_layer(str(source))
    labels = np.zeros((9, 20, 30), np.uint8)
    labels[3, 5:9, 4:10], labels[5, 10:15, 12:20] = 1, 2  # two objects
    proposal_meta = {"metadata": {"volume": image_meta["metadata"]["volume"], "image": "t1"},
                     "scale": image_meta["scale"]}  # what the plugin's proposal layer carries
    written = write_labels_volume(str(tmp_path / "t1_mask.nii.gz"), labels, proposal_meta)
    back = nib.load(written[0])
    np.testing.assert_allclose(back.affine, AFFINE)
    assert back.get_data_dtype() == np.uint8 and set(np.unique(read_volume(written[0]).data)) == {0, 1, 2}
    assert np.array_equal(read_volume(written[0]).data, labels)
    with pytest.raises(InputError, match="exists; nothing was written"):
        write_labels_volume(str(tmp_path / "t1_mask.nii.gz"), labels, proposal_meta)
    plain = write_labels_volume(str(tmp_path / "other.tif"), labels, {"scale": (2.0, 0.5, 0.5)})  # no source
    assert read_volume(plain[0]).spacing == pytest.approx((2.0, 0.5, 0.5))
    assert set(np.unique(read_volume(plain[0]).data)) == {0, 1, 2}
