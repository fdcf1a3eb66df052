"""Inputs that used to give silently wrong results, lost work, or a traceback instead of one line."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from napari_matchseg.bank import ReferenceBank
from napari_matchseg.cli import main
from napari_matchseg.errors import InputError, WeightsError
from napari_matchseg.image_io import content_hash, read_image, read_mask, reduce_for_model

rng = np.random.default_rng(3)


def _mask(shape=(64, 80)):
    m = np.zeros(shape, np.uint8)
    m[10:40, 20:50] = 255
    return m


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------------------ masks
def test_a_jpeg_named_png_is_thresholded_as_the_lossy_file_it_is(tmp_path):
    m = _mask()
    buf = io.BytesIO()
    Image.fromarray(m).save(buf, format="JPEG", quality=50)
    (tmp_path / "m.png").write_bytes(buf.getvalue())  # JPEG bytes under a .png name
    read = read_mask(tmp_path / "m.png")
    assert abs(read.mean() - (m > 0).mean()) < 0.01  # JPEG ringing is not taken as foreground


def test_a_palette_mask_with_a_white_background_is_read_by_its_indices(tmp_path):
    m = Image.fromarray((_mask() > 0).astype(np.uint8), mode="L").convert("P")
    m.putpalette([255, 255, 255, 200, 30, 30] + [0] * 762)  # index 0 shown white, index 1 red
    m.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "palette.png"), _mask() > 0)


def test_a_mask_that_is_foreground_everywhere_is_refused_unless_allowed(tmp_path, capsys):
    Image.fromarray(np.full((64, 80), 255, np.uint8)).save(tmp_path / "full.png")
    with pytest.raises(InputError, match="foreground everywhere"):
        read_mask(tmp_path / "full.png")
    assert read_mask(tmp_path / "full.png", allow_full=True).all()
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    Image.fromarray(rng.integers(0, 256, (64, 80), dtype=np.uint8)).save(tmp_path / "images" / "a.png")
    (tmp_path / "full.png").rename(tmp_path / "masks" / "a.png")
    code, _, err = run(capsys, "bank", "add", tmp_path / "b", "--images", tmp_path / "images",
                       "--masks", tmp_path / "masks")
    assert code == 1 and "foreground everywhere" in err and "--allow-full" in err
    code, out, _ = run(capsys, "bank", "add", tmp_path / "b", "--images", tmp_path / "images",
                       "--masks", tmp_path / "masks", "--allow-full")
    assert code == 0 and "added 1 references" in out


# ------------------------------------------------------------------------------------ thresholds, dtypes
def test_a_threshold_outside_zero_to_one_is_refused():
    from napari_matchseg.propose import Proposal

    p = Proposal(np.full((8, 8), 0.7, np.float32), [])
    assert p.mask(0.5).all()
    for bad in (2, -0.1, 255):
        with pytest.raises(InputError, match="between 0 and 1"):
            p.mask(bad)


def test_the_same_pixels_are_the_same_reference_however_they_are_handed_over(tmp_path):
    bank = ReferenceBank.create(tmp_path / "b")
    img = rng.integers(0, 256, (40, 48), dtype=np.uint8)
    ref = bank.add(img, _mask((40, 48)))
    assert bank.add(img.tolist(), _mask((40, 48)), on_duplicate="skip").id == ref.id  # int64 from a list
    assert bank.add(img.astype(np.int32), _mask((40, 48)), on_duplicate="skip").id == ref.id
    assert len(bank) == 1 and bank.load_image(ref.id).dtype == np.uint8
    wide = (img.astype(np.int64) * 200)  # values beyond 8 bits: kept as 16-bit
    assert bank.add(wide, _mask((40, 48))).dtype == "uint16"
    assert content_hash(np.asarray(img.tolist())) != content_hash(img)  # the hash itself stays exact


# ------------------------------------------------------------------------------------------ weights
def test_a_wrong_file_placed_by_hand_can_be_replaced_by_the_right_one(monkeypatch):
    from napari_matchseg import weights

    entry = weights.WeightsEntry("toy", "https://example.invalid/toy.bin", "toy.bin", 0.001, None, "test")
    monkeypatch.setitem(weights.REGISTRY, "toy", entry)
    target = weights.where(entry)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"w" * 3_000_000)  # 3 MB where 0.001 MB is expected: `weights list` says so
    assert weights.fetch("toy") == target
    assert weights.status("toy") == "placed by hand, 3.0 MB (expected about 0.001 MB)"
    target.write_bytes(b"x" * 1000)  # the right size, but not the model (it will not load)
    assert weights.fetch("toy") == target
    assert weights.status("toy") == "placed by hand"  # not "present": nothing vouches for it
    err = weights.unreadable(target, "toy model", RuntimeError("Weights only load failed. In PyTorch 2.6 ...\n"
                                                                "Re-running torch.load with weights_only=False"))
    assert "weights_only" not in str(err) and "\n" not in str(err)
    target.write_bytes(b"y" * 1000)  # the user puts the right file in place, as the message says
    assert weights.fetch("toy") == target  # accepted: a hand-placed file's hash was never a pin
    target.unlink()
    with pytest.raises(WeightsError, match="not available"):
        weights.fetch("toy")
    assert not target.with_name("toy.bin.sha256").exists()  # the record of a deleted file is dropped


def test_missing_and_garbage_clip_checkpoints_are_one_line_errors(tmp_path, capsys):
    from napari_matchseg.sample_data import write_sample

    write_sample(tmp_path / "s", n_per_kind=2)
    run(capsys, "bank", "add", tmp_path / "b", "--images", tmp_path / "s/images", "--masks", tmp_path / "s/masks")
    query = sorted((tmp_path / "s/images").iterdir())[0]
    code, _, err = run(capsys, "retrieve", tmp_path / "b", query, "--retriever", "clip",
                       "--clip-checkpoint", tmp_path / "nonexistent.bin")
    assert code == 2 and "does not exist" in err and err.count("\n") == 1
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    code, _, err = run(capsys, "retrieve", tmp_path / "b", query, "--retriever", "clip", "--clip-checkpoint", garbage)
    assert code == 2 and "cannot read CLIP" in err and err.count("\n") == 1 and "weights_only" not in err


# ------------------------------------------------------------------------------- segment and eval outputs
@pytest.fixture
def small_bank(tmp_path, capsys):
    from napari_matchseg.sample_data import write_sample

    write_sample(tmp_path / "s", n_per_kind=2)
    assert run(capsys, "bank", "add", tmp_path / "b", "--images", tmp_path / "s/images",
               "--masks", tmp_path / "s/masks")[0] == 0
    return tmp_path


def test_segment_goes_on_past_bad_files_and_a_rerun_skips_what_exists(small_bank, tiny_ckpt, capsys):
    t = small_bank
    q = t / "q"
    q.mkdir()
    for i, p in enumerate(sorted((t / "s/images").iterdir())[:3]):
        (q / f"img{i}.png").write_bytes(p.read_bytes())
    (q / "broken.png").write_bytes((q / "img0.png").read_bytes()[:200])  # truncated
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(q / "tiny.png")  # too small to segment
    args = ["segment", "--bank", t / "b", "--images", q, "--out", t / "out", "--checkpoint", tiny_ckpt, "-k", "2"]
    code, out, err = run(capsys, *args)
    assert code == 1 and "wrote 3 masks" in out
    assert "broken.png" in err and "tiny.png" in err and "2 of 5 images could not be segmented" in err
    assert sorted(p.name for p in (t / "out").iterdir()) == ["img0.png", "img1.png", "img2.png"]
    (t / "out" / "img1.png").unlink()
    before = (t / "out" / "img0.png").stat().st_mtime_ns
    code, out, err = run(capsys, *args, "--skip-existing")
    assert code == 1 and "wrote 1 masks" in out and "2 already there were kept" in out
    assert (t / "out" / "img0.png").stat().st_mtime_ns == before  # kept, not rewritten
    code, _, err = run(capsys, *args)
    assert code == 2 and "--skip-existing" in err
    code, _, err = run(capsys, "segment", "--bank", t / "b", "--images", q, "--out", t / "out" / "img0.png",
                       "--checkpoint", tiny_ckpt)
    assert code == 2 and "is a file" in err and "--overwrite" not in err


def test_eval_checks_its_output_files_before_any_work(small_bank, tiny_ckpt, capsys, monkeypatch):
    import napari_matchseg.cli.propose as cli_propose

    t = small_bank
    monkeypatch.setattr(cli_propose, "pipeline_from_args", lambda args: pytest.fail("work started before the check"))
    common = ["eval", "--bank", t / "b", "--images", t / "s/images", "--masks", t / "s/masks", "--checkpoint",
              tiny_ckpt]
    code, _, err = run(capsys, *common, "--json", t / "nodir" / "r.json")
    assert code == 2 and "does not exist" in err and err.count("\n") == 1
    (t / "r.json").write_text("{}")
    code, _, err = run(capsys, *common, "--json", t / "r.json")
    assert code == 2 and "already exists" in err
    assert json.loads((t / "r.json").read_text()) == {}


# ----------------------------------------------------------------------------------------- big images
def test_large_images_are_reduced_before_any_model_sees_them():
    big = rng.integers(0, 256, (5000, 3000, 3), dtype=np.uint8)
    small = reduce_for_model(big, 2048)
    assert small.shape == (1666, 1000, 3) and small.dtype == np.uint8
    np.testing.assert_allclose(small[0, 0], big[:3, :3].reshape(-1, 3).mean(0), atol=0.5)
    same = rng.integers(0, 256, (300, 200), dtype=np.uint8)
    assert reduce_for_model(same) is same  # ordinary images are untouched: results do not change


def test_an_image_over_the_pixel_limit_is_refused_with_the_limit(tmp_path, monkeypatch):
    import napari_matchseg.image_io as image_io

    Image.fromarray(np.zeros((300, 400), np.uint8)).save(tmp_path / "x.png")
    monkeypatch.setattr(image_io, "MAX_PIXELS", 100_000)
    with pytest.raises(InputError, match="million pixels"):
        read_image(tmp_path / "x.png")


def test_segment_never_writes_into_its_inputs_or_a_bank(tmp_path, capsys, bank, tiny_ckpt):
    """--out equal to, inside or around --images (with --overwrite) would replace the images; inside a bank it
    would corrupt it: refused before anything is read or written."""
    images = tmp_path / "q"
    images.mkdir()
    picture = (np.random.default_rng(0).random((40, 50)) * 255).astype(np.uint8)
    Image.fromarray(picture).save(images / "a.png")
    before = (images / "a.png").read_bytes()
    for out, says in ((images, "is the input folder"), (images / "masks", "is inside the input folder"),
                      (tmp_path, "contains the input folder"), (bank.path / "images", "inside the reference bank"),
                      (bank.path / "masks" / "new", "inside the reference bank")):
        code = main(["segment", "--bank", str(bank.path), "--images", str(images), "--out", str(out), "--overwrite",
                     "--allow-self", "--checkpoint", str(tiny_ckpt)])
        assert code == 2 and says in capsys.readouterr().err, out
    assert (images / "a.png").read_bytes() == before and sorted(p.name for p in images.iterdir()) == ["a.png"]
    assert main(["bank", "check", str(bank.path)]) == 0


def test_refinement_options_are_checked_before_any_model_loads():
    from napari_matchseg.pipeline import PipelineConfig

    with pytest.raises(InputError, match="--refine-threshold is a probability"):
        PipelineConfig(refine_threshold=2.0).check()
    with pytest.raises(InputError, match="--refine-margin is a number of pixels"):
        PipelineConfig(refine_margin=-5).check()


@pytest.mark.parametrize("entry, says", [
    ({"boxes": [[True, False, True, True]]}, "4 numbers each"),
    ({"boxes": [[0, 0, 1e308, 5]]}, "4 numbers each"),
    ({"points": [[3, 4, 2]]}, r"1 \(on the object\) or 0"),
    ({"points": [[3, 4, True]]}, "3 numbers each"),
])
def test_prompt_files_refuse_booleans_huge_coordinates_and_bad_labels(tmp_path, entry, says):
    from napari_matchseg.prompt_file import read_prompts

    f = tmp_path / "p.json"
    f.write_text(json.dumps({"a.png": entry}))
    with pytest.raises(InputError, match=says):
        read_prompts(f, [tmp_path / "a.png"])


def test_nested_and_huge_numbers_in_json_are_one_line_errors(tmp_path, bank):
    from napari_matchseg.errors import BankError
    from napari_matchseg.prompt_file import read_prompts

    f = tmp_path / "p.json"
    f.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(InputError, match="not valid JSON"):
        read_prompts(f, [tmp_path / "a.png"])
    for text in ('{"format": ' + "9" * 5000 + "}", "[" * 100_000 + "]" * 100_000):
        (bank.path / "bank.json").write_text(text)
        with pytest.raises(BankError, match="is corrupt"):
            ReferenceBank.open(bank.path)


def test_propagate_refuses_a_quality_outside_0_to_1(tmp_path, capsys):
    import nibabel as nib

    vol = np.zeros((4, 8, 8), np.uint8)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "v.nii.gz"))
    assert main(["propagate", str(tmp_path / "v.nii.gz"), "--labels", str(tmp_path / "v.nii.gz"), "--out",
                 str(tmp_path / "o.nii.gz"), "--min-quality", "-1"]) == 2
    assert "min_quality is a predicted IoU (0 to 1)" in capsys.readouterr().err


def test_segment_removes_the_unfinished_masks_a_killed_run_left(tmp_path, capsys, bank, tiny_ckpt):
    import os
    import time

    images = tmp_path / "q"
    images.mkdir()
    Image.fromarray((np.random.default_rng(0).random((40, 50)) * 255).astype(np.uint8)).save(images / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    ours, other = out / "a.png.tmp-x1y2z3", out / "notes.txt.tmp-abc"
    for p in (ours, other):
        p.write_bytes(b"half a file")
        os.utime(p, (time.time() - 60, time.time() - 60))
    code = main(["segment", "--bank", str(bank.path), "--images", str(images), "--out", str(out), "--checkpoint",
                 str(tiny_ckpt)])
    assert code == 0, capsys.readouterr().err
    assert not ours.exists() and other.exists() and (out / "a.png").is_file()  # only our own leftovers go
    assert "removed 1 unfinished mask file" in capsys.readouterr().err


def test_a_full_disk_during_segment_stops_with_the_count_of_complete_masks(tmp_path, capsys, bank, tiny_ckpt,
                                                                           monkeypatch):
    import errno

    from napari_matchseg import image_io

    images = tmp_path / "q"
    images.mkdir()
    for name in "abcd":
        Image.fromarray((rng.random((40, 50)) * 255).astype(np.uint8)).save(images / f"{name}.png")
    out = tmp_path / "out"
    real, calls = image_io.atomic_write_bytes, []

    def fills_up(path, data, **kw):
        calls.append(path)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data, **kw)

    monkeypatch.setattr(image_io, "atomic_write_bytes", fills_up)
    code, _, err = run(capsys, "segment", "--bank", bank.path, "--images", images, "--out", out, "--checkpoint",
                       tiny_ckpt, "--overwrite")
    assert code != 0 and "Traceback" not in err
    assert "stopped with 2 of 4 masks written" in err and "No space left on device" in err
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]  # complete ones, no half-written file


def test_a_multi_page_tiff_is_no_2d_image_or_mask(tmp_path):
    import tifffile

    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, (np.arange(5 * 40 * 50) % 2).astype(np.uint8).reshape(5, 40, 50) * 255,
                     photometric="minisblack")
    for read in (read_mask, read_image):
        with pytest.raises(InputError, match="holds 5 pages \\(a stack\\), not one 2D image"):
            read(stack)


def test_a_bank_record_claiming_an_impossible_shape_is_refused_at_open(bank):
    from napari_matchseg.errors import BankError

    meta = json.loads((bank.path / "bank.json").read_text())
    meta["references"][0]["shape"] = [10**12, 10**12]
    (bank.path / "bank.json").write_text(json.dumps(meta))
    with pytest.raises(BankError, match="is no image this package reads"):
        ReferenceBank.open(bank.path)

