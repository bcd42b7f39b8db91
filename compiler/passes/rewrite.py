"""Graph rewrites: patterns a spec spells out become the fused ops torch runs best, and the layout and
inference choices codegen makes. Each is a pass (a name and `run(graph) -> graph`) in the OPTIMIZATIONS list
of compiler/pipeline.py, which `nnspec.compile` and `nnspec compile` run after the checking passes (`nnspec
check`, `summary` and `render` show the spec's own computation). Every rewrite keeps the outputs and the
gradients equal (tests/compiler/test_rewrites.py):

  RemoveIdentities   `identity` and dropouts with p = 0 are read through (they return their input).
  AttentionToSDPA    softmax(q k^T * scale + causal mask) v, the mask built from aranges (-inf where key j > query
                     i, by masked_fill, where, or an added 0/-inf matrix) or absent, with an attention dropout of 0
                     -> scaled_dot_product_attention(q, k, v, is_causal, scale): torch's flash attention on CPU,
                     which never stores the T x T weights (memory) and fuses the softmax (time). Other masks, and a
                     dropout p > 0 (SDPA would draw other random numbers), stay spelled out.
  LinearCrossEntropy cross_entropy(x W^T, y) (mean, W a `param` or a weight, e.g. GPT-2's tied LM head)
                     -> linear_cross_entropy(x, W, y): the gradient is taken in the forward pass one block of rows
                     at a time, so the log-softmax and the gradient of the logits (batch x tokens x vocabulary
                     each) are never stored; the logits themselves are still computed (an output of the spec).
  LSTMScanToFused    a scan whose cell is the LSTM cell (std/rnn.nn's LSTMCell, or the same gates written in
                     another order) -> lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh): torch.nn.LSTM's fused kernel
                     (oneDNN on CPU) in place of a Python loop of small ops; the layers' weights are read with
                     layer_param, so the parameters and their names do not change.
  ChooseLayouts      each 2-d convolution runs in the layout that is faster for its size: channels-last (NHWC)
                     where its output maps are large, the standard layout (NCHW) where they are small; pooling,
                     norms and activations follow their input; `channels_last` / `standard_layout` ops convert
                     between the regions (and outputs are given back NCHW), each sending its gradient back in the
                     layout of its input. Same values; see the class for the measurements.
  FoldConvBatchNorm  conv -> batch_norm pairs whose convolution output feeds only the norm (graph.conv_bn_folds):
                     codegen writes them as one call that, in inference (eval mode and autograd off), runs a
                     single convolution with the norm folded into its weights, w' = w g / sqrt(var + eps),
                     b' = (b - mean) g / sqrt(var + eps) + beta, cached until a weight or a statistic changes;
                     in training (or with autograd on) it is the convolution then the norm, as written.
  InplaceActivations relu / leaky_relu / sigmoid / tanh overwrite an input that nothing else reads and that the
                     producer's backward does not need (graph.inplace): less memory, no extra buffer to write.
  PoolIndicesFromInput  max pooling of a value the backward keeps anyway (a ReLU's output) keeps that value, not
                     int64 argmax indices, and finds the indices again in backward (graph.pool_from_input).

A rewrite that does not find its pattern leaves the graph as it is. The passes only match what they can prove
equal; they never guess.
"""
from __future__ import annotations

import math

from nnspec.compiler.ir import Graph, Node
from nnspec.compiler.shapes import TensorType

NEG_INF = -math.inf


# ------------------------------------------------------------------------------------------ graph helpers
def consumers(graph: Graph, ref: tuple) -> list:
    """(node id, input index) of every use of the value `ref`."""
    out = []
    for nid in graph.users(ref[0]):
        for i, r in enumerate(graph.nodes[nid].inputs):
            if tuple(r) == tuple(ref):
                out.append((nid, i))
    return out


def is_result(graph: Graph, ref: tuple) -> bool:
    return tuple(ref) in {tuple(r) for r in graph.result_refs()}


def only_used_by(graph: Graph, ref: tuple, consumer: str) -> bool:
    """The value is read once, by `consumer`, and is not an output, loss or metric."""
    uses = consumers(graph, ref)
    return len(uses) == 1 and uses[0][0] == consumer and not is_result(graph, ref)


def replace_uses(graph: Graph, old: tuple, new: tuple) -> None:
    """Every reader of `old` (nodes and the result tables) reads `new` instead."""
    old, new = tuple(old), tuple(new)
    for nid in graph.users(old[0]):
        node = graph.nodes[nid]
        if old in [tuple(r) for r in node.inputs]:
            graph.set_inputs(nid, [new if tuple(r) == old else r for r in node.inputs])
    for table in (graph.outputs, graph.losses, graph.metrics):
        for name, ref in table.items():
            if tuple(ref) == old:
                table[name] = new


def insert_before(graph: Graph, node: Node, anchor: str) -> Node:
    """Add `node` so that codegen, which follows insertion order where the dataflow allows, writes it where
    `anchor` was written."""
    graph.add_node(node)
    order = list(graph.nodes)
    order.remove(node.id)
    order.insert(order.index(anchor), node.id)
    graph.nodes = {k: graph.nodes[k] for k in order}
    return node


def producer(graph: Graph, ref: tuple) -> Node:
    return graph.nodes[ref[0]]


def constant_value(graph: Graph, ref: tuple):
    node = producer(graph, ref)
    return node.attrs["value"] if node.op == "constant" else None


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def rewrite_matches(graph: Graph, op: str, match, rewrite) -> None:
    """For each node `op` still in the graph: rewrite(graph, node, found) where match(graph, node) finds the
    pattern (a dict), else leave it. Nodes a rewrite removes are skipped."""
    for nid in list(graph.nodes):
        node = graph.nodes.get(nid)
        if node is not None and node.op == op:
            found = match(graph, node)
            if found is not None:
                rewrite(graph, node, found)


def _each_graph(graph: Graph):
    """The graph and every scan body inside it."""
    yield graph
    for node in list(graph.nodes.values()):
        body = node.attrs.get("body")
        if isinstance(body, Graph):
            yield from _each_graph(body)


# ------------------------------------------------------------------------------------------ identities
IDENTITY_OPS = ("identity", "dropout", "alpha_dropout", "dropout2d")


class RemoveIdentities:
    """`identity`, and dropouts with p = 0 (they return their input and draw no random numbers): their
    readers read the input instead, and the node goes."""

    name = "remove_identities"

    def run(self, graph: Graph) -> Graph:
        for g in _each_graph(graph):
            for node in list(g.nodes.values()):
                if node.op in IDENTITY_OPS and (node.op == "identity" or node.attrs.get("p") == 0.0):
                    replace_uses(g, (node.id, 0), tuple(node.inputs[0]))
                    g.remove_node(node.id)
        return graph


# ------------------------------------------------------------------------------------------ attention
class AttentionToSDPA:
    name = "attention_to_sdpa"

    def run(self, graph: Graph) -> Graph:
        for g in _each_graph(graph):
            rewrite_matches(g, "matmul", match_attention, _to_sdpa)
        return graph


def match_attention(graph: Graph, pv: Node) -> dict | None:
    """q, k, v, scale and causality of `pv` = softmax(q k^T * scale + mask) v, or None if it is not that."""
    p_ref, v_ref = (tuple(r) for r in pv.inputs)
    p = producer(graph, p_ref)
    if p.op == "dropout":                      # attention dropout: only p = 0 is the identity SDPA can absorb
        if p.attrs["p"] != 0.0 or not only_used_by(graph, p_ref, pv.id):
            return None
        user, p_ref = p.id, tuple(p.inputs[0])
        p = producer(graph, p_ref)
    else:
        user = pv.id
    if p.op != "softmax" or not only_used_by(graph, p_ref, user):
        return None
    rank = graph.type_of(p_ref).rank
    if p.attrs["dim"] % rank != rank - 1:
        return None
    s_ref, user = tuple(p.inputs[0]), p.id
    scale, mask = 1.0, None
    scaled = False
    for _ in range(3):                          # scale and mask, in either order, each at most once
        if not only_used_by(graph, s_ref, user):
            return None
        node = producer(graph, s_ref)
        step = _score_step(graph, node, scaled, mask is not None)
        if step is None:
            break
        kind, value, s_ref = step
        if kind == "scale":
            scale, scaled = scale * value, True
        else:
            mask = value
        user = node.id
    qk = producer(graph, s_ref)
    if qk.op != "matmul" or not only_used_by(graph, s_ref, user):
        return None
    q_ref, kt_ref = (tuple(r) for r in qk.inputs)
    k_ref = _untransposed(graph, kt_ref)
    if k_ref is None:
        return None
    q, k, v = graph.type_of(q_ref), graph.type_of(k_ref), graph.type_of(v_ref)
    if not (q.is_float and k.is_float and v.is_float) or not q.rank == k.rank == v.rank >= 2:
        return None
    if not tuple(q.shape[:-2]) == tuple(k.shape[:-2]) == tuple(v.shape[:-2]):
        return None                             # broadcasting batch dims: left to matmul
    causal = False
    if mask is not None:
        length = _causal_length(graph, mask)
        if length is None or not (q.shape[-2] == k.shape[-2] == length):
            return None                         # only the causal mask is rewritten (see the module docstring)
        causal = True
    return {"q": q_ref, "k": k_ref, "v": v_ref, "scale": float(scale), "causal": causal}


def _score_step(graph: Graph, node: Node, scaled: bool, masked: bool):
    """('scale', factor, rest) or ('mask', (kind, mask ref), rest) for one op on the attention scores."""
    ins = [tuple(r) for r in node.inputs]
    if node.op in ("div", "mul") and not scaled:
        for i in (1, 0) if node.op == "mul" else (1,):
            c = constant_value(graph, ins[i])
            if _number(c) and c != 0 and math.isfinite(c):
                return "scale", (1.0 / c if node.op == "div" else float(c)), ins[1 - i]
        return None
    if masked:
        return None
    if node.op == "masked_fill" and node.attrs["value"] == NEG_INF:
        return "mask", ("fill", ins[1]), ins[0]
    if node.op == "where" and _is_neg_inf(graph, ins[2]):
        return "mask", ("keep", ins[0]), ins[1]
    if node.op == "add":
        for i in (1, 0):
            t = graph.type_of(ins[i])
            if t.rank == 2 and t.is_float and _zero_or_neg_inf(graph, ins[i]) is not None:
                return "mask", ("add", ins[i]), ins[1 - i]
    return None


def _is_neg_inf(graph: Graph, ref: tuple) -> bool:
    """-inf as a constant or as full(shape, -inf)."""
    node = producer(graph, ref)
    return constant_value(graph, ref) == NEG_INF or (node.op == "full" and node.attrs["value"] == NEG_INF)


def _zero_or_neg_inf(graph: Graph, ref: tuple):
    """The `future` mask of an additive mask built as masked_fill(zeros, future, -inf), else None."""
    node = producer(graph, ref)
    if node.op != "masked_fill" or node.attrs["value"] != NEG_INF:
        return None
    base = producer(graph, tuple(node.inputs[0]))
    if base.op == "zeros" or (base.op == "full" and base.attrs["value"] == 0):
        return tuple(node.inputs[1])
    return None


def _causal_length(graph: Graph, mask) -> object | None:
    """T if the mask is the causal mask of T positions (position i sees keys j <= i), else None."""
    kind, ref = mask
    if kind == "add":
        ref = _zero_or_neg_inf(graph, ref)
        kind = "fill"
    node = producer(graph, ref)
    if node.op not in ("gt", "lt", "ge", "le") or len(node.inputs) != 2:
        return None
    a, b = (_index_role(graph, tuple(r)) for r in node.inputs)
    if a is None or b is None or a[0] != b[0] or a[1] == b[1]:
        return None
    # the comparison as a relation between the key index j (columns) and the query index i (rows)
    flip = {"gt": "lt", "lt": "gt", "ge": "le", "le": "ge"}
    rel = node.op if a[1] == "col" else flip[node.op]          # now: j REL i
    if kind == "fill" and rel == "gt":                          # hide j > i
        return a[0]
    if kind == "keep" and rel == "le":                          # keep j <= i
        return a[0]
    return None


def _index_role(graph: Graph, ref: tuple):
    """(N, 'row') for arange(N) shaped [N, 1], (N, 'col') for arange(N) shaped [1, N] or [N]; else None."""
    node = producer(graph, ref)
    t = graph.type_of(ref)
    if node.op == "arange":
        return node.attrs["end"], "col"
    if node.op in ("unsqueeze", "reshape") and t.rank == 2:
        src = producer(graph, tuple(node.inputs[0]))
        if src.op != "arange":
            return None
        n = src.attrs["end"]
        if tuple(t.shape) == (1, n):
            return n, "col"
        if tuple(t.shape) == (n, 1):
            return n, "row"
    return None


def _untransposed(graph: Graph, ref: tuple):
    """K for a value that is K with its last two dimensions swapped (transpose or permute), else None."""
    node = producer(graph, ref)
    rank = graph.type_of(ref).rank
    if node.op == "transpose":
        dims = {node.attrs["dim0"] % rank, node.attrs["dim1"] % rank}
        return tuple(node.inputs[0]) if dims == {rank - 2, rank - 1} else None
    if node.op == "permute":
        dims = [d % rank for d in node.attrs["dims"]]
        return tuple(node.inputs[0]) if dims == list(range(rank - 2)) + [rank - 1, rank - 2] else None
    return None


def _to_sdpa(graph: Graph, pv: Node, found: dict) -> None:
    attrs = {"is_causal": found["causal"], "scale": found["scale"]}
    node = Node(graph.fresh_id("attention"), "scaled_dot_product_attention", [found["q"], found["k"], found["v"]],
                attrs, list(pv.outputs), span=pv.span, path=pv.path, label=pv.label or "attention")
    insert_before(graph, node, pv.id)
    replace_uses(graph, (pv.id, 0), (node.id, 0))
    graph.remove_node(pv.id)     # the scores, the softmax and the mask are dead now: dce removes them


# ------------------------------------------------------------------------------------------ LSTM
class LSTMScanToFused:
    name = "lstm_scan_to_fused"

    def run(self, graph: Graph) -> Graph:
        rewrite_matches(graph, "scan", match_lstm_scan, _to_lstm)
        return graph


def match_lstm_scan(graph: Graph, scan: Node) -> dict | None:
    """The two linear layers and the sizes of an LSTM cell scanned forwards over dim 0 or 1, or None."""
    a = scan.attrs
    if not a.get("has_xs") or a.get("n_carries") != 2 or a.get("reverse") or a.get("axis") not in (0, 1):
        return None
    if graph.type_of(tuple(scan.inputs[0])).rank != 3:
        return None
    body: Graph = a["body"]
    if len(body.inputs) != 3 or set(body.outputs) != {"carry0", "carry1", "y"}:
        return None
    x_in, h_in, c_in = ((i, 0) for i in body.inputs)
    h_ref, c_ref = tuple(body.outputs["carry0"]), tuple(body.outputs["carry1"])
    if tuple(body.outputs["y"]) != h_ref:
        return None
    gates = {}                                   # chunk output index -> activation applied to it

    def gate(ref, act):
        """The chunk output behind act(chunk[k]); records k."""
        n = producer(body, ref)
        if n.op != act:
            return None
        src = tuple(n.inputs[0])
        chunk = producer(body, src)
        if chunk.op != "chunk" or chunk.attrs["chunks"] != 4 or chunk.attrs["dim"] % 2 != 1:
            return None
        gates[src[1]] = (act, chunk.id)
        return chunk.id

    # h' = sigmoid(o) * tanh(c')
    h_node = producer(body, h_ref)
    if h_node.op != "mul":
        return None
    ok = False
    for x, y in _orders(h_node):
        t = producer(body, y)
        if t.op == "tanh" and tuple(t.inputs[0]) == c_ref and gate(x, "sigmoid") is not None:
            ok = True
            break
    if not ok:
        return None
    # c' = sigmoid(f) * c + sigmoid(i) * tanh(g)
    c_node = producer(body, c_ref)
    if c_node.op != "add":
        return None
    kept = fresh = False
    for term in (tuple(r) for r in c_node.inputs):
        t = producer(body, term)
        if t.op != "mul":
            return None
        for x, y in _orders(t):
            if y == c_in and gate(x, "sigmoid") is not None:
                kept = True
                break
            if gate(x, "sigmoid") is not None and gate(y, "tanh") is not None:
                fresh = True
                break
    if not (kept and fresh):
        return None
    # gate order i, f, g, o (torch's): chunk 0 = sigmoid -> i (with tanh(g)), 1 -> f (with c), 2 = tanh, 3 -> o
    chunk_ids = {cid for _, cid in gates.values()}
    if len(chunk_ids) != 1 or set(gates) != {0, 1, 2, 3}:
        return None
    if [gates[k][0] for k in range(4)] != ["sigmoid", "sigmoid", "tanh", "sigmoid"]:
        return None
    if not _gate_roles(body, c_node, h_node, c_in):
        return None
    chunk = body.nodes[chunk_ids.pop()]
    pre = producer(body, tuple(chunk.inputs[0]))
    if pre.op != "add":
        return None
    lin = {}
    for r in (tuple(x) for x in pre.inputs):
        n = producer(body, r)
        if n.op != "linear" or n.module is None:
            return None
        src = tuple(n.inputs[0])
        lin["ih" if src == x_in else "hh" if src == h_in else "?"] = n
    if set(lin) != {"ih", "hh"} or lin["ih"].attrs["bias"] != lin["hh"].attrs["bias"]:
        return None
    hidden = body.type_of(h_in).shape[-1]
    if lin["hh"].attrs["out_features"] != 4 * hidden or body.type_of(h_in).rank != 2:
        return None
    return {"ih": lin["ih"].module, "hh": lin["hh"].module, "bias": lin["ih"].attrs["bias"], "hidden": hidden}


def _orders(node: Node):
    a, b = (tuple(r) for r in node.inputs)
    return ((a, b), (b, a))


def _gate_roles(body: Graph, c_node: Node, h_node: Node, c_in) -> bool:
    """Chunk 1 (f) scales the old cell state, chunk 0 (i) the candidate, chunk 3 (o) the output."""
    def chunk_index(ref):
        n = producer(body, ref)
        return tuple(n.inputs[0])[1] if n.op in ("sigmoid", "tanh") else None
    for term in (tuple(r) for r in c_node.inputs):
        t = producer(body, term)
        refs = [tuple(r) for r in t.inputs]
        idx = sorted(i for i in (chunk_index(r) for r in refs if r != c_in) if i is not None)
        if c_in in refs and idx != [1]:
            return False
        if c_in not in refs and idx != [0, 2]:
            return False
    idx = [chunk_index(tuple(r)) for r in h_node.inputs]
    return 3 in idx


def _to_lstm(graph: Graph, scan: Node, cell: dict) -> None:
    xs, h0, c0 = (tuple(r) for r in scan.inputs)
    ys_t, h_t, c_t = scan.outputs
    state_t = h_t.with_shape((1,) + tuple(h_t.shape))
    labels = scan.out_labels or [scan.label or "ys", "h_n", "c_n"]

    def add(op, inputs, attrs, outputs, label, module=None, out_labels=None):
        n = Node(graph.fresh_id(label), op, inputs, attrs, outputs, module=module, span=scan.span, path=scan.path,
                 label=label, out_labels=out_labels)
        insert_before(graph, n, scan.id)
        return n

    def weight(module, param):
        spec = next(p for p in graph.modules[module].params if p.name == param)
        return (add("layer_param", [], {"param": param}, [TensorType(ys_t.dtype, tuple(spec.shape))],
                    f"{module.replace('.', '_')}_{param}", module=module).id, 0)

    h0u = add("unsqueeze", [h0], {"dim": 0}, [state_t], "h0").id
    c0u = add("unsqueeze", [c0], {"dim": 0}, [state_t], "c0").id
    weights = [weight(cell["ih"], "weight"), weight(cell["hh"], "weight")]
    if cell["bias"]:
        weights += [weight(cell["ih"], "bias"), weight(cell["hh"], "bias")]
    lstm = add("lstm", [xs, (h0u, 0), (c0u, 0)] + weights, {"batch_first": scan.attrs["axis"] == 1},
               [ys_t, state_t, state_t], labels[0], out_labels=[labels[0], f"{labels[1]}_all", f"{labels[2]}_all"])
    h_n = add("squeeze", [(lstm.id, 1)], {"dim": 0}, [h_t], labels[1])
    c_n = add("squeeze", [(lstm.id, 2)], {"dim": 0}, [c_t], labels[2])
    for k, new in enumerate([(lstm.id, 0), (h_n.id, 0), (c_n.id, 0)]):
        replace_uses(graph, (scan.id, k), new)
    graph.remove_node(scan.id)


# ------------------------------------------------------------------------------------------ layout
CL_MIN_PIXELS = 64   # a convolution runs channels-last when each of its output channels has at least this many pixels

# ops that compute as fast (or faster) on channels-last 4-d values and give their result in their input's layout
LAYOUT_FOLLOWERS = {"max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d", "upsample",
                    "batch_norm", "group_norm", "prelu", "add", "sub", "mul", "div", "maximum", "minimum", "where",
                    "masked_fill", "pow", "stop_gradient", "straight_through"}
LAYOUT_FOLLOWER_CATEGORIES = {("elementwise", "activation"), ("elementwise", "math"), ("elementwise", "regularization")}


class ChooseLayouts:
    """Per convolution, the memory layout it runs fastest in, and the conversions between the layouts.

    A 2-d convolution whose output has at least CL_MIN_PIXELS pixels per channel runs channels-last (NHWC), a
    smaller one in the standard layout (NCHW). The ops that compute as fast or faster on channels-last values
    (activations, elementwise math, batch norm, pooling; LAYOUT_FOLLOWERS) take their input's layout; every other
    reader of a channels-last value (flatten, reshape, matmul, a scan, the module's outputs) gets it back in the
    standard layout. The conversions are ops of the graph: `channels_last` before a convolution whose input is in
    the standard layout, `standard_layout` where a channels-last region ends. Each sends its gradient back in the
    layout of its input, so that no layer's backward receives a gradient in the other layout (max pooling and
    batch norm would convert it, and their backward runs several times slower). Weights keep the standard layout:
    oneDNN takes NCHW weights with NHWC activations at no cost, and their gradients come back NCHW.

    The choice, measured on this project's 2-core machine (oneDNN 3.12, batch 16, training step per layer):
    channels-last is faster for the large early feature maps (resnet18 at 64x64: the 7x7 stem convolution 1.5 ms
    against 4.1 ms forward, max pooling 0.22 against 3.99 ms, batch norm 0.25 against 0.97 ms on 32x32 maps)
    and slower once the maps are small and the weights large (512 channels at 2x2: forward and backward 8.6 against
    5.4 ms). With the switch at 8x8 output maps, resnet18 at 64x64 trains in 0.92x the time of the all-NCHW
    model, where all-NHWC took 1.15x; mnist_cnn (26x26 and 11x11 maps) runs channels-last throughout.
    Layouts never change values; a convolution with a symbolic image size keeps the standard layout. The timings
    are oneDNN's: on another device (CUDA) `channels_last` leaves its input as it is, so the model runs in the
    standard layout there, as written, and the fused Triton kernels read their operands contiguously."""

    name = "layouts"

    def run(self, graph: Graph) -> Graph:
        from nnspec.compiler.ops.registry import REGISTRY
        self.graph = graph
        self.layout: dict[tuple, str] = {}          # value -> "channels_last" | "standard"
        self.converted: dict[tuple, tuple] = {}     # (value, layout) -> the converted value
        graph.channels_last = []  # the convolutions that run channels-last
        for nid in graph.topo_order():
            node = graph.nodes[nid]
            images = [k for k, r in enumerate(node.inputs) if _image(graph, r)]
            if not images:
                continue
            opdef = REGISTRY.get(node.op)
            if node.op == "conv2d" and images == [0]:
                want = "channels_last" if runs_channels_last(graph, node) else "standard"
                self._convert(node, 0, want)
                self.layout[(nid, 0)] = want
                if want == "channels_last":
                    graph.channels_last.append(nid)
            elif node.op in LAYOUT_FOLLOWERS or (opdef is not None and (opdef.kind, opdef.category)
                                                 in LAYOUT_FOLLOWER_CATEGORIES):
                first = tuple(node.inputs[images[0]])
                want = self.layout.get(first, "standard")
                for k in images[1:]:  # other full-size images: the first one's layout; broadcast operands as they are
                    if tuple(graph.type_of(tuple(node.inputs[k])).shape) == tuple(graph.type_of(first).shape):
                        self._convert(node, k, want)
                for k, t in enumerate(node.outputs):
                    if t.rank == 4:
                        self.layout[(nid, k)] = want
            else:
                for k in images:
                    self._convert(node, k, "standard")
        for table in (graph.outputs, graph.losses, graph.metrics):
            for name, ref in list(table.items()):
                if self.layout.get(tuple(ref)) == "channels_last":
                    table[name] = self._conversion(tuple(ref), "standard", None)
        return graph

    def _convert(self, node: Node, k: int, want: str) -> None:
        ref = tuple(node.inputs[k])
        if self.layout.get(ref, "standard") != want:
            inputs = list(node.inputs)
            inputs[k] = self._conversion(ref, want, node.id)
            self.graph.set_inputs(node.id, inputs)

    def _conversion(self, ref: tuple, want: str, before: str | None) -> tuple:
        """The value `ref` in layout `want`: one conversion node per value and layout, shared by its readers."""
        if (ref, want) not in self.converted:
            graph = self.graph
            src = producer(graph, ref)
            op = "channels_last" if want == "channels_last" else "standard_layout"
            node = Node(graph.fresh_id(op), op, [ref], {}, [graph.type_of(ref)], span=src.span, path=src.path,
                        label=src.out_labels[ref[1]] if src.out_labels else src.label)
            if before is None:
                graph.add_node(node)
            else:
                insert_before(graph, node, before)
            self.converted[(ref, want)] = (node.id, 0)
            self.layout[(node.id, 0)] = want
        return self.converted[(ref, want)]


def _image(graph: Graph, ref) -> bool:
    t = graph.type_of(tuple(ref))
    return t.rank == 4 and t.is_float


def runs_channels_last(graph: Graph, conv: Node) -> bool:
    """The convolution's output maps have a known size of at least CL_MIN_PIXELS pixels (see ChooseLayouts)."""
    from nnspec.compiler.shapes import is_concrete, numel
    pixels = numel(conv.outputs[0].shape[2:])
    return is_concrete(pixels) and pixels >= CL_MIN_PIXELS


# ------------------------------------------------------------------------------------------ conv + batch norm
FOLDABLE_CONVS = ("conv1d", "conv2d", "conv3d")


class FoldConvBatchNorm:
    name = "fold_conv_batch_norm"

    def run(self, graph: Graph) -> Graph:
        folds = {}
        for node in graph.nodes.values():
            if node.op != "batch_norm" or node.module is None:
                continue
            src = tuple(node.inputs[0])
            conv = producer(graph, src)
            if conv.op in FOLDABLE_CONVS and conv.module is not None and only_used_by(graph, src, node.id):
                folds[node.id] = conv.id
        graph.conv_bn_folds = folds
        return graph


# ------------------------------------------------------------------------------------------ in-place activations
# activations whose backward reads their output (so overwriting the input is safe), and the in-place call
INPLACE_ACTIVATIONS = {
    "relu": lambda x, a: f"F.relu({x}, inplace=True)",
    "leaky_relu": lambda x, a: f"F.leaky_relu({x}, {a['negative_slope']!r}, inplace=True)",
    "sigmoid": lambda x, a: f"torch.sigmoid_({x})",
    "tanh": lambda x, a: f"torch.tanh_({x})",
}
# producers that write a fresh tensor and whose backward does not read it (it reads their inputs)
FRESH_UNSAVED = {"linear", "conv1d", "conv2d", "conv3d", "conv_transpose2d", "batch_norm", "layer_norm", "group_norm",
                 "add", "sub", "matmul"}


class InplaceActivations:
    """relu, leaky_relu (slope > 0), sigmoid and tanh overwrite their input (graph.inplace, written by codegen as
    F.relu(h, inplace=True), ...) when that input is read by nothing else, is not a result, and comes from an op
    that writes a new tensor and keeps its inputs, not its output, for the backward pass (a layer, a norm, a sum):
    then autograd needs the value nowhere, and one activation-sized buffer per layer is neither allocated nor
    written (mnist_cnn: peak training memory 0.75x). The module's forward only: nnspec's own backward files keep
    every value they save."""

    name = "inplace_activations"

    def run(self, graph: Graph) -> Graph:
        chosen = set()
        for node in graph.nodes.values():
            if node.op not in INPLACE_ACTIVATIONS or (node.op == "leaky_relu" and not node.attrs["negative_slope"] > 0):
                continue
            src = tuple(node.inputs[0])
            if producer(graph, src).op in FRESH_UNSAVED and only_used_by(graph, src, node.id) \
                    and graph.type_of(src).is_float:
                chosen.add(node.id)
        graph.inplace = chosen
        return graph


RESULT_SAVING = ("relu", "sigmoid", "tanh")   # torch's backward of these keeps their output (in place or not)


class PoolIndicesFromInput:
    """max_pool2d of a value that the backward pass keeps anyway (the output of a relu, sigmoid or tanh, or of an
    activation that overwrites its input: their backward reads their output) saves that value instead of the
    argmax indices, and finds the indices again in backward (graph.pool_from_input; codegen writes
    `_max_pool2d_from_input(...)`). torch's max pooling keeps an int64 index per output element, twice the
    output's size; here the backward reads a tensor autograd holds anyway, so the indices cost no memory between
    the passes, for one more pooling of the input in backward (0.2 ms for resnet18's stem at 64x64, NHWC).
    Same values and gradients: the indices are found by the same kernel on the same input."""

    name = "pool_indices_from_input"

    def run(self, graph: Graph) -> Graph:
        inplace = getattr(graph, "inplace", None) or set()
        chosen = set()
        for node in graph.nodes.values():
            if node.op != "max_pool2d" or graph.type_of(tuple(node.inputs[0])).rank != 4:
                continue
            src = producer(graph, tuple(node.inputs[0]))
            if src.op in RESULT_SAVING or src.id in inplace:
                chosen.add(node.id)
        graph.pool_from_input = chosen
        return graph


POOL_FROM_INPUT_HELPER = '''
class _MaxPool2dFromInput(torch.autograd.Function):
    """max_pool2d that keeps its input, not the int64 argmax indices, and finds the indices again in backward:
    nnspec puts it where the backward pass keeps the input anyway (the output of a ReLU)."""

    @staticmethod
    def forward(ctx, x, kernel, stride, padding, dilation, ceil_mode):
        ctx.save_for_backward(x)
        ctx.args = (kernel, stride, padding, dilation, ceil_mode)
        return F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode)

    @staticmethod
    def backward(ctx, g):
        x, = ctx.saved_tensors
        kernel, stride, padding, dilation, ceil_mode = ctx.args
        _, indices = torch.ops.aten.max_pool2d_with_indices(x, kernel, stride, padding, dilation, ceil_mode)
        dx = torch.ops.aten.max_pool2d_with_indices_backward(g, x, kernel, stride, padding, dilation, ceil_mode, indices)
        return dx, None, None, None, None, None


def _max_pool2d_from_input(x, kernel, stride=None, padding=0, dilation=1, ceil_mode=False):
    """F.max_pool2d(x, ...); in training, the backward pass reads x instead of indices kept from the forward."""
    two = (lambda v: [v, v] if isinstance(v, int) else list(v))
    args = (two(kernel), two(kernel if stride is None else stride), two(padding), two(dilation), ceil_mode)
    if x.requires_grad and torch.is_grad_enabled():
        return _MaxPool2dFromInput.apply(x, *args)
    return F.max_pool2d(x, *args)
'''


CONV_BN_HELPER = '''
def _conv_bn(conv, bn, x):
    """bn(conv(x)). In inference (eval mode, autograd off) the batch norm is folded into the convolution:
    w' = w * g / sqrt(var + eps), b' = (b - mean) * g / sqrt(var + eps) + beta, one convolution and no pass over
    its output; the folded weights are kept until a weight or a running statistic changes (version counters)."""
    if bn.training or torch.is_grad_enabled():
        return bn(conv(x))
    tensors = (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)
    key = tuple(None if t is None else (t.data_ptr(), t._version, t.dtype) for t in tensors)
    cache = conv.__dict__.setdefault("_nnspec_folded", {})
    hit = cache.get(id(bn))
    if hit is None or hit[0] != key:
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        weight = conv.weight * scale.reshape((-1,) + (1,) * (conv.weight.dim() - 1))
        bias = (-bn.running_mean if conv.bias is None else conv.bias - bn.running_mean) * scale
        if bn.bias is not None:
            bias = bias + bn.bias
        hit = cache[id(bn)] = (key, weight, bias)
    return conv._conv_forward(x, hit[1], hit[2])
'''


# ------------------------------------------------------------------------------------------ linear + cross-entropy
class LinearCrossEntropy:
    """cross_entropy(reshape(x @ W^T, [N, V]), reshape(y, [N])) (mean, no label smoothing), the logits being
    a product with a weight matrix (a `param`, or a bias-free linear layer's weight) -> linear_cross_entropy(x, W, y):
    the gradient is taken in the forward pass, block by block of rows, so neither the log-softmax of the logits nor
    the gradient of the logits (each as large as the logits: batch x tokens x vocabulary) is ever stored. The logits
    are still computed (and stay an output when the spec returns them)."""

    name = "linear_cross_entropy"

    def run(self, graph: Graph) -> Graph:
        rewrite_matches(graph, "cross_entropy", match_linear_cross_entropy, _to_linear_cross_entropy)
        return graph


def match_linear_cross_entropy(graph: Graph, ce: Node) -> dict | None:
    from nnspec.compiler.shapes import numel
    if ce.attrs["reduction"] != "mean" or ce.attrs["label_smoothing"] != 0.0:
        return None
    logits_ref, target_ref = (tuple(r) for r in ce.inputs)
    if graph.type_of(target_ref).dtype not in ("i32", "i64") or graph.type_of(logits_ref).rank != 2:
        return None
    node = producer(graph, logits_ref)
    if node.op == "reshape":                     # [..., V] -> [N, V]
        logits_ref = tuple(node.inputs[0])
        if not only_used_by(graph, (node.id, 0), ce.id):
            return None
    t = producer(graph, target_ref)
    if t.op == "reshape":
        target_ref = tuple(t.inputs[0])
    lt, yt = graph.type_of(logits_ref), graph.type_of(target_ref)
    if tuple(yt.shape) != tuple(lt.shape[:-1]) or numel(lt.shape[:-1]) != graph.type_of(tuple(ce.inputs[0])).shape[0]:
        return None
    mm = producer(graph, logits_ref)
    if mm.op != "matmul" or logits_ref[1] != 0:
        return None
    x_ref, wt_ref = (tuple(r) for r in mm.inputs)
    if graph.type_of(wt_ref).rank != 2 or graph.type_of(x_ref).rank < 2:
        return None
    w_ref = _untransposed(graph, wt_ref)
    if w_ref is None or not graph.type_of(x_ref).is_float:
        return None
    return {"x": x_ref, "w": w_ref, "target": target_ref, "logits": mm}


def _to_linear_cross_entropy(graph: Graph, ce: Node, found: dict) -> None:
    mm = found["logits"]
    node = Node(graph.fresh_id("linear_cross_entropy"), "linear_cross_entropy",
                [found["x"], found["w"], found["target"]], {"ignore_index": ce.attrs["ignore_index"]},
                [mm.outputs[0], ce.outputs[0]], span=ce.span, path=ce.path, label=mm.label or "logits",
                out_labels=[mm.label or "logits", ce.label or "loss"])
    insert_before(graph, node, mm.id)
    replace_uses(graph, (mm.id, 0), (node.id, 0))
    replace_uses(graph, (ce.id, 0), (node.id, 1))
    graph.remove_node(ce.id)
    graph.remove_node(mm.id)     # the reshapes and the transpose are dead now: dce removes them


LINEAR_CROSS_ENTROPY_HELPER = '''
def _lce_blocks(logits, x, w, target, ignore_index, dx_wanted, dw_wanted):
    """(loss, dloss/dx, dloss/dw) of the mean cross-entropy of `logits` (= x w^T) against target, one block of rows at
    a time: per block, e = exp(l - max) in one buffer, z = sum(e), loss += max + log z - l[target], and the gradient of
    the block's logits, (e / z - onehot) / count, written over e, goes straight into dx = g w and dw = g^T x. The
    softmax and the logits' gradient are never held whole."""
    flat, x2, t = logits.reshape(-1, w.shape[0]), x.reshape(-1, x.shape[-1]), target.reshape(-1)
    keep = t != ignore_index
    pick = t.clamp(0, w.shape[0] - 1)[:, None]
    count = keep.sum().to(logits.dtype)
    weight = keep.to(logits.dtype)[:, None] / count  # each kept row's share of the mean
    dx = torch.empty_like(x2) if dx_wanted else None
    dw = torch.empty_like(w) if dw_wanted else None
    total = logits.new_zeros(())
    rows = max(1, min((1 << 24) // w.shape[0], -(-flat.shape[0] // 4)))  # <= 16M logits, >= 4 blocks
    buf = torch.empty((min(rows, flat.shape[0]), w.shape[0]), dtype=logits.dtype, device=logits.device)
    for s in range(0, flat.shape[0], rows):
        block, p, share = flat[s:s + rows], pick[s:s + rows], weight[s:s + rows]
        e = buf[:block.shape[0]]
        top = block.amax(1, keepdim=True)
        torch.sub(block, top, out=e).exp_()
        z = e.sum(1, keepdim=True)
        total += ((top + z.log() - block.gather(1, p)) * share).sum()
        if dx is None and dw is None:
            continue
        e.mul_(share / z)                 # the softmax, scaled by the row's share of the mean
        e.scatter_add_(1, p, -share)      # minus the one-hot target
        if dx is not None:
            torch.mm(e, w, out=dx[s:s + rows])
        if dw is not None:
            if s == 0:
                torch.mm(e.t(), x2[:rows], out=dw)
            else:
                dw.addmm_(e.t(), x2[s:s + rows])
    return total, dx, dw


class _LinearCrossEntropy(torch.autograd.Function):
    """(logits, loss): logits = x w^T, loss = their cross-entropy with target, the mean over the targets that are not
    ignore_index. The forward pass also takes the loss's gradient, one block of rows at a time (_lce_blocks), and
    backward hands it over scaled in place: the softmax and the gradient of the logits, each as large as the logits,
    are never held whole, and the weight's gradient is neither zero-filled nor copied. A second backward pass through
    the same graph (retain_graph=True) takes the gradient again from x and w."""

    @staticmethod
    def forward(ctx, x, w, target, ignore_index):
        ctx.set_materialize_grads(False)
        logits = x @ w.t()
        loss, dx, dw = _lce_blocks(logits, x, w, target, ignore_index, *ctx.needs_input_grad[:2])
        ctx.save_for_backward(x, w, target)
        ctx.ignore_index, ctx.grads = ignore_index, (dx, dw)
        return logits, loss

    @staticmethod
    def backward(ctx, g_logits, g_loss):
        x, w, target = ctx.saved_tensors
        gx = gw = None
        if g_loss is not None:
            if ctx.grads is None:  # handed over by an earlier backward pass: take them again
                _, dx, dw = _lce_blocks(x @ w.t(), x, w, target, ctx.ignore_index, *ctx.needs_input_grad[:2])
            else:
                (dx, dw), ctx.grads = ctx.grads, None
            gx = None if dx is None else dx.mul_(g_loss).reshape(x.shape)
            gw = None if dw is None else dw.mul_(g_loss)
        if g_logits is not None:
            g2 = g_logits.reshape(-1, w.shape[0])
            if ctx.needs_input_grad[0]:
                gx = (g_logits @ w) if gx is None else gx + g_logits @ w
            if ctx.needs_input_grad[1]:
                more = g2.t() @ x.reshape(-1, x.shape[-1])
                gw = more if gw is None else gw + more
        return gx, gw, None, None


def _linear_cross_entropy(x, w, target, ignore_index):
    """(x w^T, cross_entropy(x w^T, target)); see _LinearCrossEntropy. No target: (logits, None)."""
    if target is None or not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)):
        logits = x @ w.t()
        if target is None:
            return logits, None
        return logits, F.cross_entropy(logits.reshape(-1, w.shape[0]), target.reshape(-1), ignore_index=ignore_index)
    return _LinearCrossEntropy.apply(x, w, target, ignore_index)
'''

LAYOUT_HELPER = '''
class _Relayout(torch.autograd.Function):
    """x in the memory layout `to`; its gradient goes back in `back`, the layout x came in, so that the layers
    before it receive their gradients in the layout they computed in."""

    @staticmethod
    def forward(ctx, x, to, back):
        ctx.back = back
        return x.to(memory_format=to)

    @staticmethod
    def backward(ctx, g):
        return g.contiguous(memory_format=ctx.back), None, None


def _standard_layout(x):
    """Where a channels-last region ends (before a flatten): standard layout forward, channels-last backward."""
    if x.is_contiguous():
        return x
    if x.dim() == 4 and x.requires_grad and torch.is_grad_enabled() \\
            and x.is_contiguous(memory_format=torch.channels_last):
        return _Relayout.apply(x, torch.contiguous_format, torch.channels_last)
    return x.contiguous()


def _channels_last(x):
    """Where a channels-last region starts (before a convolution that runs faster NHWC on the CPU's oneDNN; the
    layouts were chosen by timings on CPU, so on other devices x stays as it is). `to`, not `contiguous`: a
    one-channel image is already "contiguous" in both layouts, and only `to` gives it the NHWC strides oneDNN reads
    the layout from."""
    if x.device.type != "cpu":
        return x
    if x.requires_grad and torch.is_grad_enabled():
        return _Relayout.apply(x, torch.channels_last, torch.contiguous_format)
    return x.to(memory_format=torch.channels_last)
'''

FORWARD_HELPERS = {"_max_pool2d_from_input": POOL_FROM_INPUT_HELPER, "_conv_bn": CONV_BN_HELPER,
                   "_linear_cross_entropy": LINEAR_CROSS_ENTROPY_HELPER,
                   "_standard_layout": LAYOUT_HELPER, "_channels_last": LAYOUT_HELPER}


def forward_helpers(lines: list) -> str:
    """Source of the helpers the forward lines call (copied into the generated file, which imports no nnspec)."""
    text = "\n".join(lines)
    used = dict.fromkeys(src.strip() + "\n" for name, src in FORWARD_HELPERS.items() if f"{name}(" in text)
    return "\n\n".join(used)   # (one source may serve several names: LAYOUT_HELPER)


# ------------------------------------------------------------------------------------------ explain
def _names(items: list, limit: int = 8) -> str:
    return ", ".join(items[:limit]) + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def explain_rewrites(graph: Graph) -> str:
    """What the optimisations chose for this graph, for `nnspec compile --explain`."""
    def where(nid: str) -> str:
        node = graph.nodes[nid]
        if node.module:
            return node.module
        return f"{node.op} at {node.span.file}:{node.span.line}" if node.span else node.label or nid

    lines = [f"rewrites of {graph.name} (compiler/passes/rewrite.py):"]
    convs = [n.id for n in graph.nodes.values() if n.op == "conv2d"]
    if convs and graph.channels_last is not None:   # None: the layout pass did not run (--no-optimize)
        cl = [c for c in convs if c in graph.channels_last]
        lines.append(f"  layouts: {len(cl)} of {len(convs)} 2-d convolution(s) channels-last (output maps of at least "
                     f"{CL_MIN_PIXELS} pixels)" + (f": {_names([where(c) for c in cl])}" if cl else ""))
        for n in graph.nodes.values():
            if n.op in ("channels_last", "standard_layout"):
                readers = [where(u) for u in graph.users(n.id)]
                src = producer(graph, tuple(n.inputs[0]))
                what = src.attrs.get("name") if src.op == "input" else (src.label or src.op)
                lines.append(f"    {n.op}({what}) before {_names(readers) or 'the outputs'}")
    pools = sorted(getattr(graph, "pool_from_input", None) or ())
    if pools:
        lines.append(f"  max pooling that keeps its input, not indices: {_names([where(p) for p in pools])}")
    inplace = getattr(graph, "inplace", None) or ()
    if inplace:
        lines.append(f"  activations in place: {len(inplace)}")
    folds = getattr(graph, "conv_bn_folds", None) or {}
    if folds:
        lines.append(f"  conv + batch norm folded in inference: {len(folds)} pair(s)")
    fused = [op for op in ("scaled_dot_product_attention", "linear_cross_entropy", "lstm")
             if any(n.op == op for n in graph.nodes.values())]
    if fused:
        lines.append(f"  fused ops: {', '.join(fused)}")
    if len(lines) == 1:
        lines.append("  none applies")
    return "\n".join(lines)
