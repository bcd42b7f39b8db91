"""Turn generated source into a live class (imports torch); the source stays visible to tracebacks."""
from __future__ import annotations

import hashlib
import linecache
import sys
import types

from nnspec.compiler.codegen.pytorch import generate
from nnspec.compiler.ir import Graph


def materialize(graph: Graph, source: str | None = None):
    source = source or generate(graph)
    digest = hashlib.sha1(source.encode()).hexdigest()[:12]
    name = f"nnspec_generated.{graph.name}_{digest}"
    filename = f"<nnspec {graph.source}:{graph.name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    module = types.ModuleType(name)
    module.__file__ = filename
    sys.modules[name] = module
    exec(compile(source, filename, "exec"), module.__dict__)  # noqa: S102 - our own generated code
    from nnspec.compiler.codegen.pytorch import class_name_for
    cls = getattr(module, class_name_for(graph.name))
    cls.source_code = source
    return cls
