"""The training configuration: its schema, and its validation before any training starts.

`nnspec train CONFIG.yaml` reads one YAML file. Every key is checked against the schema below before a
model is built or a batch is read: an unknown key, a value of the wrong type or out of range, a missing
required key, and (once the spec is compiled) a name the spec does not define (a loss, an input, a
metric, a parameter pattern that matches nothing) are all reported as `SpecError`s that point at the
YAML line, with the key path and what was expected:

    error[E0702]: unknown key `optimizer.lrr` in the training config
      --> examples/digits_cnn.yaml:14:3
       |
    14 |   lrr: 0.003
       |   ^^^
       = expected: one of name, lr, momentum, weight_decay, ...
       = help: did you mean `lr`?

Error codes (the E07xx family): E0701 the file cannot be read or is not YAML, E0702 unknown key,
E0703 wrong type or value, E0704 missing required key, E0705 the config disagrees with the spec
(unknown loss, input, metric, parameter pattern), E0706 data problems (missing file, shapes that do not
fit the model's inputs), E0707 checkpoint and resume problems.

Paths in the config (the spec, data files) are relative to the config file's folder; a spec may also
be a built-in name (`digits_cnn`). `output.dir` is relative to the working directory.

Run `nnspec train --schema` for every key with its type, default and meaning (generated from `SCHEMA`
below). A minimal config:

    model: {spec: ../specs/digits_cnn.nn}
    data: {source: digits, batch_size: 64}
    optimizer: {name: adam, lr: 0.003}
    training: {epochs: 20, seed: 0}

Decisions written down here:
- YAML 1.1 reads `1e-3` (no dot) as a string; wherever a number is expected such a string is read as
  the number it spells.
- `--set key.path=value` on the command line overrides a key (value read as YAML); an override is
  validated like the file, and its errors point at the override.
- The config's hash (recorded in checkpoints) is the hash of the validated config with defaults filled,
  so an edit that restates a default is not a change.
"""
from __future__ import annotations

import abc

import copy
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nnspec.errors import SourceCache, Span, SpecError, suggest

REQUIRED = object()

# ------------------------------------------------------------------------------------------ schema types


class Schema(abc.ABC):
    """One kind of value (an abstract base). `check` returns the normalised value or raises through
    `ctx.error`; `describe` says in words what is expected."""

    doc = ""

    @abc.abstractmethod
    def check(self, value, path: tuple, ctx: "Config"):
        """The normalised value, or an error naming the key path."""

    @abc.abstractmethod
    def describe(self) -> str:
        """What the value must be, for messages and `nnspec train --schema`."""


def _found(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"{value!r} (a string)"
    return f"{value!r} ({type(value).__name__})"


def _as_number(value):
    """YAML 1.1 reads `1e-3` as a string: accept strings that spell a number."""
    if isinstance(value, str):
        try:
            f = float(value.strip())
        except ValueError:
            return value
        return f
    return value


class Str(Schema):
    def __init__(self, choices=None, doc=""):
        self.choices = tuple(choices) if choices else None
        self.doc = doc

    def check(self, value, path, ctx):
        if not isinstance(value, str):
            raise ctx.error(path, f"`{ctx.dotted(path)}` must be {self.describe()}", found=_found(value),
                            expected=self.describe())
        if self.choices and value not in self.choices:
            raise ctx.error(path, f"`{ctx.dotted(path)}` must be one of {', '.join(self.choices)}",
                            found=repr(value), expected=self.describe(), hint=suggest(value, self.choices))
        return value

    def describe(self):
        return f"one of {', '.join(self.choices)}" if self.choices else "a string"


class Int(Schema):
    def __init__(self, min=None, max=None, doc=""):  # noqa: A002 - schema vocabulary
        self.min, self.max, self.doc = min, max, doc

    def check(self, value, path, ctx):
        v = _as_number(value)
        if isinstance(v, float) and v.is_integer() and not isinstance(value, bool):
            v = int(v)
        if not isinstance(v, int) or isinstance(v, bool):
            raise ctx.error(path, f"`{ctx.dotted(path)}` must be {self.describe()}", found=_found(value),
                            expected=self.describe())
        if (self.min is not None and v < self.min) or (self.max is not None and v > self.max):
            raise ctx.error(path, f"`{ctx.dotted(path)}` is out of range", found=str(v), expected=self.describe())
        return v

    def describe(self):
        rng = []
        if self.min is not None:
            rng.append(f">= {self.min}")
        if self.max is not None:
            rng.append(f"<= {self.max}")
        return "an integer" + (f" {' and '.join(rng)}" if rng else "")


class Float(Schema):
    def __init__(self, min=None, max=None, doc="", open_min=False):  # noqa: A002
        self.min, self.max, self.doc, self.open_min = min, max, doc, open_min

    def check(self, value, path, ctx):
        v = _as_number(value)
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise ctx.error(path, f"`{ctx.dotted(path)}` must be {self.describe()}", found=_found(value),
                            expected=self.describe())
        v = float(v)
        if not math.isfinite(v):
            raise ctx.error(path, f"`{ctx.dotted(path)}` must be a finite number", found=str(v),
                            expected=self.describe())
        low_bad = self.min is not None and (v <= self.min if self.open_min else v < self.min)
        if low_bad or (self.max is not None and v > self.max):
            raise ctx.error(path, f"`{ctx.dotted(path)}` is out of range", found=str(v), expected=self.describe())
        return v

    def describe(self):
        rng = []
        if self.min is not None:
            rng.append(f"{'>' if self.open_min else '>='} {self.min}")
        if self.max is not None:
            rng.append(f"<= {self.max}")
        return "a number" + (f" {' and '.join(rng)}" if rng else "")


class Bool(Schema):
    def __init__(self, doc=""):
        self.doc = doc

    def check(self, value, path, ctx):
        if not isinstance(value, bool):
            raise ctx.error(path, f"`{ctx.dotted(path)}` must be true or false", found=_found(value),
                            expected="true or false")
        return value

    def describe(self):
        return "true or false"


class AnyValue(Schema):
    def __init__(self, doc=""):
        self.doc = doc

    def check(self, value, path, ctx):
        return value

    def describe(self):
        return "any value"


class Nullable(Schema):
    def __init__(self, inner: Schema, doc=""):
        self.inner, self.doc = inner, doc or inner.doc

    def check(self, value, path, ctx):
        return None if value is None else self.inner.check(value, path, ctx)

    def describe(self):
        return f"{self.inner.describe()}, or null"


class OneOf(Schema):
    """The first alternative whose kind matches the value decides (a string, a list, a mapping...)."""

    def __init__(self, *alternatives: Schema, doc=""):
        self.alternatives, self.doc = alternatives, doc

    def check(self, value, path, ctx):
        for alt in self.alternatives:
            if _kind_matches(alt, value):
                return alt.check(value, path, ctx)
        raise ctx.error(path, f"`{ctx.dotted(path)}` must be {self.describe()}", found=_found(value),
                        expected=self.describe())

    def describe(self):
        return " or ".join(a.describe() for a in self.alternatives)


def _kind_matches(schema: Schema, value) -> bool:
    if isinstance(schema, Nullable):
        return value is None or _kind_matches(schema.inner, value)
    if isinstance(schema, Str):
        return isinstance(value, str) and (not schema.choices or value in schema.choices)
    if isinstance(schema, Bool):
        return isinstance(value, bool)
    if isinstance(schema, (Int, Float)):
        v = _as_number(value)
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if isinstance(schema, ListOf):
        return isinstance(value, list)
    if isinstance(schema, (Mapping, MapOf)):
        return isinstance(value, dict)
    return True


class ListOf(Schema):
    def __init__(self, item: Schema, min_len=0, max_len=None, doc="", single_ok=False):
        self.item, self.min_len, self.max_len, self.doc, self.single_ok = item, min_len, max_len, doc, single_ok

    def check(self, value, path, ctx):
        if self.single_ok and not isinstance(value, list):
            value = [value]
        if not isinstance(value, list):
            raise ctx.error(path, f"`{ctx.dotted(path)}` must be {self.describe()}", found=_found(value),
                            expected=self.describe())
        if len(value) < self.min_len or (self.max_len is not None and len(value) > self.max_len):
            raise ctx.error(path, f"`{ctx.dotted(path)}` has {len(value)} item(s)", found=str(len(value)),
                            expected=self.describe())
        return [self.item.check(v, path + (i,), ctx) for i, v in enumerate(value)]

    def describe(self):
        n = ""
        if self.max_len is not None and self.max_len == self.min_len:
            n = f" of {self.min_len}"
        elif self.min_len:
            n = f" of at least {self.min_len}"
        return f"a list{n} ({self.item.describe()} each)"


class MapOf(Schema):
    """A mapping with free keys (model parameters, input mappings)."""

    def __init__(self, value: Schema, doc=""):
        self.value, self.doc = value, doc

    def check(self, value, path, ctx):
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ctx.error(path, f"`{ctx.dotted(path)}` must be a mapping", found=_found(value),
                            expected=self.describe())
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ctx.error(path + (k,), f"keys of `{ctx.dotted(path)}` must be strings", found=_found(k),
                                expected="a string", key=True)
            out[k] = self.value.check(v, path + (k,), ctx)
        return out

    def describe(self):
        return f"a mapping of names to {self.value.describe()}"


@dataclass
class F:
    """A field of a mapping: its schema, default (REQUIRED for none) and meaning."""

    schema: Schema
    default: Any = None
    doc: str = ""


class Mapping(Schema):
    def __init__(self, fields: dict, doc="", what="section"):
        self.fields, self.doc, self.what = fields, doc, what

    def check(self, value, path, ctx):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ctx.error(path, f"`{ctx.dotted(path) or 'the config'}` must be a mapping", found=_found(value),
                            expected=f"a mapping with keys {', '.join(self.fields)}")
        return check_fields(self.fields, value, path, ctx, self.what)

    def describe(self):
        return f"a mapping ({', '.join(self.fields)})"


def check_fields(fields: dict, value: dict, path: tuple, ctx: "Config", what="section", extra_note=None) -> dict:
    out = {}
    for key in value:
        if key not in fields:
            where = ctx.dotted(path + (key,))
            raise ctx.error(path + (key,), f"unknown key `{where}` in the training config",
                            expected=f"one of {', '.join(fields)}", hint=suggest(str(key), fields), key=True,
                            code="E0702",
                            notes=[extra_note] if extra_note else None)
    for key, f in fields.items():
        if key in value:
            out[key] = f.schema.check(value[key], path + (key,), ctx)
        elif f.default is REQUIRED:
            raise ctx.error(path, f"missing key `{ctx.dotted(path + (key,))}`: {f.doc}", code="E0704",
                            expected=f"`{key}`: {f.schema.describe()}")
        elif f.default is None and isinstance(f.schema, Mapping):
            out[key] = f.schema.check({}, path + (key,), ctx)  # an absent section: its defaults
        else:
            out[key] = copy.deepcopy(f.default)
    return out


# ------------------------------------------------------------------------------------------ dynamic sections


def _free_value(value, path, ctx):
    """A hyper-parameter of an optimizer/schedule/initialiser: numbers (strings like 1e-3 read as numbers),
    booleans, strings, or lists of those."""
    if isinstance(value, list):
        return [_free_value(v, path + (i,), ctx) for i, v in enumerate(value)]
    if isinstance(value, dict):
        raise ctx.error(path, f"`{ctx.dotted(path)}` must be a number, a boolean, a string or a list",
                        found="a mapping", expected="a number, a boolean, a string or a list")
    v = _as_number(value)
    if isinstance(v, float) and not math.isfinite(v):
        raise ctx.error(path, f"`{ctx.dotted(path)}` must be finite", found=str(v), expected="a finite number")
    return v


def _typed(table: dict, name: str, key: str):
    """The schema of one hyper-parameter from a registry entry {key: (type, default)}, or None when untyped."""
    entry = table[name]
    if isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[1], dict):
        entry = entry[1]
    if not isinstance(entry, dict) or not isinstance(entry.get(key), tuple):
        return None
    typ, default = entry[key][0], entry[key][1]
    if typ is float:
        return Float()
    if typ is int:
        return Int()
    if typ is bool:
        return Bool()
    if typ is str:
        return Str()
    if typ is tuple:
        n = len(default) if isinstance(default, tuple) else 2
        return ListOf(Float(), n, n)
    if typ is list:
        return ListOf(AnyValue())
    return None


def _hyper(table: dict, name: str, key: str, value, path, ctx):
    schema = _typed(table, name, key)
    if schema is None or value is None:
        return _free_value(value, path, ctx)
    return schema.check(value, path, ctx)


def _allowed(table: dict, name: str) -> list:
    entry = table[name]
    if isinstance(entry, tuple) and len(entry) == 2 and not isinstance(entry[1], str):
        entry = entry[1]  # OPTIMIZERS: name -> (class, allowed keys)
    if isinstance(entry, dict):
        return list(entry)
    return list(entry)


class Registry(Schema):
    """`{name: X, key: value...}` where the keys allowed depend on X (optimizers, schedules)."""

    def __init__(self, module: str, table: str, what: str, fixed=("name",), default_name=None, doc=""):
        self.module, self.table, self.what, self.fixed = module, table, what, fixed
        self.default_name, self.doc = default_name, doc

    def names(self) -> dict:
        import importlib
        return getattr(importlib.import_module(self.module), self.table)

    def check(self, value, path, ctx):
        if isinstance(value, str):  # `optimizer: adam` is {name: adam}
            value = {"name": value}
        if not isinstance(value, dict):
            raise ctx.error(path, f"`{ctx.dotted(path)}` must be a mapping with a `name`", found=_found(value),
                            expected=f"a mapping {{name: {self.what}, ...}}")
        table = self.names()
        name = value.get("name", self.default_name)
        if name is None:
            raise ctx.error(path, f"missing key `{ctx.dotted(path + ('name',))}`", code="E0704",
                            expected=f"name: one of {', '.join(table)}")
        if name not in table:
            raise ctx.error(path + ("name",), f"unknown {self.what} `{name}`", found=repr(name),
                            expected=f"one of {', '.join(table)}", hint=suggest(str(name), table))
        allowed = list(dict.fromkeys(list(self.fixed) + _allowed(table, name)))
        out = {"name": name}
        for key, v in value.items():
            if key == "name":
                continue
            if key not in allowed:
                raise ctx.error(path + (key,), f"unknown key `{ctx.dotted(path + (key,))}` for the {self.what} "
                                f"`{name}`", expected=f"one of {', '.join(allowed)}", hint=suggest(str(key), allowed),
                                key=True, code="E0702")
            out[key] = _hyper(table, name, key, v, path + (key,), ctx)
        return out

    def describe(self):
        return f"a mapping {{name: <{self.what}>, <its hyper-parameters>}}"


class InitRules(Schema):
    """A list of {match: pattern, init: name, ...}."""

    doc = ("initialisation rules {match: '*.weight', init: kaiming_normal, ...}; for each parameter the first "
           "matching rule wins; parameters no rule matches keep the spec's initialisation")

    def check(self, value, path, ctx):
        if value is None:
            return []
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, list):
            raise ctx.error(path, f"`{ctx.dotted(path)}` must be a list of rules", found=_found(value),
                            expected="a list of {match: pattern, init: name, ...}")
        from nnspec.runtime.init import INITS
        out = []
        for i, rule in enumerate(value):
            p = path + (i,)
            if not isinstance(rule, dict):
                raise ctx.error(p, f"`{ctx.dotted(p)}` must be a mapping", found=_found(rule),
                                expected="{match: pattern, init: name, ...}")
            for req in ("match", "init"):
                if req not in rule:
                    raise ctx.error(p, f"missing key `{ctx.dotted(p + (req,))}`", code="E0704",
                                    expected="{match: 'glob on parameter names', init: name, ...}")
            if not isinstance(rule["match"], str):
                raise ctx.error(p + ("match",), f"`{ctx.dotted(p + ('match',))}` must be a glob pattern",
                                found=_found(rule["match"]), expected="a string such as '*.weight'")
            name = rule["init"]
            if name not in INITS:
                raise ctx.error(p + ("init",), f"unknown initialiser `{name}`", found=repr(name),
                                expected=f"one of {', '.join(INITS)}", hint=suggest(str(name), INITS))
            allowed = ["match", "init"] + [k for k in _allowed(INITS, name) if k not in ("match", "init")]
            norm = {}
            for key, v in rule.items():
                if key not in allowed:
                    raise ctx.error(p + (key,), f"unknown key `{ctx.dotted(p + (key,))}` for the initialiser `{name}`",
                                    expected=f"one of {', '.join(allowed)}", hint=suggest(str(key), allowed), key=True,
                                    code="E0702")
                norm[key] = v if key in ("match", "init") else _hyper(INITS, name, key, v, p + (key,), ctx)
            out.append(norm)
        return out

    def describe(self):
        return "a list of {match: pattern, init: name, ...}"


# ------------------------------------------------------------------------------------------ the data section

SOURCES = ("digits", "iris", "sequence", "graph", "csv", "numpy", "images")

_SPLIT = Mapping({
    "train": F(Float(0, 1), 0.7, "fraction of the samples for training"),
    "validation": F(Float(0, 1), 0.15, "fraction for validation (model selection, early stopping)"),
    "test": F(Float(0, 1), 0.15, "fraction held out for the final test"),
}, doc="how a data set without its own split is divided")

DATA_COMMON = {
    "source": F(Str(SOURCES), REQUIRED, "where the data comes from: " + ", ".join(SOURCES)),
    "split": F(_SPLIT, None, "fractions train/validation/test (default 0.7/0.15/0.15)"),
    "split_seed": F(Int(0), 0, "seed of the split's permutation (independent of training.seed)"),
    "batch_size": F(Int(1), 32, "samples per optimizer step (per process under torchrun)"),
    "eval_batch_size": F(Int(1), 512, "samples per batch when evaluating"),
    "shuffle": F(Bool(), True, "reshuffle the training samples every epoch (deterministically from the seed)"),
    "drop_last": F(Nullable(Bool()), None, "drop the last incomplete batch (default: false; true under torchrun)"),
    "num_workers": F(Int(0), 0, "DataLoader worker processes for data read lazily from disk (image folders); "
                     "data held in memory is indexed directly"),
    "normalize": F(Str(("none", "standard", "minmax")), "none",
                   "standardise float inputs with the training split's statistics (standard: zero mean, unit "
                   "variance; minmax: [0, 1])"),
    "normalize_per": F(Str(("feature", "channel", "all")), "feature",
                       "statistics per feature (element), per channel (first axis of a sample) or over all"),
    "augment": F(Mapping({
        "shift": F(Int(0), 0, "random translation by up to this many pixels (image-shaped fields), zero fill"),
        "noise": F(Float(0), 0.0, "add Gaussian noise with this standard deviation to float inputs"),
    }), None, "training-time augmentation of the model's inputs"),
    "inputs": F(MapOf(Str()), None, "spec input name -> data field (default: same name, or the only field x)"),
    "targets": F(MapOf(Str()), None, "spec target name -> data field (default: same name, or y)"),
    "seed": F(Int(0), 0, "seed of a synthetic generator"),
}

DATA_SOURCES = {
    "digits": {},
    "iris": {},
    "sequence": {
        "task": F(Str(("copy", "adding", "parity")), REQUIRED, "which synthetic sequence task"),
        "samples": F(Int(1), 10000, "how many sequences to generate"),
        "length": F(Int(1), 20, "sequence length T (copy: the length of the pattern to copy)"),
        "symbols": F(Int(2), 8, "copy: alphabet size"),
        "delay": F(Int(1), 10, "copy: steps between the pattern and the recall signal"),
    },
    "graph": {
        "nodes": F(Int(2), 300, "number of nodes of the random graph"),
        "classes": F(Int(2), 3, "node classes (communities)"),
        "features": F(Int(1), 16, "feature size of each node"),
        "p_in": F(Float(0, 1), 0.05, "edge probability within a class"),
        "p_out": F(Float(0, 1), 0.005, "edge probability between classes"),
        "noise": F(Float(0), 1.0, "standard deviation of the feature noise around each class centre"),
    },
    "csv": {
        "path": F(Nullable(Str()), None, "a CSV file, split by `split`"),
        "paths": F(Nullable(Mapping({"train": F(Str(), REQUIRED), "validation": F(Nullable(Str())),
                                     "test": F(Nullable(Str()))})),
                   None, "already split files {train, validation, test} (instead of path)"),
        "target": F(OneOf(Str(), ListOf(Str(), 1)), REQUIRED, "target column(s) -> field y"),
        "features": F(Nullable(ListOf(Str(), 1)), None, "feature columns -> field x (default: every other column)"),
        "delimiter": F(Str(), ",", "field separator"),
    },
    "numpy": {
        "path": F(Nullable(Str()), None, "an .npz (fields are its arrays) or an .npy (field x)"),
        "files": F(Nullable(MapOf(Str())), None, "field -> .npy file, e.g. {x: X.npy, y: y.npy}"),
        "paths": F(Nullable(Mapping({"train": F(Str(), REQUIRED), "validation": F(Nullable(Str())),
                                     "test": F(Nullable(Str()))})),
                   None, "already split .npz files {train, validation, test}"),
    },
    "images": {
        "path": F(Nullable(Str()), None, "a folder with one sub-folder of PNG/JPEG images per class"),
        "paths": F(Nullable(Mapping({"train": F(Str(), REQUIRED), "validation": F(Nullable(Str())),
                                     "test": F(Nullable(Str()))})),
                   None, "already split folders {train, validation, test}"),
        "image_size": F(Nullable(ListOf(Int(1), 2, 2)), None, "resize every image to [height, width]"),
        "grayscale": F(Bool(), False, "read images as one channel"),
    },
}


class DataSection(Schema):
    doc = "the data set, its split, batching, normalisation, augmentation and its mapping to the spec's inputs"

    def check(self, value, path, ctx):
        if not isinstance(value, dict):
            raise ctx.error(path, "`data` must be a mapping", found=_found(value),
                            expected=f"a mapping with `source` ({', '.join(SOURCES)})")
        source = value.get("source")
        if source is None:
            raise ctx.error(path, "missing key `data.source`", code="E0704", expected=f"one of {', '.join(SOURCES)}")
        source = Str(SOURCES).check(source, path + ("source",), ctx)
        fields = {**DATA_COMMON, **DATA_SOURCES[source]}
        out = check_fields(fields, value, path, ctx, extra_note=f"keys of the `{source}` source: "
                           f"{', '.join(DATA_SOURCES[source]) or '(none beyond the common ones)'}")
        if out["split"] is None:
            out["split"] = {"train": 0.7, "validation": 0.15, "test": 0.15}
        total = sum(out["split"].values())
        if abs(total - 1.0) > 1e-6:
            raise ctx.error(path + ("split",), f"the split fractions add up to {total:g}", found=f"{total:g}",
                            expected="fractions adding up to 1")
        if source in ("csv", "numpy", "images"):
            given = [k for k in ("path", "paths", "files") if out.get(k)]
            if len(given) != 1:
                raise ctx.error(path, f"the `{source}` source needs exactly one of "
                                f"{', '.join(k for k in ('path', 'paths', 'files') if k in fields)}",
                                code="E0704", found=", ".join(given) or "none")
        return out

    def describe(self):
        return "a mapping (source, ...)"


# ------------------------------------------------------------------------------------------ the schema

_OPTIMIZER = Registry("nnspec.runtime.optim", "OPTIMIZERS", "optimizer", fixed=("name", "lr"), default_name="adam",
                      doc="{name: sgd|momentum|nesterov|adagrad|rmsprop|adadelta|adam|adamw|rprop|lion, lr, ...}")
_SCHEDULE = Nullable(Registry("nnspec.runtime.schedules", "SCHEDULES", "schedule", doc="{name: ..., ...}"))

_OBJECTIVE = Mapping({
    "name": F(Str(), REQUIRED, "the step's name, used in logs"),
    "loss": F(Str(), "loss", "a loss of the spec (`loss` is the sum of all of them)"),
    "params": F(ListOf(Str(), 1, single_ok=True), ["*"], "glob patterns on parameter names this step updates"),
    "optimizer": F(Nullable(_OPTIMIZER), None, "its optimizer (default: the top-level `optimizer`)"),
    "schedule": F(_SCHEDULE, None, "its schedule (default: the top-level `schedule`)"),
    "every": F(Int(1), 1, "run on every n-th batch"),
    "clip_grad_norm": F(Nullable(Float(0, open_min=True)), None, "override regularization.clip_grad_norm"),
    "clip_grad_value": F(Nullable(Float(0, open_min=True)), None, "override regularization.clip_grad_value"),
}, what="objective")

SCHEMA = Mapping({
    "model": F(Mapping({
        "spec": F(Str(), REQUIRED, "the model spec: a path (relative to the config) or a built-in name"),
        "params": F(MapOf(AnyValue()), None, "the spec's compile-time parameters"),
        "name": F(Nullable(Str()), None, "which model of the file (default: the first)"),
        "optimize": F(Bool(), True, "compile with the rewrites `nnspec compile` applies (fused attention and "
                      "cross-entropy, layouts, in-place activations); false: the spec as written"),
    }), REQUIRED, "the model spec and its parameters"),
    "data": F(DataSection(), REQUIRED, DataSection.doc),
    "objectives": F(Nullable(ListOf(_OBJECTIVE, 1)), None,
                    "named training steps (default: one step on the spec's total loss, every parameter)"),
    "optimizer": F(_OPTIMIZER, {"name": "adam", "lr": 0.001}, "the optimizer (default adam, lr 0.001)"),
    "schedule": F(_SCHEDULE, None, "the learning-rate schedule (default: constant)"),
    "init": F(InitRules(), None, InitRules.doc),
    "regularization": F(Mapping({
        "clip_grad_norm": F(Nullable(Float(0, open_min=True)), None, "clip the gradients' global L2 norm"),
        "clip_grad_value": F(Nullable(Float(0, open_min=True)), None, "clip every gradient element to [-v, v]"),
        "no_decay": F(ListOf(Str(), single_ok=True), [], "parameter patterns exempt from weight decay (e.g. '*.bias')"),
        "early_stopping": F(Nullable(Mapping({
            "metric": F(Nullable(Str()), None, "split.name to watch (default: training.monitor)"),
            "patience": F(Int(1), REQUIRED, "evaluations without improvement before stopping"),
            "min_delta": F(Float(0), 0.0, "smallest change that counts as an improvement"),
            "mode": F(Str(("auto", "min", "max")), "auto", "auto: min for losses, max otherwise"),
        })), None, "stop when the validation metric stops improving"),
    }), None, "gradient clipping, weight-decay exemptions, early stopping (dropout is in the spec)"),
    "metrics": F(Nullable(ListOf(Str(), single_ok=True)), None,
                 "what to log: the spec's losses and metrics by name, or `accuracy` (argmax of the first output "
                 "against the first target); default: every loss and metric of the spec"),
    "training": F(Mapping({
        "epochs": F(Nullable(Int(1)), None, "passes over the training split (default 10 when steps is not set)"),
        "steps": F(Nullable(Int(1)), None, "stop after this many batches (optimizer steps)"),
        "seed": F(Int(0), 0, "seed of parameters, data order, dropout and augmentation"),
        "device": F(Str(("auto", "cpu", "cuda")), "auto", "where to train (auto: cuda when available)"),
        "monitor": F(Nullable(Str()), None, "split.name that picks the best checkpoint (default: validation.<first "
                     "metric>, else validation.<loss>); `none`: no best checkpoint, the test uses the last weights"),
        "monitor_mode": F(Str(("auto", "min", "max")), "auto", "auto: min for losses, max otherwise"),
        "eval_every": F(Int(1), 1, "evaluate the validation split every n epochs"),
        "log_every": F(Int(1), 10, "write a row of step logs every n batches"),
        "checkpoint_every": F(Int(0), 0, "also checkpoint every n batches (0: at the end of each epoch only)"),
        "deterministic": F(Bool(), False, "ask torch for deterministic algorithms (slower on GPU)"),
        "threads": F(Nullable(Int(1)), None, "torch intra-op threads (default: torch's choice)"),
        "test": F(Bool(), True, "evaluate the best checkpoint on the test split at the end"),
    }), None, "how long and how to train"),
    "output": F(Mapping({
        "dir": F(Nullable(Str()), None,
                 "output folder (default runs/<config name>), relative to the working directory"),
        "csv": F(Bool(), True, "write steps.csv and epochs.csv"),
        "tensorboard": F(Bool(), True, "write TensorBoard event files under tb/"),
        "plots": F(Bool(), True, "plot the curves to curves.png at the end"),
        "progress": F(Str(("auto", "always", "never")), "auto", "progress bar (auto: only on a terminal)"),
        "samples": F(Nullable(Mapping({
            "output": F(Str(), REQUIRED, "the spec output holding generated samples"),
            "count": F(Int(1), 64, "how many samples in the grid"),
            "shape": F(Nullable(ListOf(Int(1), 2, 2)), None, "[height, width] of one sample (default: its own)"),
            "every": F(Int(0), 0, "also save a grid every n epochs (0: only at the end)"),
        })), None, "a grid of generated samples (generative models) in samples.png"),
    }), None, "where and what to write"),
}, what="config")


# ------------------------------------------------------------------------------------------ loading


@dataclass
class Config:
    """A validated training configuration, with the YAML location of every key."""

    path: str                                  # as shown in messages
    base_dir: Path                             # relative paths resolve here
    values: dict = field(default_factory=dict)   # validated, defaults filled
    raw: dict = field(default_factory=dict)      # as written (overrides applied)
    spans: dict = field(default_factory=dict)    # key path -> Span of the value; (path, "key") -> Span of the key
    sources: SourceCache = field(default_factory=SourceCache)

    def __getitem__(self, key):
        return self.values[key]

    @staticmethod
    def dotted(path: tuple) -> str:
        out = ""
        for p in path:
            out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
        return out

    def span(self, path: tuple, key: bool = False) -> Span:
        path = tuple(path)
        if key and ("key", path) in self.spans:
            return self.spans[("key", path)]
        while path:
            if path in self.spans:
                return self.spans[path]
            path = path[:-1]
        return self.spans.get((), Span(self.path, 1, 1))

    def error(self, path, message, *, expected=None, found=None, hint=None, code="E0703", key=False,
              notes=None) -> SpecError:
        err = SpecError(code, message, self.span(tuple(path), key=key), expected=expected, found=found, hint=hint,
                        notes=notes)
        err.sources = self.sources  # type: ignore[attr-defined]
        return err

    def resolve_path(self, text: str) -> Path:
        p = Path(text).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def digest(self) -> str:
        return hashlib.sha256(canonical(self.values).encode()).hexdigest()


def canonical(values) -> str:
    return json.dumps(values, sort_keys=True, default=str, separators=(",", ":"))


class _NoAliasLoader(yaml.SafeLoader):
    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.MarkedYAMLError(None, None, "aliases (*name) are not allowed in a training config",
                                       event.start_mark)
        return super().compose_node(parent, index)


def _node_span(file: str, node) -> Span:
    s, e = node.start_mark, node.end_mark
    if e.line != s.line:
        return Span(file, s.line + 1, s.column + 1)
    return Span(file, s.line + 1, s.column + 1, e.line + 1, e.column + 1)


def _to_python(node, path: tuple, file: str, spans: dict, constructor):
    spans[path] = _node_span(file, node)
    if isinstance(node, yaml.MappingNode):
        out = {}
        for k, v in node.value:
            key = constructor.construct_object(k, deep=True)
            if isinstance(key, (list, dict)):
                raise SpecError("E0701", "a key of the training config must be a name", _node_span(file, k))
            if key in out:
                raise SpecError("E0701", f"key `{Config.dotted(path + (key,))}` is given twice", _node_span(file, k))
            spans[("key", path + (key,))] = _node_span(file, k)
            out[key] = _to_python(v, path + (key,), file, spans, constructor)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(v, path + (i,), file, spans, constructor) for i, v in enumerate(node.value)]
    return constructor.construct_object(node, deep=True)


def parse_yaml(text: str, file: str, spans: dict):
    loader = _NoAliasLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            span = Span(file, mark.line + 1, mark.column + 1) if mark else Span(file, 1, 1)
            raise SpecError("E0701", f"YAML syntax error: {e.problem or e}", span) from None
        except yaml.YAMLError as e:
            raise SpecError("E0701", f"YAML syntax error: {e}", Span(file, 1, 1)) from None
        if node is None:
            return {}
        return _to_python(node, (), file, spans, loader)
    except RecursionError:
        raise SpecError("E0701", "the YAML document is nested too deeply", Span(file, 1, 1)) from None
    finally:
        loader.dispose()


def _set_path(raw: dict, parts: list, value, where: Span, spans: dict, cfg_path: tuple = ()):
    node = raw
    path: tuple = ()
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        key = int(part) if isinstance(node, list) and part.lstrip("-").isdigit() else part
        if isinstance(node, list):
            if not isinstance(key, int) or not -len(node) <= key < len(node):
                raise SpecError("E0703", f"`{'.'.join(parts[:i])}` is a list: `{part}` is not one of its indices",
                                where, expected=f"an index 0..{len(node) - 1}")
        elif not isinstance(node, dict):
            raise SpecError("E0703", f"`{'.'.join(parts[:i])}` is not a mapping: cannot set `{part}` in it", where)
        path = path + (key,)
        if last:
            node[key] = value
        else:
            if isinstance(node, dict) and (key not in node or node[key] is None):
                node[key] = {}
            node = node[key]
    def under(k) -> bool:  # the spans of what the override replaced
        target = k[1] if len(k) == 2 and k[0] == "key" and isinstance(k[1], tuple) else k
        return target[:len(path)] == path

    for k in [k for k in spans if under(k)]:
        del spans[k]
    spans[path] = where
    spans[("key", path)] = where


def load_config(path, overrides=()) -> Config:
    """Read, apply `--set` overrides and validate a training config; raise SpecError on any mistake."""
    p = Path(path)
    shown = str(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError("E0701", f"training config `{shown}` not found", None) from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError("E0701", f"cannot read the training config `{shown}`: {e}", None) from None
    return config_from_text(text, shown, base_dir=p.resolve().parent, overrides=overrides)


def config_from_text(text: str, shown: str = "<config>", base_dir: Path | None = None, overrides=()) -> Config:
    cfg = Config(path=shown, base_dir=base_dir or Path.cwd())
    cfg.sources.add(shown, text)
    try:
        raw = parse_yaml(text, shown, cfg.spans)
        if not isinstance(raw, dict):
            raise SpecError("E0703", "the training config must be a mapping (model:, data:, optimizer:, ...)",
                            cfg.span(()), found=_found(raw))
        if overrides:
            lines = list(overrides)
            cfg.sources.add("--set", "\n".join(lines))
            for i, item in enumerate(lines):
                where = Span("--set", i + 1, 1, i + 1, len(item) + 1)
                if "=" not in item:
                    raise SpecError("E0703", f"an override must be KEY.PATH=VALUE, got {item!r}", where)
                key, text_value = item.split("=", 1)
                parts = [k for k in key.strip().split(".")]
                if not all(parts):
                    raise SpecError("E0703", f"bad key path {key.strip()!r} in an override", where)
                try:
                    value = yaml.safe_load(text_value) if text_value.strip() else None
                except yaml.YAMLError as e:
                    raise SpecError("E0703", f"the value of an override is not YAML: {e}", where) from None
                _set_path(raw, parts, value, Span("--set", i + 1, len(key) + 2, i + 1, len(item) + 1), cfg.spans)
        cfg.raw = raw
        cfg.values = SCHEMA.check(raw, (), cfg)
    except SpecError as e:
        e.sources = cfg.sources  # type: ignore[attr-defined]
        raise
    return cfg


# ------------------------------------------------------------------------------------------ diffs, docs


def flatten(values, prefix: str = "") -> dict:
    out = {}
    if isinstance(values, dict):
        if not values and prefix:
            out[prefix] = {}
        for k, v in values.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(values, list) and any(isinstance(v, (dict, list)) for v in values):
        for i, v in enumerate(values):
            out.update(flatten(v, f"{prefix}[{i}]"))
    else:
        out[prefix] = values
    return out


def diff_configs(old: dict, new: dict) -> list[str]:
    """`optimizer.lr: 0.01 -> 0.001` for every key whose value differs."""
    a, b = flatten(old), flatten(new)
    rows = []
    for key in sorted(set(a) | set(b)):
        if key not in a:
            rows.append(f"{key}: (absent) -> {_show(b[key])}")
        elif key not in b:
            rows.append(f"{key}: {_show(a[key])} -> (absent)")
        elif canonical(a[key]) != canonical(b[key]):
            rows.append(f"{key}: {_show(a[key])} -> {_show(b[key])}")
    return rows


def _show(v) -> str:
    return json.dumps(v, default=str) if not isinstance(v, str) else v


def describe_schema(schema: Schema = SCHEMA, indent: int = 0) -> str:
    """Every key of the config, with its type, default and meaning (for `nnspec train --schema`)."""
    lines = []

    def walk(fields: dict, depth: int):
        for key, f in fields.items():
            sch = f.schema.inner if isinstance(f.schema, Nullable) else f.schema
            default = "required" if f.default is REQUIRED else \
                ("" if f.default is None else f"default {json.dumps(f.default)}")
            kind = sch.describe() if not isinstance(sch, (Mapping, DataSection)) else "mapping"
            lines.append(f"{'  ' * depth}{key}: {kind}{'; ' + default if default else ''}")
            if f.doc:
                lines.append(f"{'  ' * depth}    {f.doc}")
            if isinstance(sch, Mapping):
                walk(sch.fields, depth + 1)
            elif isinstance(sch, InitRules):
                from nnspec.runtime.init import INITS
                for name in INITS:
                    lines.append(f"{'  ' * (depth + 1)}init {name}: {', '.join(_allowed(INITS, name)) or '-'}")
            elif isinstance(sch, ListOf) and isinstance(sch.item, Mapping):
                walk(sch.item.fields, depth + 1)
            elif isinstance(sch, Registry) and depth == 0:  # (an objective's: the same, not listed twice)
                for name in sch.names():
                    lines.append(f"{'  ' * (depth + 1)}{sch.what} {name}: {', '.join(_allowed(sch.names(), name))}")
            elif isinstance(sch, DataSection):
                walk(DATA_COMMON, depth + 1)
                for source, extra in DATA_SOURCES.items():
                    if extra:
                        lines.append(f"{'  ' * (depth + 1)}# source: {source}")
                        walk(extra, depth + 1)

    walk(schema.fields, indent)
    return "\n".join(lines)
