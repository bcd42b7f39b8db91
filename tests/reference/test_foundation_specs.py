"""Non-convolutional specs of group A (graphs, linear models, MLPs) against the notes' numbers and plain PyTorch.

  (a) every model of every spec passes `nnspec check` in-process without warnings, and runs forward and
      backward at two batch sizes (the scalar graph demos, chain_rule_demo, have no batch dimension: once);
  (b) the notes' worked numbers: f = (x + y) z at (-2, 5, -4) gives -12 and gradients -4, -4, 3 (002:563-579);
      o = (x + y) sin(x) has do/dx = sin x + (x + y) cos x, not 000:71's w2 + cos x; the sigmoid neuron gives
      0.73 and the gradients 0.4 (x0) and -0.2 (w0) (002:621-667); the perceptron's decision boundary
      1 + 3 x1 - 2 x2 = 0 (004:78); the exam parameter counts 1103 / 800 / 1300 / 690 (003);
  (c) numerics against hand-written PyTorch in float64 (max abs difference <= 1e-5): the MNIST MLP
      784-300-300-10 (the notes' nn.Sequential without the Softmax, weights copied with load_state_dict:
      outputs, loss, gradients of every parameter and of the input), the numpy 2-layer net's manual gradients
      (002:805-826), the 3-4-4-1 sigmoid net's forward, the multi-class hinge formula (002:1299);
  (d) behaviour: dropout zeroes about 1 - keep of the hidden activations in training and nothing in eval;
      the deep init demo's activations collapse with 0.01 * randn and keep their spread with Xavier (tanh)
      and Kaiming (ReLU), as 002:1171-1237 says; without activations the Keras network is affine;
  (e) the seed code that is wrong fails to compile: BCELoss on a Linear output (000:302-336) and Softmax
      before CrossEntropyLoss (000:471-505), both with E0417 at the loss.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from click.testing import CliRunner

import nnspec
from nnspec.cli import main as cli_main
from nnspec.compiler.shapes import Sym
from nnspec.errors import SpecError

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "specs"
ERRORS = ROOT / "tests" / "golden" / "errors"
TOL = 1e-5
F64 = torch.float64


def spec(name: str) -> str:
    return str(SPECS / f"{name}.nn")


def _close(a, b, what, tol=TOL):
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    diff = (a - b).abs().max().item() if a.numel() else 0.0
    assert diff <= tol, f"{what}: max abs diff {diff:.3e} > {tol}"


def _scalars(*values, grad=True):
    return [torch.tensor(float(v), dtype=F64, requires_grad=grad) for v in values]


# (spec, model, params for the forward/backward run): every model of the specs of this part
MODELS = [
    ("chain_rule_demo", "ChainRuleDemo", {}),
    ("chain_rule_demo", "BinaryOperatorSplit", {}),
    ("sigmoid_neuron", "SigmoidNeuron", {}),
    ("sigmoid_neuron", "SigmoidNeuron", {"gates": False}),
    ("perceptron", "Perceptron", {}),
    ("quadratic_model", "QuadraticModel", {}),
    ("linear_regression", "LinearRegression", {}),
    ("linear_softmax_classifier", "LinearSoftmaxClassifier", {}),
    ("linear_softmax_classifier", "LinearSVMClassifier", {}),
    ("mlp", "MnistMLP", {}),
    ("mlp_small", "MlpSmall", {}),
    ("mlp_cs231n", "TwoLayerNet", {}),
    ("mlp_cs231n", "ThreeLayerNet", {}),
    ("mlp_cs231n", "SigmoidNet", {}),
    ("mlp_cs231n", "NumpyTwoLayerNet", {}),
    ("mlp_keras", "KerasDeepNN", {}),
    ("mlp_keras", "KerasDeepNN", {"nonlinear": False, "widths": [5, 4, 3]}),
    ("mlp_dropout", "MlpDropout", {}),
    ("deep_mlp_init_demo", "DeepMLPInitDemo", {"width": 32, "act": "tanh", "init": "xavier"}),
    ("deep_mlp_init_demo", "DeepMLPInitDemo", {"width": 32, "act": "relu", "init": "kaiming"}),
    ("exam_bn_mlps", "ExamFeb2022Q5", {}),
    ("exam_bn_mlps", "ExamJan2022Q1", {}),
    ("exam_bn_mlps", "ExamJun2021Q1", {}),
    ("exam_bn_mlps", "ExamOct2021Q1", {}),
    ("digits_mlp", "DigitsMLP", {}),
]
SPEC_FILES = sorted({s for s, _, _ in MODELS})
IDS = [f"{s}:{m}" + "".join(f":{k}={v}" for k, v in p.items()) for s, m, p in MODELS]


# =================================================================================== (a) check, forward, backward
@pytest.mark.parametrize("name,model,params", MODELS, ids=IDS)
def test_check_in_process(name, model, params):
    args = ["check", spec(name), "--model", model]
    for k, v in params.items():
        args += ["-p", f"{k}={str(v).lower() if isinstance(v, bool) else v}".replace(" ", "")]
    result = CliRunner().invoke(cli_main, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"ok: {model} ")
    assert result.stderr == "", f"warnings: {result.stderr}"


@pytest.mark.parametrize("name", SPEC_FILES)
def test_spec_header(name):
    lines = (SPECS / f"{name}.nn").read_text().splitlines()
    assert lines[0].startswith(f"# {name} — "), lines[0]
    assert lines[1].startswith("# source: seed "), lines[1]


def _example_inputs(graph, batch: int, classes: int | None):
    """Random inputs and targets for a graph: symbolic dimensions take `batch`."""
    def make(node, is_target):
        t = node.outputs[0]
        shape = [batch if isinstance(d, Sym) else int(d) for d in t.shape]
        if t.dtype in ("i32", "i64"):
            return torch.randint(0, classes, shape)
        if is_target:
            return torch.rand(shape)  # in [0, 1]: fits bce and mse alike
        return torch.randn(shape, requires_grad=True)
    ins = [make(graph.nodes[i], False) for i in graph.inputs]
    tgts = [make(graph.nodes[i], True) for i in graph.targets]
    return ins, tgts


@pytest.mark.parametrize("name,model,params", MODELS, ids=IDS)
def test_forward_backward_two_batch_sizes(name, model, params):
    graph = nnspec.build(spec(name), params=params, model=model)
    torch.manual_seed(0)
    net = nnspec.compile(spec(name), params=params, model=model)()
    batched = any(isinstance(d, Sym) for i in graph.inputs for d in graph.nodes[i].outputs[0].shape)
    outputs = list(graph.outputs.items())
    classes = None
    if outputs and graph.type_of(outputs[0][1]).rank >= 2:
        classes = int(graph.type_of(outputs[0][1]).shape[-1])
    for batch in ((2, 3) if batched else (1,)):
        ins, tgts = _example_inputs(graph, batch, classes)
        result = net(*ins, *tgts)
        if isinstance(result, dict):
            loss = result["loss"]
            outs = [result[k] for k, _ in outputs]
        else:
            outs = list(result) if isinstance(result, tuple) else [result]
            loss = sum(o.square().mean() for o in outs)
        assert len(outs) == len(outputs)
        for out, (k, ref) in zip(outs, outputs):
            want = [batch if isinstance(d, Sym) else int(d) for d in graph.type_of(ref).shape]
            assert list(out.shape) == want, k
            assert torch.isfinite(out).all(), k
        assert loss.dim() == 0 and torch.isfinite(loss)
        net.zero_grad()
        loss.backward()
        for n, p in net.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), n
        grads = [p.grad for p in net.parameters()] + [x.grad for x in ins]
        assert any(g is not None and g.abs().sum() > 0 for g in grads)
        for x in ins:
            x.grad = None


# =================================================================================== (b) the notes' numbers
def test_chain_rule_worked_example():
    """002:563-579: f = (x + y) z at x = -2, y = 5, z = -4."""
    net = nnspec.compile(spec("chain_rule_demo"), model="ChainRuleDemo")()
    x, y, z = _scalars(-2, 5, -4)
    result = net(x, y, z)
    f = result["f"]
    assert f.item() == -12.0 and result["loss"].item() == -12.0
    dx, dy, dz = torch.autograd.grad(f, (x, y, z))
    assert (dx.item(), dy.item(), dz.item()) == (-4.0, -4.0, 3.0)
    # the graph: q = x + y is its own add node, f = q * z the mul node (the binary-operator split)
    graph = nnspec.build(spec("chain_rule_demo"), model="ChainRuleDemo")
    by_label = {n.label: n for n in graph if n.label}
    q, fnode = by_label["q"], by_label["f"]
    assert q.op == "add" and fnode.op == "mul"
    names = {nid: graph.nodes[nid].attrs.get("name") for nid in graph.inputs}
    assert sorted(names[s] for s, _ in q.inputs) == ["x", "y"]
    assert [s for s, _ in fnode.inputs] == [q.id, next(i for i in graph.inputs if names[i] == "z")]
    assert list(graph.losses) == ["f"]


@pytest.mark.parametrize("xv,yv", [(0.7, -1.3), (2.0, 0.5), (-1.1, 3.0)])
def test_binary_operator_split_gradient(xv, yv):
    """000:45-73: o = (x + y) sin(x); the two branches from x are summed; 000:71 drops the factor w1."""
    net = nnspec.compile(spec("chain_rule_demo"), model="BinaryOperatorSplit")()
    x, y = _scalars(xv, yv)
    o = net(x, y)["o"]
    assert o.item() == pytest.approx((xv + yv) * math.sin(xv), abs=1e-12)
    dx, dy = torch.autograd.grad(o, (x, y))
    right = math.sin(xv) + (xv + yv) * math.cos(xv)       # 000:73
    wrong = math.sin(xv) + math.cos(xv)                    # 000:71
    assert dx.item() == pytest.approx(right, abs=1e-12)
    assert abs(dx.item() - wrong) > 1e-3
    assert dy.item() == pytest.approx(math.sin(xv), abs=1e-12)


@pytest.mark.parametrize("gates", [True, False])
def test_sigmoid_neuron_worked_example(gates):
    """002:621-667: w0 = 2, x0 = -1, w1 = -3, x1 = -2, w2 = -3 -> f = 0.73; x0: 0.2 * 2 = 0.4, w0: 0.2 * -1 = -0.2."""
    net = nnspec.compile(spec("sigmoid_neuron"), params={"gates": gates})().double()
    assert {n: p.item() for n, p in net.named_parameters()} == {"w0": 2.0, "w1": -3.0, "w2": -3.0}
    x0 = torch.tensor([-1.0], dtype=F64, requires_grad=True)
    x1 = torch.tensor([-2.0], dtype=F64, requires_grad=True)
    f = net(x0, x1)
    s = 1.0 / (1.0 + math.exp(-1.0))           # s3 = 2 * -1 + -3 * -2 - 3 = 1
    assert f.shape == (1,) and f.item() == pytest.approx(s, abs=1e-12)
    assert round(f.item(), 2) == 0.73
    f.sum().backward()
    up = (1 - s) * s                             # df/ds3, the notes' upstream 0.20
    assert round(up, 2) == 0.20
    got = {"x0": x0.grad.item(), "x1": x1.grad.item(), "w0": net.w0.grad.item(), "w1": net.w1.grad.item(),
           "w2": net.w2.grad.item()}
    want = {"x0": up * 2, "x1": up * -3, "w0": up * -1, "w1": up * -2, "w2": up}
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-12), k
    assert round(got["x0"], 1) == 0.4 and round(got["w0"], 1) == -0.2     # the notes' rounded numbers
    ops = {n.op for n in nnspec.build(spec("sigmoid_neuron"), params={"gates": gates})}
    if gates:  # the figure's gates: *-1, exp, +1, 1/x
        assert {"neg", "exp", "add", "div"} <= ops and "sigmoid" not in ops
    else:
        assert "sigmoid" in ops and "exp" not in ops


def test_sigmoid_neuron_one_over_x_gate():
    """002:588-593: the 1/x gate sees 1 + e^-1 = 1.37 and its local gradient is -1/1.37^2 = -0.53."""
    graph = nnspec.build(spec("sigmoid_neuron"))
    den = next(n for n in graph if n.label == "den")
    div = next(n for n in graph if n.op == "div")
    assert div.inputs[1][0] == den.id
    d = 1.0 + math.exp(-1.0)
    assert round(d, 2) == 1.37 and round(-1.0 / d ** 2, 2) == -0.53
    net = nnspec.compile(spec("sigmoid_neuron"))().double()
    f = net(torch.tensor([-1.0], dtype=F64), torch.tensor([-2.0], dtype=F64))
    assert f.item() == pytest.approx(1.0 / d, abs=1e-12)


def test_sigmoid_neuron_batch_sums_parameter_gradients():
    net = nnspec.compile(spec("sigmoid_neuron"))().double()
    f = net(torch.tensor([-1.0, -1.0], dtype=F64), torch.tensor([-2.0, -2.0], dtype=F64))
    f.sum().backward()
    s = 1.0 / (1.0 + math.exp(-1.0))
    assert net.w2.grad.item() == pytest.approx(2 * (1 - s) * s, abs=1e-12)


def test_perceptron_decision_boundary():
    """004:78: y = sigmoid(1 + 3 x1 - 2 x2); 0.5 on the line 1 + 3 x1 - 2 x2 = 0."""
    net = nnspec.compile(spec("perceptron"))().double()
    assert net.w.tolist() == [3.0, -2.0] and net.w0.item() == 1.0
    on_line = torch.tensor([[1.0, 2.0], [-1.0, -1.0], [0.0, 0.5], [3.0, 5.0]], dtype=F64)
    assert torch.allclose(net(on_line), torch.full((4,), 0.5, dtype=F64), atol=1e-12)
    pts = torch.tensor([[0.0, 0.0], [-1.0, 2.0], [2.0, 1.0]], dtype=F64)
    z = torch.tensor([1.0, 1 - 3 - 4, 1 + 6 - 2], dtype=F64)
    yhat = net(pts)
    _close(yhat, torch.sigmoid(z), "perceptron output", 1e-12)
    assert yhat[0] > 0.5 and yhat[1] < 0.5 and yhat[2] > 0.5
    y = torch.tensor([1.0, 0.0, 1.0], dtype=F64)
    _close(net(pts, y)["bce"], F.binary_cross_entropy(torch.sigmoid(z), y), "bce", 1e-12)


def test_quadratic_model():
    """000:201-215: a x^2 + b x + c with a, b, c of shape [1], drawn from randn."""
    torch.manual_seed(3)
    net = nnspec.compile(spec("quadratic_model"))().double()
    assert {n: tuple(p.shape) for n, p in net.named_parameters()} == {"a": (1,), "b": (1,), "c": (1,)}
    torch.manual_seed(3)
    other = nnspec.compile(spec("quadratic_model"))().double()
    torch.manual_seed(4)
    third = nnspec.compile(spec("quadratic_model"))().double()
    assert torch.equal(net.a, other.a) and not torch.equal(net.a, third.a)   # randn, like the notes
    with torch.no_grad():
        net.a.fill_(2.0), net.b.fill_(-3.0), net.c.fill_(0.5)
    x = torch.linspace(-2, 2, 9, dtype=F64)
    y = torch.zeros(9, dtype=F64)
    result = net(x, y)
    _close(result["yhat"], 2 * x ** 2 - 3 * x + 0.5, "a x^2 + b x + c", 1e-12)
    result["loss"].backward()
    r = 2 * (result["yhat"].detach() - y) / 9    # d mse / d yhat
    _close(net.a.grad, (r * x ** 2).sum().reshape(1), "d/da", 1e-12)
    _close(net.b.grad, (r * x).sum().reshape(1), "d/db", 1e-12)
    _close(net.c.grad, r.sum().reshape(1), "d/dc", 1e-12)


class NotesLinearRegression(nn.Module):     # 000:279-285, as written (it does call super().__init__())
    def __init__(self):
        super(NotesLinearRegression, self).__init__()
        self.linear = nn.Linear(1, 1)

    def forward(self, x):
        return self.linear(x)


def test_linear_regression_state_dict_and_fit():
    """000:271-300: nn.Linear(1, 1) + MSELoss + Adam(lr=0.01); the state dicts exchange with the notes' class."""
    torch.manual_seed(0)
    net = nnspec.compile(spec("linear_regression"))().double()
    ref = NotesLinearRegression().double()
    ref.load_state_dict(net.state_dict(), strict=True)
    x = torch.linspace(-1, 1, 32, dtype=F64).reshape(32, 1)
    y = 2 * x + 1
    _close(net(x), ref(x), "output", 1e-12)
    _close(net(x, y)["mse"], F.mse_loss(ref(x), y), "mse", 1e-12)
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    for _ in range(150):
        opt.zero_grad()
        loss = net(x, y)["loss"]
        loss.backward()
        opt.step()
    assert loss.item() < 1e-4
    assert net.linear.weight.item() == pytest.approx(2.0, abs=0.02)
    assert net.linear.bias.item() == pytest.approx(1.0, abs=0.02)


def test_linear_classifier_losses():
    """002:443-490 (softmax cross-entropy) and 002:1299 (multi-class hinge) on s = W x + b, W [10, 3072]."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, 32, 32, generator=gen, dtype=F64)
    y = torch.randint(0, 10, (5,), generator=gen)
    soft = nnspec.compile(spec("linear_softmax_classifier"), model="LinearSoftmaxClassifier")().double()
    svm = nnspec.compile(spec("linear_softmax_classifier"), model="LinearSVMClassifier")().double()
    assert tuple(soft.fc.weight.shape) == (10, 3072) and tuple(soft.fc.bias.shape) == (10,)
    assert nnspec.build(spec("linear_softmax_classifier")).param_count() == 30730
    svm.load_state_dict(soft.state_dict(), strict=True)
    s = x.reshape(5, 3072) @ soft.fc.weight.T + soft.fc.bias                    # W x + b, per image
    r = soft(x, y)
    _close(r["scores"], s, "scores")
    li = -torch.log(torch.exp(s[torch.arange(5), y]) / torch.exp(s).sum(1))     # -log(e^{s_y} / sum_j e^{s_j})
    _close(r["ce"], li.mean(), "cross-entropy")
    hinge = sum(max(0.0, (s[i, j] - s[i, y[i]] + 1).item()) for i in range(5) for j in range(10) if j != y[i]) / 5
    _close(svm(x, y)["hinge"], torch.tensor(hinge, dtype=F64), "multi-class hinge (002:1299)")
    wide = nnspec.compile(spec("linear_softmax_classifier"), params={"margin": 2.0}, model="LinearSVMClassifier")()
    wide = wide.double()
    wide.load_state_dict(soft.state_dict())
    hinge2 = sum(max(0.0, (s[i, j] - s[i, y[i]] + 2).item()) for i in range(5) for j in range(10) if j != y[i]) / 5
    _close(wide(x, y)["hinge"], torch.tensor(hinge2, dtype=F64), "hinge with margin 2")


# =================================================================================== (c) the MNIST MLP vs hand-written
class NotesMnistMLP(nn.Module):
    """The notes' class (000:474-488), fixed: a flatten in front, no Softmax at the end."""

    def __init__(self):
        super().__init__()
        self.cnn = nn.Sequential(
            nn.Linear(28 * 28, 300),
            nn.LeakyReLU(),
            nn.Linear(300, 300),
            nn.LeakyReLU(),
            nn.Linear(300, 10),
        )

    def forward(self, x):
        return self.cnn(x.flatten(1))


@pytest.mark.parametrize("train", [True, False])
def test_mnist_mlp_matches_handwritten(train):
    torch.manual_seed(0)
    ref = NotesMnistMLP().double()
    net = nnspec.compile(spec("mlp"))().double()
    assert [(k, tuple(v.shape)) for k, v in net.state_dict().items()] == \
        [(k, tuple(v.shape)) for k, v in ref.state_dict().items()]
    net.load_state_dict(ref.state_dict(), strict=True)      # copy the reference's weights
    net.train(train), ref.train(train)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 1, 28, 28, generator=gen, dtype=F64)
    y = torch.randint(0, 10, (6,), generator=gen)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    result = net(xa, y)
    out_b = ref(xb)
    loss_b = F.cross_entropy(out_b, y)
    _close(result["logits"], out_b, "logits")
    _close(result["loss"], loss_b, "loss")
    _close(net(x), out_b, "inference output")
    assert out_b.abs().max() > 0
    result["loss"].backward()
    loss_b.backward()
    _close(xa.grad, xb.grad, "input gradient")
    params_b = dict(ref.named_parameters())
    assert {n for n, _ in net.named_parameters()} == set(params_b)
    for n, p in net.named_parameters():
        _close(p.grad, params_b[n].grad, f"gradient of {n}")
    assert nnspec.build(spec("mlp")).param_count() == 784 * 300 + 300 + 300 * 300 + 300 + 300 * 10 + 10


def test_mlp_small_is_the_notes_model_with_a_logit_loss():
    """000:302-336: Sequential(Linear(10, 20), ReLU(), Linear(20, 1)); BCE on sigmoid(logit) via bce_with_logits."""
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 1)).double()
    net = nnspec.compile(spec("mlp_small"))().double()
    net.load_state_dict({f"model.{k}": v for k, v in ref.state_dict().items()}, strict=True)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(7, 10, generator=gen, dtype=F64)
    y = torch.randint(0, 2, (7, 1), generator=gen).to(F64)
    r = net(x, y)
    _close(r["logit"], ref(x), "logit")
    _close(r["bce"], F.binary_cross_entropy(torch.sigmoid(ref(x)), y), "bce of sigmoid(logit)")
    assert nnspec.build(spec("mlp_small")).param_count() == 11 * 20 + 21 * 1


def test_numpy_two_layer_net_manual_gradients():
    """002:805-826: h = sigmoid(x w1), y_pred = h w2, loss = sum((y_pred - y)^2), with the notes' gradients."""
    torch.manual_seed(0)
    N, D_in, H, D_out = 64, 1000, 100, 10
    net = nnspec.compile(spec("mlp_cs231n"), model="NumpyTwoLayerNet")().double()
    assert {n: tuple(p.shape) for n, p in net.named_parameters()} == {"w1.weight": (H, D_in), "w2.weight": (D_out, H)}
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(N, D_in, generator=gen, dtype=F64), torch.randn(N, D_out, generator=gen, dtype=F64)
    w1, w2 = net.w1.weight.detach().T, net.w2.weight.detach().T         # the notes' [D_in, H] and [H, D_out]
    h = 1 / (1 + torch.exp(-x @ w1))
    y_pred = h @ w2
    loss = ((y_pred - y) ** 2).sum()
    grad_y_pred = 2.0 * (y_pred - y)
    grad_w2 = h.T @ grad_y_pred
    grad_h = grad_y_pred @ w2.T
    grad_w1 = x.T @ (grad_h * h * (1 - h))
    r = net(x, y)
    _close(r["y_pred"], y_pred, "y_pred")
    _close(r["sse"], loss, "loss", 1e-8 * loss.item())
    r["loss"].backward()
    _close(net.w1.weight.grad.T, grad_w1, "grad_w1")
    _close(net.w2.weight.grad.T, grad_w2, "grad_w2")


def test_sigmoid_net_forward_and_two_layer_shapes():
    """002:742-749 (3 -> 4 -> 4 -> 1 sigmoid net, biases) and 002:756-763 (f = W2 max(0, W1 x), no bias)."""
    torch.manual_seed(0)
    net = nnspec.compile(spec("mlp_cs231n"), model="SigmoidNet")().double()
    p = {n: v.detach() for n, v in net.named_parameters()}
    x = torch.randn(3, 1, dtype=F64)                      # the notes' column vector
    f = lambda v: 1.0 / (1.0 + torch.exp(-v))            # noqa: E731 - as the notes write it
    h1 = f(p["layer1.weight"] @ x + p["layer1.bias"][:, None])
    h2 = f(p["layer2.weight"] @ h1 + p["layer2.bias"][:, None])
    out = p["layer3.weight"] @ h2 + p["layer3.bias"][:, None]
    assert h1.shape == (4, 1) and h2.shape == (4, 1) and out.shape == (1, 1)
    _close(net(x.T), out.T, "3-4-4-1 forward")
    two = nnspec.compile(spec("mlp_cs231n"), model="TwoLayerNet")().double()
    assert {n: tuple(v.shape) for n, v in two.named_parameters()} == {"W1.weight": (100, 3072), "W2.weight": (10, 100)}
    xs = torch.randn(2, 3072, dtype=F64)
    _close(two(xs), (two.W2.weight @ torch.clamp(two.W1.weight @ xs.T, min=0)).T, "W2 max(0, W1 x)")
    three = nnspec.build(spec("mlp_cs231n"), model="ThreeLayerNet")
    assert three.param_count() == 3072 * 100 + 100 * 100 + 100 * 10


# =================================================================================== (d) behaviour
def test_dropout_train_and_eval(monkeypatch):
    """002:1346-1373: in training about 1 - keep of the hidden units are zeroed; in eval none, deterministic."""
    seen = []
    real = F.dropout

    def spy(x, p=0.5, training=True, inplace=False):
        out = real(x, p=p, training=training, inplace=inplace)
        seen.append((x.detach().clone(), out.detach().clone(), p, training))
        return out

    for keep in (0.5, 0.8):
        net = nnspec.compile(spec("mlp_dropout"), params={"keep": keep})().double()
        x = torch.randn(256, 3072, dtype=F64)
        monkeypatch.setattr(F, "dropout", spy)
        seen.clear()
        net.eval()
        a, b = net(x), net(x)
        assert torch.equal(a, b)
        assert len(seen) == 4 and all(not tr and torch.equal(i, o) for i, o, _, tr in seen)
        # eval output = the network without dropout, computed by hand
        h = torch.relu(net.fc1(x))
        h = torch.relu(net.fc2(h))
        _close(a, net.fc3(h), "eval output without masks")
        seen.clear()
        net.train()
        c, d = net(x), net(x)
        assert not torch.equal(c, d)
        assert len(seen) == 4
        for inp, out, p, training in seen:
            assert training and p == pytest.approx(1 - keep)
            active = inp != 0                                   # ReLU zeros are not dropout's doing
            dropped = (out == 0) & active
            frac = dropped.sum().item() / active.sum().item()
            assert abs(frac - (1 - keep)) < 0.03, (keep, frac)
            kept = active & ~dropped
            _close(out[kept], inp[kept] / keep, "kept units scaled by 1/keep (inverted dropout)", 1e-12)
        monkeypatch.setattr(F, "dropout", real)


def _layer_stats(act, init, width=256, batch=16, seed=0):
    torch.manual_seed(seed)
    net = nnspec.compile(spec("deep_mlp_init_demo"), params={"width": width, "act": act, "init": init})()
    x = torch.randn(batch, width)                          # x = np.random.randn(16, dims[0])
    with torch.no_grad():
        h, hs = net(x)
    assert hs.shape == (6, batch, width) and torch.equal(hs[-1], h)
    return net, hs.std(dim=(1, 2))


@pytest.mark.parametrize("init,std", [("small", lambda d: 0.01), ("xavier", lambda d: 1 / math.sqrt(d)),
                                      ("kaiming", lambda d: math.sqrt(2 / d))])
def test_deep_init_weights(init, std):
    """002:1176, 1197, 1233: W = 0.01 randn, randn / sqrt(Din), randn * sqrt(2 / Din); [Din, Dout], no bias."""
    net, _ = _layer_stats("tanh", init)
    params = dict(net.named_parameters())
    assert sorted(params) == [f"layers.{i}.W" for i in range(6)]
    for n, w in params.items():
        assert w.shape == (256, 256)
        assert w.std().item() == pytest.approx(std(256), rel=0.05), n
        assert abs(w.mean().item()) < 0.05 * std(256)


def test_deep_init_activation_statistics():
    """002:1171-1237: 0.01 * randn collapses tanh activations; Xavier keeps them for tanh; ReLU needs Kaiming."""
    _, small = _layer_stats("tanh", "small")
    assert small[-1] < 1e-4 and all(small[i + 1] < 0.25 * small[i] for i in range(5))
    _, xavier = _layer_stats("tanh", "xavier")
    assert xavier[-1] > 0.2 and xavier[-1] > 0.3 * xavier[0]
    _, kaiming = _layer_stats("relu", "kaiming")
    rms_kaiming = kaiming[-1] / kaiming[0]
    _, xavier_relu = _layer_stats("relu", "xavier")
    rms_xavier = xavier_relu[-1] / xavier_relu[0]
    assert 0.4 < rms_kaiming < 2.5            # the spread survives six ReLU layers
    assert rms_xavier < 0.35                  # variance halves per layer: (1/sqrt 2)^5 = 0.18
    assert rms_xavier < 0.5 * rms_kaiming


def test_deep_init_unknown_choice_fails():
    for key, bad in (("init", "xavir"), ("act", "sigmoid")):
        with pytest.raises(SpecError) as info:
            nnspec.build(spec("deep_mlp_init_demo"), params={"width": 8, key: bad})
        assert info.value.code == "E0201"


def test_keras_network_without_activations_is_affine():
    """004:148-153 as written (no activations) is one affine map; 004:66-71; the fixed default is not."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 2, generator=gen, dtype=F64), torch.randn(4, 2, generator=gen, dtype=F64)
    zero = torch.zeros(4, 2, dtype=F64)
    torch.manual_seed(0)
    literal = nnspec.compile(spec("mlp_keras"), params={"nonlinear": False})().double()
    lin = lambda v: literal(v) - literal(zero)                 # noqa: E731
    _close(lin(2 * a - 3 * b), 2 * lin(a) - 3 * lin(b), "affine network", 1e-10)
    torch.manual_seed(0)
    fixed = nnspec.compile(spec("mlp_keras"))().double()
    nl = lambda v: fixed(v) - fixed(zero)                      # noqa: E731
    assert (nl(2 * a - 3 * b) - (2 * nl(a) - 3 * nl(b))).abs().max() > 1e-3
    assert [n for n, _ in fixed.named_children()] == ["dense1", "dense2", "out"]
    single = nnspec.build(spec("mlp_keras"), params={"widths": [3]})
    assert single.param_count() == 3 * 3 + 4 * 2


EXAM = [("ExamFeb2022Q5", 1103, [(40, 20), (20, 10), (10, 3)]),
        ("ExamJan2022Q1", 800, [(10, 20), (20, 10), (10, 30)]),
        ("ExamJun2021Q1", 1300, [(20, 20), (20, 20), (20, 20)]),
        ("ExamOct2021Q1", 690, [(10, 20), (20, 10), (10, 20)])]


@pytest.mark.parametrize("model,answer,layers", EXAM, ids=[e[0] for e in EXAM])
def test_exam_parameter_counts(model, answer, layers):
    """003:28-30, 45-47, 83-85, 183-185: (in + 1) out per Linear, 2 h per batch norm (running stats are buffers)."""
    graph = nnspec.build(spec("exam_bn_mlps"), model=model)
    assert graph.param_count() == answer
    assert graph.param_count(trainable_only=True) == answer
    by_hand = sum((i + 1) * o for i, o in layers) + 2 * layers[0][1]
    assert by_hand == answer
    net = nnspec.compile(spec("exam_bn_mlps"), model=model)()
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == answer
    assert sum(b.numel() for n, b in net.named_buffers() if "running" in n) == 2 * layers[0][1]
    assert [(m.in_features, m.out_features) for m in net.modules() if isinstance(m, nn.Linear)] == layers
    assert [m.num_features for m in net.modules() if isinstance(m, nn.BatchNorm1d)] == [layers[0][1]]


def test_digits_mlp_learns():
    """The examples' MLP: f32[B, 64] digits in [0, 1], 10 classes; a few full-batch steps fit the digits."""
    sklearn = pytest.importorskip("sklearn.datasets")
    digits = sklearn.load_digits()
    x = torch.tensor(digits.images.reshape(-1, 64) / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.long)
    torch.manual_seed(0)
    net = nnspec.compile("digits_mlp")()                       # by its built-in name
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        result = net(x, y)
        result["loss"].backward()
        opt.step()
    with torch.no_grad():
        acc = (net(x).argmax(1) == y).float().mean().item()
    assert acc > 0.9, acc
    assert result["accuracy"].item() == pytest.approx(
        (result["logits"].argmax(1) == y).float().mean().item())


# =================================================================================== (e) the seed code that must fail
@pytest.mark.parametrize("name,marker,words", [
    ("mlp_small_seed", "bce(", ["bce needs probabilities in [0, 1]", "linear"]),
    ("mlp_mnist_seed", "cross_entropy(", ["cross_entropy takes raw logits", "softmax"]),
])
def test_seed_losses_fail(name, marker, words):
    path = ERRORS / f"{name}.nn"
    text = path.read_text().splitlines()
    line = next(i for i, t in enumerate(text, 1) if marker in t and not t.lstrip().startswith("#"))
    with pytest.raises(SpecError) as info:
        nnspec.build(str(path))
    err = info.value
    assert err.code == "E0417"
    assert err.span is not None and err.span.line == line
    assert err.span.col == text[line - 1].index(marker) + 1
    for w in words:
        assert w in err.message
    assert f"Expected: error[E0417] at line {line}" in " ".join(text[:8])
    result = CliRunner().invoke(cli_main, ["check", str(path)])
    assert result.exit_code == 1
    assert "error[E0417]" in result.stderr and f"{name}.nn:{line}:" in result.stderr


def test_loss_input_check_spares_correct_uses():
    """The E0417 check looks through reshapes, and accepts probabilities and logits where they belong."""
    ok = """
    model Ok {
        input x: f32[B, 6]
        target t: f32[B, 6]
        target c: i64[B]
        s = x |> linear(6)
        loss a = bce(sigmoid(s), t)
        loss b = bce_with_logits(s, t)
        loss d = cross_entropy(s, c)
        loss e = nll_loss(log_softmax(s), c)
        loss f = bce(reshape(softmax(s), [B, 2, 3]) |> flatten, t)
        output s
    }
    """
    from nnspec.compiler.pipeline import build
    build("<ok>", text=ok)
    for bad, word in (("bce(reshape(s, [B, 2, 3]) |> flatten, t)", "bce needs probabilities"),
                      ("bce(tanh(s), t)", "bce needs probabilities"),
                      ("bce_with_logits(sigmoid(s), t)", "sigmoid is applied twice"),
                      ("nll_loss(softmax(s), c)", "nll_loss takes log-probabilities")):
        text = ok.replace("loss a = bce(sigmoid(s), t)", f"loss a = {bad}")
        with pytest.raises(SpecError) as info:
            build("<bad>", text=text)
        assert info.value.code == "E0417" and word in info.value.message, bad
