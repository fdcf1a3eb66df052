"""Several objects per image kept apart in the bank (object ids), without changing what one-object banks hold."""

import json

import numpy as np
import pytest

from napari_matchseg.bank import ReferenceBank
from napari_matchseg.errors import BankError, InputError


def _image(seed=0):
    return (np.random.default_rng(seed).random((40, 50)) * 255).astype(np.uint8)


def _two_objects(dtype=np.uint16, ids=(3, 700)):
    lab = np.zeros((40, 50), dtype)
    lab[2:10, 2:10] = ids[0]
    lab[20:30, 20:30] = ids[1]
    return lab


def test_object_ids_are_kept_and_the_foreground_is_their_union(tmp_path):
    bank = ReferenceBank.create(tmp_path / "bank")
    ref = bank.add(_image(), _two_objects(), name="two")
    assert ref.objects == 2
    again = ReferenceBank.open(tmp_path / "bank")
    np.testing.assert_array_equal(again.load_labels(ref.id), _two_objects())
    np.testing.assert_array_equal(again.load_mask(ref.id), _two_objects() != 0)
    assert again.check() == []


def test_one_object_is_stored_as_before(tmp_path):
    bank = ReferenceBank.create(tmp_path / "bank")
    ref = bank.add(_image(), (_two_objects() != 0).astype(np.int32) * 5, name="one")  # one value, whatever it is
    assert ref.objects is None
    record = json.loads((tmp_path / "bank" / "bank.json").read_text())["references"][0]
    assert "objects" not in record
    assert set(np.unique(bank.load_labels(ref.id))) == {0, 1}


def test_update_mask_switches_between_one_and_several_objects(tmp_path):
    bank = ReferenceBank.create(tmp_path / "bank")
    ref = bank.add(_image(), _two_objects() != 0, name="x")
    ref = bank.update_mask(ref.id, _two_objects(np.uint8, (1, 2)))
    assert ref.objects == 2 and set(np.unique(bank.load_labels(ref.id))) == {0, 1, 2}
    ref = bank.update_mask(ref.id, _two_objects() != 0)
    assert ref.objects is None and bank.check() == []


def test_changed_object_ids_are_caught_by_check(tmp_path):
    from napari_matchseg.image_io import encode_labels_png

    bank = ReferenceBank.create(tmp_path / "bank")
    ref = bank.add(_image(), _two_objects(), name="two")
    swapped = _two_objects(ids=(700, 3))  # the same foreground, other ids
    (tmp_path / "bank" / ref.mask_file).write_bytes(encode_labels_png(swapped))
    assert any("does not match its recorded hash" in p for p in bank.check())


@pytest.mark.parametrize("bad", [1, 0, 70000, "2", True])
def test_a_record_with_a_wrong_objects_count_is_refused(tmp_path, bad):
    bank = ReferenceBank.create(tmp_path / "bank")
    bank.add(_image(), _two_objects(), name="two")
    f = tmp_path / "bank" / "bank.json"
    data = json.loads(f.read_text())
    data["references"][0]["objects"] = bad
    f.write_text(json.dumps(data))
    with pytest.raises(BankError, match="objects"):
        ReferenceBank.open(tmp_path / "bank")


def test_negative_or_too_large_ids_are_refused(tmp_path):
    bank = ReferenceBank.create(tmp_path / "bank")
    with pytest.raises(InputError, match="object ids must be between 1 and 65535"):
        bank.add(_image(), _two_objects(np.int32, (-1, 2)), name="neg")
    with pytest.raises(InputError, match="object ids"):
        bank.add(_image(), _two_objects(np.int64, (1, 70000)), name="big")
    assert len(bank) == 0


def test_bank_add_from_the_command_line_keeps_object_ids_when_asked(tmp_path, capsys):
    from napari_matchseg.cli import main
    from napari_matchseg.image_io import write_image, write_labels

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    write_image(tmp_path / "images" / "a.png", _image())
    write_labels(tmp_path / "masks" / "a.png", _two_objects(np.uint8, (1, 2)))
    assert main(["bank", "add", str(tmp_path / "merged"), "--images", str(tmp_path / "images"),
                 "--masks", str(tmp_path / "masks")]) == 0
    assert main(["bank", "add", str(tmp_path / "kept"), "--images", str(tmp_path / "images"),
                 "--masks", str(tmp_path / "masks"), "--objects"]) == 0
    merged, kept = ReferenceBank.open(tmp_path / "merged"), ReferenceBank.open(tmp_path / "kept")
    assert merged.get("a").objects is None and kept.get("a").objects == 2
    np.testing.assert_array_equal(kept.load_labels("a"), _two_objects(np.uint8, (1, 2)))
