"""Layers: linear, convolutions, pooling, upsampling, normalisation, dropout, embedding, PReLU.

Layers with weights lower to the standard torch.nn module (nn.Linear, nn.Conv2d, ...) so that the
generated module's state_dict uses the usual names and exchanges weights with ordinary PyTorch code.
Input features/channels are inferred from the input shape: `linear(128)` needs no in-features.
"""
from __future__ import annotations

from nnspec.compiler.ir import ParamSpec
from nnspec.compiler.ops.common import float_input
from nnspec.compiler.ops.registry import Attr, kwargs_text, register
from nnspec.compiler.shapes import TensorType, conv_out, is_concrete, numel, shape_str, simplify


def _call(i, a, c):
    return f"{c.module}({i[0]})"


def _concrete_feature(ctx, t: TensorType, axis: int, what: str):
    d = t.shape[axis]
    if not is_concrete(d):
        ctx.fail("E0307", f"{ctx.op.name} needs a known number of {what}, but the input has `{d}` there",
                 found=shape_str(t.shape), expected=f"a concrete size at dimension {axis}",
                 hint="give the input a concrete size in that dimension")
    return d


# ---------------------------------------------------------------------------------- linear
def _linear_shape(ctx, ins, a):
    ctx.check_positive(a, "out_features")
    t = float_input(ctx, ins, a)
    if t.rank < 1:
        ctx.check_rank(t, (1, 2, 3, 4))
    _concrete_feature(ctx, t, -1, "input features")
    return t.with_shape(t.shape[:-1] + (a["out_features"],))


register("linear", inputs=("x",),
         attrs=(Attr("out_features", "int"), Attr("bias", "bool", True),
                Attr("in_features", "int_or_none", None, doc="optional: checked against the input's last dimension")),
         shape=_linear_shape, lower=_call,
         params=lambda ins, a: [ParamSpec("weight", (a["out_features"], ins[0].shape[-1]), "kaiming_uniform")]
         + ([ParamSpec("bias", (a["out_features"],), "fan_in_uniform")] if a["bias"] else []),
         module=lambda ins, a: f"nn.Linear({ins[0].shape[-1]}, {a['out_features']}"
                               + (", bias=False)" if not a["bias"] else ")"),
         macs=lambda ins, outs, a: numel(outs[0].shape) * ins[0].shape[-1],
         category="layer", doc="y = x W^T + b; in_features inferred from the last input dimension")


# ---------------------------------------------------------------------------------- convolutions
def _tuple(v, n):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def _ints(ctx, a, name: str, n: int, minimum: int, value=None) -> tuple:
    """An int_or_ints attribute as n ints, each at least `minimum`; a SpecError otherwise."""
    v = a[name] if value is None else value
    t = _tuple(v, n)
    if len(t) != n or any(isinstance(x, bool) or not isinstance(x, int) or x < minimum for x in t):
        ctx.fail("E0401", f"attribute `{name}` of {ctx.op.name} must be an int >= {minimum} or {n} of them",
                 found=repr(v), expected=f"an int or a list of {n} ints, each >= {minimum}")
    return t


def _conv_shape(n):
    def rule(ctx, ins, a):
        ctx.check_positive(a, "out_channels", "groups")
        if a["padding"] not in ("same", "valid"):
            _ints(ctx, a, "padding", n, 0)
        t = float_input(ctx, ins, a)
        ctx.check_rank(t, (n + 1, n + 2))
        cin = _concrete_feature(ctx, t, -(n + 1), "input channels")
        k, s, d = _tuple(a["kernel"], n), _tuple(a["stride"], n), _tuple(a["dilation"], n)
        for name, v in (("kernel", k), ("stride", s), ("dilation", d)):
            if len(v) != n or any(x < 1 for x in v):
                ctx.fail("E0401", f"attribute `{name}` of {ctx.op.name} must be a positive int or {n} of them",
                         found=repr(a[name]), expected=f"int or list of {n} positive ints")
        if cin % a["groups"] or a["out_channels"] % a["groups"]:
            ctx.fail("E0308", f"{ctx.op.name}: {cin} input and {a['out_channels']} output channels must both divide "
                     f"by groups={a['groups']}", found=f"in {cin}, out {a['out_channels']}",
                     expected=f"multiples of {a['groups']}")
        p = a["padding"]
        spatial = t.shape[-n:]
        out = []
        for i in range(n):
            if p == "same":
                if s[i] != 1:
                    ctx.fail("E0401", f"padding='same' needs stride 1 in {ctx.op.name}", found=f"stride={a['stride']}")
                out.append(spatial[i])
                continue
            pi = 0 if p == "valid" else _tuple(p, n)[i]
            o = conv_out(spatial[i], k[i], s[i], pi, d[i])
            if is_concrete(o) and o < 1:
                ctx.fail("E0309", f"{ctx.op.name}: kernel {k[i]} (dilation {d[i]}) does not fit in input size "
                         f"{spatial[i]} with padding {pi}", found=f"input {shape_str(t.shape)}",
                         expected=f"spatial size >= {d[i] * (k[i] - 1) + 1 - 2 * pi}",
                         hint="the input is too small here: check the pooling and stride before this layer")
            out.append(o)
        return t.with_shape(t.shape[:-(n + 1)] + (a["out_channels"],) + tuple(out))
    return rule


def _conv_params(n):
    def params(ins, a):
        cin = ins[0].shape[-(n + 1)]
        k = _tuple(a["kernel"], n)
        ps = [ParamSpec("weight", (a["out_channels"], cin // a["groups"]) + k, "kaiming_uniform")]
        if a["bias"]:
            ps.append(ParamSpec("bias", (a["out_channels"],), "fan_in_uniform"))
        return ps
    return params


def _conv_ctor(n, cls):
    def ctor(ins, a):
        cin = ins[0].shape[-(n + 1)]
        k = a["kernel"]
        extra = kwargs_text(OPS[cls], a, ("stride", "padding", "dilation", "groups", "bias", "padding_mode"))
        return f"nn.{cls}({cin}, {a['out_channels']}, {k!r}{', ' + extra if extra else ''})"
    return ctor


def _conv_macs(n):
    def macs(ins, outs, a):
        cin = ins[0].shape[-(n + 1)]
        k = 1
        for v in _tuple(a["kernel"], n):
            k *= v
        return numel(outs[0].shape) * (cin // a["groups"]) * k
    return macs


OPS: dict = {}
_CONV_ATTRS = (Attr("out_channels", "int"), Attr("kernel", "int_or_ints"), Attr("stride", "int_or_ints", 1),
               Attr("padding", "int_or_ints", 0, choices=("same", "valid")), Attr("dilation", "int_or_ints", 1),
               Attr("groups", "int", 1), Attr("bias", "bool", True),
               Attr("padding_mode", "str", "zeros", ("zeros", "reflect", "replicate", "circular")))
for _n, _cls in ((1, "Conv1d"), (2, "Conv2d"), (3, "Conv3d")):
    OPS[_cls] = register(f"conv{_n}d", inputs=("x",), attrs=_CONV_ATTRS, shape=_conv_shape(_n), lower=_call,
                         params=_conv_params(_n), module=_conv_ctor(_n, _cls), macs=_conv_macs(_n),
                         category="layer", doc=f"{_n}-d convolution; in_channels inferred from the input")


def _convt_shape(ctx, ins, a):
    ctx.check_positive(a, "out_channels", "groups")
    t = float_input(ctx, ins, a)
    ctx.check_rank(t, (3, 4))
    cin = _concrete_feature(ctx, t, -3, "input channels")
    k, s, p = _ints(ctx, a, "kernel", 2, 1), _ints(ctx, a, "stride", 2, 1), _ints(ctx, a, "padding", 2, 0)
    op_, d = _ints(ctx, a, "output_padding", 2, 0), _ints(ctx, a, "dilation", 2, 1)
    if cin % a["groups"] or a["out_channels"] % a["groups"]:
        ctx.fail("E0308", f"{ctx.op.name}: {cin} input and {a['out_channels']} output channels must both divide "
                 f"by groups={a['groups']}", found=f"in {cin}, out {a['out_channels']}",
                 expected=f"multiples of {a['groups']}")
    if any(op_[i] >= max(s[i], d[i]) for i in range(2)):
        ctx.fail("E0401", f"{ctx.op.name}: output_padding must be smaller than the stride or the dilation",
                 found=f"output_padding={a['output_padding']!r}", expected=f"less than stride={a['stride']!r}")
    out = tuple((t.shape[-2 + i] - 1) * s[i] - 2 * p[i] + d[i] * (k[i] - 1) + op_[i] + 1 for i in range(2))
    return t.with_shape(t.shape[:-3] + (a["out_channels"],) + out)


def _convt_ctor(ins, a) -> str:
    extra = kwargs_text(OPS["ConvTranspose2d"], a, ("stride", "padding", "output_padding", "groups", "bias", "dilation"))
    return f"nn.ConvTranspose2d({ins[0].shape[-3]}, {a['out_channels']}, {a['kernel']!r}{', ' + extra if extra else ''})"


OPS["ConvTranspose2d"] = register(
    "conv_transpose2d", inputs=("x",),
    attrs=(Attr("out_channels", "int"), Attr("kernel", "int_or_ints"), Attr("stride", "int_or_ints", 1),
           Attr("padding", "int_or_ints", 0), Attr("output_padding", "int_or_ints", 0), Attr("groups", "int", 1),
           Attr("bias", "bool", True), Attr("dilation", "int_or_ints", 1)),
    shape=_convt_shape, lower=_call,
    params=lambda ins, a: [ParamSpec("weight", (ins[0].shape[-3], a["out_channels"] // a["groups"]) + _tuple(a["kernel"], 2),
                                     "kaiming_uniform")] + ([ParamSpec("bias", (a["out_channels"],), "fan_in_uniform")] if a["bias"] else []),
    module=lambda ins, a: _convt_ctor(ins, a),
    macs=lambda ins, outs, a: numel(ins[0].shape) * (a["out_channels"] // a["groups"]) * _tuple(a["kernel"], 2)[0] * _tuple(a["kernel"], 2)[1],
    category="layer", doc="2-d transposed convolution (fractionally strided)")


# ---------------------------------------------------------------------------------- pooling
def _pool_shape(n):
    def rule(ctx, ins, a):
        t = ins[0]
        ctx.check_rank(t, (n + 1, n + 2))
        k = _ints(ctx, a, "kernel", n, 1)
        s = _ints(ctx, a, "stride", n, 1, a["stride"] if a["stride"] is not None else a["kernel"])
        p = _ints(ctx, a, "padding", n, 0)
        d = _ints(ctx, a, "dilation", n, 1, a.get("dilation", 1))
        if any(2 * p[i] > k[i] for i in range(n)):
            ctx.fail("E0401", f"{ctx.op.name}: padding must be at most half the window",
                     found=f"padding={a['padding']!r}, kernel={a['kernel']!r}", expected="padding <= kernel / 2")
        out = []
        for i in range(n):
            size = t.shape[-n + i]
            if is_concrete(size) and a.get("ceil_mode"):
                o = -(-(size + 2 * p[i] - d[i] * (k[i] - 1) - 1) // s[i]) + 1
                if (o - 1) * s[i] >= size + p[i]:
                    o -= 1
            elif a.get("ceil_mode"):
                # ceil((size + 2p - d(k-1) - 1) / s) + 1; torch drops a last window that starts in the right
                # padding, which cannot happen when p + s - 1 <= d(k-1) (so the formula is exact then)
                if p[i] + s[i] - 1 > d[i] * (k[i] - 1):
                    ctx.fail("E0307", f"{ctx.op.name} with ceil_mode needs a known input size here, found `{size}`",
                             found=shape_str(t.shape), expected=f"a concrete size at dimension {t.rank - n + i}")
                o = simplify((size + 2 * p[i] - d[i] * (k[i] - 1) - 1 + s[i] - 1) // s[i] + 1)
            else:
                o = conv_out(size, k[i], s[i], p[i], d[i])
            if is_concrete(o) and o < 1:
                ctx.fail("E0309", f"{ctx.op.name}: window {k[i]} does not fit in input size {size}",
                         found=f"input {shape_str(t.shape)}", expected=f"spatial size >= {k[i] - 2 * p[i]}",
                         hint="the input is too small here: check the pooling and stride before this layer")
            out.append(o)
        return t.with_shape(t.shape[:-n] + tuple(out))
    return rule


def _pool_lower(fn, names):
    def lower(i, a, c):
        args = [i[0], repr(a["kernel"])]
        if a["stride"] is not None and a["stride"] != a["kernel"]:
            args.append(f"stride={a['stride']!r}")
        for n in names:
            attr = POOL_DEFAULTS.get(n)
            if a[n] != attr:
                args.append(f"{n}={a[n]!r}")
        return f"{fn}({', '.join(args)})"
    return lower


POOL_DEFAULTS = {"padding": 0, "dilation": 1, "ceil_mode": False, "count_include_pad": True}
for _n in (1, 2):
    register(f"max_pool{_n}d", inputs=("x",),
             attrs=(Attr("kernel", "int_or_ints"), Attr("stride", "any", None), Attr("padding", "int_or_ints", 0),
                    Attr("dilation", "int_or_ints", 1), Attr("ceil_mode", "bool", False)),
             shape=_pool_shape(_n), lower=_pool_lower(f"F.max_pool{_n}d", ("padding", "dilation", "ceil_mode")),
             kind="opaque", category="pooling", doc="maximum over each window (stride defaults to the kernel)")
    register(f"avg_pool{_n}d", inputs=("x",),
             attrs=(Attr("kernel", "int_or_ints"), Attr("stride", "any", None), Attr("padding", "int_or_ints", 0),
                    Attr("ceil_mode", "bool", False), Attr("count_include_pad", "bool", True)),
             shape=_pool_shape(_n), lower=_pool_lower(f"F.avg_pool{_n}d", ("padding", "ceil_mode", "count_include_pad")),
             kind="opaque", category="pooling", doc="mean over each window (stride defaults to the kernel)")


def _adaptive_shape(n):
    def rule(ctx, ins, a):
        t = ins[0]
        ctx.check_rank(t, (n + 1, n + 2))
        return t.with_shape(t.shape[:-n] + _ints(ctx, a, "output_size", n, 1))
    return rule


for _n in (1, 2):
    for _kind in ("avg", "max"):
        register(f"adaptive_{_kind}_pool{_n}d", inputs=("x",), attrs=(Attr("output_size", "int_or_ints"),),
                 shape=_adaptive_shape(_n),
                 lower=lambda i, a, c, _f=f"F.adaptive_{_kind}_pool{_n}d": f"{_f}({i[0]}, {a['output_size']!r})",
                 category="pooling", doc=f"adaptive {_kind} pooling to a fixed output size")


def _upsample_shape(ctx, ins, a):
    t = float_input(ctx, ins, a)
    if t.rank < 3:
        ctx.check_rank(t, (3, 4, 5))
    n = t.rank - 2
    if a["mode"] != "nearest":  # linear needs 3-d input, bilinear and bicubic 4-d (torch raises otherwise)
        ctx.check_rank(t, 3 if a["mode"] == "linear" else 4, f"input of mode={a['mode']!r}")
    if a["size"] is not None:
        return t.with_shape(t.shape[:2] + _ints(ctx, a, "size", n, 1))
    if a["scale_factor"] is None:
        ctx.fail("E0407", "upsample needs `scale_factor` or `size`", expected="upsample(scale_factor=2)")
    sf = a["scale_factor"]
    if not (0 < sf < 2 ** 31) or int(sf) != sf:
        ctx.fail("E0401", "upsample's scale_factor must be a positive whole number here", found=repr(sf))
    return t.with_shape(t.shape[:2] + tuple(d * int(sf) for d in t.shape[2:]))


register("upsample", inputs=("x",),
         attrs=(Attr("scale_factor", "float_or_none", None), Attr("mode", "str", "nearest", ("nearest", "bilinear", "bicubic", "linear")),
                Attr("size", "any", None), Attr("align_corners", "any", None)),
         shape=_upsample_shape,
         lower=lambda i, a, c: "F.interpolate(" + ", ".join(
             [i[0]] + ([f"size={a['size']!r}"] if a["size"] is not None else [f"scale_factor={a['scale_factor']!r}"])
             + ([f"mode={a['mode']!r}"] if a["mode"] != "nearest" else [])
             + ([f"align_corners={a['align_corners']!r}"] if a["align_corners"] is not None else [])) + ")",
         category="pooling", doc="nearest or (bi)linear upsampling")


# ---------------------------------------------------------------------------------- normalisation
def _bn_shape(ctx, ins, a):
    t = float_input(ctx, ins, a)
    ctx.check_rank(t, (2, 3, 4, 5))
    _concrete_feature(ctx, t, 1, "channels")
    return t


def _bn_ctor(ins, a):
    rank = ins[0].rank
    cls = {2: "BatchNorm1d", 3: "BatchNorm1d", 4: "BatchNorm2d", 5: "BatchNorm3d"}[rank]
    extra = kwargs_text(REGISTRY_BN, a, ("eps", "momentum", "affine"))
    return f"nn.{cls}({ins[0].shape[1]}{', ' + extra if extra else ''})"


def _bn_params(ins, a):
    c = ins[0].shape[1]
    ps = [ParamSpec("weight", (c,), "ones"), ParamSpec("bias", (c,), "zeros")] if a["affine"] else []
    return ps + [ParamSpec("running_mean", (c,), "buffer", False), ParamSpec("running_var", (c,), "buffer", False),
                 ParamSpec("num_batches_tracked", (), "buffer", False)]


REGISTRY_BN = register("batch_norm", inputs=("x",),
                       attrs=(Attr("eps", "float", 1e-5), Attr("momentum", "float", 0.1), Attr("affine", "bool", True)),
                       shape=_bn_shape, lower=_call, params=_bn_params, module=_bn_ctor, train_dependent=True,
                       macs=lambda ins, outs, a: numel(outs[0].shape) * 0,
                       category="normalization", doc="batch normalisation over dimension 1 (channels)")


def _ln_shape(ctx, ins, a):
    t = float_input(ctx, ins, a)
    n = a["dims"]
    if not 1 <= n <= t.rank:
        ctx.fail("E0304", f"layer_norm over the last {n} dims of a rank-{t.rank} tensor", found=str(n),
                 expected=f"1..{t.rank}")
    for k in range(1, n + 1):
        _concrete_feature(ctx, t, -k, "features")
    return t


def _ln_norm_shape(ins, a):
    return tuple(ins[0].shape[-a["dims"]:])


def _ln_ctor(ins, a):
    shape = _ln_norm_shape(ins, a)
    arg = str(shape[0]) if len(shape) == 1 else repr(shape)
    extra = kwargs_text(REGISTRY_LN, a, ("eps", "elementwise_affine", "bias"))
    return f"nn.LayerNorm({arg}{', ' + extra if extra else ''})"


REGISTRY_LN = register("layer_norm", inputs=("x",),
                       attrs=(Attr("dims", "int", 1), Attr("eps", "float", 1e-5), Attr("elementwise_affine", "bool", True),
                              Attr("bias", "bool", True)),
                       shape=_ln_shape, lower=_call,
                       params=lambda ins, a: ([ParamSpec("weight", _ln_norm_shape(ins, a), "ones")] if a["elementwise_affine"] else [])
                       + ([ParamSpec("bias", _ln_norm_shape(ins, a), "zeros")] if a["elementwise_affine"] and a["bias"] else []),
                       module=_ln_ctor, kind="reduction",
                       category="normalization", doc="normalise over the last `dims` dimensions")


def _in_ctor(ins, a):
    cls = {3: "InstanceNorm1d", 4: "InstanceNorm2d", 5: "InstanceNorm3d"}[ins[0].rank]
    extra = kwargs_text(REGISTRY_IN, a, ("eps", "affine", "track_running_stats"))
    return f"nn.{cls}({ins[0].shape[1]}{', ' + extra if extra else ''})"


def _in_shape(ctx, ins, a):
    t = float_input(ctx, ins, a)
    ctx.check_rank(t, (3, 4, 5))
    _concrete_feature(ctx, t, 1, "channels")
    return t


REGISTRY_IN = register("instance_norm", inputs=("x",),
                       attrs=(Attr("eps", "float", 1e-5), Attr("affine", "bool", False), Attr("track_running_stats", "bool", False)),
                       shape=_in_shape, lower=_call, module=_in_ctor, train_dependent=True,
                       params=lambda ins, a: ([ParamSpec("weight", (ins[0].shape[1],), "ones"), ParamSpec("bias", (ins[0].shape[1],), "zeros")]
                                              if a["affine"] else [])
                       + ([ParamSpec("running_mean", (ins[0].shape[1],), "buffer", False),
                           ParamSpec("running_var", (ins[0].shape[1],), "buffer", False),
                           ParamSpec("num_batches_tracked", (), "buffer", False)] if a["track_running_stats"] else []),
                       category="normalization", doc="normalise each sample's channel over its spatial positions")


def _gn_shape(ctx, ins, a):
    t = float_input(ctx, ins, a)
    if t.rank < 2:
        ctx.check_rank(t, (2, 3, 4, 5))
    c = _concrete_feature(ctx, t, 1, "channels")
    ctx.check_positive(a, "groups")
    if c % a["groups"]:
        ctx.fail("E0308", f"group_norm: {c} channels do not divide into {a['groups']} groups",
                 found=str(c), expected=f"a multiple of {a['groups']}")
    return t


REGISTRY_GN = register("group_norm", inputs=("x",),
                       attrs=(Attr("groups", "int"), Attr("eps", "float", 1e-5), Attr("affine", "bool", True)),
                       shape=_gn_shape, lower=_call,
                       module=lambda ins, a: f"nn.GroupNorm({a['groups']}, {ins[0].shape[1]}"
                       + ("".join(f", {k}={a[k]!r}" for k, d in (("eps", 1e-5), ("affine", True)) if a[k] != d)) + ")",
                       params=lambda ins, a: ([ParamSpec("weight", (ins[0].shape[1],), "ones"), ParamSpec("bias", (ins[0].shape[1],), "zeros")]
                                              if a["affine"] else []),
                       category="normalization", doc="normalise over groups of channels")


# ---------------------------------------------------------------------------------- dropout, embedding, prelu
for _name, _fn, _rank in (("dropout", "F.dropout", None), ("dropout2d", "F.dropout2d", (3, 4)),
                          ("alpha_dropout", "F.alpha_dropout", None)):
    def _drop_shape(ctx, ins, a, _rank=_rank):
        if not 0.0 <= a["p"] <= 1.0:
            ctx.fail("E0401", f"{ctx.op.name} probability must be in [0, 1]", found=repr(a["p"]), expected="0 <= p <= 1")
        if _rank:
            ctx.check_rank(ins[0], _rank)
        return float_input(ctx, ins, a)

    register(_name, inputs=("x",), attrs=(Attr("p", "float", 0.5),), shape=_drop_shape,
             lower=lambda i, a, c, _fn=_fn: f"{_fn}({i[0]}, p={a['p']!r}, training={c.training})",
             kind="elementwise", random=True, train_dependent=True, category="regularization",
             doc="zero each element with probability p in training and scale the rest by 1/(1-p); identity in eval")


def _emb_shape(ctx, ins, a):
    ctx.check_positive(a, "num", "dim")
    if a["padding_idx"] is not None and not -a["num"] <= a["padding_idx"] < a["num"]:
        ctx.fail("E0401", f"embedding: padding_idx {a['padding_idx']} is not a row of the {a['num']}-row table",
                 found=str(a["padding_idx"]), expected=f"-{a['num']} <= padding_idx < {a['num']}")
    t = ins[0]
    if t.dtype not in ("i32", "i64"):
        ctx.fail("E0305", f"embedding takes integer ids, found {t.dtype}", found=str(t), expected="an i64 tensor of ids")
    return TensorType("f32", t.shape + (a["dim"],))


register("embedding", inputs=("ids",),
         attrs=(Attr("num", "int"), Attr("dim", "int"), Attr("padding_idx", "int_or_none", None)),
         shape=_emb_shape, lower=_call, nondiff_inputs=(0,),
         params=lambda ins, a: [ParamSpec("weight", (a["num"], a["dim"]), "normal")],
         module=lambda ins, a: f"nn.Embedding({a['num']}, {a['dim']}"
                               + (f", padding_idx={a['padding_idx']}" if a["padding_idx"] is not None else "") + ")",
         category="layer", doc="lookup table: row ids -> vectors")


def _prelu_shape(ctx, ins, a):
    ctx.check_positive(a, "num_parameters")
    t = float_input(ctx, ins, a)
    if a["num_parameters"] != 1:
        if t.rank < 2 or t.shape[1] != a["num_parameters"]:
            ctx.fail("E0301", f"shape mismatch in prelu: num_parameters={a['num_parameters']} must equal the channels",
                     found=shape_str(t.shape), expected=f"dimension 1 of size {a['num_parameters']}")
    return t


register("prelu", inputs=("x",), attrs=(Attr("num_parameters", "int", 1), Attr("init", "float", 0.25)),
         shape=_prelu_shape, lower=_call, kind="broadcast",
         params=lambda ins, a: [ParamSpec("weight", (a["num_parameters"],), ("constant", a["init"]))],
         module=lambda ins, a: "nn.PReLU(" + ", ".join(
             ([f"{a['num_parameters']}"] if a["num_parameters"] != 1 or a["init"] != 0.25 else [])
             + ([f"init={a['init']!r}"] if a["init"] != 0.25 else [])) + ")",
         category="activation", doc="x if x >= 0 else a * x, with a learned")


# ---------------------------------------------------------------------------------- fused forms of spelled-out patterns
# The graph rewrites (compiler/passes/rewrite.py) put these in place of patterns a spec writes out: attention
# as softmax(q k^T / sqrt(d) + mask) v, and a scan of the LSTM cell. They can be called in a spec as well;
# their weights are ordinary tensor inputs (a `param`, or a layer's weight read by `layer_param`).
def _sdpa_shape(ctx, ins, a):
    q, k, v = ins[:3]
    for j, what in enumerate(("query", "key", "value")):
        float_input(ctx, ins, a, j)
        if ins[j].rank < 2:
            ctx.check_rank(ins[j], (2, 3, 4, 5), what)
    if not q.rank == k.rank == v.rank:
        ctx.fail("E0302", f"rank mismatch in {ctx.op.name}: query, key and value have ranks {q.rank}, {k.rank}, {v.rank}",
                 found=f"{shape_str(q.shape)}, {shape_str(k.shape)}, {shape_str(v.shape)}", expected="equal ranks")
    for d in range(q.rank - 2):
        ctx.check_dim(k.shape[d], q.shape[d], f"key's batch dimension {d} differs from the query's")
        ctx.check_dim(v.shape[d], q.shape[d], f"value's batch dimension {d} differs from the query's")
    ctx.check_dim(k.shape[-1], q.shape[-1], "query and key have different feature sizes",
                  hint="q @ k^T needs the same last dimension")
    ctx.check_dim(v.shape[-2], k.shape[-2], "key and value have different lengths")
    if len(ins) > 3:
        from nnspec.compiler.shapes import broadcast_shapes
        m = ins[3]
        if a["is_causal"]:
            ctx.fail("E0401", f"{ctx.op.name}: is_causal=true and a mask are exclusive", found="both given",
                     expected="is_causal=true, or a mask")
        want = tuple(q.shape[:-1]) + (k.shape[-2],)
        if m.dtype not in ("bool",) and not m.is_float or broadcast_shapes(m.shape, want) != want:
            ctx.fail("E0306", f"{ctx.op.name}: the mask must be bool or float and broadcast to {shape_str(want)}",
                     found=str(m), expected=f"a mask broadcasting to {shape_str(want)}")
    return q.with_shape(tuple(q.shape[:-1]) + (v.shape[-1],))


def _sdpa_lower(i, a, c):
    args = list(i[:3])
    if len(i) > 3:
        args.append(f"attn_mask={i[3]}")
    if a["is_causal"]:
        args.append("is_causal=True")
    if a["scale"] is not None:
        args.append(f"scale={a['scale']!r}")
    return f"F.scaled_dot_product_attention({', '.join(args)})"


register("scaled_dot_product_attention", inputs=("q", "k", "v", "mask"), optional_inputs=1,
         attrs=(Attr("is_causal", "bool", False),
                Attr("scale", "float_or_none", None, doc="multiplies q k^T; default 1 / sqrt(feature size)")),
         shape=_sdpa_shape, lower=_sdpa_lower, kind="opaque", category="attention", nondiff_inputs=(3,),
         macs=lambda ins, outs, a: (numel(ins[0].shape) + numel(outs[0].shape)) * ins[1].shape[-2],
         doc="softmax(q k^T * scale + mask) v in one kernel (flash attention where torch has one); is_causal hides "
             "later keys; a bool mask keeps where true, a float mask is added")


def _lstm_shape(ctx, ins, a):
    if len(ins) == 6:
        ctx.fail("E0406", "lstm takes both biases or neither", found="one bias", expected="b_ih and b_hh, or no bias")
    x, h0, c0, w_ih, w_hh = ins[:5]
    float_input(ctx, ins, a)
    ctx.check_rank(x, 3, "input")
    ctx.check_rank(h0, 3, "h0")
    ctx.check_rank(c0, 3, "c0")
    batch, steps = (x.shape[0], x.shape[1]) if a["batch_first"] else (x.shape[1], x.shape[0])
    hidden = h0.shape[2]
    ctx.check_dim(h0.shape[0], 1, "h0 must be [1, B, H] (one layer)")
    ctx.check_dim(h0.shape[1], batch, "h0's batch size differs from the input's")
    _check_shape(ctx, c0, tuple(h0.shape), "c0 must have h0's shape")
    _check_shape(ctx, w_ih, (4 * hidden, x.shape[2]), "w_ih must be [4H, input features]")
    _check_shape(ctx, w_hh, (4 * hidden, hidden), "w_hh must be [4H, H]")
    for b in ins[5:]:
        _check_shape(ctx, b, (4 * hidden,), "the biases must be [4H]")
    out = x.with_shape((batch, steps, hidden) if a["batch_first"] else (steps, batch, hidden))
    return [out, h0, c0]


def _check_shape(ctx, t: TensorType, want: tuple, message: str) -> None:
    if t.rank != len(want):
        ctx.fail("E0302", f"rank mismatch in {ctx.op.name}: {message}", found=shape_str(t.shape), expected=shape_str(want))
    for got, w in zip(t.shape, want):
        ctx.check_dim(got, w, f"{message}, found {shape_str(t.shape)}")


register("lstm", inputs=("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh"), optional_inputs=2,
         attrs=(Attr("batch_first", "bool", True),), shape=_lstm_shape, kind="opaque", category="recurrent",
         lower=lambda i, a, c: f"torch.lstm({i[0]}, ({i[1]}, {i[2]}), ({', '.join(i[3:])}), {len(i) == 7}, 1, 0.0, "
                               f"{c.training}, False, {a['batch_first']})",
         macs=lambda ins, outs, a: numel(outs[0].shape) * 4 * (ins[3].shape[1] + ins[4].shape[1]),
         doc="one LSTM layer over a sequence, torch.nn.LSTM's fused kernel (gates i, f, g, o); returns every step's h "
             "and the last h and c, states shaped [1, B, H]")


def _typed_by_pass(ctx, ins, a):
    raise AssertionError(f"{ctx.op.name} nodes are typed by the pass that creates them")


register("layer_param", inputs=(), attrs=(Attr("param", "str"),), shape=_typed_by_pass, category="graph",
         lower=lambda i, a, c: f"{c.module}.{a['param']}",
         doc="a weight of a layer (node.module) as a value: how a fused op reads the layers it replaces")


def _lce_shape(ctx, ins, a):
    x, w, y = ins
    float_input(ctx, ins, a)
    ctx.check_rank(w, 2, "weight")
    ctx.check_dim(w.shape[1], x.shape[-1], "the weight's columns differ from the input's features",
                  hint="the weight is [classes, features], as nn.Linear's")
    if y.dtype not in ("i32", "i64"):
        ctx.fail("E0305", f"{ctx.op.name} needs integer class indices as target, found {y.dtype}", found=str(y),
                 expected="an i64 tensor of class indices")
    _check_shape(ctx, y, tuple(x.shape[:-1]), "the target must have the input's leading dimensions")
    return [x.with_shape(tuple(x.shape[:-1]) + (w.shape[0],)), TensorType(x.dtype, ())]


register("linear_cross_entropy", inputs=("x", "weight", "target"), attrs=(Attr("ignore_index", "int", -100),),
         shape=_lce_shape, kind="opaque", category="loss", nondiff_inputs=(2,),
         lower=lambda i, a, c: f"_linear_cross_entropy({', '.join(i)}, {a['ignore_index']!r})",
         macs=lambda ins, outs, a: 3 * numel(outs[0].shape) * ins[0].shape[-1],
         doc="(logits, loss): logits = x weight^T and their mean cross-entropy against target, with the gradient "
             "taken block by block in the forward pass: no softmax or logit gradient of the full size is ever kept")


register("standard_layout", inputs=("x",), shape=lambda ctx, ins, a: ins[0], kind="injective", category="tensor",
         lower=lambda i, a, c: f"_standard_layout({i[0]})",
         doc="x itself, stored in torch's standard (contiguous) layout, its gradient sent back channels-last: where a "
             "channels-last region of a model ends (before a flatten), so that no layer's backward converts layouts")
register("channels_last", inputs=("x",), shape=lambda ctx, ins, a: ins[0], kind="injective", category="tensor",
         lower=lambda i, a, c: f"_channels_last({i[0]})",
         doc="x itself (4-d), stored channels-last (NHWC), its gradient sent back in the standard layout: where a "
             "channels-last region of a model starts (before a convolution that runs faster NHWC)")
