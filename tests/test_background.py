"""The background embedder: the newest shown image first, one encoding per image, failures reported, not raised."""

from __future__ import annotations

import threading

import numpy as np

from napari_matchseg.background import BackgroundEmbedder


class SlowModel:
    """Stands in for the predictor: records what it embedded; each embedding waits until released."""

    def __init__(self):
        self.done: list[int] = []
        self.release = threading.Event()

    def has_embedding(self, image) -> bool:
        return int(image[0, 0]) in self.done

    def embedding(self, image):
        self.release.wait(10)
        self.done.append(int(image[0, 0]))


def image(value: int) -> np.ndarray:
    return np.full((8, 8), value, np.uint8)


def test_only_the_newest_request_waiting_is_embedded_and_repeats_cost_nothing():
    model, said = SlowModel(), []
    bg = BackgroundEmbedder(lambda: model, said.append)
    bg.request("one", image(1))  # starts at once and blocks in embedding()
    while not any("one: embedding" in s for s in said):
        threading.Event().wait(0.01)
    bg.request("two", image(2))  # replaced by three before the thread is free
    bg.request("three", image(3))
    model.release.set()
    assert bg.wait_idle(10)
    assert model.done == [1, 3] and bg.embedded == ["one", "three"]
    bg.request("three again", image(3))
    assert bg.wait_idle(10)
    assert model.done == [1, 3] and said[-1] == "three again: ready for clicks"
    bg.close()
    bg.request("after close", image(4))
    assert bg.wait_idle(1) and model.done == [1, 3]


def test_a_model_that_cannot_load_stops_the_helper_with_a_message_not_an_exception():
    said = []

    def broken():
        raise RuntimeError("checkpoint missing")

    bg = BackgroundEmbedder(broken, said.append)
    bg.request("x", image(1))
    assert bg.wait_idle(10)
    assert said[-1].startswith("background embedding stopped: checkpoint missing")
    bg.request("y", image(2))  # closed: ignored, no thread left waiting
    assert bg.wait_idle(1)
