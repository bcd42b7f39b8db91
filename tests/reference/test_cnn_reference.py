"""Convolutional specs of group A against hand-written PyTorch and the published definitions.

  (a) parameter totals: resnet18/34/50, vgg16 and alexnet equal torchvision's published totals, counted by
      the compiler (`nnspec.build(spec).param_count()`) and on the compiled module's parameters;
  (b) state dicts: the compiled ResNets, VGG-16 and AlexNet have exactly the keys and shapes of independent,
      hand-written torchvision-style classes (written here the way torchvision writes them), so a torchvision
      state dict loads; the key patterns of resnet18 and vgg16 are also listed by hand;
  (c) numerics: mnist_cnn, resnet18 (2x3x64x64), resnet_block and the std/blocks.nn blocks (ConvBnRelu, a
      bottleneck ResNetStage, VGGFeatures with batch norm, MLP) against hand-written nn.Modules with the same
      weights (copied with load_state_dict, so the names must match): outputs, the spec's loss, the gradients
      of every parameter and of the input, and (train mode) the batch-norm running statistics, in float64 with
      max abs difference <= 1e-5, in train and eval mode;
  (d) every convolutional spec passes `nnspec check` in-process without warnings, and runs forward and backward
      at two batch sizes; the seed's MNIST CNN as written (tests/golden/errors/mnist_cnn_seed.nn) fails with
      E0301 at its linear layer, naming 1600 and 2304.
Large models are instantiated on the meta device for (a) and (b): no memory, no initialisation time.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from click.testing import CliRunner

import nnspec
from nnspec.cli import main as cli_main
from nnspec.errors import SpecError

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "specs"
SEED_CNN = ROOT / "tests" / "golden" / "errors" / "mnist_cnn_seed.nn"
TOL = 1e-5


def spec(name: str) -> str:
    return str(SPECS / f"{name}.nn")


def _close(a, b, what):
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    diff = (a - b).abs().max().item() if a.numel() else 0.0
    assert diff <= TOL, f"{what}: max abs diff {diff:.3e} > {TOL}"


# =================================================================================== hand-written references
# Written the ordinary way, after torchvision.models.{resnet,vgg,alexnet} (torchvision is not installed here).
class TvBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class TvBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class TvResNet(nn.Module):
    def __init__(self, block, layers, num_classes=1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes))
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class TvVGG(nn.Module):
    def __init__(self, cfg, num_classes=1000, dropout=0.5):
        super().__init__()
        layers, in_channels = [], 3
        for v in cfg:
            if v == "M":
                layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
            else:
                layers += [nn.Conv2d(in_channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                in_channels = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class TvAlexNet(nn.Module):
    def __init__(self, num_classes=1000, dropout=0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(p=dropout), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class SeedMnistCNN(nn.Module):
    """Seed 000:422-455 with its two mistakes corrected: Linear(64 * 5 * 5, 128), and a proper __init__."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.cnn = nn.Sequential(
            nn.Conv2d(kernel_size=(3, 3), in_channels=1, out_channels=32),
            nn.LeakyReLU(),
            nn.MaxPool2d(kernel_size=(2, 2)),
            nn.Conv2d(kernel_size=(3, 3), in_channels=32, out_channels=64),
            nn.LeakyReLU(),
            nn.MaxPool2d(kernel_size=(2, 2)),
            nn.Flatten(),
        )
        self.ff = nn.Sequential(nn.Linear(64 * 5 * 5, 128), nn.LeakyReLU(), nn.Linear(128, num_classes))

    def forward(self, x):
        return self.ff(self.cnn(x))


REFERENCES = {
    "resnet18": (11_689_512, lambda: TvResNet(TvBasicBlock, [2, 2, 2, 2])),
    "resnet34": (21_797_672, lambda: TvResNet(TvBasicBlock, [3, 4, 6, 3])),
    "resnet50": (25_557_032, lambda: TvResNet(TvBottleneck, [3, 4, 6, 3])),
    "vgg16": (138_357_544, lambda: TvVGG(VGG16_CFG)),
    "alexnet": (61_100_840, lambda: TvAlexNet()),
}


def _on_meta(factory):
    with torch.device("meta"):
        return factory()


def _shapes(module) -> dict:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


# =================================================================================== (a) parameter totals
@pytest.mark.parametrize("name", list(REFERENCES))
def test_published_parameter_totals(name):
    expected, make_ref = REFERENCES[name]
    assert nnspec.build(spec(name)).param_count() == expected
    net = _on_meta(nnspec.compile(spec(name)))
    assert sum(p.numel() for p in net.parameters()) == expected
    assert all(p.requires_grad for p in net.parameters())
    # the hand-written reference agrees: the totals are torchvision's, not a coincidence of this file
    assert sum(p.numel() for p in _on_meta(make_ref).parameters()) == expected


# =================================================================================== (b) state dict keys
@pytest.mark.parametrize("name", list(REFERENCES))
def test_state_dict_matches_torchvision_layout(name):
    net = _on_meta(nnspec.compile(spec(name)))
    ref = _on_meta(REFERENCES[name][1])
    got, want = _shapes(net), _shapes(ref)
    assert set(got) == set(want), (f"missing: {sorted(set(want) - set(got))[:8]}; "
                                   f"extra: {sorted(set(got) - set(want))[:8]}")
    assert got == want
    ref.load_state_dict(net.state_dict(), strict=True)   # a torchvision checkpoint loads both ways
    net.load_state_dict(ref.state_dict(), strict=True)


def _bn_keys(prefix):
    return {f"{prefix}.{k}" for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}


def test_resnet18_keys_by_hand():
    keys = set(_on_meta(nnspec.compile(spec("resnet18"))).state_dict())
    want = {"conv1.weight", "fc.weight", "fc.bias"} | _bn_keys("bn1")
    for layer in range(1, 5):
        for block in range(2):
            p = f"layer{layer}.{block}"
            want |= {f"{p}.conv1.weight", f"{p}.conv2.weight"} | _bn_keys(f"{p}.bn1") | _bn_keys(f"{p}.bn2")
        if layer > 1:  # the first block of layers 2-4 halves the resolution and doubles the channels
            want |= {f"layer{layer}.0.downsample.0.weight"} | _bn_keys(f"layer{layer}.0.downsample.1")
    assert keys == want
    assert len(want) == 122


def test_vgg16_keys_by_hand():
    keys = set(_on_meta(nnspec.compile(spec("vgg16"))).state_dict())
    convs = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    want = {f"features.{i}.{w}" for i in convs for w in ("weight", "bias")}
    want |= {f"classifier.{i}.{w}" for i in (0, 3, 6) for w in ("weight", "bias")}
    assert keys == want


def test_alexnet_keys_by_hand():
    keys = set(_on_meta(nnspec.compile(spec("alexnet"))).state_dict())
    want = {f"features.{i}.{w}" for i in (0, 3, 6, 8, 10) for w in ("weight", "bias")}
    want |= {f"classifier.{i}.{w}" for i in (1, 4, 6) for w in ("weight", "bias")}
    assert keys == want


# =================================================================================== (c) numerics
def _randomise_bn(module, gen):
    """Non-trivial batch-norm affine parameters and running statistics, so eval mode tests something."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen, dtype=m.weight.dtype) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen, dtype=m.bias.dtype) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen, dtype=m.running_mean.dtype) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen, dtype=m.running_var.dtype) + 0.5)


def _compare(net, ref, x, y, train: bool, loss_from_spec: bool = True):
    """Outputs, loss, input and parameter gradients and buffers of the compiled module and the reference."""
    net.train(train)
    ref.train(train)
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    if loss_from_spec:
        result = net(xa, y)
        out_a, loss_a = result["logits"], result["loss"]
        _close(result["ce"], loss_a, "loss = ce")
    else:
        out_a = net(xa)
        loss_a = (out_a * torch.linspace(-1, 1, out_a.numel(), dtype=out_a.dtype).reshape(out_a.shape)).sum()
    out_b = ref(xb)
    loss_b = F.cross_entropy(out_b, y) if loss_from_spec else \
        (out_b * torch.linspace(-1, 1, out_b.numel(), dtype=out_b.dtype).reshape(out_b.shape)).sum()
    _close(out_a, out_b, "output")
    _close(loss_a, loss_b, "loss")
    assert out_a.abs().max() > 0
    loss_a.backward()
    loss_b.backward()
    _close(xa.grad, xb.grad, "input gradient")
    params_b = dict(ref.named_parameters())
    names = [n for n, _ in net.named_parameters()]
    assert set(names) == set(params_b)
    for n, p in net.named_parameters():
        assert p.grad is not None, n
        _close(p.grad, params_b[n].grad, f"gradient of {n}")
    buffers_b = dict(ref.named_buffers())
    for n, b in net.named_buffers():
        _close(b.double(), buffers_b[n].double(), f"buffer {n}")


def test_mnist_cnn_matches_handwritten():
    torch.manual_seed(0)
    net = nnspec.compile(spec("mnist_cnn"))().double()
    ref = SeedMnistCNN().double()
    ref.load_state_dict(net.state_dict(), strict=True)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, 28, 28, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (4,), generator=gen)
    _compare(net, ref, x, y, train=True)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_resnet18_matches_handwritten(train):
    torch.manual_seed(0)
    ref = TvResNet(TvBasicBlock, [2, 2, 2, 2], num_classes=10).double()
    _randomise_bn(ref, torch.Generator().manual_seed(2))
    net = nnspec.compile(spec("resnet18"), params={"size": 64, "classes": 10})().double()
    net.load_state_dict(ref.state_dict(), strict=True)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 64, 64, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (2,), generator=gen)
    _compare(net, ref, x, y, train=train)
    if train:   # the running statistics moved, identically (checked in _compare), away from the loaded ones
        assert int(net.bn1.num_batches_tracked) == 1


class TwoBasicBlocks(nn.Module):
    """specs/resnet_block.nn by hand: a block with the 1x1 projection on the skip, then one with the identity."""

    def __init__(self):
        super().__init__()
        projection = nn.Sequential(nn.Conv2d(64, 128, kernel_size=1, stride=2, bias=False), nn.BatchNorm2d(128))
        self.block1 = TvBasicBlock(64, 128, stride=2, downsample=projection)
        self.block2 = TvBasicBlock(128, 128)

    def forward(self, x):
        return self.block2(self.block1(x))


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_resnet_block_matches_handwritten(train):
    torch.manual_seed(0)
    ref = TwoBasicBlocks().double()
    _randomise_bn(ref, torch.Generator().manual_seed(4))
    net = nnspec.compile(spec("resnet_block"), params={"size": 8})().double()
    net.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(3, 64, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    _compare(net, ref, x, None, train=train, loss_from_spec=False)


STD_BLOCKS_SPEC = """
import "std/blocks.nn"

model StdBlocks() {
    input x: f32[B, 16, 8, 8]
    h = x |> ConvBnRelu(16, name="stem")
    h = h |> ResNetStage(8, 2, stride=2, bottleneck=true, name="stage")
    h = h |> VGGFeatures([8, "M", 8], bn=true, name="features")
    y = h |> flatten |> MLP([12, 12], 5, name="head")
    output y
}
"""


class StdBlocksByHand(nn.Module):
    """STD_BLOCKS_SPEC written by hand: Conv2dNormActivation, a bottleneck stage, a VGG-BN stack, an MLP."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        projection = nn.Sequential(nn.Conv2d(16, 32, kernel_size=1, stride=2, bias=False), nn.BatchNorm2d(32))
        self.stage = nn.Sequential(TvBottleneck(16, 8, stride=2, downsample=projection), TvBottleneck(32, 8))
        self.features = nn.Sequential(
            nn.Conv2d(32, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Linear(32, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 5))

    def forward(self, x):
        return self.head(torch.flatten(self.features(self.stage(self.stem(x))), 1))


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_std_blocks_match_handwritten(train, tmp_path):
    path = tmp_path / "std_blocks_demo.nn"
    path.write_text(STD_BLOCKS_SPEC)
    torch.manual_seed(0)
    ref = StdBlocksByHand().double()
    _randomise_bn(ref, torch.Generator().manual_seed(6))
    net = nnspec.compile(str(path))().double()
    net.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(3, 16, 8, 8, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    _compare(net, ref, x, None, train=train, loss_from_spec=False)


def test_resnet_block_projection_only_when_shapes_differ():
    with_proj = set(nnspec.compile(spec("resnet_block"), params={"size": 8})().state_dict())
    assert "block1.downsample.0.weight" in with_proj and "block1.downsample.1.running_var" in with_proj
    assert not any(k.startswith("block2.downsample") for k in with_proj)
    same = nnspec.build(spec("resnet_block"), params={"in_channels": 128, "stride": 1, "size": 8})
    assert not any("downsample" in path for path in same.modules)
    # a stride alone (same channels) also needs the projection
    strided = nnspec.build(spec("resnet_block"), params={"in_channels": 128, "stride": 2, "size": 8})
    assert "block1.downsample.0" in strided.modules


# =================================================================================== sizes from the notes
def test_mnist_cnn_flatten_is_1600():
    graph = nnspec.build(spec("mnist_cnn"))
    linears = [m for m in graph.modules.values() if m.op == "linear"]
    assert [m.ctor for m in linears] == ["nn.Linear(1600, 128)", "nn.Linear(128, 10)"]
    assert graph.param_count() == (32 * 9 + 32) + (64 * 32 * 9 + 64) + (1600 * 128 + 128) + (128 * 10 + 10)


def test_mit_cnn_sizes_and_probabilities():
    graph = nnspec.build(spec("mit_cnn"))
    assert graph.modules["fc1"].ctor == "nn.Linear(1600, 1024)"
    assert graph.modules["fc2"].ctor == "nn.Linear(1024, 10)"
    torch.manual_seed(0)
    net = nnspec.compile(spec("mit_cnn"))()
    x = torch.randn(3, 1, 28, 28)
    probs = net(x)
    assert probs.shape == (3, 10)
    assert torch.allclose(probs.sum(dim=1), torch.ones(3), atol=1e-6)
    out = net(x, torch.tensor([1, 2, 3]))
    # the loss is on the logits: cross_entropy(log(probs)) equals it, cross_entropy(probs) does not
    assert torch.allclose(out["ce"], F.nll_loss(torch.log(out["probs"]), torch.tensor([1, 2, 3])), atol=1e-5)


def test_convnet_basic_first_layer_is_the_notes_example():
    graph = nnspec.build(spec("convnet_basic"))
    conv1 = graph.modules["conv1"]
    assert conv1.ctor == "nn.Conv2d(3, 10, 5, padding=2)"
    assert sum(p.numel for p in conv1.params if p.init != "buffer") == 760    # seed 002:972
    node = next(n for n in graph.nodes.values() if n.module == "conv1")
    assert tuple(node.outputs[0].shape[1:]) == (10, 32, 32)                    # seed 002:968


@pytest.mark.parametrize("n,m,k,pool", [(2, 3, 2, True), (1, 2, 0, True), (3, 1, 1, False), (1, 3, 3, False)])
def test_cifar10_template_counts(n, m, k, pool):
    channels, hidden = [8, 16, 32], 24
    graph = nnspec.build(spec("cifar10_convnet"), params={"n": n, "m": m, "k": k, "pool": pool,
                                                           "channels": channels, "hidden": hidden})
    convs = [p for p, mod in graph.modules.items() if mod.op == "conv2d"]
    fcs = [p for p, mod in graph.modules.items() if mod.op == "linear"]
    pools = [nd for nd in graph.nodes.values() if nd.op == "max_pool2d"]
    assert len(convs) == n * m and len(fcs) == k + 1 and len(pools) == (m if pool else 0)
    expected, c_in, side = 0, 3, 32
    for j in range(m):
        for _ in range(n):
            expected += c_in * channels[j] * 9 + channels[j]
            c_in = channels[j]
        side = side // 2 if pool else side
    features = c_in * side * side
    for _ in range(k):
        expected += features * hidden + hidden
        features = hidden
    expected += features * 10 + 10
    assert graph.param_count() == expected


# =================================================================================== (d) check, run, fail
CNN_SPECS = ["mnist_cnn", "mit_cnn", "cifar10_convnet", "convnet_basic", "digits_cnn", "resnet_block",
             "resnet18", "resnet34", "resnet50", "alexnet", "vgg16"]

# small configurations for the forward/backward run (the structure is the spec's; only sizes shrink)
RUN_PARAMS = {"resnet18": {"size": 32}, "resnet34": {"size": 32}, "resnet50": {"size": 32},
              "alexnet": {"size": 64, "width": 32}, "vgg16": {"size": 32, "width": 32}, "resnet_block": {"size": 8}}


@pytest.mark.parametrize("name", CNN_SPECS)
def test_check_in_process(name):
    result = CliRunner().invoke(cli_main, ["check", spec(name)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ok: ")
    assert result.stderr == "", f"warnings: {result.stderr}"


@pytest.mark.parametrize("name", CNN_SPECS)
def test_forward_backward_two_batch_sizes(name):
    params = RUN_PARAMS.get(name, {})
    graph = nnspec.build(spec(name), params=params)
    torch.manual_seed(0)
    net = nnspec.compile(spec(name), params=params)()
    x_node = graph.nodes[graph.inputs[0]]
    out_name, out_ref = next(iter(graph.outputs.items()))
    for batch in (2, 3):
        shape = [batch] + [int(d) for d in x_node.outputs[0].shape[1:]]
        x = torch.randn(*shape)
        if graph.targets:
            y = torch.randint(0, 10, (batch,))
            result = net(x, y)
            out, loss = result[out_name], result["loss"]
        else:
            out = net(x)
            loss = out.square().mean()
        want = [batch] + [int(d) for d in graph.type_of(out_ref).shape[1:]]
        assert list(out.shape) == want
        assert torch.isfinite(out).all() and torch.isfinite(loss)
        net.zero_grad()
        loss.backward()
        for n, p in net.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), n
        assert any(p.grad.abs().sum() > 0 for p in net.parameters())


def test_seed_mnist_cnn_fails_at_its_linear():
    text = SEED_CNN.read_text().splitlines()
    line = next(i for i, t in enumerate(text, 1) if "linear(128, in_features=64*6*6" in t)
    with pytest.raises(SpecError) as info:
        nnspec.build(str(SEED_CNN))
    err = info.value
    assert err.code == "E0301"
    assert err.span is not None and err.span.line == line
    assert err.span.col == text[line - 1].index("linear(") + 1
    assert "1600" in err.message and "2304" in err.message
    result = CliRunner().invoke(cli_main, ["check", str(SEED_CNN)])
    assert result.exit_code == 1
    assert "error[E0301]" in result.stderr and f"mnist_cnn_seed.nn:{line}:" in result.stderr
