"""A model added with one registry line is usable everywhere: ``matchseg segment --proposer toy``, the plugin's list."""

import numpy as np
import pytest
from PIL import Image

from napari_matchseg.cli import main
from napari_matchseg.proposers import PROPOSERS
from napari_matchseg.proposers.base import Proposer
from napari_matchseg.registry import Entry, Option


class ToyProposer(Proposer):
    """A disk in the middle of the image, of a radius given as an option; uses no references."""

    name = "toy"
    uses_supports = False

    def __init__(self, radius: float = 0.25, device: str = "auto"):
        self.radius, self.model_id = radius, f"toy-{radius}"

    def predict_batch(self, images, supports, prompts=None):
        out = []
        for im in images:
            h, w = im.shape[:2]
            yy, xx = np.mgrid[:h, :w]
            out.append(((yy - h / 2) ** 2 + (xx - w / 2) ** 2 <= (self.radius * min(h, w)) ** 2).astype(np.float32))
        return out


@pytest.fixture
def toy():
    PROPOSERS.register(Entry("toy", ToyProposer, "a centred disk", options=(
        Option("--toy-radius", "radius", 0.25, "disk radius, a fraction of the shorter side", type=float),)))
    yield
    PROPOSERS.unregister("toy")


def test_a_registered_proposer_is_a_cli_choice_with_its_options(toy, tmp_path, capsys):
    from napari_matchseg.sample_data import write_sample

    write_sample(tmp_path / "s", n_per_kind=2)
    assert main(["bank", "add", str(tmp_path / "b"), "--images", str(tmp_path / "s/images"), "--masks",
                 str(tmp_path / "s/masks")]) == 0
    code = main(["segment", "--bank", str(tmp_path / "b"), "--images", str(tmp_path / "s/images"), "--out",
                 str(tmp_path / "out"), "--proposer", "toy", "--toy-radius", "0.4"])
    assert code == 0, capsys.readouterr().err
    mask = np.array(Image.open(sorted((tmp_path / "out").iterdir())[0])) > 0
    h, w = mask.shape
    assert mask[h // 2, w // 2] and not mask[0, 0]
    assert abs(mask.mean() - np.pi * 0.4 ** 2 * min(h, w) ** 2 / (h * w)) < 0.02  # the option reached the class
    code = main(["segment", "--bank", str(tmp_path / "b"), "--images", str(tmp_path / "s/images"), "--out",
                 str(tmp_path / "out2"), "--toy-radius", "0.4"])  # the option of a proposer not chosen
    assert code == 2 and "--toy-radius is a toy option; the MatchSeg proposer has none" in capsys.readouterr().err


@pytest.mark.gui
def test_a_registered_proposer_appears_in_the_plugin(toy, make_napari_viewer):
    from napari_matchseg.widgets import ReferenceAnnotator

    widget = ReferenceAnnotator(make_napari_viewer())
    items = [widget.proposer_combo.itemText(i) for i in range(widget.proposer_combo.count())]
    assert items[-1] == "toy" and items[:2] == ["matchseg", "sam2"]
