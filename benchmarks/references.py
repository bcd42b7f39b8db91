"""Hand-written eager PyTorch references for `nnspec bench`: the benchmark models written the ordinary way.

Each class implements the same architecture as its spec, independently of nnspec (this file imports only
torch), in the style people write by hand: torchvision's ResNet (in-place ReLUs included), nn.LSTM, and
Karpathy's nanoGPT for the transformer (with its attention written out, softmax(q k^T / sqrt(hs) + mask) v,
as the spec writes it: nanoGPT's "slow" path, not F.scaled_dot_product_attention). Every class loads the
state_dict of the module nnspec compiles from the matching spec:

    ref = REFERENCES["resnet18"](classes=10, size=64)
    ref.load_state_dict(compiled.state_dict())

Parameter names already agree for the MLP, the CNN and ResNet-18 (the specs use torchvision's and the
notes' names); the LSTM maps `lstm.ih.weight` -> `weight_ih_l0` (and so on), and the GPT fills nanoGPT's
`lm_head.weight`, the same tensor as `transformer.wte.weight`, with a load_state_dict pre-hook.

Calling conventions follow the compiled modules: `ref(x)` gives the outputs; with targets, `ref(x, y)` returns
what the compiled module returns, the outputs, the spec's losses and metrics, and "loss" (their sum).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


# ---------------------------------------------------------------------------------------------- mlp
class MnistMLP(nn.Module):
    """specs/mlp.nn: 784-300-300-10 with LeakyReLU, as the notes' nn.Sequential (seed 000:471-505)."""

    def __init__(self, hidden: int = 300, classes: int = 10):
        super().__init__()
        self.cnn = nn.Sequential(nn.Linear(28 * 28, hidden), nn.LeakyReLU(), nn.Linear(hidden, hidden), nn.LeakyReLU(),
                                 nn.Linear(hidden, classes))

    def forward(self, x, y=None):
        logits = self.cnn(x.flatten(1))
        if y is None:
            return logits
        loss = F.cross_entropy(logits, y)
        accuracy = (logits.argmax(dim=1) == y).float().mean()  # the spec's metric, computed with the loss
        return {"logits": logits, "ce": loss, "accuracy": accuracy, "loss": loss}


# ---------------------------------------------------------------------------------------------- mnist_cnn
class MnistCNN(nn.Module):
    """specs/mnist_cnn.nn: two conv3x3 / LeakyReLU / max-pool stages and a 128-unit head (seed 000:422-455)."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.cnn = nn.Sequential(nn.Conv2d(1, 32, 3), nn.LeakyReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(32, 64, 3), nn.LeakyReLU(), nn.MaxPool2d(2), nn.Flatten())
        self.ff = nn.Sequential(nn.Linear(64 * 5 * 5, 128), nn.LeakyReLU(), nn.Linear(128, classes))

    def forward(self, x, y=None):
        logits = self.ff(self.cnn(x))
        if y is None:
            return logits
        loss = F.cross_entropy(logits, y)
        return {"logits": logits, "ce": loss, "loss": loss}


# ---------------------------------------------------------------------------------------------- resnet18
class BasicBlock(nn.Module):
    """torchvision.models.resnet.BasicBlock."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet18(nn.Module):
    """specs/resnet18.nn: torchvision.models.resnet18 (the `size` parameter does not change the weights)."""

    def __init__(self, classes: int = 1000, size: int = 224):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = [64, 128, 256, 512]
        cin = 64
        for k, w in enumerate(widths):
            stride = 1 if k == 0 else 2
            setattr(self, f"layer{k + 1}", nn.Sequential(BasicBlock(cin, w, stride), BasicBlock(w, w)))
            cin = w
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, classes)

    def forward(self, x, y=None):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        logits = self.fc(torch.flatten(self.avgpool(x), 1))
        if y is None:
            return logits
        loss = F.cross_entropy(logits, y)
        return {"logits": logits, "ce": loss, "loss": loss}


# ---------------------------------------------------------------------------------------------- lstm
class LSTM(nn.Module):
    """specs/lstm.nn (model LSTM): one torch.nn.LSTM layer, batch first, zero initial states.

    Returns the sequence of h [B, T, H] and the final h and c [B, H], as the spec's outputs."""

    _NAMES = {"ih.weight": "weight_ih_l0", "ih.bias": "bias_ih_l0",
              "hh.weight": "weight_hh_l0", "hh.bias": "bias_hh_l0"}

    def __init__(self, input_size: int = 16, hidden_size: int = 32, bias: bool = True):
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, bias=bias, batch_first=True)
        self._register_load_state_dict_pre_hook(self._from_spec_names)

    def _from_spec_names(self, state_dict, prefix, *args):
        """The spec names the gates' linear maps `lstm.ih` and `lstm.hh` (std/rnn.nn): same tensors, other keys."""
        for spec_key, torch_key in self._NAMES.items():
            key = f"{prefix}lstm.{spec_key}"
            if key in state_dict:
                state_dict[f"{prefix}lstm.{torch_key}"] = state_dict.pop(key)

    def forward(self, x):
        hs, (h_n, c_n) = self.lstm(x)
        return hs, h_n[0], c_n[0]


# ---------------------------------------------------------------------------------------------- GPT-2 (nanoGPT)
class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, block_size: int, dropout: float):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.attn_dropout = nn.Dropout(dropout)
        self.resid_dropout = nn.Dropout(dropout)
        self.n_head = n_head
        self.n_embd = n_embd
        # causal mask: 1 where position i may attend to j (j <= i); a buffer, not a parameter, as in nanoGPT
        mask = torch.tril(torch.ones(block_size, block_size))
        self.register_buffer("bias", mask.view(1, 1, block_size, block_size), persistent=False)

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
        att = F.softmax(att, dim=-1)
        att = self.attn_dropout(att)
        y = att @ v                                                       # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, n_embd: int, dropout: float):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * n_embd, n_embd)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, block_size: int, dropout: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, block_size, dropout)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = MLP(n_embd, dropout)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    """specs/gpt2_small.nn: nanoGPT's GPT (pre-LN blocks, GELU-tanh MLP, tied LM head).

    With targets, the loss is nanoGPT's cross-entropy over every position (ignore_index=-1); the logits of every
    position are computed in both cases (nanoGPT's generation shortcut, logits of the last position only when
    no targets are given, is left out: the spec computes them all)."""

    def __init__(self, vocab_size: int = 50257, block_size: int = 1024, n_layer: int = 12, n_head: int = 12,
                 n_embd: int = 768, dropout: float = 0.0):
        super().__init__()
        self.block_size = block_size
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab_size, n_embd),
            wpe=nn.Embedding(block_size, n_embd),
            drop=nn.Dropout(dropout),
            h=nn.ModuleList([Block(n_embd, n_head, block_size, dropout) for _ in range(n_layer)]),
            ln_f=nn.LayerNorm(n_embd),
        ))
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self._register_load_state_dict_pre_hook(self._tied_head)

    def _tied_head(self, state_dict, prefix, *args):
        """The compiled module holds the tied matrix once, as transformer.wte.weight."""
        wte = state_dict.get(f"{prefix}transformer.wte.weight")
        if wte is not None:
            state_dict.setdefault(f"{prefix}lm_head.weight", wte)

    def forward(self, idx, targets=None):
        B, T = idx.size()
        assert T <= self.block_size, f"sequence of {T} tokens, the block size is {self.block_size}"
        pos = torch.arange(0, T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return {"logits": logits, "ce": loss, "loss": loss}


REFERENCES = {"mlp": MnistMLP, "mnist_cnn": MnistCNN, "resnet18": ResNet18, "lstm": LSTM, "gpt2_small": GPT}
