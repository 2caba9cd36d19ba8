"""ONNX Runtime's blocked activations kept across ``If`` boundaries.

ONNX Runtime convolves in a blocked channel layout (NCHWc) that its optimiser introduces per graph:
every value that enters or leaves an ``If`` branch is reordered back to NCHW, so a gated block pays
four full passes over its activation (reorder in, reorder out, an unfused residual ``Add`` and
``Relu``) that the static model does not. :func:`keep_blocked` lets ONNX Runtime optimise the
engine's graph, then rewrites the optimised graph so that blocked values cross the boundaries as
they are: a reorder back to NCHW that only feeds a reorder to blocked is dropped, residual sums,
ReLUs, copies, batch gathers and scatters run on the blocked values, the masker's mean runs as a
blocked global pooling, a transpose between NHWC rows and a blocked convolution becomes one reorder
from or to NHWC, a residual sum whose NCHW operand the graph also reorders to blocked (a block's
input, for its first convolution) adds that reorder, a residual sum ONNX Runtime flattened (after an
SE) adds the blocked values as they are, and a block's last convolution takes the residual sum and
ReLU as its fused post-operations again. Every rewrite computes the same values on the engine's
graphs (whose residual sums add operands of one shape and whose batch scatters write whole
samples); a pattern it does not know keeps its NCHW reorders (correct, only slower).

The result is specific to the machine it was made on (the block size is the CPU's), so it is made
when a session is built and never written to a file.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Iterator

import numpy as np
import onnx
from onnx import helper, numpy_helper

NCHWC = "com.microsoft.nchwc"
# Channels of a value rewritten to stay blocked must fill whole blocks (the largest block is 16), so
# the blocked tensor's logical shape equals the NCHW one (``Shape`` reads the same).
_BLOCK = 16
_SAME_LAYOUT = {"Relu", "Identity"}  # one input, elementwise


def keep_blocked(model: onnx.ModelProto, threads: int | None = None) -> onnx.ModelProto:
    """``model`` as ONNX Runtime optimises it on this machine, with blocked activations kept across
    ``If`` boundaries (load the result with the layout optimisation off: it is already applied)."""
    result = optimised(model, threads)
    _unique_names(result.graph, set(), itertools.count())
    _Rewriter().graph(result.graph, _Scope())
    _unflatten_sums(result.graph)
    _drop_unused(result.graph)
    _fuse_post_operations(result.graph)
    return result


def optimised(model: onnx.ModelProto, threads: int | None = None) -> onnx.ModelProto:
    """``model`` after ONNX Runtime's every graph optimisation (its blocked layout included)."""
    import onnxruntime as ort

    from .export import session_options

    with tempfile.TemporaryDirectory(prefix="laudnet_ort_") as folder:
        path = os.path.join(folder, "optimised.onnx")
        options = session_options(threads)
        options.optimized_model_filepath = path
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return onnx.load(path)


def _unique_names(graph: onnx.GraphProto, seen: set[str], counter: Iterator[int]) -> None:
    """Rename what a branch defines under a name already defined elsewhere: ONNX Runtime names its
    reorders per graph, so the model it saves can repeat an enclosing graph's name, which it then
    refuses to load."""
    local = [t.name for t in graph.initializer] + [v.name for v in graph.input] + \
        [name for node in graph.node for name in node.output if name]
    rename = {}
    for name in local:
        if name in seen:
            rename[name] = f"{name}@{next(counter)}"
        seen.add(rename.get(name, name))
    if rename:
        _rename(graph, rename)
    for sub in _subgraphs(graph):
        _unique_names(sub, seen, counter)


def _rename(graph: onnx.GraphProto, rename: dict[str, str]) -> None:
    """Apply ``rename`` to every name in ``graph`` and its branches (which see its names)."""
    for tensor in graph.initializer:
        tensor.name = rename.get(tensor.name, tensor.name)
    for value in (*graph.input, *graph.output):
        value.name = rename.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [rename.get(name, name) for name in node.input]
        node.output[:] = [rename.get(name, name) for name in node.output]
    for sub in _subgraphs(graph):
        _rename(sub, rename)


def _attribute(node: onnx.NodeProto, name: str, default=None):
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _reorder_output(source: str, output: str, channels: int, channels_last: int = 0) -> onnx.NodeProto:
    return helper.make_node("ReorderOutput", [source], [output], name=f"{output}/unblocked", domain=NCHWC,
                            channels=channels, channels_last=channels_last)


def _reorder_input(nhwc: str, output: str) -> onnx.NodeProto:
    """An NHWC image to the blocked layout in one pass."""
    return helper.make_node("ReorderInput", [nhwc], [output], name=f"{output}/blocked", domain=NCHWC, channels_last=1)


@dataclass
class _Scope:
    """What a graph sees of the values made so far (its own and its enclosing graphs'): ``blocked`` maps
    an NCHW value to its blocked twin and channel count, ``reordered`` an NCHW value of unknown
    channel count to its reorder to blocked, ``nhwc`` an NCHW transpose of an NHWC image to that image
    and its channel count, ``rename`` a dropped reorder's output to the value it repeated,
    ``constants`` the small integer constants."""

    blocked: dict[str, tuple[str, int]] = field(default_factory=dict)
    reordered: dict[str, str] = field(default_factory=dict)
    nhwc: dict[str, tuple[str, int]] = field(default_factory=dict)
    rename: dict[str, str] = field(default_factory=dict)
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    shapes: dict[str, np.ndarray] = field(default_factory=dict)  # outputs of reshapes to a constant shape

    def child(self) -> "_Scope":
        return _Scope(**{f.name: dict(getattr(self, f.name)) for f in fields(self)})


class _Rewriter:
    """One pass over a graph and its branches (see the module's docstring for what it rewrites)."""

    def graph(self, graph: onnx.GraphProto, outer: _Scope) -> _Scope:
        scope = outer.child()
        scope.constants.update({t.name: numpy_helper.to_array(t) for t in graph.initializer
                                if t.data_type == onnx.TensorProto.INT64 and len(t.dims) == 1 and t.dims[0] <= 8})
        nodes: list[onnx.NodeProto] = []
        for node in graph.node:
            node.input[:] = [scope.rename.get(name, name) for name in node.input]
            nodes.extend(self.node(node, scope))
        del graph.node[:]
        graph.node.extend(nodes)
        for output in graph.output:
            output.name = scope.rename.get(output.name, output.name)
        return scope

    def node(self, node: onnx.NodeProto, scope: _Scope) -> list[onnx.NodeProto]:
        op, inputs, blocked = node.op_type, list(node.input), scope.blocked
        if node.domain == NCHWC and op == "ReorderOutput":
            channels = _attribute(node, "channels", 0)
            if _attribute(node, "channels_last", 0) == 0 and channels % _BLOCK == 0:
                blocked[node.output[0]] = (inputs[0], channels)
            return [node]
        if node.domain == NCHWC and op == "ReorderInput" and _attribute(node, "channels_last", 0) == 0:
            if inputs[0] in blocked:
                scope.rename[node.output[0]] = blocked[inputs[0]][0]
                return []
            if inputs[0] in scope.nhwc:  # reorder the NHWC image itself (one pass, no transpose)
                image, channels = scope.nhwc[inputs[0]]
                blocked[inputs[0]] = (node.output[0], channels)
                return [_reorder_input(image, node.output[0])]
            scope.reordered[inputs[0]] = node.output[0]
            return [node]
        if node.domain not in ("", "ai.onnx"):
            return [node]
        if op == "If":
            return self.branches(node, scope)
        if op == "Transpose":
            return self.transpose(node, scope)
        if op == "Reshape" and inputs[1] in scope.constants:
            scope.shapes[node.output[0]] = scope.constants[inputs[1]]
        if op == "Shape" and inputs[0] in blocked and _attribute(node, "start", 0) == 0 and \
                _attribute(node, "end") is None:
            node.input[0] = blocked[inputs[0]][0]  # the same shape: the channels fill whole blocks
            return [node]
        if op == "ReduceMean" and inputs[0] in blocked and self.is_spatial_mean(node):
            return self.pooled(node, *blocked[inputs[0]])
        made = []
        if op == "Add" and len(inputs) == 2 and any(i in blocked for i in inputs):
            known = next(blocked[i][1] for i in inputs if i in blocked)
            for i in inputs:
                if i in blocked:
                    continue
                if i in scope.nhwc:  # a transposed NHWC operand joins a blocked one as the reordered image
                    image, channels = scope.nhwc[i]
                    blocked[i] = (f"{i}@nchwc", channels)
                    made.append(_reorder_input(image, blocked[i][0]))
                elif i in scope.reordered:  # a residual sum's operands have one shape: the reorder is its twin
                    blocked[i] = (scope.reordered[i], known)
        twin = self.blocked_inputs(node, blocked)
        if twin is None:
            return [*made, node]
        channels = blocked[inputs[0]][1]
        output = node.output[0]
        node.input[:] = twin
        node.output[0] = f"{output}@nchwc"
        blocked[output] = (node.output[0], channels)
        return [*made, node, _reorder_output(node.output[0], output, channels)]

    @staticmethod
    def transpose(node: onnx.NodeProto, scope: _Scope) -> list[onnx.NodeProto]:
        """NHWC to NCHW of an image of whole channel blocks: remembered (a reorder can read the image);
        NCHW to NHWC of a blocked value: one reorder from the blocked twin."""
        perm, source = list(_attribute(node, "perm", [])), node.input[0]
        if perm == [0, 2, 3, 1] and source in scope.blocked:
            twin, channels = scope.blocked[source]
            return [_reorder_output(twin, node.output[0], channels, channels_last=1)]
        if perm == [0, 3, 1, 2] and source in scope.shapes:
            channels = int(scope.shapes[source][-1])
            if channels % _BLOCK == 0:
                scope.nhwc[node.output[0]] = (source, channels)
        return [node]

    @staticmethod
    def blocked_inputs(node: onnx.NodeProto, blocked: dict) -> list[str] | None:
        """The node's inputs with their blocked twins where the node computes the same on blocked values."""
        op, inputs = node.op_type, list(node.input)
        if op in _SAME_LAYOUT and inputs[0] in blocked:
            return [blocked[inputs[0]][0]]
        if op == "Add" and len(inputs) == 2 and all(i in blocked for i in inputs) and \
                blocked[inputs[0]][1] == blocked[inputs[1]][1]:  # residual sums: operands of one shape
            return [blocked[i][0] for i in inputs]
        if op == "Gather" and inputs[0] in blocked and _attribute(node, "axis", 0) == 0:  # samples of a batch
            return [blocked[inputs[0]][0], inputs[1]]
        if op == "ScatterND" and inputs[0] in blocked and inputs[2] in blocked and \
                _attribute(node, "reduction", b"none") in (b"none", "none"):
            return [blocked[inputs[0]][0], inputs[1], blocked[inputs[2]][0]]  # whole samples (indices (k, 1))
        return None

    @staticmethod
    def is_spatial_mean(node: onnx.NodeProto) -> bool:
        return len(node.input) == 1 and list(_attribute(node, "axes", [])) == [2, 3] and \
            _attribute(node, "keepdims", 1) == 0

    @staticmethod
    def pooled(node: onnx.NodeProto, source: str, channels: int) -> list[onnx.NodeProto]:
        """A mean over positions ``(B, C)`` as a blocked global pooling: only ``B x C`` values are reordered."""
        output = node.output[0]
        pooled, image = f"{output}@nchwc", f"{output}@nchw"
        return [helper.make_node("GlobalAveragePool", [source], [pooled], name=pooled, domain=NCHWC),
                _reorder_output(pooled, image, channels),
                helper.make_node("Flatten", [image], [output], name=output, axis=1)]

    def branches(self, node: onnx.NodeProto, scope: _Scope) -> list[onnx.NodeProto]:
        """Rewrite both branches; outputs that are blocked in both leave the ``If`` blocked."""
        graphs = {a.name: a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH}
        inner = {name: self.graph(g, scope).blocked for name, g in graphs.items()}
        if set(graphs) != {"then_branch", "else_branch"}:
            return [node]
        extra = []
        for k, output in enumerate(node.output):
            results = [graphs[b].output[k].name for b in ("then_branch", "else_branch")]
            twins = [inner[b].get(r) for b, r in zip(("then_branch", "else_branch"), results)]
            if None in twins or twins[0][1] != twins[1][1]:
                continue
            for branch, (twin, _) in zip(("then_branch", "else_branch"), twins):
                graph = graphs[branch]
                if not any(twin in n.output for n in graph.node):  # a branch output must be made in the branch
                    graph.node.append(helper.make_node("Identity", [twin], [f"{twin}@out"], name=f"{twin}@out"))
                    twin = f"{twin}@out"
                graph.output[k].name = twin
            channels = twins[0][1]
            node.output[k] = f"{output}@nchwc"
            scope.blocked[output] = (node.output[k], channels)
            extra.append(_reorder_output(node.output[k], output, channels))
        return [node, *extra]


def _uses(graph: onnx.GraphProto) -> Counter:
    """How often each name is read in ``graph``: node inputs, its outputs and its branches' reads."""
    uses = Counter(name for node in graph.node for name in node.input)
    uses.update(output.name for output in graph.output)
    for sub in _subgraphs(graph):
        uses.update(_uses(sub))
    return uses


def _subgraphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The ``If`` branches of the graph's nodes (not their own branches)."""
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield attribute.g


def _drop_unused(graph: onnx.GraphProto) -> None:
    """Remove the nodes nothing reads any more, here or in a branch (the reorders and transposes the
    rewrite replaced)."""
    for sub in _subgraphs(graph):
        _drop_unused(sub)
    while True:
        uses = _uses(graph)
        kept = [n for n in graph.node if any(uses[name] for name in n.output)]
        if len(kept) == len(graph.node):
            return
        del graph.node[:]
        graph.node.extend(kept)


def _unflatten_sums(graph: onnx.GraphProto) -> None:
    """A residual ``Add`` of two blocked values that ONNX Runtime flattened first (both through one
    ``Reshape`` shape) and unflattened after adds them as they are, so that the convolution before it
    can take the sum as its fused post-operation (ONNX Runtime does this after an SE's unblocked
    scaling). The operands of a residual sum have one shape, which the unflattening restores."""
    for sub in _subgraphs(graph):
        _unflatten_sums(sub)
    uses = _uses(graph)
    producer = {n.output[0]: n for n in graph.node if n.output}
    reader = {name: node for node in graph.node for name in node.input}  # the only one where read once
    dropped = set()
    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type != "Add" or uses[node.output[0]] != 1:
            continue
        flattened = [producer.get(name) for name in node.input]
        after = reader.get(node.output[0])
        if not all(f is not None and f.op_type == "Reshape" and uses[f.output[0]] == 1 for f in flattened) \
                or flattened[0].input[1] != flattened[1].input[1] or after is None or after.op_type != "Reshape":
            continue
        node.input[:] = [f.input[0] for f in flattened]
        node.output[0] = after.output[0]
        dropped.add(id(after))
    kept = [n for n in graph.node if id(n) not in dropped]
    del graph.node[:]
    graph.node.extend(kept)


def _fuse_post_operations(graph: onnx.GraphProto) -> None:
    """A blocked convolution read only by a residual ``Add`` takes it as its ``Sum`` input, and one read
    only by a ``Relu`` takes it as its activation (ONNX Runtime's own fusions, redone across the boundary).
    The fused convolution moves to where the fused node was, after its new input is made."""
    for sub in _subgraphs(graph):
        _fuse_post_operations(sub)
    uses = _uses(graph)
    producer = {n.output[0]: n for n in graph.node if n.domain == NCHWC and n.op_type == "Conv"}
    kept: list[onnx.NodeProto] = []
    for node in graph.node:
        conv = None
        if node.domain in ("", "ai.onnx") and node.op_type in ("Add", "Relu"):
            conv = next((producer[name] for name in node.input if name in producer
                         and uses[name] == 1 and _attribute(producer[name], "activation") is None), None)
        if conv is not None and node.op_type == "Add" and len(conv.input) <= 3:
            conv.input.extend([""] * (3 - len(conv.input)))  # no bias: an empty optional input before the sum
            conv.input.append(node.input[1] if node.input[0] == conv.output[0] else node.input[0])
        elif conv is not None and node.op_type == "Relu":
            conv.attribute.append(helper.make_attribute("activation", "Relu"))
        else:
            kept.append(node)
            continue
        del producer[conv.output[0]]
        conv.output[0] = node.output[0]
        producer[conv.output[0]] = conv
        kept.remove(conv)
        kept.append(conv)
    del graph.node[:]
    graph.node.extend(kept)
