"""CLIP and DINOv2 through their real loading code, with small randomly initialised models (no network)."""

import json
import textwrap

import numpy as np
import pytest
import torch

from napari_matchseg import weights
from napari_matchseg.errors import WeightsError
from napari_matchseg.retrieval import retrieve
from napari_matchseg.tensors import to_batch
from napari_matchseg.retrieval.clip import ClipRetriever
from napari_matchseg.retrieval.dinov2 import Dinov2Retriever, hub_code_dir

TINY_CLIP = {"embed_dim": 32,
             "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
             "text_cfg": {"context_length": 16, "vocab_size": 500, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture
def tiny_clip(tmp_path):
    import open_clip

    cfg = tmp_path / "matchseg-tiny-clip.json"
    cfg.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(cfg)
    torch.manual_seed(0)
    model = open_clip.create_model("matchseg-tiny-clip", pretrained=None).eval()
    ckpt = tmp_path / "tiny_clip.pt"
    torch.save(model.state_dict(), ckpt)
    return cfg, ckpt, model


def test_clip_loads_a_local_checkpoint_and_embeds(tiny_clip, sample_triples):
    cfg, ckpt, model = tiny_clip
    r = ClipRetriever("matchseg-tiny-clip", checkpoint=ckpt, model_config=cfg, device="cpu")
    images = [t[1] for t in sample_triples[:5]] + [sample_triples[-1][1]]  # gray and RGB
    v = r.embed(images)
    assert v.shape == (6, 32) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1, rtol=1e-5)
    with torch.no_grad():  # the vectors are those of the saved weights, not of a fresh random model
        ref = model.encode_image(to_batch(images, 32, r._mean, r._std, torch.device("cpu"))).numpy()
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(v, ref, atol=1e-5)
    assert r.model_id.startswith("clip-matchseg-tiny-clip-file-")


def test_clip_bad_checkpoints(tiny_clip, tmp_path):
    cfg, ckpt, _ = tiny_clip
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(WeightsError, match="corrupt"):
        ClipRetriever("matchseg-tiny-clip", checkpoint=bad, model_config=cfg).load()
    with pytest.raises(WeightsError, match="does not exist"):
        ClipRetriever("matchseg-tiny-clip", checkpoint=tmp_path / "none.pt", model_config=cfg).load()
    other = dict(TINY_CLIP, embed_dim=16)
    (tmp_path / "matchseg-other-clip.json").write_text(json.dumps(other))
    with pytest.raises(WeightsError, match="another architecture|corrupt"):
        ClipRetriever("matchseg-other-clip", checkpoint=ckpt, model_config=tmp_path / "matchseg-other-clip.json").load()


def test_clip_official_weights_missing_offline_say_where_to_put_them():
    with pytest.raises(WeightsError) as e:
        ClipRetriever().load()
    msg = str(e.value)
    assert "huggingface.co/laion/CLIP-ViT-B-32" in msg and str(weights.where("clip-vit-b-32-laion2b")) in msg


HUBCONF = textwrap.dedent('''
    dependencies = ["torch"]
    import torch
    from torch import nn

    class TinyViT(nn.Module):
        """Same call convention as DINOv2: (B, 3, H, W) -> (B, D) normalised CLS token."""
        def __init__(self, embed_dim=48, patch=14):
            super().__init__()
            self.patch_embed = nn.Conv2d(3, embed_dim, patch, patch)
            self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim))
            layer = nn.TransformerEncoderLayer(embed_dim, 4, 96, batch_first=True)
            self.blocks = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(embed_dim)

        def forward(self, x):
            t = self.patch_embed(x).flatten(2).transpose(1, 2)
            t = torch.cat([self.cls_token.expand(len(t), -1, -1), t], 1)
            return self.norm(self.blocks(t))[:, 0]

    def dinov2_vits14(*, pretrained=True, **kwargs):
        if pretrained:
            raise RuntimeError("the test hub must never be asked to download weights")
        return TinyViT()
''')


@pytest.fixture
def tiny_dinov2(tmp_path):
    hub = tmp_path / "dinov2-code"
    hub.mkdir()
    (hub / "hubconf.py").write_text(HUBCONF)
    torch.manual_seed(1)
    model = torch.hub.load(str(hub), "dinov2_vits14", source="local", pretrained=False)
    ckpt = tmp_path / "dinov2_tiny.pth"
    torch.save(model.state_dict(), ckpt)
    return hub, ckpt, model


def test_dinov2_from_a_local_hub_dir_and_weights_file(tiny_dinov2, bank, sample_triples):
    hub, ckpt, model = tiny_dinov2
    r = Dinov2Retriever(hub_dir=hub, checkpoint=ckpt, device="cpu", image_size=56)
    v = r.embed([t[1] for t in sample_triples])
    assert v.shape == (12, 48)
    with torch.no_grad():
        ref = model.eval()(to_batch([sample_triples[0][1]], 56, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                                    torch.device("cpu"))).numpy()[0]
    np.testing.assert_allclose(v[0], ref / np.linalg.norm(ref), atol=1e-5)
    matches = retrieve(bank, r, sample_triples[2][1], k=3)
    assert matches[0].id == sample_triples[2][0] and matches[0].score == pytest.approx(1.0, abs=1e-5)


def test_dinov2_uses_the_torch_hub_cache_and_the_weights_cache(tiny_dinov2):
    hub, ckpt, _ = tiny_dinov2
    cached_code = hub_code_dir()
    cached_code.mkdir(parents=True)
    (cached_code / "hubconf.py").write_text(HUBCONF)
    with pytest.raises(WeightsError) as e:  # code found offline; weights not yet
        Dinov2Retriever(device="cpu").load()
    assert "dinov2_vits14_pretrain.pth" in str(e.value) and str(weights.where("dinov2_vits14")) in str(e.value)
    weights.where("dinov2_vits14").parent.mkdir(parents=True, exist_ok=True)
    weights.where("dinov2_vits14").write_bytes(ckpt.read_bytes())  # placed by hand, behind a firewall
    r = Dinov2Retriever(device="cpu", image_size=28)
    assert r.embed([np.zeros((30, 30), np.uint8) + 9]).shape == (1, 48)


def test_dinov2_errors(tiny_dinov2, tmp_path):
    hub, ckpt, _ = tiny_dinov2
    with pytest.raises(WeightsError, match="not on this machine"):
        Dinov2Retriever(device="cpu").load()
    with pytest.raises(WeightsError, match="no hubconf.py"):
        Dinov2Retriever(hub_dir=tmp_path, checkpoint=ckpt).load()
    wrong = tmp_path / "wrong.pth"
    torch.save({"something": torch.zeros(3)}, wrong)
    with pytest.raises(WeightsError, match="does not fit"):
        Dinov2Retriever(hub_dir=hub, checkpoint=wrong).load()
    pickled = tmp_path / "pickled.pth"
    torch.save({"weights": object()}, pickled)  # arbitrary pickles are refused (weights_only=True)
    with pytest.raises(WeightsError, match="cannot read"):
        Dinov2Retriever(hub_dir=hub, checkpoint=pickled).load()
    with pytest.raises(ValueError, match="multiple of 14"):
        Dinov2Retriever(image_size=100)
