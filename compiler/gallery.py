"""gallery: a static HTML site of the specs (`nnspec gallery -o DIR`).

`build_gallery(out_dir)` writes `index.html` (every spec: name, group, title, source lines in the notes,
parameters, a thumbnail), one page per spec (for each model of the file: the forward and backward graphs,
the summary table; the notes' header comment and the spec's source with line numbers), the pictures under
`img/` and `style.css`. Static files only, relative links, nothing fetched from elsewhere: it works offline
and from file://. Every page marks `<html data-images="ok N">` once all its images have loaded (or
`broken SRC...`), so a headless browser can check it. Everything taken from a spec goes through jinja2's
autoescaping; the pictures are escaped by compiler/render.py.

The group of a spec comes from a `# group: A` line in its header, else from SPEC_GROUPS (the table of
documented architectures), else "other".
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from nnspec.compiler.render import BackwardUnavailable, draw, pipe, write_bytes_atomic

TEMPLATES = Path(__file__).resolve().parent / "gallery_templates"

GROUPS = {
    "A": "Foundations: graphs, linear models, MLPs, CNNs",
    "B": "Sequences and attention",
    "C": "Autoencoders, generative and self-supervised models",
    "D": "Graphs, vision tasks, reinforcement learning, hyperbolic",
    "other": "Other specs",
}

# the documented architectures, by group (a spec's own `# group: X` line wins)
_GROUP_NAMES = {
    "A": """chain_rule_demo sigmoid_neuron perceptron quadratic_model linear_regression linear_softmax_classifier
            mlp mlp_small mlp_keras mlp_cs231n mlp_dropout digits_mlp deep_mlp_init_demo exam_bn_mlps mnist_cnn
            mit_cnn digits_cnn cifar10_convnet convnet_basic resnet_block resnet18 resnet34 resnet50 alexnet vgg16""",
    "B": """rnn_vanilla seq2task_rnn seq2seq_rnn char_rnn lstm lstm_stacked gru bilstm bilstm_attention highway tcn
            seq2seq_bahdanau show_attend_tell cnn_rnn_captioner transformer_captioner multihead_attention
            cnn_self_attention transformer transformer_small bert_base bert_large gpt2_small vit image_transformer
            music_transformer mx_lstm""",
    "C": """autoencoder denoising_ae sparse_ae unet vae beta_vae face_swap vq_vae gan dcgan acgan ddpm
            latent_diffusion clip simclr moco byol simsiam rotation_pretext siamese_triplet reid_net rmac
            mixture_of_experts multiplicative_module""",
    "D": """mpnn gcn gcn_simplified gat graphsage gin gnn_skip gcn_tcn_forecaster spacetime_gcn sts_gcn
            fcn_segmentation cls_loc_cnn yolo_head fast_rcnn faster_rcnn mask_rcnn reinforce_policy pointnav_policy
            hyperbolic_mlr deconvnet""",
}
SPEC_GROUPS = {name: group for group, names in _GROUP_NAMES.items() for name in names.split()}

_NOTE_REF = re.compile(r"\b\d{3}:\d+(?:-\d+)?")


@dataclass
class Header:
    """What a spec's leading comment says: title, group, the passages of the notes it follows."""

    title: str = ""
    group: str | None = None
    sources: str = ""             # the `# source:` paragraph
    refs: list = field(default_factory=list)   # "002:563-579", ...
    text: str = ""                # the whole comment, without the '#'


def read_header(source: str) -> Header:
    lines: list[str] = []
    for line in source.splitlines():
        if not line.startswith("#"):
            if line.strip() == "" and lines:
                lines.append("")
                continue
            break
        lines.append(line[1:][1:] if line.startswith("# ") else line[1:])
    while lines and lines[-1] == "":
        lines.pop()
    h = Header(text="\n".join(lines))
    if lines:
        first = lines[0]
        h.title = first.split("\u2014", 1)[1].strip() if "\u2014" in first else first.strip()
    in_source = False
    source_lines = []
    for line in lines:
        m = re.match(r"\s*group:\s*([A-Za-z]+)\s*$", line)
        if m:
            h.group = m.group(1).upper() if len(m.group(1)) == 1 else m.group(1)
        if re.match(r"\s*source:", line):
            in_source = True
            source_lines.append(line.split("source:", 1)[1].strip())
        elif in_source and line.startswith("  "):
            source_lines.append(line.strip())
        else:
            in_source = False
    h.sources = " ".join(source_lines)
    h.refs = list(dict.fromkeys(_NOTE_REF.findall(h.sources)))
    return h


def group_of(name: str, header: Header) -> str:
    if header.group:
        return header.group if header.group in GROUPS else "other"
    return SPEC_GROUPS.get(name, "A" if name.startswith(("mlp", "digits_")) else "other")


@dataclass
class ModelPage:
    name: str
    params: int = 0
    ops: int = 0
    inputs: str = ""
    outputs: str = ""
    losses: str = ""
    forward: str | None = None            # image path, relative to the site
    backward: str | None = None
    forward_note: str = ""
    backward_note: str = ""
    summary: dict | None = None
    error: str | None = None


@dataclass
class SpecPage:
    name: str
    path: str
    page: str
    header: Header
    group: str
    source_lines: list
    models: list = field(default_factory=list)

    @property
    def params(self) -> int:
        return self.models[0].params if self.models else 0

    @property
    def thumb(self) -> str | None:
        return self.models[0].forward if self.models else None

    @property
    def error(self) -> str | None:
        return next((m.error for m in self.models if m.error), None)


@dataclass
class GalleryReport:
    index: Path
    pages: list = field(default_factory=list)
    images: int = 0
    size_bytes: int = 0
    seconds: float = 0.0
    problems: list = field(default_factory=list)   # backward graphs that cannot be drawn yet
    failures: list = field(default_factory=list)   # specs that do not build or draw


def _environment():
    import jinja2
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["thousands"] = lambda n: f"{n:,}" if isinstance(n, int) else (n if n is not None else "-")
    return env


def _model_page(spec_name: str, path: Path, model: str, fmt: str, out_dir: Path, report: GalleryReport) -> ModelPage:
    from nnspec.compiler.pipeline import build
    from nnspec.compiler.summary import human, human_bytes, summarize
    from nnspec.errors import SpecError

    page = ModelPage(model)
    try:
        graph = build(str(path), model=model)
    except SpecError as e:
        page.error = e.format(getattr(e, "sources", None))
        report.failures.append(f"{spec_name}: {model} does not build: {e}")
        return page
    page.params = graph.param_count()
    page.ops = len(graph)
    page.inputs = ", ".join(f"{graph.nodes[i].attrs['name']}: {graph.nodes[i].outputs[0]}"
                            for i in graph.inputs + graph.targets)
    page.outputs = ", ".join(f"{k}: {graph.type_of(r)}" for k, r in graph.outputs.items())
    page.losses = ", ".join(graph.losses)
    s = summarize(graph, batch=1)
    s["macs_text"] = human(s["macs"])
    s["memory_text"] = human_bytes(s["activation_bytes"])
    for row in s["layers"]:
        macs = row["macs_value"] if row["macs_value"] is not None else row["macs"]
        row["macs_text"] = human(macs) if isinstance(macs, int) and macs else (str(macs) if macs else "-")
    page.summary = s
    for kind in ("forward", "backward"):
        try:
            picture = draw(graph, kind)
        except BackwardUnavailable as e:
            page.backward_note = str(e)
            report.problems.append(f"{spec_name}: {e}")
            continue
        rel = f"img/{spec_name}.{model}.{kind}.{fmt}"
        write_bytes_atomic(out_dir / rel, pipe(picture.dot, fmt))
        report.images += 1
        setattr(page, kind, rel)
        folded = "every op" if picture.depth is None else \
            f"blocks below depth {picture.depth} folded (nnspec render --depth all shows every op)"
        setattr(page, f"{kind}_note", f"{picture.nodes} nodes, {folded}")
    return page


def build_gallery(out_dir: Path, specs: list | None = None, fmt: str = "svg", log=None) -> GalleryReport:
    """Build the site under `out_dir` for `specs` (names or paths; default: every built-in spec)."""
    from nnspec.dsl.loader import builtin_specs, load, resolve_spec
    from nnspec.errors import SpecError

    start = time.perf_counter()
    out_dir = Path(out_dir)
    if fmt not in ("svg", "png"):
        raise ValueError(f"gallery images are svg or png, not {fmt!r}")
    paths = builtin_specs() if specs is None else {resolve_spec(s).stem: resolve_spec(s) for s in specs}
    env = _environment()
    report = GalleryReport(out_dir / "index.html")
    pages: list[SpecPage] = []
    for name, path in paths.items():
        if log:
            log(f"gallery: {name}")
        text = path.read_text(encoding="utf-8")
        header = read_header(text)
        page = SpecPage(name, _shown(path), f"{name}.html", header, group_of(name, header),
                        text.splitlines())
        try:
            models = [m.name for m in load(path).models]
        except SpecError as e:
            page.models.append(ModelPage("(spec)", error=e.format(getattr(e, "sources", None))))
            report.failures.append(f"{name}: does not load: {e}")
            models = []
        for model in models:
            page.models.append(_model_page(name, path, model, fmt, out_dir, report))
        pages.append(page)
    _write(out_dir / "style.css", (TEMPLATES / "style.css").read_text(encoding="utf-8"))
    for page in pages:
        html = env.get_template("spec.html.jinja").render(spec=page, groups=GROUPS, legend=LEGEND)
        _write(out_dir / page.page, html)
        report.pages.append(out_dir / page.page)
    by_group = {g: [p for p in pages if p.group == g] for g in GROUPS}
    html = env.get_template("index.html.jinja").render(by_group={g: ps for g, ps in by_group.items() if ps},
                                                      groups=GROUPS, count=len(pages),
                                                      models=sum(len(p.models) for p in pages))
    _write(report.index, html)
    files = [out_dir / "style.css", report.index, *report.pages] + \
        [out_dir / m.forward for p in pages for m in p.models if m.forward] + \
        [out_dir / m.backward for p in pages for m in p.models if m.backward]
    report.size_bytes = sum(f.stat().st_size for f in files)
    report.seconds = time.perf_counter() - start
    return report


def _shown(path: Path) -> str:
    """`specs/mlp.nn` for a built-in spec, whatever the working folder."""
    from nnspec.dsl.loader import SPECS_DIR, display_path
    try:
        return "specs/" + path.resolve().relative_to(SPECS_DIR.resolve()).as_posix()
    except ValueError:
        return display_path(path)


def _write(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


# what the shapes and colours of the pictures mean (colours from compiler/render.py's NODE_STYLE)
LEGEND = [
    ("#d5e8d4", "ellipse", "input; dashed: a target (labels)"),
    ("#fff2cc", "cylinder", "parameter: a layer's weight or a `param`"),
    ("#eef3fb", "box", "op; darker: a layer with weights"),
    ("#dae8fc", "box3d", "a folded block (or a run of identical repeats)"),
    ("#f8cecc", "double box", "loss; in the backward graph, the seed gradient and dL/d<input>"),
    ("#d5e8d4", "house", "output"),
    ("#f3e5f5", "ellipse", "a scan step's input or state; purple edges carry the state"),
    ("#f5f5f5", "dashed box", "saved forward value (dashed saved-tensor edges)"),
    ("#fdf0ef", "box", "backward op; red edges carry gradients"),
    ("#ffe6cc", "circle +", "accumulate: gradients of a value used several times are summed"),
    ("#ffe6cc", "house", "dL/d<parameter>: the backward graph's outputs"),
    ("#eeeeee", "dashed house", "a parameter no loss reaches (not trained)"),
]
