"""How LiteMedSAM's image encoder runs on this machine: the fastest variant that keeps its masks.

Every new image pays the encoder (about 75 GFLOPs per 256 x 256 input) before its first proposal, click or
propagated slice, so this is where CPU time goes. Runtimes (``MATCHSEG_ENCODER`` or the ``runtime`` argument):

* ``fp32``: the network as trained, with each convolution's batch norm folded into it and channels-last memory
  (the same arithmetic, reordered: embeddings within 1e-5 of the plain network);
* ``bf16``: the same, under bfloat16 autocast, on CPUs with native bf16 dot products (AVX512-BF16 or AMX);
* ``openvino``: an OpenVINO conversion of the same network (optional dependency, ``pip install openvino``), in
  bf16 where the CPU has it, else fp32. Converting takes about 10 s; the converted network is kept in
  ``$MATCHSEG_OPENVINO_DIR`` (default: ``openvino/`` in the weights cache folder), so later loads take 0.3 s;
* ``auto`` (default): on a GPU, the device's half precision as before; on a CPU, ``openvino`` when it is installed
  (the fastest: 0.33 s per image against 1.27 s before, on two AMD EPYC cores), else ``bf16`` where the CPU has
  it, else ``fp32``; a failed OpenVINO conversion falls back to torch with a warning. docs/benchmarks.md has each
  runtime's time and its Dice against fp32 (all within 0.002).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from .device import half_dtype
from .errors import InputError, MatchsegError

RUNTIMES = ("auto", "fp32", "bf16", "openvino")
ENV = "MATCHSEG_ENCODER"
OPENVINO_DIR_ENV = "MATCHSEG_OPENVINO_DIR"
log = logging.getLogger(__name__)


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 dot products that oneDNN uses (AVX512-BF16, AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def choose_runtime(device: torch.device, runtime: str | None = None) -> str:
    """The runtime to use: ``runtime``, else ``$MATCHSEG_ENCODER``, else ``auto`` resolved for this machine."""
    name = (runtime or os.environ.get(ENV) or "auto").lower()
    if name not in RUNTIMES:
        raise InputError(f"unknown encoder runtime {name!r} (from {'the argument' if runtime else ENV}); "
                         f"choose one of {', '.join(RUNTIMES)}")
    if device.type != "cpu":
        return "auto"  # a GPU keeps its half-precision autocast; the CPU runtimes do not apply
    if name == "auto":
        if importlib.util.find_spec("openvino") is not None:
            return "openvino"
        return "bf16" if cpu_has_bf16() else "fp32"
    if name == "bf16" and not cpu_has_bf16():
        raise InputError("MATCHSEG_ENCODER=bf16 was asked for, but this CPU has no native bf16 "
                         "(AVX512-BF16 or AMX); use fp32 or auto")
    return name


def fold_batch_norms(module: torch.nn.Module) -> int:
    """Fold every conv + batch-norm pair that offers ``fuse()`` (TinyViT's ``Conv2d_BN``) into one convolution,
    in place (inference only). Returns how many were folded."""
    folded = 0
    for name, child in list(module.named_children()):
        if callable(getattr(child, "fuse", None)) and isinstance(getattr(child, "bn", None), torch.nn.BatchNorm2d):
            setattr(module, name, child.fuse())
            folded += 1
        else:
            folded += fold_batch_norms(child)
    return folded


def prepare_encoder(encoder: torch.nn.Module, device: torch.device, runtime: str | None = None,
                    size: int = 256, cache_key: str | None = None
                    ) -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
    """``(encode, runtime)``: ``encode(x)`` maps a (1, 3, size, size) float input to the float32 embedding.

    ``encoder`` is changed in place on a CPU (batch norms folded, channels-last); keep the plain network elsewhere
    if it will be trained. ``cache_key`` names the network's weights (an OpenVINO conversion is kept under it;
    None: converted each time)."""
    asked = (runtime or os.environ.get(ENV) or "auto").lower()
    chosen = choose_runtime(device, runtime)
    if chosen == "auto":
        dtype = half_dtype(device)
        return _torch_encode(encoder, device, dtype, channels_last=False), f"{device.type}-{_name(dtype)}"
    encoder.eval()
    fold_batch_norms(encoder)
    encoder.to(memory_format=torch.channels_last)
    if chosen == "openvino":
        precision = "bf16" if cpu_has_bf16() else "f32"
        try:
            return openvino_encode(encoder, size, precision, cache_key), f"openvino-{precision}"
        except Exception as exc:  # noqa: BLE001 - auto falls back to torch; an explicit choice reports it
            if asked == "openvino":
                raise MatchsegError(f"OpenVINO could not run LiteMedSAM's encoder ({str(exc)[:200]}); "
                                    f"use {ENV}=auto, bf16 or fp32") from exc
            log.warning("OpenVINO could not convert the encoder (%s); using torch instead", str(exc)[:200])
            chosen = "bf16" if cpu_has_bf16() else "fp32"
    dtype = torch.bfloat16 if chosen == "bf16" else None
    return _torch_encode(encoder, device, dtype, channels_last=True), f"cpu-{_name(dtype)}"


def _name(dtype: torch.dtype | None) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def _torch_encode(encoder, device, dtype, channels_last: bool):
    def encode(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        cast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with torch.inference_mode(), cast:
            return encoder(x).float().contiguous()
    return encode


def openvino_dir() -> Path:
    """Where converted encoders are kept: ``$MATCHSEG_OPENVINO_DIR`` or ``openvino/`` in the weights cache."""
    env = os.environ.get(OPENVINO_DIR_ENV)
    if env:
        return Path(env).expanduser()
    from .weights import cache_dir

    return cache_dir() / "openvino"


def openvino_encode(encoder: torch.nn.Module, size: int, precision: str, cache_key: str | None = None):
    """``encoder`` converted by OpenVINO (or read from the conversion kept under ``cache_key``) and compiled for
    this CPU at ``precision`` ("bf16" or "f32"). Thread-safe: each call has its own inference request."""
    try:
        import openvino as ov
    except ImportError as exc:
        raise MatchsegError(f"{ENV}=openvino needs OpenVINO: pip install openvino "
                            "(or use auto, fp32 or bf16)") from exc
    core = ov.Core()
    model = None
    folder = None
    if cache_key is not None:
        tag = hashlib.sha256(f"{cache_key}|{size}|{ov.__version__}|{torch.__version__}".encode()).hexdigest()[:16]
        folder = openvino_dir() / tag
        if (folder / "encoder.xml").is_file():
            try:
                model = core.read_model(str(folder / "encoder.xml"))
            except Exception:  # noqa: BLE001 - a damaged conversion is made again
                model = None
    if model is None:
        with torch.no_grad():
            model = ov.convert_model(encoder, example_input=torch.zeros(1, 3, size, size))
        if folder is not None:
            _keep_conversion(ov, model, folder)
    config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": torch.get_num_threads()}
    compiled = core.compile_model(model, "CPU", config)

    def encode(x: torch.Tensor) -> torch.Tensor:
        request = compiled.create_infer_request()
        request.infer([x.detach().cpu().float().contiguous().numpy()])
        return torch.from_numpy(request.get_output_tensor(0).data.copy()).float()
    return encode


def _keep_conversion(ov, model, folder: Path) -> None:
    """Save the IR (two files) in a temporary folder, then rename it into place: readers never see half of it."""
    tmp = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
        ov.save_model(model, str(tmp / "encoder.xml"), compress_to_fp16=False)
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a damaged earlier conversion
        os.replace(tmp, folder)
    except OSError as exc:  # a read-only or full cache: convert again next time
        log.warning("could not keep the OpenVINO conversion in %s: %s", folder.parent, exc)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
