"""A bank folder is untrusted input, shared between processes, and sometimes on a read-only or full disk."""

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from napari_matchseg.bank import ReferenceBank
from napari_matchseg.errors import BankError, InputError

rng = np.random.default_rng(7)


def _pair(shape=(40, 48)):
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    mask = np.zeros(shape[:2], np.uint8)
    mask[5:20, 10:30] = 1
    return img, mask


def _bank_with(tmp_path, n=2):
    bank = ReferenceBank.create(tmp_path / "bank")
    for i in range(n):
        bank.add(*_pair(), name=f"r{i}")
    return bank


def _edit_record(bank, rid, **changes):
    data = json.loads((bank.path / "bank.json").read_text())
    for d in data["references"]:
        if d["id"] == rid:
            d.update(changes)
    (bank.path / "bank.json").write_text(json.dumps(data))


# ------------------------------------------------------------------------------------ security
@pytest.mark.parametrize("field,value", [
    ("image_file", "../../victim.txt"), ("mask_file", "ABSOLUTE"), ("image_file", "masks/r1.png"),
    ("mask_file", "masks/../../victim.txt"), ("id", "../../escaped"), ("id", "/tmp/escaped"), ("id", "..")])
def test_a_bank_json_pointing_outside_its_reference_is_refused_and_nothing_is_deleted(tmp_path, field, value):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    bank = _bank_with(tmp_path)
    value = str(victim) if value == "ABSOLUTE" else value
    _edit_record(bank, "r0", **{field: value})
    with pytest.raises(BankError, match="refused") as info:
        ReferenceBank.open(bank.path)
    assert "\n" not in str(info.value)
    with pytest.raises(BankError):  # the stale in-memory view refreshes before writing, and refuses too
        bank.remove("r0")
    from napari_matchseg.cli import main

    assert main(["bank", "remove", str(bank.path), "r0"]) == 2
    assert victim.read_text() == "precious"
    assert (bank.path / "images" / "r1.png").exists() and (bank.path / "masks" / "r1.png").exists()
    assert not (tmp_path / "escaped.r2.png").exists()


@pytest.mark.parametrize("data", [
    {"format": "napari-matchseg-bank", "version": "abc", "references": []},
    {"format": "napari-matchseg-bank", "version": 1, "references": ["a", "b"]},
    {"format": "napari-matchseg-bank", "version": 1, "references": [{"id": "x"}]},
])
def test_malformed_bank_json_is_one_clear_error(tmp_path, data, capsys):
    bank = _bank_with(tmp_path, 0)
    (bank.path / "bank.json").write_text(json.dumps(data))
    from napari_matchseg.cli import main

    assert main(["bank", "list", str(bank.path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "bank.json" in err


def test_no_symbolic_link_is_followed_out_of_the_bank(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"not yours")
    bank = _bank_with(tmp_path)
    # a linked subfolder: files written "into the bank" would land outside it
    (bank.path / "masks").rename(tmp_path / "masks-real")
    (bank.path / "masks").symlink_to(outside)
    with pytest.raises(BankError, match="symbolic link"):
        ReferenceBank.open(bank.path)
    (bank.path / "masks").unlink()
    (tmp_path / "masks-real").rename(bank.path / "masks")
    # the lock file is opened for writing (and truncated): a link would clobber its target
    (bank.path / ".bank.lock").unlink(missing_ok=True)
    (bank.path / ".bank.lock").symlink_to(outside / "secret.png")
    with pytest.raises(BankError, match="symbolic link"):
        ReferenceBank.open(bank.path)
    assert (outside / "secret.png").read_bytes() == b"not yours"
    (bank.path / ".bank.lock").unlink()
    # one linked image: reading it is refused, check() reports it, removing deletes only the link
    reopened = ReferenceBank.open(bank.path)
    (bank.path / "images" / "r0.png").unlink()
    (bank.path / "images" / "r0.png").symlink_to(outside / "secret.png")
    with pytest.raises(BankError, match="symbolic link"):
        reopened.load_image("r0")
    assert any("symbolic link" in p for p in reopened.check())
    reopened.remove("r0")
    assert (outside / "secret.png").read_bytes() == b"not yours"
    # a linked embedding cache is not used
    from napari_matchseg.embedding_store import EmbeddingStore, store_folder_name

    (bank.path / "embeddings" / store_folder_name("x")).symlink_to(outside)
    with pytest.raises(BankError, match="symbolic link"):
        EmbeddingStore(bank.path / "embeddings", "x")


# --------------------------------------------------------------------------------- concurrency
def test_creating_a_bank_that_another_process_is_creating_is_a_success(tmp_path):
    path = tmp_path / "new"
    (path / "images").mkdir(parents=True)  # what a creator that is half-way (or was killed) leaves
    (path / "masks").mkdir()
    bank = ReferenceBank.open(path, create=True)
    bank.add(*_pair(), name="a")
    assert ReferenceBank.open(path).ids() == ["a"]


_CREATOR = textwrap.dedent("""
    import sys, numpy as np
    from napari_matchseg.bank import ReferenceBank
    rng = np.random.default_rng(int(sys.argv[2]))
    bank = ReferenceBank.open(sys.argv[1], create=True)
    m = np.zeros((32, 32), np.uint8); m[4:20, 4:20] = 1
    bank.add(rng.integers(0, 256, (32, 32), dtype=np.uint8), m, name=f"w{sys.argv[2]}")
""")


@pytest.mark.slow
def test_concurrent_creators_of_one_new_bank_all_succeed(tmp_path):
    for round_ in range(5):
        path = tmp_path / f"bank{round_}"
        procs = [subprocess.Popen([sys.executable, "-c", _CREATOR, str(path), str(i)], stderr=subprocess.PIPE,
                                  text=True) for i in range(3)]
        errs = [p.communicate(timeout=120)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], errs
        assert sorted(ReferenceBank.open(path).ids()) == ["w0", "w1", "w2"]


def test_a_reference_removed_by_another_process_is_skipped_not_a_crash(tmp_path):
    from napari_matchseg.retrieval import get_retriever, retrieve

    bank = _bank_with(tmp_path, 4)
    mine = ReferenceBank.open(bank.path)  # a stale view: it still lists r1
    ReferenceBank.open(bank.path).remove("r1")
    retriever = get_retriever("handcrafted")
    vectors = mine.embeddings(retriever)
    assert mine.ids() == ["r0", "r2", "r3"] and vectors.shape[0] == 3
    stale = ReferenceBank.open(bank.path)
    ReferenceBank.open(bank.path).remove("r2")
    matches = retrieve(stale, retriever, _pair()[0], k=4)
    assert sorted(m.id for m in matches) == ["r0", "r3"]


def test_add_many_counts_only_what_it_added_itself(tmp_path):
    bank = _bank_with(tmp_path, 0)
    pairs = [_pair() for _ in range(5)]
    mine = ReferenceBank.open(bank.path)
    ReferenceBank.open(bank.path).add_many((img, m, f"theirs{i}") for i, (img, m) in enumerate(pairs[:3]))
    added = mine.add_many((img, m, f"mine{i}") for i, (img, m) in enumerate(pairs))
    assert (added.created, len(added), len(mine)) == (2, 5, 5)


# ------------------------------------------------------------------------------- lost or wrong data
def test_an_empty_new_mask_is_refused_unless_allowed(tmp_path):
    bank = _bank_with(tmp_path, 1)
    old = bank.load_mask("r0")
    with pytest.raises(InputError, match="empty"):
        bank.update_mask("r0", np.zeros((40, 48), np.uint8))
    np.testing.assert_array_equal(ReferenceBank.open(bank.path).load_mask("r0"), old)
    assert bank.update_mask("r0", np.zeros((40, 48), np.uint8), allow_empty=True).foreground_fraction == 0


def test_a_killed_writer_leaves_nothing_after_the_next_open(tmp_path):
    bank = _bank_with(tmp_path, 1)
    store = bank.path / "embeddings" / "some-model"
    store.mkdir()
    (store / "vectors-3.npy.tmp-abcd").write_bytes(b"half")
    # what a writer killed after writing its files, before committing bank.json, leaves behind
    (bank.path / "images" / "killed.png").write_bytes(b"png")
    (bank.path / "masks" / "killed.png").write_bytes(b"png")
    (bank.path / ".pending.json").write_text(json.dumps(
        {"written": ["images/killed.png", "masks/killed.png", "images/r0.png", "../outside"], "obsolete": []}))
    (tmp_path / "outside").write_text("keep")
    reopened = ReferenceBank.open(bank.path)
    assert reopened.check() == []  # no orphan, no temporary, the committed r0 untouched
    assert not (store / "vectors-3.npy.tmp-abcd").exists() and not (bank.path / ".pending.json").exists()
    assert (tmp_path / "outside").read_text() == "keep"
    assert reopened.add(*_pair(), name="killed").id == "killed"  # no -2 drift from leftovers


# ----------------------------------------------------------------------------- read-only, full disk
def _run_without_write_permission(args, cwd):
    """Run the CLI so that file permissions bind it: as root (CI), without the capabilities that bypass them."""
    env = dict(os.environ, MATCHSEG_CACHE_DIR=str(Path(cwd) / "cache"))
    prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--"] if os.geteuid() == 0 else []
    return subprocess.run([*prefix, sys.executable, "-m", "napari_matchseg.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_read_only_bank_gives_one_line_errors_and_still_retrieves(tmp_path):
    from napari_matchseg.image_io import write_image, write_mask

    root = tmp_path
    try:
        bank = ReferenceBank.create(root / "bank")
        for i in range(3):
            bank.add(*_pair(), name=f"r{i}")
        (root / "new" / "images").mkdir(parents=True)
        (root / "new" / "masks").mkdir()
        img, m = _pair()
        write_image(root / "new" / "images" / "n.png", img)
        write_mask(root / "new" / "masks" / "n.png", m)
        write_image(root / "q.png", img)
        for dirpath, dirnames, filenames in os.walk(root / "bank"):
            os.chmod(dirpath, 0o555)
            for f in filenames:
                os.chmod(Path(dirpath) / f, 0o444)
        before = {str(p) for p in (root / "bank").rglob("*")}
        for args in (["bank", "add", "bank", "--images", "new/images", "--masks", "new/masks"],
                     ["bank", "remove", "bank", "r0"], ["bank", "embed", "bank"]):
            r = _run_without_write_permission(args, root)
            assert r.returncode == 2, (args, r.stderr)
            assert r.stderr.strip().count("\n") == 0 and "read-only" in r.stderr, (args, r.stderr)
        r = _run_without_write_permission(["retrieve", "bank", "q.png", "-k", "2", "--json"], root)
        assert r.returncode == 0, r.stderr
        assert len(json.loads(r.stdout)) == 2
        os.chmod(root / "bank" / "images", 0o755)
        (root / "bank" / "images" / "orphan.png").write_bytes(b"x")
        os.chmod(root / "bank" / "images", 0o555)
        r = _run_without_write_permission(["bank", "check", "bank", "--fix"], root)
        assert r.returncode == 2 and "read-only" in r.stderr, r.stderr
        os.chmod(root, 0o555)
        r = _run_without_write_permission(["bank", "create", "another"], root)
        assert r.returncode == 2 and "read-only" in r.stderr and "\n" not in r.stderr.strip(), r.stderr
        os.chmod(root, 0o777)
        after = {str(p) for p in (root / "bank").rglob("*")}
        assert after == before | {str(root / "bank" / "images" / "orphan.png")}
    finally:
        for dirpath, _, _ in os.walk(root):
            os.chmod(dirpath, 0o755)


def test_a_full_disk_keeps_what_was_committed_and_leaves_no_orphans(tmp_path, monkeypatch):
    import napari_matchseg.bank_writes as bank_module

    bank = _bank_with(tmp_path, 0)
    real = bank_module.atomic_write_bytes
    writes = {"n": 0}

    def filling_up(path, data, **kw):
        writes["n"] += 1
        if writes["n"] > 12:  # 6 references (12 files) fit, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data, **kw)

    monkeypatch.setattr(bank_module, "atomic_write_bytes", filling_up)
    with pytest.raises(BankError, match="full") as info:
        bank.add_many(((*_pair(), f"x{i}") for i in range(40)), commit_every=4)
    assert "\n" not in str(info.value)
    monkeypatch.setattr(bank_module, "atomic_write_bytes", real)
    reopened = ReferenceBank.open(bank.path)
    assert len(reopened) == 4  # the first batch was committed; the second could not be, and left nothing
    assert reopened.check() == [] and len(bank) == 4


def test_retrieval_and_removal_on_a_full_disk(tmp_path, monkeypatch):
    import napari_matchseg.bank_files as bank_files
    from napari_matchseg.embedding_store import EmbeddingStore
    from napari_matchseg.retrieval import get_retriever, retrieve

    bank = _bank_with(tmp_path, 3)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(EmbeddingStore, "add", full)
    matches = retrieve(bank, get_retriever("handcrafted"), _pair()[0], k=2)  # vectors kept in memory
    assert len(matches) == 2 and not any((bank.path / "embeddings").iterdir())
    monkeypatch.setattr(bank_files, "atomic_write_json", full)  # the journal cannot be written
    with pytest.raises(BankError, match="full") as info:
        bank.remove("r0")
    assert "\n" not in str(info.value)
    assert "r0" in ReferenceBank.open(bank.path) and bank.load_image("r0").shape == (40, 48)


def test_a_fifo_in_place_of_an_image_is_refused_not_waited_for(tmp_path, capsys):
    """open() on a FIFO blocks until a writer comes: every reader checks for a regular file first."""
    import signal

    from napari_matchseg.cli import main
    from napari_matchseg.image_io import read_image

    bank = ReferenceBank.create(tmp_path / "bank")
    img = (np.random.default_rng(0).random((30, 40)) * 255).astype(np.uint8)
    mask = np.zeros((30, 40), bool)
    mask[5:20, 5:20] = True
    ref = bank.add(img, mask, name="a")
    target = bank.path / ref.image_file
    target.unlink()
    os.mkfifo(target)
    signal.alarm(60)  # a hang fails the test instead of the whole run
    try:
        with pytest.raises(InputError, match="not a regular file"):
            read_image(target)
        with pytest.raises(InputError, match="not a regular file"):
            ReferenceBank.open(bank.path).load_image(ref.id)
        assert main(["bank", "check", str(bank.path)]) == 1
        assert "not a regular file" in capsys.readouterr().out
    finally:
        signal.alarm(0)


def test_a_file_shared_by_two_records_is_refused_on_open(tmp_path):
    """A crafted bank.json giving one record another record's (revision) mask: removing the first would delete
    the second's mask. Every file belongs to exactly one record, checked whenever the bank is read."""
    bank = ReferenceBank.create(tmp_path / "bank")
    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        m = np.zeros((30, 40), bool)
        m[5:20, 5:25] = True
        bank.add((rng.random((30, 40)) * 255).astype(np.uint8), m, name=name)
    data = json.loads((bank.path / "bank.json").read_text())
    b = data["references"][1]  # crafted: b becomes "a.r2", whose files are named like a's second revision
    for key, sub in (("image_file", "images"), ("mask_file", "masks")):
        (bank.path / b[key]).rename(bank.path / sub / "a.r2.png")
        b[key] = f"{sub}/a.r2.png"
    b["id"] = "a.r2"
    (bank.path / "bank.json").write_text(json.dumps(data))
    ReferenceBank.open(bank.path)  # a valid bank so far
    data["references"][0]["mask_file"] = "masks/a.r2.png"  # a's "revision 2" is a.r2's mask
    (bank.path / "bank.json").write_text(json.dumps(data))
    files = sorted(p.name for p in (bank.path / "masks").iterdir())
    with pytest.raises(BankError, match="belongs to two records"):
        ReferenceBank.open(bank.path)
    assert sorted(p.name for p in (bank.path / "masks").iterdir()) == files  # nothing deleted


@pytest.mark.parametrize("name", ["info.json", "vectors-{gen}.npy", "hashes-{gen}.npy"])
def test_links_in_the_embedding_cache_are_not_followed(tmp_path, name):
    from napari_matchseg.embedding_store import EmbeddingStore
    from napari_matchseg.retrieval import get_retriever

    bank = ReferenceBank.create(tmp_path / "bank")
    rng = np.random.default_rng(2)
    for i in range(3):
        m = np.zeros((40, 40), bool)
        m[5:25, 5:25] = True
        bank.add((rng.random((40, 40)) * 255).astype(np.uint8), m, name=f"r{i}")
    retriever = get_retriever("handcrafted")
    bank.embeddings(retriever)
    store = bank.embedding_store(retriever.model_id)
    target = store.folder / name.format(gen=store.generation)
    outside = tmp_path / "outside"
    outside.write_bytes(target.read_bytes())
    target.unlink()
    target.symlink_to(outside)
    with pytest.raises(BankError, match="symbolic link"):
        EmbeddingStore(store.folder.parent, retriever.model_id)
