"""Building ONNX graphs by hand: named nodes, deduplicated constants, ``If`` subgraphs.

A :class:`Graph` collects nodes and constants under readable names; :meth:`Graph.scope`
prefixes the names of what is built inside it (``layer1.0/conv1/Gemm``), so an ONNX Runtime
profile can attribute every node's time to the block part it serves. The branches of an ``If``
keep their own constants: ONNX Runtime reorders and prepacks only the weights a graph holds
itself, so a convolution inside a branch whose weights live outside runs several times slower.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
CONTRIB = "com.microsoft"
_DTYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int64): TensorProto.INT64,
           np.dtype(np.bool_): TensorProto.BOOL}


class Graph:
    """Nodes and constants of one (sub)graph; node and constant names are unique across all of them."""

    def __init__(self, name: str = "laudnet", parent: "Graph | None" = None, prefix: str = "") -> None:
        self.name = name
        self.parent = parent
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._constants: dict = {}
        self._counter = [0] if parent is None else parent._counter
        self.prefix = prefix

    # -- names ------------------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        self._counter[0] += 1
        return f"{self.prefix}{hint}_{self._counter[0]}"

    @contextmanager
    def scope(self, name: str) -> Iterator[None]:
        """Names made inside start with ``name/`` (nested scopes join with ``/``)."""
        previous = self.prefix
        self.prefix = f"{previous}{name}/"
        try:
            yield
        finally:
            self.prefix = previous

    # -- constants --------------------------------------------------------------------------------
    def const(self, value, dtype=None, hint: str = "const") -> str:
        """A constant (float32 by default for floats, int64 for ints), stored once per distinct value in this graph."""
        array = np.asarray(value)
        if dtype is not None:
            array = array.astype(dtype)
        elif array.dtype.kind == "f":
            array = array.astype(np.float32)
        elif array.dtype.kind in "iu":
            array = array.astype(np.int64)
        array = np.array(array, order="C")  # (np.ascontiguousarray would make a scalar 1-D)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            name = self.fresh(hint if array.size > 16 else "c")
            self.initializers.append(numpy_helper.from_array(array, name))
            self._constants[key] = name
        return self._constants[key]

    def ints(self, *values: int) -> str:
        """A 1-D int64 constant (shapes, axes, indices)."""
        return self.const(np.array(values, dtype=np.int64))

    def scalar(self, value, dtype=np.int64) -> str:
        return self.const(np.array(value, dtype=dtype))

    # -- nodes ------------------------------------------------------------------------------------
    def node(self, op: str, inputs: Sequence[str], outputs: int = 1, domain: str | None = None,
             **attributes) -> str | list[str]:
        """Add an ``op`` node; returns its output name (a list for several outputs)."""
        names = [self.fresh(op) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op, list(inputs), names, name=names[0], domain=domain, **attributes))
        return names[0] if outputs == 1 else names

    def __getattr__(self, op: str) -> Callable[..., str]:
        """``g.Gemm(a, b, c, transB=1)``: a node by its ONNX op name."""
        if not op[:1].isupper():
            raise AttributeError(op)
        return lambda *inputs, **attributes: self.node(op, inputs, **attributes)

    def if_(self, condition: str, then_branch: Callable[["Graph"], Sequence[str]],
            else_branch: Callable[["Graph"], Sequence[str]], outputs: int = 1) -> str | list[str]:
        """An ``If`` whose branches are built by the two functions (each returns its output names)."""
        branches = []
        for label, build in (("then", then_branch), ("else", else_branch)):
            sub = Graph(f"{self.name}_{label}", parent=self, prefix=self.prefix)
            results = list(build(sub))
            if len(results) != outputs:
                raise ValueError(f"{label} branch returned {len(results)} outputs, expected {outputs}")
            final = [sub.node("Identity", [r]) for r in results]  # a branch output must be made in the branch
            branches.append(helper.make_graph(sub.nodes, sub.name, [], [_untyped(n) for n in final], sub.initializers))
        names = [self.fresh("If") for _ in range(outputs)]
        self.nodes.append(helper.make_node("If", [condition], names, name=names[0], then_branch=branches[0],
                                           else_branch=branches[1]))
        return names[0] if outputs == 1 else names

    # -- the model --------------------------------------------------------------------------------
    def model(self, inputs: Sequence[onnx.ValueInfoProto], outputs: Sequence[onnx.ValueInfoProto]) -> onnx.ModelProto:
        if self.parent is not None:
            raise ValueError("only the root graph becomes a model")
        graph = helper.make_graph(self.nodes, self.name, list(inputs), list(outputs), self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                        helper.make_opsetid(CONTRIB, 1)],
                                  producer_name="laudnet")
        model.ir_version = 8
        return model


def _untyped(name: str) -> onnx.ValueInfoProto:
    """A subgraph output: float, shape left to inference."""
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)


def tensor_input(name: str, shape: Sequence[int | str | None] | None, dtype=np.float32) -> onnx.ValueInfoProto:
    """A graph input or output (``shape`` ``None``: left to inference)."""
    return helper.make_tensor_value_info(name, _DTYPES[np.dtype(dtype)], None if shape is None else list(shape))
