"""The sparse engine on Triton kernels: ``convert(model, backend="triton")`` runs LAUD models with
:class:`TritonKernels` (CUDA; on CPU tensors under ``TRITON_INTERPRET=1``)."""

from .backend import TritonKernels

__all__ = ["TritonKernels"]
