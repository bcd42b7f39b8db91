"""Shape and layout ops: reshape, flatten, permute, transpose, concat, stack, split, chunk, indexing,
squeeze/unsqueeze, expand, repeat, gather, and tensor creation (zeros, ones, full, arange, constant).
"""
from __future__ import annotations

from nnspec.compiler.ops.common import number_text
from nnspec.compiler.ops.registry import Attr, register
from nnspec.compiler.shapes import Sym, TensorType, is_concrete, numel, shape_str, simplify


def _reshape_shape(ctx, ins, a):
    t = ins[0]
    target = list(a["shape"])
    if sum(1 for d in target if is_concrete(d) and d == -1) > 1:
        ctx.fail("E0310", "reshape: at most one dimension can be -1", found=shape_str(target))
    total = numel(t.shape)
    if -1 in target:
        known = numel([d for d in target if not (is_concrete(d) and d == -1)])
        idx = target.index(-1)
        if is_concrete(known) and known == 0:
            ctx.fail("E0310", f"reshape: with a 0 in {shape_str(target)}, the -1 dimension cannot be inferred",
                     found=shape_str(target), expected="no 0 next to a -1")
        if is_concrete(total) and is_concrete(known):
            if known == 0 or total % known:
                ctx.fail("E0310", f"reshape: {shape_str(t.shape)} ({total} elements) cannot be viewed as {shape_str(target)}",
                         found=f"{total} elements", expected=f"a multiple of {known}")
            target[idx] = total // known
        else:
            q = simplify(total // known) if isinstance(total, Sym) or isinstance(known, Sym) else total // known
            target[idx] = q
    else:
        got = numel(target)
        if got != total and (is_concrete(got) and is_concrete(total) or True):
            if not (is_concrete(got) and is_concrete(total)) and simplify(got) == simplify(total):
                pass
            else:
                ctx.fail("E0310", f"reshape: {shape_str(t.shape)} ({total} elements) cannot be viewed as "
                         f"{shape_str(target)} ({got} elements)", found=f"{total} elements",
                         expected=f"{got} elements", hint="one dimension may be -1 to take what is left")
    return t.with_shape(target)


register("reshape", inputs=("x",), attrs=(Attr("shape", "dims"),), shape=_reshape_shape, kind="injective",
         lower=lambda i, a, c: f"{i[0]}.reshape{c.dims(a['shape'])}" if a["shape"] else f"{i[0]}.reshape(())",
         category="tensor",
         doc="view with a new shape; one dimension may be -1")


def _flatten_shape(ctx, ins, a):
    t = ins[0]
    if t.rank == 0:
        return t.with_shape((1,))
    s = ctx.axis(a["start_dim"], t.rank, "start_dim")
    e = ctx.axis(a["end_dim"], t.rank, "end_dim")
    if e < s:
        ctx.fail("E0304", "flatten: end_dim comes before start_dim", found=f"{a['start_dim']}..{a['end_dim']}")
    return t.with_shape(t.shape[:s] + (numel(t.shape[s:e + 1]),) + t.shape[e + 1:])


register("flatten", inputs=("x",), attrs=(Attr("start_dim", "int", 1), Attr("end_dim", "int", -1)),
         shape=_flatten_shape, kind="injective",
         lower=lambda i, a, c: f"{i[0]}.reshape(1)" if c.in_types and c.in_types[0].rank == 0 else  # as the rule says
         f"torch.flatten({i[0]}" + (f", {a['start_dim']}" if (a["start_dim"], a["end_dim"]) != (0, -1) else "")
         + (f", {a['end_dim']}" if a["end_dim"] != -1 else "") + ")",
         category="tensor", doc="merge dimensions start_dim..end_dim (default: all but the batch)")


def _permute_shape(ctx, ins, a):
    t = ins[0]
    dims = [ctx.axis(d, t.rank) for d in a["dims"]]
    if sorted(dims) != list(range(t.rank)):
        ctx.fail("E0304", f"permute needs a permutation of 0..{t.rank - 1}", found=repr(a["dims"]),
                 expected=f"{t.rank} distinct dims")
    return t.with_shape([t.shape[d] for d in dims])


register("permute", inputs=("x",), attrs=(Attr("dims", "ints"),), shape=_permute_shape, kind="injective",
         lower=lambda i, a, c: f"{i[0]}.permute{tuple(a['dims'])!r}", category="tensor", doc="reorder dimensions")


def _transpose_shape(ctx, ins, a):
    t = ins[0]
    d0, d1 = ctx.axis(a["dim0"], t.rank), ctx.axis(a["dim1"], t.rank)
    s = list(t.shape)
    s[d0], s[d1] = s[d1], s[d0]
    return t.with_shape(s)


register("transpose", inputs=("x",), attrs=(Attr("dim0", "int", -2), Attr("dim1", "int", -1)),
         shape=_transpose_shape, kind="injective",
         lower=lambda i, a, c: f"{i[0]}.transpose({a['dim0']}, {a['dim1']})", category="tensor",
         doc="swap two dimensions")


def _no_scalar(ctx, t) -> None:
    ctx.fail("E0302", f"rank mismatch in {ctx.op.name}: a rank-0 tensor has no dimension to {ctx.op.name} along",
             found=str(t), expected="a tensor of rank >= 1")


def _concat_shape(ctx, ins, a):
    first = ins[0]
    if first.rank == 0:
        _no_scalar(ctx, first)
    d = ctx.axis(a["dim"], first.rank)
    total = 0
    for k, t in enumerate(ins):
        if t.rank != first.rank:
            ctx.fail("E0302", f"rank mismatch in concat: input {k} has rank {t.rank}, input 0 has rank {first.rank}",
                     found=shape_str(t.shape), expected=f"rank {first.rank}")
        for ax in range(t.rank):
            if ax != d and t.shape[ax] != first.shape[ax]:
                ctx.check_dim(t.shape[ax], first.shape[ax], f"input {k} differs at dimension {ax} "
                              f"({shape_str(t.shape)} vs {shape_str(first.shape)})")
        total = total + t.shape[d]
    return first.with_shape(first.shape[:d] + (simplify(total) if isinstance(total, Sym) else total,) + first.shape[d + 1:])


register("concat", inputs=("*xs",), attrs=(Attr("dim", "int", 1),), shape=_concat_shape, kind="injective",
         lower=lambda i, a, c: f"torch.cat([{', '.join(i)}], dim={a['dim']})", category="tensor",
         doc="join tensors along an existing dimension")


def _stack_shape(ctx, ins, a):
    first = ins[0]
    for k, t in enumerate(ins):
        if t.shape != first.shape:
            ctx.fail("E0301", f"shape mismatch in stack: input {k} is {shape_str(t.shape)}, input 0 is {shape_str(first.shape)}",
                     found=shape_str(t.shape), expected=shape_str(first.shape))
    d = ctx.axis(a["dim"], first.rank + 1)
    return first.with_shape(first.shape[:d] + (len(ins),) + first.shape[d:])


register("stack", inputs=("*xs",), attrs=(Attr("dim", "int", 0),), shape=_stack_shape, kind="injective",
         lower=lambda i, a, c: f"torch.stack([{', '.join(i)}], dim={a['dim']})", category="tensor",
         doc="join equal-shaped tensors along a new dimension")


def _split_shape(ctx, ins, a):
    t = ins[0]
    if t.rank == 0:
        _no_scalar(ctx, t)
    d = ctx.axis(a["dim"], t.rank)
    size = t.shape[d]
    sizes = a["sizes"]
    ok = (isinstance(sizes, int) and not isinstance(sizes, bool) and sizes >= 1) or (
        isinstance(sizes, (list, tuple)) and sizes
        and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in sizes))
    if not ok:
        ctx.fail("E0401", "split takes a piece size (an int >= 1) or a list of sizes (ints >= 0)", found=repr(sizes),
                 expected="split(x, 2) or split(x, [3, 5])")
    if isinstance(sizes, int):
        if not is_concrete(size):
            ctx.fail("E0307", f"split into pieces of {sizes} needs a known size at dim {d}", found=str(size))
        sizes = [sizes] * (size // sizes) + ([size % sizes] if size % sizes else [])
    elif sum(sizes) != size:
        ctx.check_dim(sum(sizes), size, f"split sizes {list(sizes)} must add up to dimension {d}")
    return [t.with_shape(t.shape[:d] + (s,) + t.shape[d + 1:]) for s in sizes]


register("split", inputs=("x",), attrs=(Attr("sizes", "any"), Attr("dim", "int", 0)), shape=_split_shape,
         kind="injective", lower=lambda i, a, c: f"torch.split({i[0]}, {_as_list(a['sizes'])!r}, dim={a['dim']})",
         category="tensor", doc="split into pieces of a size (int) or of given sizes (list); several outputs")


def _as_list(v):
    return list(v) if isinstance(v, (tuple, list)) else v


def _chunk_shape(ctx, ins, a):
    t = ins[0]
    ctx.check_positive(a, "chunks")
    if t.rank == 0:
        _no_scalar(ctx, t)
    d = ctx.axis(a["dim"], t.rank)
    size = t.shape[d]
    n = a["chunks"]
    if not is_concrete(size) or size % n:
        ctx.fail("E0301", f"shape mismatch in chunk: dimension {d} ({size}) does not divide into {n} chunks",
                 found=str(size), expected=f"a multiple of {n}")
    return [t.with_shape(t.shape[:d] + (size // n,) + t.shape[d + 1:]) for _ in range(n)]


register("chunk", inputs=("x",), attrs=(Attr("chunks", "int"), Attr("dim", "int", 0)), shape=_chunk_shape,
         kind="injective", lower=lambda i, a, c: f"torch.chunk({i[0]}, {a['chunks']}, dim={a['dim']})",
         category="tensor", doc="split into n equal pieces; several outputs")


# ------------------------------------------------------------------------- indexing (x[...])
def _index_shape(ctx, ins, a):
    t = ins[0]
    out = []
    axis = 0
    key = list(a["key"])
    n_real = sum(1 for k in key if k != "..." and k is not None)
    if n_real > t.rank:
        ctx.fail("E0304", f"too many indices for a rank-{t.rank} tensor", found=str(n_real), expected=f"at most {t.rank}")
    for k in key:
        if k == "...":
            skip = t.rank - n_real
            out.extend(t.shape[axis:axis + skip])
            axis += skip
        elif k is None:
            out.append(1)
        elif isinstance(k, int):
            size = t.shape[axis]
            if is_concrete(size) and not -size <= k < size:
                ctx.fail("E0304", f"index {k} is out of range for dimension {axis} of size {size}",
                         found=str(k), expected=f"-{size} <= index < {size}")
            axis += 1
        else:
            _, start, stop, step = k
            size = t.shape[axis]
            if is_concrete(size) and all(v is None or is_concrete(v) for v in (start, stop, step)):
                out.append(len(range(*slice(start, stop, step).indices(size))))
            elif start is None and stop is None and step in (None, 1):
                out.append(size)
            else:
                st = start or 0
                sp = size if stop is None else stop
                if is_concrete(st) and st < 0:
                    st = size + st
                if is_concrete(sp) and sp < 0:
                    sp = size + sp
                length = sp - st
                out.append(simplify(length) if step in (None, 1) else simplify((length + step - 1) // step))
            axis += 1
    out.extend(t.shape[axis:])
    return t.with_shape(out)


def _index_text(key) -> str:
    parts = []
    for k in key:
        if k == "...":
            parts.append("...")
        elif k is None:
            parts.append("None")
        elif isinstance(k, int):
            parts.append(str(k))
        else:
            _, start, stop, step = k
            s = f"{'' if start is None else start}:{'' if stop is None else stop}"
            if step is not None:
                s += f":{step}"
            parts.append(s)
    return ", ".join(parts)


register("getitem", inputs=("x",), attrs=(Attr("key", "any"),), shape=_index_shape, kind="injective",
         lower=lambda i, a, c: f"{i[0]}[{_index_text(a['key'])}]", category="tensor",
         doc="basic indexing and slicing: x[:, -1], x[..., 1:3]")


def _select_shape(ctx, ins, a):
    t = ins[0]
    if t.rank == 0:
        _no_scalar(ctx, t)
    d = ctx.axis(a["dim"], t.rank)
    size = t.shape[d]
    if is_concrete(size) and not -size <= a["index"] < size:
        ctx.fail("E0304", f"index {a['index']} is out of range for dimension {d} of size {size}",
                 found=str(a["index"]), expected=f"-{size} <= index < {size}")
    return t.with_shape(t.shape[:d] + t.shape[d + 1:])


register("select", inputs=("x",), attrs=(Attr("dim", "int"), Attr("index", "int")), shape=_select_shape,
         kind="injective", lower=lambda i, a, c: f"{i[0]}.select({a['dim']}, {a['index']})", category="tensor",
         doc="take one index along a dimension, removing it")


def _squeeze_shape(ctx, ins, a):
    t = ins[0]
    if a["dim"] is None:
        return t.with_shape([d for d in t.shape if d != 1])
    d = ctx.axis(a["dim"], t.rank)
    if t.rank == 0:
        return t
    if t.shape[d] != 1:
        ctx.fail("E0301", f"shape mismatch in squeeze: dimension {d} has size {t.shape[d]}, not 1",
                 found=shape_str(t.shape), expected=f"size 1 at dimension {d}")
    return t.with_shape(t.shape[:d] + t.shape[d + 1:])


register("squeeze", inputs=("x",), attrs=(Attr("dim", "int_or_none", None),), shape=_squeeze_shape, kind="injective",
         lower=lambda i, a, c: f"{i[0]}.squeeze({'' if a['dim'] is None else a['dim']})", category="tensor",
         doc="remove a size-1 dimension")


def _unsqueeze_shape(ctx, ins, a):
    t = ins[0]
    d = ctx.axis(a["dim"], t.rank + 1)
    return t.with_shape(t.shape[:d] + (1,) + t.shape[d:])


register("unsqueeze", inputs=("x",), attrs=(Attr("dim", "int"),), shape=_unsqueeze_shape, kind="injective",
         lower=lambda i, a, c: f"{i[0]}.unsqueeze({a['dim']})", category="tensor", doc="insert a size-1 dimension")


def _expand_shape(ctx, ins, a):
    t = ins[0]
    target = list(a["shape"])
    if len(target) < t.rank:
        ctx.fail("E0302", "expand cannot reduce the rank", found=shape_str(t.shape), expected=shape_str(target))
    off = len(target) - t.rank
    if any(is_concrete(d) and d == -1 for d in target[:off]):
        ctx.fail("E0310", "expand: -1 (keep the size) is only allowed for existing dimensions, not new leading ones",
                 found=shape_str(target), expected=f"sizes for the {off} new leading dimension(s)")
    for i, d in enumerate(t.shape):
        want = target[off + i]
        if is_concrete(want) and want == -1:
            target[off + i] = d
        elif d != 1 and d != want:
            ctx.check_dim(d, want, f"expand: dimension {i} of size {d} cannot expand to {want}")
    return t.with_shape(target)


register("expand", inputs=("x",), attrs=(Attr("shape", "dims"),), shape=_expand_shape, kind="broadcast",
         lower=lambda i, a, c: f"{i[0]}.expand{c.dims(a['shape'])}", category="tensor",
         doc="broadcast size-1 dimensions to a larger shape (no copy)")


def _repeat_shape(ctx, ins, a):
    t = ins[0]
    reps = a["repeats"]
    ctx.check_positive(a, "repeats", minimum=0)
    if len(reps) < t.rank:
        ctx.fail("E0302", "repeat needs one count per dimension", found=repr(reps), expected=f"{t.rank} counts")
    shape = (1,) * (len(reps) - t.rank) + t.shape
    return t.with_shape([d * r for d, r in zip(shape, reps)])


register("repeat", inputs=("x",), attrs=(Attr("repeats", "ints"),), shape=_repeat_shape, kind="injective",
         lower=lambda i, a, c: f"{i[0]}.repeat{tuple(a['repeats'])!r}", category="tensor", doc="tile the tensor")


def _gather_shape(ctx, ins, a):
    t, idx = ins
    if idx.dtype not in ("i32", "i64"):
        ctx.fail("E0305", "gather's index must be an integer tensor", found=str(idx))
    if idx.rank != t.rank:
        ctx.fail("E0302", f"rank mismatch in gather: index has rank {idx.rank}, input has rank {t.rank}",
                 found=shape_str(idx.shape), expected=f"rank {t.rank}")
    ctx.axis(a["dim"], t.rank)
    return t.with_shape(idx.shape)


register("gather", inputs=("x", "index"), attrs=(Attr("dim", "int"),), shape=_gather_shape, kind="injective",
         nondiff_inputs=(1,), lower=lambda i, a, c: f"torch.gather({i[0]}, {a['dim']}, {i[1]})", category="tensor",
         doc="out[i][j] = x[i][index[i][j]] along dim")


def _index_select_shape(ctx, ins, a):
    t, idx = ins
    if idx.dtype not in ("i32", "i64") or idx.rank != 1:
        ctx.fail("E0305", "index_select's index must be a rank-1 integer tensor", found=str(idx))
    d = ctx.axis(a["dim"], t.rank)
    return t.with_shape(t.shape[:d] + (idx.shape[0],) + t.shape[d + 1:])


register("index_select", inputs=("x", "index"), attrs=(Attr("dim", "int"),), shape=_index_select_shape,
         kind="injective", nondiff_inputs=(1,),
         lower=lambda i, a, c: f"torch.index_select({i[0]}, {a['dim']}, {i[1]})", category="tensor",
         doc="rows (along dim) chosen by an index vector")


# ------------------------------------------------------------------------- creation
def _creation_shape(ctx, ins, a):
    for d in a["shape"]:
        if is_concrete(d) and d < 0:
            ctx.fail("E0310", f"{ctx.op.name}: negative size {d}", found=shape_str(a["shape"]))
    return TensorType(a["dtype"], tuple(a["shape"]))


_DT = {"f16": "torch.float16", "bf16": "torch.bfloat16", "f32": "torch.float32", "f64": "torch.float64",
       "i32": "torch.int32", "i64": "torch.int64", "bool": "torch.bool"}


def _dtype_arg(a, c):
    # floats follow the model's parameters' dtype (so .double() works); ints are explicit
    if a["dtype"] in ("f32",):
        return f"dtype={c.dtype}"
    return f"dtype={_DT[a['dtype']]}"


_DTYPE_CHOICES = ("f16", "bf16", "f32", "f64", "i32", "i64", "bool")
register("zeros", inputs=(), attrs=(Attr("shape", "dims"), Attr("dtype", "str", "f32", _DTYPE_CHOICES)),
         shape=_creation_shape, kind="elementwise",
         lower=lambda i, a, c: f"torch.zeros({c.dims(a['shape'])}, device={c.device}, {_dtype_arg(a, c)})",
         category="creation", doc="a tensor of zeros (initial states)")
register("ones", inputs=(), attrs=(Attr("shape", "dims"), Attr("dtype", "str", "f32", _DTYPE_CHOICES)),
         shape=_creation_shape, kind="elementwise",
         lower=lambda i, a, c: f"torch.ones({c.dims(a['shape'])}, device={c.device}, {_dtype_arg(a, c)})",
         category="creation", doc="a tensor of ones")
register("full", inputs=(), attrs=(Attr("shape", "dims"), Attr("value", "number"), Attr("dtype", "str", "f32", _DTYPE_CHOICES)),
         shape=_creation_shape, kind="elementwise",
         lower=lambda i, a, c: f"torch.full({c.dims(a['shape'])}, {number_text(a['value'])}, device={c.device}, {_dtype_arg(a, c)})",
         category="creation", doc="a tensor filled with one value")
register("arange", inputs=(), attrs=(Attr("end", "dim"), Attr("dtype", "str", "i64", _DTYPE_CHOICES)),
         shape=lambda ctx, ins, a: TensorType(a["dtype"], (a["end"],)), kind="elementwise",
         lower=lambda i, a, c: f"torch.arange({a['end']}, device={c.device}, {_dtype_arg(a, c)})",
         category="creation", doc="0, 1, ..., end-1 (positions)")
register("constant", inputs=(), attrs=(Attr("value", "number"),),
         shape=lambda ctx, ins, a: TensorType("f32" if isinstance(a["value"], float) else "i64", ()),
         kind="elementwise", lower=lambda i, a, c: number_text(a["value"]), category="creation",
         doc="a compile-time number; written inline in the generated code")


# ------------------------------------------------------------------------- graph structure
def _no_rule(ctx, ins, a):  # these nodes get their type when the elaborator creates them
    raise AssertionError(f"{ctx.op.name} nodes are typed by the elaborator")


register("input", inputs=(), attrs=(Attr("name", "str"),), shape=_no_rule, category="graph",
         lower=lambda i, a, c: a["name"], doc="a model input (or a scan step's input)")
register("target", inputs=(), attrs=(Attr("name", "str"),), shape=_no_rule, category="graph",
         lower=lambda i, a, c: a["name"], doc="a training target (labels), used by losses")
register("parameter", inputs=(), attrs=(Attr("init", "any"),), shape=_no_rule, category="graph",
         lower=lambda i, a, c: c.module, doc="a learned tensor declared with `param`")
register("scan", inputs=("*xs",), attrs=(Attr("axis", "int", 1),), shape=_no_rule, category="graph",
         doc="recurrence: runs a cell over a sequence carrying a state; the body is a nested graph")
