"""Data for `nnspec train`: data sets, splits, deterministic batch order, and the mapping to a spec's inputs.

Sources (`data.source`):
    digits    scikit-learn's 8x8 handwritten digits (1,797 images, offline): x f32[1, 8, 8] in [0, 1], y i64
    iris      scikit-learn's iris (150 flowers): x f32[4], y i64 (3 classes)
    sequence  synthetic sequence tasks (`task`):
                copy    x f32[2L+delay, symbols+2] one-hot; y i64[L]: the L symbols shown first, to be
                        written out during the last L steps, after the recall marker
                adding  x f32[T, 2]: a value in [0, 1) and a marker channel with two ones; y f32[1]: the sum of
                        the two marked values (one in each half)
                parity  x f32[T, 1] of bits; y i64: their parity (0 or 1)
    graph     a random graph with `classes` communities (a stochastic block model: edge probability p_in within
              a class, p_out between) for node classification; one full-batch sample per split:
              x f32[N, F] node features (class centre + noise), adj f32[N, N] the normalised adjacency with self
              loops D^-1/2 (A + I) D^-1/2, y i64[N] labels with -100 (cross_entropy's ignore_index) on the nodes
              outside the split, mask f32[N] 1 on the split's nodes
    csv       a CSV file with a header: `target` column(s) -> y (non-numeric labels become class indices in sorted
              order), `features` (default: every other column) -> x f32[F]
    numpy     an .npz (every array is a field), an .npy (field x), or `files: {field: file.npy}`
    images    a folder of class sub-folders of images (PNG/JPEG via Pillow): x f32[C, H, W] in [0, 1], y i64;
              read lazily, so `num_workers` DataLoader processes help

Splits: a source without its own split is divided by `split` fractions with a permutation seeded by
`split_seed`; `paths: {train, validation, test}` gives files already split.

Batch order: epoch e's order is a permutation drawn from a generator seeded by (training.seed, e) alone, so it
does not depend on anything else that consumed random numbers, and a run resumed at batch k of epoch e
reads exactly the batches the uninterrupted run read. Under torchrun, every process draws the same
permutation and global batch g (batch_size x world_size samples) is split into contiguous per-process
parts, so N processes with batch b see the same samples per step as one process with batch N*b.
Augmentation noise is drawn from a generator seeded by (seed, epoch, batch), for the same reason.

Mapping to the spec: each spec input and target takes the data field of the same name (`data.inputs`/
`data.targets` map them explicitly); a lone input takes `x` and a lone target `y` otherwise. A field is cast
to the declared dtype and reshaped to the declared shape after the batch axis when the sizes agree
(digits' [1, 8, 8] feeds an f32[B, 64] MLP input as well as an f32[B, 1, 8, 8] CNN input).
"""
from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from nnspec.runtime.config import Config

DTYPES = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32, "f64": torch.float64,
          "i32": torch.int32, "i64": torch.int64, "bool": torch.bool}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def derive_seed(*parts) -> int:
    """A 63-bit seed from any parts (seed, "order", epoch...): independent streams without collisions."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


# ------------------------------------------------------------------------------------------ data sets


class LazyImages(torch.utils.data.Dataset):
    """Images read from disk on access (in DataLoader workers when num_workers > 0)."""

    def __init__(self, files: list, labels: list, size=None, grayscale=False):
        self.files, self.labels, self.size, self.grayscale = files, labels, size, grayscale

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image
        with Image.open(self.files[i]) as img:
            img = img.convert("L" if self.grayscale else "RGB")
            if self.size:
                img = img.resize((self.size[1], self.size[0]))
            arr = np.asarray(img, dtype=np.float32) / 255.0
        if arr.ndim == 2:
            arr = arr[None]
        else:
            arr = arr.transpose(2, 0, 1)
        return {"x": torch.from_numpy(np.ascontiguousarray(arr)), "y": torch.tensor(self.labels[i], dtype=torch.int64)}


class Subset(torch.utils.data.Dataset):
    def __init__(self, base, indices):
        self.base, self.indices = base, list(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.base[self.indices[i]]


@dataclass
class Split:
    """One split: either tensors in memory (field -> [N, ...]) or a dataset read lazily."""

    name: str
    tensors: dict | None = None
    dataset: torch.utils.data.Dataset | None = None
    full_batch: bool = False

    def __len__(self):
        if self.full_batch:
            return 1
        if self.tensors is not None:
            return len(next(iter(self.tensors.values())))
        return len(self.dataset)

    def item_shapes(self) -> dict:
        if self.full_batch:
            return {k: tuple(v.shape) for k, v in self.tensors.items()}
        if self.tensors is not None:
            return {k: tuple(v.shape[1:]) for k, v in self.tensors.items()}
        sample = self.dataset[0]
        return {k: tuple(v.shape) for k, v in sample.items()}

    def item_dtypes(self) -> dict:
        if self.tensors is not None:
            return {k: v.dtype for k, v in self.tensors.items()}
        return {k: v.dtype for k, v in self.dataset[0].items()}

    def fetch(self, indices) -> dict:
        """A batch (field -> tensor) of the given sample indices."""
        if self.full_batch:
            return dict(self.tensors)
        if self.tensors is not None:
            idx = torch.as_tensor(indices, dtype=torch.long)
            return {k: v.index_select(0, idx) for k, v in self.tensors.items()}
        items = [self.dataset[int(i)] for i in indices]
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}


@dataclass
class DataBundle:
    splits: dict                      # "train" / "validation" / "test" -> Split (absent when empty)
    description: str = ""
    classes: list | None = None
    full_batch: bool = False
    extra: dict = field(default_factory=dict)


def _err(cfg: Config, key: str, message: str, **kw):
    return cfg.error(("data", key) if key else ("data",), message, code="E0706", **kw)


def _split_indices(n: int, fractions: dict, seed: int) -> dict:
    perm = np.random.default_rng(seed).permutation(n)
    n_train = int(round(fractions["train"] * n))
    n_val = int(round(fractions["validation"] * n))
    n_val = min(n_val, n - n_train)
    return {"train": perm[:n_train], "validation": perm[n_train:n_train + n_val], "test": perm[n_train + n_val:]}


def _from_arrays(arrays: dict, d: dict) -> dict:
    n = len(next(iter(arrays.values())))
    parts = _split_indices(n, d["split"], d["split_seed"])
    out = {}
    for name, idx in parts.items():
        if len(idx):
            idx_t = torch.as_tensor(idx, dtype=torch.long)
            out[name] = Split(name, tensors={k: v.index_select(0, idx_t) for k, v in arrays.items()})
    return out


def _tensor(a) -> torch.Tensor:
    a = np.asarray(a)
    if a.dtype == np.float64:
        a = a.astype(np.float32)
    if a.dtype.kind in "iu" and a.dtype != np.int64:
        a = a.astype(np.int64)
    if a.dtype.kind not in "fiub":
        raise TypeError(f"arrays of dtype {a.dtype} cannot be used (numbers or booleans only)")
    return torch.from_numpy(np.ascontiguousarray(a))


# ---------------------------------------------------------------- built-in and synthetic sources


def _digits(cfg, d):
    from sklearn.datasets import load_digits
    ds = load_digits()
    x = torch.tensor(ds.images / 16.0, dtype=torch.float32).unsqueeze(1)   # [N, 1, 8, 8] in [0, 1]
    y = torch.tensor(ds.target, dtype=torch.int64)
    return DataBundle(_from_arrays({"x": x, "y": y}, d), "digits: 1,797 8x8 images of handwritten digits, 10 classes",
                      classes=[str(i) for i in range(10)])


def _iris(cfg, d):
    from sklearn.datasets import load_iris
    ds = load_iris()
    x = torch.tensor(ds.data, dtype=torch.float32)
    y = torch.tensor(ds.target, dtype=torch.int64)
    return DataBundle(_from_arrays({"x": x, "y": y}, d), "iris: 150 flowers, 4 measurements, 3 species",
                      classes=list(ds.target_names))


def sequence_task(task: str, samples: int, length: int, seed: int, symbols: int = 8, delay: int = 10) -> dict:
    """Generate a synthetic sequence task (see the module docstring): field -> array."""
    rng = np.random.default_rng(seed)
    n, t = samples, length
    if task == "adding":
        values = rng.random((n, t), dtype=np.float32)
        marks = np.zeros((n, t), dtype=np.float32)
        half = max(t // 2, 1)
        first = rng.integers(0, half, n)
        second = rng.integers(half, t, n) if t > 1 else first
        marks[np.arange(n), first] = 1.0
        marks[np.arange(n), second] = 1.0
        x = np.stack([values, marks], axis=-1)
        y = (values * marks).sum(axis=1, keepdims=True).astype(np.float32)
        return {"x": x, "y": y}
    if task == "parity":
        bits = rng.integers(0, 2, (n, t))
        return {"x": bits[..., None].astype(np.float32), "y": (bits.sum(axis=1) % 2).astype(np.int64)}
    if task == "copy":
        total = 2 * t + delay
        pattern = rng.integers(0, symbols, (n, t))
        x = np.zeros((n, total, symbols + 2), dtype=np.float32)
        x[np.arange(n)[:, None], np.arange(t)[None, :], pattern] = 1.0
        x[:, t:total, symbols] = 1.0                  # blank
        x[:, t + delay - 1, symbols] = 0.0
        x[:, t + delay - 1, symbols + 1] = 1.0        # the recall marker
        return {"x": x, "y": pattern.astype(np.int64)}
    raise ValueError(f"unknown sequence task {task!r}")


def _sequence(cfg, d):
    arrays = sequence_task(d["task"], d["samples"], d["length"], d["seed"], d["symbols"], d["delay"])
    desc = {"adding": f"adding problem: {d['samples']} sequences of length {d['length']}, regression of the sum of "
                      "two marked values",
            "parity": f"parity: {d['samples']} bit sequences of length {d['length']}, 2 classes",
            "copy": f"copy: {d['samples']} sequences, copy {d['length']} of {d['symbols']} symbols after "
                    f"{d['delay']} steps"}[d["task"]]
    return DataBundle(_from_arrays({k: _tensor(v) for k, v in arrays.items()}, d), desc)


def random_graph(nodes: int, classes: int, features: int, p_in: float, p_out: float, noise: float, seed: int):
    """A stochastic block model with Gaussian class-centred features: (x, normalised adjacency, labels)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, nodes)
    same = labels[:, None] == labels[None, :]
    prob = np.where(same, p_in, p_out)
    upper = np.triu(rng.random((nodes, nodes)) < prob, k=1)
    adj = (upper | upper.T).astype(np.float32) + np.eye(nodes, dtype=np.float32)
    deg = adj.sum(axis=1)
    inv = 1.0 / np.sqrt(deg)
    norm = adj * inv[:, None] * inv[None, :]
    centres = rng.normal(0.0, 1.0, (classes, features)).astype(np.float32)
    x = centres[labels] + rng.normal(0.0, noise, (nodes, features)).astype(np.float32)
    return x.astype(np.float32), norm.astype(np.float32), labels.astype(np.int64)


def _graph(cfg, d):
    x, adj, labels = random_graph(d["nodes"], d["classes"], d["features"], d["p_in"], d["p_out"], d["noise"], d["seed"])
    parts = _split_indices(d["nodes"], d["split"], d["split_seed"])
    splits = {}
    for name, idx in parts.items():
        if not len(idx):
            continue
        y = np.full(d["nodes"], -100, dtype=np.int64)
        y[idx] = labels[idx]
        mask = np.zeros(d["nodes"], dtype=np.float32)
        mask[idx] = 1.0
        splits[name] = Split(name, tensors={"x": torch.from_numpy(x), "adj": torch.from_numpy(adj),
                                            "y": torch.from_numpy(y), "mask": torch.from_numpy(mask)},
                             full_batch=True)
    return DataBundle(splits, f"random graph: {d['nodes']} nodes in {d['classes']} communities, {d['features']} "
                              "features per node (full-batch node classification)",
                      classes=[str(i) for i in range(d["classes"])], full_batch=True)


# ---------------------------------------------------------------- user data


def _user_splits(cfg, d, read_one) -> dict:
    """`path` split by fractions, or `paths` already split; `read_one(path, key) -> field -> tensor or Split`."""
    if d.get("paths"):
        out = {}
        for name in ("train", "validation", "test"):
            p = d["paths"].get(name)
            if p:
                got = read_one(p, ("paths", name))
                out[name] = got if isinstance(got, Split) else Split(name, tensors=got)
                out[name].name = name
        return out
    got = read_one(d["path"], ("path",)) if d.get("path") else read_one(None, ("files",))
    if isinstance(got, Split):  # lazy images: split by index
        parts = _split_indices(len(got), d["split"], d["split_seed"])
        return {name: Split(name, dataset=Subset(got.dataset, idx)) for name, idx in parts.items() if len(idx)}
    lengths = {k: len(v) for k, v in got.items()}
    if len(set(lengths.values())) > 1:
        raise _err(cfg, "path" if d.get("path") else "files", "the data fields have different numbers of samples",
                   found=", ".join(f"{k}: {n}" for k, n in lengths.items()), expected="the same length for every field")
    return _from_arrays(got, d)


def _existing(cfg, text: str, key: tuple) -> Path:
    p = cfg.resolve_path(text)
    if not p.exists():
        raise cfg.error(("data",) + key, f"data file `{text}` not found", code="E0706",
                        found=str(p), expected="an existing file (relative paths start at the config's folder)")
    return p


def _csv(cfg, d):
    targets = d["target"] if isinstance(d["target"], list) else [d["target"]]
    label_maps: dict = {}

    def read(text, key):
        path = _existing(cfg, text, key)
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f, delimiter=d["delimiter"]))
        if not rows:
            raise cfg.error(("data",) + key, f"`{text}` is empty", code="E0706")
        header = [h.strip() for h in rows[0]]
        body = [r for r in rows[1:] if any(c.strip() for c in r)]
        for col in targets + (d["features"] or []):
            if col not in header:
                which = "target" if col in targets else "features"
                from nnspec.errors import suggest
                raise cfg.error(("data", which), f"column `{col}` is not in `{text}`", code="E0706",
                                expected=f"one of {', '.join(header)}", hint=suggest(col, header))
        feats = d["features"] or [h for h in header if h not in targets]
        cols = {h: i for i, h in enumerate(header)}
        try:
            x = np.array([[float(r[cols[c]]) for c in feats] for r in body], dtype=np.float32)
        except (ValueError, IndexError) as e:
            raise cfg.error(("data",) + key, f"`{text}`: a feature value is not a number ({e})", code="E0706") from None
        ys = []
        for c in targets:
            raw = [r[cols[c]].strip() for r in body]
            try:
                vals = np.array([float(v) for v in raw])
                if np.all(vals == np.round(vals)):
                    vals = vals.astype(np.int64)
                else:
                    vals = vals.astype(np.float32)
            except ValueError:  # labels as names: class indices in sorted order (same map for every split)
                names = label_maps.setdefault(c, sorted(set(raw)))
                unknown = sorted(set(raw) - set(names))
                if unknown:
                    raise cfg.error(("data",) + key, f"`{text}`: labels {unknown} of column `{c}` do not occur in the "
                                    "training file", code="E0706") from None
                vals = np.array([names.index(v) for v in raw], dtype=np.int64)
            ys.append(vals)
        y = ys[0] if len(ys) == 1 else np.stack(ys, axis=1)
        return {"x": _tensor(x), "y": _tensor(y)}

    splits = _user_splits(cfg, d, read)
    first = targets[0]
    classes = label_maps.get(first)
    return DataBundle(splits, f"csv: {sum(len(s) for s in splits.values())} rows", classes=classes)


def _numpy(cfg, d):
    def read(text, key):
        if text is None:  # files: {field: path}
            out = {}
            for name, f in d["files"].items():
                p = _existing(cfg, f, ("files", name))
                out[name] = _tensor(np.load(p, allow_pickle=False))
            return out
        p = _existing(cfg, text, key)
        try:
            loaded = np.load(p, allow_pickle=False)
        except ValueError as e:
            raise cfg.error(("data",) + key, f"cannot read `{text}`: {e}", code="E0706") from None
        if isinstance(loaded, np.ndarray):
            return {"x": _tensor(loaded)}
        with loaded:
            return {k: _tensor(loaded[k]) for k in loaded.files}

    try:
        splits = _user_splits(cfg, d, read)
    except TypeError as e:
        raise _err(cfg, "", str(e)) from None
    return DataBundle(splits, f"numpy: {sum(len(s) for s in splits.values())} samples")


def _images(cfg, d):
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise _err(cfg, "source", "reading image folders needs Pillow (pip install pillow)") from None
    classes: list = []

    def read(text, key):
        root = _existing(cfg, text, key)
        if not root.is_dir():
            raise cfg.error(("data",) + key, f"`{text}` is not a folder", code="E0706",
                            expected="a folder with one sub-folder of images per class")
        names = sorted(p.name for p in root.iterdir() if p.is_dir())
        if not classes:
            classes.extend(names)
        files, labels = [], []
        for name in names:
            if name not in classes:
                raise cfg.error(("data",) + key, f"class folder `{name}` of `{text}` is not a training class",
                                code="E0706", expected=", ".join(classes))
            for f in sorted((root / name).iterdir()):
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    files.append(str(f))
                    labels.append(classes.index(name))
        if not files:
            raise cfg.error(("data",) + key, f"no images under `{text}`", code="E0706",
                            expected=f"files {', '.join(IMAGE_SUFFIXES)} in class sub-folders")
        return Split("all", dataset=LazyImages(files, labels, d["image_size"], d["grayscale"]))

    splits = _user_splits(cfg, d, read)
    return DataBundle(splits, f"images: {sum(len(s) for s in splits.values())} files in {len(classes)} classes",
                      classes=classes)


SOURCES = {"digits": _digits, "iris": _iris, "sequence": _sequence, "graph": _graph, "csv": _csv, "numpy": _numpy,
           "images": _images}


def load_data(cfg: Config) -> DataBundle:
    d = cfg["data"]
    bundle = SOURCES[d["source"]](cfg, d)
    if "train" not in bundle.splits:
        raise _err(cfg, "split", "the training split is empty", expected="a split.train fraction > 0")
    return bundle


# ------------------------------------------------------------------------------------------ mapping to the spec


@dataclass
class Port:
    """One spec input or target, fed from a data field."""

    name: str          # the spec's name
    field: str         # the data field
    kind: str          # "input" or "target"
    dtype: torch.dtype
    declared: str      # e.g. "f32[B, 64]" for messages
    shape: tuple       # per-sample shape to reshape to (the whole shape for full-batch data)


def _plan_shape(declared: tuple, item: tuple, full_batch: bool):
    dims = tuple(declared) if full_batch else tuple(declared[1:])
    if len(dims) == len(item):
        for d, n in zip(dims, item):
            if isinstance(d, int) and d != n:
                return None
        return tuple(item)
    if all(isinstance(d, int) for d in dims) and math.prod(dims) == math.prod(item):
        return tuple(dims)
    return None


class Binding:
    """Turns batches of data fields into the model's keyword arguments: cast, normalise, augment, reshape."""

    def __init__(self, cfg: Config, graph, bundle: DataBundle):
        self.cfg = cfg
        d = cfg["data"]
        self.full_batch = bundle.full_batch
        train = bundle.splits["train"]
        shapes = train.item_shapes()
        fields = list(shapes)
        self.ports: list[Port] = []
        for kind, ids, mapping_key in (("input", graph.inputs, "inputs"), ("target", graph.targets, "targets")):
            mapping = d[mapping_key] or {}
            names = [graph.nodes[i].attrs["name"] for i in ids]
            for name in mapping:
                if name not in names:
                    from nnspec.errors import suggest
                    raise cfg.error(("data", mapping_key, name), f"the spec has no {kind} `{name}`", code="E0705",
                                    expected=f"one of {', '.join(names) or '(none)'}", hint=suggest(name, names),
                                    key=True)
            for nid in ids:
                node = graph.nodes[nid]
                name = node.attrs["name"]
                ttype = node.outputs[0]
                if name in mapping:
                    fld = mapping[name]
                    if fld not in shapes:
                        raise cfg.error(("data", mapping_key, name), f"the data has no field `{fld}`", code="E0706",
                                        expected=f"one of {', '.join(fields)}")
                elif name in shapes:
                    fld = name
                elif len(ids) == 1 and ("x" if kind == "input" else "y") in shapes:
                    fld = "x" if kind == "input" else "y"
                else:
                    raise cfg.error(("data",), f"no data field for the spec's {kind} `{name}`", code="E0706",
                                    expected=f"a mapping data.{mapping_key}: {{{name}: <field>}}",
                                    found=f"fields {', '.join(fields)}")
                plan = _plan_shape(ttype.shape, shapes[fld], self.full_batch)
                if plan is None:
                    raise cfg.error(("data",), f"data field `{fld}` (a sample is {list(shapes[fld])}) does not fit the "
                                    f"{kind} `{name}: {ttype}`", code="E0706", expected=str(ttype),
                                    found=f"[{'' if self.full_batch else 'N, '}{', '.join(map(str, shapes[fld]))}]")
                self.ports.append(Port(name, fld, kind, DTYPES[ttype.dtype], str(ttype), plan))
        self.item_shapes = shapes
        self.dtypes = train.item_dtypes()
        self.augment = d["augment"]
        float_inputs = {p.field for p in self.ports if p.kind == "input" and p.dtype.is_floating_point}
        if self.augment["shift"] and not any(len(shapes[f]) >= 2 for f in float_inputs):
            raise cfg.error(("data", "augment", "shift"), "`data.augment.shift` needs image-shaped inputs",
                            code="E0706", found=", ".join(f"{f}: {list(shapes[f])}" for f in sorted(float_inputs)),
                            expected="a field with at least two axes per sample (..., H, W)")
        self.norm_fields = sorted(f for f in float_inputs if self.dtypes[f].is_floating_point) \
            if d["normalize"] != "none" else []
        self.stats = {f: self._stats(train, f, d["normalize"], d["normalize_per"]) for f in self.norm_fields}

    def _stats(self, split: Split, fld: str, method: str, per: str):
        if split.tensors is not None:
            data = split.tensors[fld].float()
        else:
            data = torch.stack([split.dataset[i][fld] for i in range(len(split))]).float()
        if per == "feature":
            dims = (0,)
        elif per == "channel":
            dims = tuple(i for i in range(data.dim()) if i != 1) if data.dim() > 1 else (0,)
        else:
            dims = tuple(range(data.dim()))
        if method == "standard":
            shift = data.mean(dim=dims, keepdim=True)
            scale = data.std(dim=dims, keepdim=True, unbiased=False)
        else:
            shift = data.amin(dim=dims, keepdim=True)
            scale = data.amax(dim=dims, keepdim=True) - shift
        scale = torch.where(scale < 1e-6, torch.ones_like(scale), scale)
        if not self.full_batch:
            shift, scale = shift.squeeze(0), scale.squeeze(0)
        return shift, scale

    def state(self) -> dict:
        return {f: (s.tolist(), c.tolist()) for f, (s, c) in self.stats.items()}

    def __call__(self, batch: dict, device, train: bool = False, gen: torch.Generator | None = None):
        """Batch of fields -> (inputs, targets): keyword arguments for the model, on `device`."""
        fields = dict(batch)
        for f in self.norm_fields:
            shift, scale = self.stats[f]
            fields[f] = (fields[f].float() - shift) / scale
        if train and (self.augment["shift"] or self.augment["noise"]):
            for f in {p.field for p in self.ports if p.kind == "input" and p.dtype.is_floating_point}:
                x = fields[f].float()
                if self.augment["shift"] and x.dim() >= 3:
                    x = random_shift(x, self.augment["shift"], gen)
                if self.augment["noise"]:
                    x = x + self.augment["noise"] * torch.randn(x.shape, generator=gen)
                fields[f] = x
        inputs, targets = {}, {}
        for p in self.ports:
            t = fields[p.field]
            t = t.reshape(p.shape) if self.full_batch else t.reshape((t.shape[0],) + p.shape)
            t = t.to(device=device, dtype=p.dtype, non_blocking=True)
            (inputs if p.kind == "input" else targets)[p.name] = t
        return inputs, targets


def random_shift(x: torch.Tensor, s: int, gen: torch.Generator | None) -> torch.Tensor:
    """Translate every sample of [N, ..., H, W] by its own (dy, dx) in [-s, s]^2, filling with zeros."""
    n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    offsets = torch.randint(-s, s + 1, (n, 2), generator=gen)
    padded = torch.nn.functional.pad(x, (s, s, s, s))
    out = torch.empty_like(x)
    for dy in range(-s, s + 1):
        for dx in range(-s, s + 1):
            sel = ((offsets[:, 0] == dy) & (offsets[:, 1] == dx)).nonzero().flatten()
            if len(sel):
                out[sel] = padded[sel][..., s - dy:s - dy + h, s - dx:s - dx + w]
    return out


# ------------------------------------------------------------------------------------------ batch order


class EpochBatches(torch.utils.data.Sampler):
    """The index lists of one epoch for this process, starting at batch `start` (see the module docstring)."""

    def __init__(self, n: int, batch_size: int, seed: int, shuffle: bool, drop_last: bool, rank: int = 0,
                 world: int = 1):
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.drop_last, self.rank, self.world = drop_last, rank, world
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world

    def batches_per_epoch(self) -> int:
        g = self.global_batch
        return self.n // g if self.drop_last else -(-self.n // g)

    def order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "order", epoch))
        return torch.randperm(self.n, generator=gen)

    def __iter__(self):
        perm = self.order(self.epoch)
        g = self.global_batch
        for b in range(self.start, self.batches_per_epoch()):
            chunk = perm[b * g:(b + 1) * g]
            if self.world > 1:
                chunk = torch.tensor_split(chunk, self.world)[self.rank]
            yield chunk.tolist()

    def __len__(self):
        return max(self.batches_per_epoch() - self.start, 0)


class Loader:
    """Batches of one split: direct indexing for tensors in memory, a DataLoader (with workers) otherwise."""

    def __init__(self, split: Split, sampler: EpochBatches, num_workers: int = 0):
        self.split, self.sampler = split, sampler
        self.loader = None
        if split.tensors is None and not split.full_batch:
            self.loader = torch.utils.data.DataLoader(split.dataset, batch_sampler=sampler, num_workers=num_workers,
                                                      persistent_workers=num_workers > 0)

    def epoch(self, epoch: int, start: int = 0):
        """(batch index, fields) for the batches of `epoch` from batch `start`."""
        self.sampler.set_epoch(epoch, start)
        if self.split.full_batch:
            if start == 0:
                yield 0, self.split.fetch(None)
            return
        if self.loader is not None:
            for i, batch in enumerate(self.loader, start=start):
                yield i, batch
            return
        for i, idx in enumerate(self.sampler, start=start):
            yield i, self.split.fetch(idx)

    def __len__(self):
        return 1 if self.split.full_batch else self.sampler.batches_per_epoch()


def eval_batches(split: Split, batch_size: int, num_workers: int = 0):
    """Every sample of a split once, in order."""
    if split.full_batch:
        yield split.fetch(None)
        return
    n = len(split)
    if split.tensors is not None:
        for i in range(0, n, batch_size):
            yield split.fetch(range(i, min(i + batch_size, n)))
        return
    loader = torch.utils.data.DataLoader(split.dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    yield from loader
