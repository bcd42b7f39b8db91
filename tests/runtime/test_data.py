"""Data for training: built-in, synthetic and user sources, splits, batch order, and the mapping to a spec's inputs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import nnspec
from nnspec.errors import SpecError
from nnspec.runtime.config import config_from_text
from nnspec.runtime.data import (Binding, EpochBatches, Loader, eval_batches, load_data, random_graph, random_shift,
                                 sequence_task)

ROOT = Path(__file__).resolve().parents[2]


def cfg_for(data_yaml: str, tmp_path=None, spec=str(ROOT / "specs" / "digits_mlp.nn")):
    text = f"model: {{spec: {spec}}}\ndata:\n{data_yaml}\n"
    return config_from_text(text, "cfg.yaml", base_dir=Path(tmp_path or ROOT))


def test_digits_split_is_deterministic_and_disjoint():
    cfg = cfg_for("  source: digits\n  split_seed: 3")
    a, b = load_data(cfg), load_data(cfg)
    sizes = {k: len(s) for k, s in a.splits.items()}
    assert sizes == {"train": 1258, "validation": 270, "test": 269}
    assert torch.equal(a.splits["test"].tensors["x"], b.splits["test"].tensors["x"])
    x = a.splits["train"].tensors["x"]
    assert x.shape[1:] == (1, 8, 8) and x.dtype == torch.float32 and 0.0 <= x.min() and x.max() <= 1.0
    rows = {tuple(r.flatten().tolist()) + (int(y),) for s in a.splits.values()
            for r, y in zip(s.tensors["x"], s.tensors["y"])}
    assert len(rows) >= 1790  # the splits do not share samples (digits has a few exact duplicates itself)
    other = load_data(cfg_for("  source: digits\n  split_seed: 4"))
    assert not torch.equal(other.splits["test"].tensors["y"], a.splits["test"].tensors["y"])


def test_iris_and_split_fractions():
    cfg = cfg_for("  source: iris\n  split: {train: 0.8, validation: 0.0, test: 0.2}")
    bundle = load_data(cfg)
    assert set(bundle.splits) == {"train", "test"} and len(bundle.splits["train"]) == 120
    assert bundle.splits["train"].tensors["x"].shape == (120, 4) and bundle.classes[0] == "setosa"


def test_sequence_tasks_compute_their_targets():
    add = sequence_task("adding", 50, 12, seed=1)
    x, y = add["x"], add["y"]
    assert x.shape == (50, 12, 2) and y.shape == (50, 1)
    assert np.all(x[:, :, 1].sum(axis=1) == 2)
    np.testing.assert_allclose(y[:, 0], (x[:, :, 0] * x[:, :, 1]).sum(axis=1), rtol=1e-6)
    assert np.all(x[:, :6, 1].sum(axis=1) == 1)  # one mark in each half
    par = sequence_task("parity", 40, 9, seed=2)
    assert par["x"].shape == (40, 9, 1) and np.array_equal(par["y"], par["x"][:, :, 0].sum(axis=1).astype(int) % 2)
    cp = sequence_task("copy", 10, 4, seed=3, symbols=5, delay=6)
    assert cp["x"].shape == (10, 14, 7) and cp["y"].shape == (10, 4)
    assert np.array_equal(cp["x"][:, :4, :5].argmax(axis=2), cp["y"])
    assert np.all(cp["x"][:, 9, 6] == 1) and np.all(cp["x"][:, 10:, 5] == 1)  # recall marker, then blanks
    again = sequence_task("adding", 50, 12, seed=1)
    assert np.array_equal(again["x"], x)


def test_random_graph_node_classification():
    x, adj, labels = random_graph(60, 3, 5, p_in=0.3, p_out=0.01, noise=0.5, seed=0)
    assert x.shape == (60, 5) and adj.shape == (60, 60) and labels.shape == (60,)
    assert np.allclose(adj, adj.T) and np.all(np.diag(adj) > 0)
    a = (adj > 0).astype(float)
    same = labels[:, None] == labels[None, :]
    assert a[same].mean() > 5 * a[~same].mean()  # communities
    cfg = cfg_for("  source: graph\n  nodes: 60\n  classes: 3\n  features: 5")
    bundle = load_data(cfg)
    assert bundle.full_batch and all(len(s) == 1 for s in bundle.splits.values())
    masks = [s.tensors["mask"] for s in bundle.splits.values()]
    assert torch.equal(sum(masks), torch.ones(60))
    tr = bundle.splits["train"].tensors
    assert torch.all((tr["y"] == -100) == (tr["mask"] == 0))


def test_csv_with_named_labels(tmp_path):
    rows = ["a,b,species"] + [f"{i},{i * 2},{'cat' if i % 2 else 'dog'}" for i in range(20)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    cfg = cfg_for("  source: csv\n  path: d.csv\n  target: species\n"
                  "  split: {train: 0.5, validation: 0.25, test: 0.25}", tmp_path)
    bundle = load_data(cfg)
    tr = bundle.splits["train"].tensors
    assert tr["x"].shape == (10, 2) and tr["y"].dtype == torch.int64 and bundle.classes == ["cat", "dog"]
    assert torch.all(tr["x"][:, 1] == 2 * tr["x"][:, 0])
    assert torch.all(tr["y"] == (tr["x"][:, 0] % 2 == 0).long())
    bad = cfg_for("  source: csv\n  path: d.csv\n  target: specie", tmp_path)
    with pytest.raises(SpecError) as e:
        load_data(bad)
    assert "column `specie`" in e.value.message and e.value.hint == "did you mean `species`?"
    missing = cfg_for("  source: csv\n  path: nope.csv\n  target: species", tmp_path)
    with pytest.raises(SpecError) as e:
        load_data(missing)
    assert e.value.code == "E0706" and e.value.span.line == 4


def test_numpy_npz_and_files(tmp_path):
    x = np.arange(40, dtype=np.float64).reshape(10, 4)
    y = np.arange(10) % 3
    np.savez(tmp_path / "d.npz", x=x, y=y)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    for source in ("  path: d.npz", "  files: {x: x.npy, y: y.npy}"):
        bundle = load_data(cfg_for(f"  source: numpy\n{source}\n  split: {{train: 1.0, validation: 0.0, test: 0.0}}",
                                   tmp_path))
        t = bundle.splits["train"].tensors
        assert t["x"].dtype == torch.float32 and t["y"].dtype == torch.int64 and len(t["x"]) == 10
        assert sorted(t["x"][:, 0].tolist()) == list(range(0, 40, 4))
    np.save(tmp_path / "short.npy", y[:5])
    with pytest.raises(SpecError) as e:
        load_data(cfg_for("  source: numpy\n  files: {x: x.npy, y: short.npy}", tmp_path))
    assert "different numbers of samples" in e.value.message


def test_image_folders_are_read_lazily_with_workers(tmp_path):
    from PIL import Image
    for label, value in (("dark", 40), ("light", 220)):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.full((5, 7), value + i, dtype=np.uint8)).save(tmp_path / "imgs" / label / f"{i}.png")
    cfg = cfg_for("  source: images\n  path: imgs\n  grayscale: true\n  num_workers: 1\n"
                  "  split: {train: 0.5, validation: 0.5, test: 0.0}", tmp_path)
    bundle = load_data(cfg)
    assert bundle.classes == ["dark", "light"]
    train = bundle.splits["train"]
    assert train.tensors is None and len(train) == 6 and train.item_shapes() == {"x": (1, 5, 7), "y": ()}
    loader = Loader(train, EpochBatches(len(train), 4, seed=0, shuffle=True, drop_last=False), num_workers=1)
    batches = list(loader.epoch(0))
    assert [b for b, _ in batches] == [0, 1] and batches[0][1]["x"].shape == (4, 1, 5, 7)
    for _, batch in batches:
        bright = batch["x"].mean(dim=(1, 2, 3)) > 0.5
        assert torch.equal(bright.long(), batch["y"])
    sized = cfg_for("  source: images\n  path: imgs\n  image_size: [4, 4]", tmp_path)
    assert load_data(sized).splits["train"].item_shapes()["x"] == (3, 4, 4)


def test_epoch_order_depends_only_on_seed_and_epoch():
    s = EpochBatches(103, 10, seed=5, shuffle=True, drop_last=False)
    assert s.batches_per_epoch() == 11
    s.set_epoch(2)
    full = list(s)
    assert sorted(i for b in full for i in b) == list(range(103)) and len(full[-1]) == 3
    s.set_epoch(2, start=4)
    assert list(s) == full[4:]                          # a resumed epoch reads the same batches
    s.set_epoch(3)
    assert list(s) != full
    s2 = EpochBatches(103, 10, seed=5, shuffle=True, drop_last=True)
    s2.set_epoch(2)
    assert len(list(s2)) == 10 and list(s2) == full[:10]


def test_distributed_parts_make_up_the_single_process_batch():
    single = EpochBatches(64, 8, seed=1, shuffle=True, drop_last=True)
    ranks = [EpochBatches(64, 4, seed=1, shuffle=True, drop_last=True, rank=r, world=2) for r in range(2)]
    for s in [single] + ranks:
        s.set_epoch(7)
    parts = [list(r) for r in ranks]
    for g, batch in enumerate(single):
        assert parts[0][g] + parts[1][g] == batch


def test_binding_reshapes_casts_and_maps_by_name():
    graph = nnspec.build(str(ROOT / "specs" / "digits_mlp.nn"))
    cfg = cfg_for("  source: digits")
    bundle = load_data(cfg)
    binding = Binding(cfg, graph, bundle)
    batch = bundle.splits["train"].fetch(range(5))
    inputs, targets = binding(batch, "cpu")
    assert inputs["x"].shape == (5, 64) and targets["y"].dtype == torch.int64
    assert torch.equal(inputs["x"], batch["x"].reshape(5, 64))
    cnn = nnspec.build(str(ROOT / "specs" / "digits_cnn.nn"))
    inputs, _ = Binding(cfg, cnn, bundle)(batch, "cpu")
    assert inputs["x"].shape == (5, 1, 8, 8)


def test_normalisation_uses_training_statistics():
    graph = nnspec.build(str(ROOT / "specs" / "digits_mlp.nn"))
    cfg = cfg_for("  source: digits\n  normalize: standard")
    bundle = load_data(cfg)
    binding = Binding(cfg, graph, bundle)
    inputs, _ = binding(bundle.splits["train"].fetch(range(len(bundle.splits["train"]))), "cpu")
    x = inputs["x"]
    varying = bundle.splits["train"].tensors["x"].reshape(len(x), 64).std(dim=0) > 1e-6
    assert torch.allclose(x.mean(dim=0), torch.zeros(64), atol=1e-5)
    assert torch.allclose(x.std(dim=0, unbiased=False)[varying], torch.ones(int(varying.sum())), atol=1e-4)
    cfg = cfg_for("  source: digits\n  normalize: minmax\n  normalize_per: all")
    inputs, _ = Binding(cfg, graph, bundle)(bundle.splits["test"].fetch(range(10)), "cpu")
    assert inputs["x"].min() >= 0 and inputs["x"].max() <= 1


def test_augmentation_is_seeded_and_only_for_training():
    graph = nnspec.build(str(ROOT / "specs" / "digits_cnn.nn"))
    cfg = cfg_for("  source: digits\n  augment: {shift: 1, noise: 0.1}")
    bundle = load_data(cfg)
    binding = Binding(cfg, graph, bundle)
    batch = bundle.splits["train"].fetch(range(16))
    a, _ = binding(batch, "cpu", train=True, gen=torch.Generator().manual_seed(3))
    b, _ = binding(batch, "cpu", train=True, gen=torch.Generator().manual_seed(3))
    c, _ = binding(batch, "cpu", train=False)
    assert torch.equal(a["x"], b["x"]) and not torch.equal(a["x"], c["x"])
    assert torch.equal(c["x"], batch["x"])


def test_shift_needs_image_shaped_inputs(tmp_path):
    spec = tmp_path / "iris.nn"
    spec.write_text("model Iris() {\n    input x: f32[B, 4]\n    target y: i64[B]\n"
                    "    loss ce = cross_entropy(x |> linear(3), y)\n}\n")
    iris = cfg_for("  source: iris\n  augment: {shift: 1}", spec=str(spec))
    with pytest.raises(SpecError) as e:
        Binding(iris, nnspec.build(str(spec)), load_data(iris))
    assert "`data.augment.shift` needs image-shaped inputs" in e.value.message and e.value.span.line == 4


def test_random_shift_moves_pixels_with_zero_fill():
    x = torch.zeros(50, 1, 5, 5)
    x[:, 0, 2, 2] = 1.0
    out = random_shift(x, 1, torch.Generator().manual_seed(0))
    assert torch.all(out.sum(dim=(1, 2, 3)) == 1)   # the pixel moved, never off the image
    where = out[:, 0].flatten(1).argmax(dim=1)
    rows, cols = where // 5, where % 5
    assert set(rows.tolist()) <= {1, 2, 3} and set(cols.tolist()) <= {1, 2, 3} and len(set(where.tolist())) > 3
    edge = torch.zeros(20, 1, 3, 3)
    edge[:, 0, 0, 0] = 1.0
    assert random_shift(edge, 1, torch.Generator().manual_seed(1)).sum() < 20  # shifted out: zeros come in


def test_eval_batches_cover_the_split_in_order():
    bundle = load_data(cfg_for("  source: iris"))
    split = bundle.splits["validation"]
    ys = torch.cat([b["y"] for b in eval_batches(split, 7)])
    assert torch.equal(ys, split.tensors["y"])
