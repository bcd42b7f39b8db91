"""Compile a spec and train it briefly on scikit-learn's handwritten digits (8x8, offline).

    python examples/train_step.py [SPEC] [--steps 200]

The compiled module is an ordinary nn.Module: this script is the plain PyTorch loop a user would
write around it. (`nnspec train CONFIG` is the declarative runtime; this example needs nothing else.)
"""
from __future__ import annotations

import argparse
import time

import torch
from sklearn.datasets import load_digits

import nnspec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("spec", nargs="?", default="digits_cnn")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()

    torch.manual_seed(0)
    Model = nnspec.compile(args.spec)
    net = Model()
    input_type = Model.graph.nodes[Model.graph.inputs[0]].outputs[0]  # e.g. f32[B, 1, 8, 8]
    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32)
    x = x.reshape(len(x), *[int(d) for d in input_type.shape[1:]])
    y = torch.tensor(digits.target, dtype=torch.long)
    perm = torch.randperm(len(x))
    train, test = perm[:1500], perm[1500:]
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    t0 = time.time()
    for step in range(args.steps):
        idx = train[torch.randint(0, len(train), (args.batch,))]
        result = net(x[idx], y[idx])
        opt.zero_grad()
        result["loss"].backward()
        opt.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {result['loss'].item():.4f}")
    net.eval()
    with torch.no_grad():
        acc = (net(x[test]).argmax(dim=1) == y[test]).float().mean().item()
    print(f"{args.spec}: test accuracy {acc:.3f} on {len(test)} held-out digits after {args.steps} steps "
          f"({time.time() - t0:.1f} s)")


if __name__ == "__main__":
    main()
