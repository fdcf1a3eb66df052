"""Training, fine-tuning and semi-supervised learning for MatchSeg (no Qt)."""

from .._compat import avoid_triton_llvm_clash

# torch.optim imports torch._dynamo, which imports triton: inside napari (Mesa's LLVM already loaded) that
# segfaults the process unless triton is marked absent first (see _compat). Training code starts here.
avoid_triton_llvm_clash()
