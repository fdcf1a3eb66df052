"""LiteMedSAM's encoder runtimes (real weights): the same masks as the plain network, the choice, the fallbacks."""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch

from conftest import load_real, real_ids
from napari_matchseg import encoder_runtime
from napari_matchseg.encoder_runtime import choose_runtime, cpu_has_bf16, fold_batch_norms, prepare_encoder
from napari_matchseg.errors import InputError, MatchsegError
from napari_matchseg.metrics import dice

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def network():
    from napari_matchseg.litemedsam import build_litemedsam

    return build_litemedsam("cpu")


@pytest.fixture(scope="module")
def sample():
    from napari_matchseg.litemedsam import preprocess

    image, gt = load_real("busi", real_ids("busi", "val", n=1)[0])
    return image, gt, preprocess(image)[0]


def _mask(network, encode, image, gt):
    from napari_matchseg.litemedsam import LiteMedSamPredictor

    predictor = LiteMedSamPredictor("cpu", model=copy.deepcopy(network), runtime="fp32")
    predictor._encode = encode
    ys, xs = np.nonzero(gt)
    prob, _ = predictor.predict(image, boxes=[[xs.min(), ys.min(), xs.max(), ys.max()]])
    return prob >= 0.5


def test_folding_and_channels_last_keep_the_plain_networks_embedding(network, sample):
    _, _, x = sample
    plain = copy.deepcopy(network.image_encoder)
    with torch.inference_mode():
        expected = plain(x)
    folded = copy.deepcopy(network.image_encoder)
    assert fold_batch_norms(folded) > 10  # TinyViT's conv + batch-norm pairs
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    encode, name = prepare_encoder(folded, CPU, "fp32")
    assert name == "cpu-fp32"
    assert torch.allclose(encode(x), expected, atol=1e-4)


@pytest.mark.parametrize("runtime", ["bf16", "openvino"])
def test_the_fast_runtimes_give_the_same_mask_as_fp32(network, sample, runtime):
    if runtime == "bf16" and not cpu_has_bf16():
        pytest.skip("this CPU has no native bf16 (AVX512-BF16 or AMX)")
    if runtime == "openvino":
        pytest.importorskip("openvino")
    image, gt, x = sample
    reference, _ = prepare_encoder(copy.deepcopy(network.image_encoder), CPU, "fp32")
    fast, name = prepare_encoder(copy.deepcopy(network.image_encoder), CPU, runtime)
    assert runtime in name
    a, b = reference(x), fast(x)
    assert a.shape == b.shape == (1, 256, 64, 64)
    assert (a - b).abs().max() < 0.5 and (a - b).abs().mean() < 0.01
    assert dice(_mask(network, fast, image, gt), _mask(network, reference, image, gt)) > 0.97


def test_the_runtime_is_chosen_for_the_machine_and_bad_names_are_one_line(monkeypatch):
    monkeypatch.delenv(encoder_runtime.ENV, raising=False)
    with pytest.raises(InputError, match="unknown encoder runtime 'fast16'.*auto, fp32, bf16, openvino"):
        choose_runtime(CPU, "fast16")
    monkeypatch.setenv(encoder_runtime.ENV, "FP32")
    assert choose_runtime(CPU) == "fp32"
    assert choose_runtime(torch.device("cuda")) == "auto"  # a GPU keeps its half-precision autocast
    monkeypatch.delenv(encoder_runtime.ENV)
    monkeypatch.setattr(encoder_runtime, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(encoder_runtime.importlib.util, "find_spec", lambda name: None)  # no OpenVINO
    assert choose_runtime(CPU) == "fp32"
    with pytest.raises(InputError, match="no native bf16"):
        choose_runtime(CPU, "bf16")
    monkeypatch.setattr(encoder_runtime, "cpu_has_bf16", lambda: True)
    assert choose_runtime(CPU) == "bf16"


def test_an_openvino_conversion_is_kept_reused_and_remade_when_damaged(network, sample, tmp_path, monkeypatch):
    ov = pytest.importorskip("openvino")
    monkeypatch.setenv(encoder_runtime.OPENVINO_DIR_ENV, str(tmp_path))
    _, _, x = sample
    first, _ = prepare_encoder(copy.deepcopy(network.image_encoder), CPU, "openvino", cache_key="test-weights")
    kept = list(tmp_path.glob("*/encoder.xml"))
    assert len(kept) == 1 and not list(tmp_path.glob("*.tmp-*"))
    calls = []
    real_convert = ov.convert_model
    monkeypatch.setattr(ov, "convert_model", lambda *a, **k: calls.append(1) or real_convert(*a, **k))
    again, _ = prepare_encoder(copy.deepcopy(network.image_encoder), CPU, "openvino", cache_key="test-weights")
    assert calls == [] and torch.equal(first(x), again(x))  # read back, not converted again
    kept[0].write_text("<net damaged")
    remade, _ = prepare_encoder(copy.deepcopy(network.image_encoder), CPU, "openvino", cache_key="test-weights")
    assert calls == [1] and torch.equal(first(x), remade(x))


def test_a_failed_openvino_conversion_falls_back_under_auto_and_is_one_line_when_asked_for(
        network, sample, monkeypatch):
    ov = pytest.importorskip("openvino")
    monkeypatch.delenv(encoder_runtime.ENV, raising=False)

    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operation")

    monkeypatch.setattr(ov, "convert_model", broken)
    encode, name = prepare_encoder(copy.deepcopy(network.image_encoder), CPU, "auto")
    assert name in ("cpu-bf16", "cpu-fp32") and encode(sample[2]).shape == (1, 256, 64, 64)
    with pytest.raises(MatchsegError, match="OpenVINO could not run LiteMedSAM's encoder .*unsupported operation"):
        prepare_encoder(copy.deepcopy(network.image_encoder), CPU, "openvino")


def test_two_threads_asking_for_one_image_encode_it_once(network, sample):
    from napari_matchseg.litemedsam import LiteMedSamPredictor

    predictor = LiteMedSamPredictor("cpu", model=copy.deepcopy(network))
    image = sample[0]
    out = []
    threads = [threading.Thread(target=lambda: out.append(predictor.embedding(image))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert predictor.encodings == 1 and len(out) == 3
    assert all(torch.equal(o.features, out[0].features) for o in out)
    assert predictor.has_embedding(image) and not predictor.has_embedding(image[::-1].copy())
