"""Tests of simclr_cli.evaluate: metrics and the kNN vote against loop transcriptions in float64,
the logistic-regression fit against its optimality condition and plain gradient descent, and
feature extraction over a whole dataset."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from simclr_cli import evaluate as ev
from simclr_cli.errors import UsageError


def knn_reference(bank, bank_labels, query, num_classes, k, temperature):
    """Wu et al. 2018 weighted kNN vote, one query at a time, float64, plain Python."""
    preds = []
    for q in query.double():
        sims = []
        for row, label in zip(bank.double(), bank_labels.tolist(), strict=True):
            sims.append((float(q @ row / (q.norm() * row.norm())), label))
        sims.sort(key=lambda s: -s[0])
        votes = [0.0] * num_classes
        for sim, label in sims[:k]:
            votes[label] += math.exp(sim / temperature)
        preds.append(max(range(num_classes), key=lambda c: votes[c]))
    return torch.tensor(preds)


@pytest.mark.parametrize("k", [1, 5, 40, 500])
def test_knn_matches_loop_reference(k, monkeypatch):
    gen = torch.Generator().manual_seed(k)
    bank, query = torch.randn(60, 8, generator=gen), torch.randn(25, 8, generator=gen)
    bank_labels = torch.randint(0, 4, (60,), generator=gen)
    query_labels = torch.randint(0, 4, (25,), generator=gen)
    # A tiny similarity block forces many chunks over the query set.
    monkeypatch.setattr(ev, "KNN_BLOCK_ELEMENTS", 7 * 60)
    expected = knn_reference(bank, bank_labels, query, 4, min(k, 60), 0.1)
    assert torch.equal(ev.knn_predict(bank, bank_labels, query, 4, k, 0.1).argmax(1), expected)
    acc = ev.knn_accuracy(bank, bank_labels, query, query_labels, k=k, temperature=0.1)
    assert acc == pytest.approx((expected == query_labels).double().mean().item())


def test_knn_ignores_unlabelled_rows_and_separates_clusters():
    gen = torch.Generator().manual_seed(0)
    centres = torch.eye(3) * 10
    labels = torch.arange(3).repeat_interleave(20)
    bank = centres[labels] + torch.randn(60, 3, generator=gen)
    query = centres[labels] + torch.randn(60, 3, generator=gen)
    bank_labels = labels.clone()
    bank_labels[:5] = -1  # unlabelled rows leave the bank
    assert ev.knn_accuracy(bank, bank_labels, query, labels, k=10) == 1.0
    assert math.isnan(ev.knn_accuracy(bank, torch.full((60,), -1), query, labels))


def test_topk_accuracy_counts_every_row():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.05, 0.15], [0.2, 0.3, 0.5], [0.5, 0.4, 0.1]])
    targets = torch.tensor([1, 2, 0, 1])
    acc = ev.topk_accuracy(logits, targets, ks=(1, 2, 5))
    assert acc[1] == pytest.approx(1 / 4)  # only row 0
    assert acc[2] == pytest.approx(3 / 4)  # row 1's target is last
    assert acc[5] == 1.0  # k > C counts as C


def test_confusion_matrix_and_per_class_accuracy():
    targets = torch.tensor([0, 0, 0, 1, 1, 2])
    preds = torch.tensor([0, 1, 0, 1, 1, 0])
    cm = ev.confusion_matrix(preds, targets, 4)
    expected = torch.zeros(4, 4, dtype=torch.long)
    for t, p in zip(targets.tolist(), preds.tolist(), strict=True):
        expected[t, p] += 1
    assert torch.equal(cm, expected) and cm.dtype == torch.int64
    acc = ev.per_class_accuracy(cm)
    assert acc[:3].tolist() == pytest.approx([2 / 3, 1.0, 0.0])
    assert math.isnan(acc[3])  # class 3 has no test example


def test_standardization_uses_train_statistics():
    gen = torch.Generator().manual_seed(0)
    train = torch.randn(100, 5, generator=gen) * 3 + 7
    train[:, 2] = 4.0  # a dead (constant) dimension
    mean, std = ev.fit_standardization(train)
    z = ev.standardize(train, mean, std)
    assert torch.allclose(z.mean(0), torch.zeros(5), atol=1e-5)
    assert torch.allclose(z[:, [0, 1, 3, 4]].std(0, unbiased=False), torch.ones(4), atol=1e-5)
    assert torch.all(z[:, 2] == 0)
    test = torch.randn(10, 5, generator=gen)
    assert torch.allclose(ev.standardize(test, mean, std), (test - mean) / std)


def separable_problem(n=120, d=6, classes=3, seed=0, noise=1.0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randn(classes, d, generator=gen)[y] * 2 + noise * torch.randn(n, d, generator=gen)
    return x, y


def objective64(weight, bias, x, y, wd):
    logits = x.double() @ weight.T + bias
    return nn.functional.cross_entropy(logits, y) + 0.5 * wd * weight.square().sum()


def newton_reference(x, y, classes, wd, steps=30):
    """Damped Newton's method in float64 on the same convex objective (21 parameters here)."""
    d = x.shape[1]

    def f(theta):
        return objective64(theta[: classes * d].view(classes, d), theta[classes * d :], x, y, wd)

    theta = torch.zeros(classes * (d + 1), dtype=torch.float64)
    for _ in range(steps):
        grad = torch.autograd.functional.jacobian(f, theta)
        if grad.abs().max() < 1e-12:
            break
        # pinv: the bias is shift-invariant, so the Hessian is singular along (1, ..., 1).
        step = torch.linalg.pinv(torch.autograd.functional.hessian(f, theta)) @ grad
        t = 1.0
        while f(theta - t * step) > f(theta) and t > 1e-8:
            t /= 2
        theta = theta - t * step
    return theta[: classes * d].view(classes, d), theta[classes * d :]


def test_lbfgs_reaches_the_regularised_optimum():
    x, y = separable_problem()
    wd = 1e-2
    head = ev.fit_logistic_regression(x, y, 3, wd, solver="lbfgs")
    w_ref, b_ref = newton_reference(x, y, 3, wd)
    # Softmax is shift-invariant in the bias: compare centred biases.
    assert torch.allclose(head.weight.double(), w_ref, atol=2e-3)
    assert torch.allclose(head.bias.double() - head.bias.mean(), b_ref - b_ref.mean(), atol=2e-3)
    w = head.weight.double().requires_grad_()
    b = head.bias.double().requires_grad_()
    grads = torch.autograd.grad(objective64(w, b, x, y, wd), (w, b))
    assert max(g.abs().max().item() for g in grads) < 1e-4  # stationary point of a convex loss
    assert not head.weight.requires_grad


def test_adam_solver_approaches_lbfgs_objective():
    x, y = separable_problem()
    wd = 1e-2
    lbfgs = ev.fit_logistic_regression(x, y, 3, wd, solver="lbfgs")
    adam = ev.fit_logistic_regression(
        x, y, 3, wd, solver="adam", epochs=200, batch_size=32, lr=0.05, seed=1
    )
    best = objective64(lbfgs.weight.double(), lbfgs.bias.double(), x, y, wd).item()
    got = objective64(adam.weight.double(), adam.bias.double(), x, y, wd).item()
    start = objective64(torch.zeros(3, 6).double(), torch.zeros(3).double(), x, y, wd).item()
    assert best <= got < best + 0.01 * (start - best)


def test_unknown_solver_is_a_usage_error():
    x, y = separable_problem(n=9)
    with pytest.raises(UsageError, match="--solver"):
        ev.fit_logistic_regression(x, y, 3, 0.0, solver="newton")


def test_holdout_split_is_a_fixed_partition():
    fit, val = ev.holdout_split(50, 0.2, seed=3)
    assert len(val) == 10 and len(fit) == 40
    assert sorted(torch.cat([fit, val]).tolist()) == list(range(50))
    assert torch.equal(ev.holdout_split(50, 0.2, seed=3)[1], val)
    assert len(ev.holdout_split(2, 0.01, seed=0)[1]) == 1


def test_weight_decay_selection_rejects_a_crippling_decay():
    x, y = separable_problem(n=150, noise=0.5)
    best, scores, head = ev.select_weight_decay(x, y, 3, grid=(1e3, 1e-3), seed=0)
    assert set(scores) == {1e3, 1e-3}
    assert scores[1e-3] > scores[1e3]
    assert best == 1e-3 and head.weight.abs().max() > 0


# ----------------------------------------------------------------------------------------------
# feature extraction and the linear-eval command


class TinySimCLR(nn.Module):
    """A stand-in with the SimCLR interface: .encoder (h) and .projector (z), with a BN buffer."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.BatchNorm1d(5))
        self.projector = nn.Linear(5, 3)


class IndexedImages(Dataset):
    """Item i is a (3, 2, 2) image filled from i, label i % 4 (or -1 when unlabelled)."""

    def __init__(self, n: int, labelled: bool = True) -> None:
        self.n, self.labelled = n, labelled

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.arange(12.0).view(3, 2, 2) * 0.1 + i, i % 4 if self.labelled else -1


@pytest.mark.parametrize("layer", ["encoder", "projection"])
def test_extract_features_covers_the_whole_dataset_in_order(layer):
    model = TinySimCLR().train()
    data = IndexedImages(11)  # 11 = 2 full batches of 4 + a partial one, which must be kept
    feats, labels = ev.extract_features(model, data, batch_size=4, device="cpu", layer=layer)
    images = torch.stack([data[i][0] for i in range(11)])
    with torch.no_grad():
        model.eval()
        h = model.encoder(images)
        expected = h if layer == "encoder" else model.projector(h)
    assert feats.shape == (11, 5 if layer == "encoder" else 3) and feats.dtype == torch.float32
    assert torch.allclose(feats, expected, atol=1e-6)
    assert labels.dtype == torch.int64 and labels.tolist() == [i % 4 for i in range(11)]
    model.train()
    ev.extract_features(model, data, batch_size=4, device="cpu", layer=layer)
    assert model.training  # the kNN monitor calls this mid-training


def test_channels_last_extraction_matches_a_float64_reference():
    """encode() runs the convolutions channels-last; h must equal the NCHW float64 forward."""
    from simclr_cli.model import build_simclr, model_spec

    torch.manual_seed(0)
    spec = model_spec("resnet18", "cifar", image_size=16, mean=[0.5] * 3, std=[0.25] * 3)
    model = build_simclr(spec).eval()
    for module in model.modules():  # non-trivial running statistics, as after pretraining
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2), module.running_var.uniform_(0.5, 2.0)
    x = torch.randn(6, 3, 16, 16)
    h = ev.encode(model, x, "encoder", None)
    with torch.no_grad():
        reference = model.double().encoder(x.double())  # contiguous NCHW, float64
    assert h.dtype == torch.float32 and h.shape == (6, 512)
    assert torch.allclose(h.double(), reference, rtol=1e-4, atol=1e-4)


def test_uint8_loader_path_gives_the_features_of_the_float_transform():
    """checkpoint_transform crops to uint8 and encode() normalises with the model's mean/std;
    the features must be those of the per-image float transform."""
    from transform_oracle import eval_transform

    from simclr_cli.data import ShapesDataset
    from simclr_cli.model import build_simclr, model_spec

    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    payload = {"model": model_spec("resnet18", "cifar", image_size=12, mean=mean, std=std)}
    torch.manual_seed(0)
    model = build_simclr(payload["model"]).eval()
    assert model.mean == tuple(mean) and model.std == tuple(std)
    crops = ShapesDataset("test", size=10, image_size=16)  # resized to 12 by both transforms
    crops.transform = ev.checkpoint_transform(payload, None, "shapes")
    floats = ShapesDataset("test", size=10, image_size=16, transform=eval_transform(12, mean, std))
    assert crops[0][0].dtype == torch.uint8
    h_u8, y_u8 = ev.extract_features(model, crops, batch_size=4, device="cpu")
    h_f, y_f = ev.extract_features(model, floats, batch_size=4, device="cpu")
    assert torch.equal(y_u8, y_f)
    torch.testing.assert_close(h_u8, h_f, atol=1e-5, rtol=1e-5)


def test_extract_features_rejects_an_unknown_layer():
    with pytest.raises(UsageError, match="--layer"):
        ev.extract_features(TinySimCLR(), IndexedImages(3), 2, "cpu", layer="fc")


def save_native_checkpoint(path, kind="pretrain", stem="imagenet", image_size=32, seed=0, **spec):
    """A simclr-cli checkpoint of a randomly initialised ResNet-18 (what run_linear_eval reads)."""
    from simclr_cli.checkpoint import FORMAT, FORMAT_VERSION, save_checkpoint
    from simclr_cli.data import normalization
    from simclr_cli.model import build_simclr, model_spec

    mean, std = normalization("shapes")
    spec = model_spec("resnet18", stem, image_size=image_size, mean=mean, std=std, **spec)
    torch.manual_seed(seed)
    model = build_simclr(spec)
    payload = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind, "model": spec,
        "dataset": "shapes", "epoch": 1, "global_step": 1, "config": {}, "metrics": {},
        "state_dict": model.state_dict(), "optimizer": None, "scaler": None, "rng": {},
        "converted_from": None,
    }  # fmt: skip
    save_checkpoint(payload, path)
    return model


def eval_config(checkpoint, **overrides):
    from simclr_cli.config import LinearEvalConfig

    options = {"dataset": "shapes", "limit": 61, "batch_size": 16, "device": "cpu", "workers": 0}
    return LinearEvalConfig(checkpoint=str(checkpoint), **{**options, **overrides})


def test_linear_eval_counts_the_whole_test_split_and_writes_results(tmp_path):
    import json

    ck = tmp_path / "run" / "checkpoint_last.pt"
    ck.parent.mkdir()
    save_native_checkpoint(ck)
    summary = ev.run_linear_eval(eval_config(ck))
    result = json.loads((tmp_path / "run" / "linear_eval.json").read_text())
    # 61 = 3 batches of 16 + a partial batch of 13: every test image is counted once.
    assert result["test_images"] == 61 and result["train_images"] == 61
    cm = torch.tensor(result["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 61
    assert [row["support"] for row in result["per_class"]] == cm.sum(1).tolist()
    assert result["top1"] == pytest.approx(cm.diagonal().sum().item() / 61)
    assert 0 <= result["top1"] <= result["top5"] <= 1 and 0 <= result["knn_top1"] <= 1
    assert result["per_class"][0]["class"] == "circle"
    assert float(result["weight_decay"]) in ev.WEIGHT_DECAY_GRID
    csv = (tmp_path / "run" / "confusion_matrix.csv").read_text().splitlines()
    assert len(csv) == 11 and csv[1].split(",")[1:] == [str(v) for v in cm[0].tolist()]
    assert summary["top1"] == result["top1"] and summary["results"].endswith("linear_eval.json")
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]  # no temp left


@pytest.mark.parametrize("protocol", ["features", "augment"])
def test_linear_eval_leaves_the_checkpoint_weights_unchanged(tmp_path, monkeypatch, protocol):
    ck = tmp_path / "ck.pt"
    original = {k: v.clone() for k, v in save_native_checkpoint(ck).state_dict().items()}
    loaded = []
    real_loader = ev.load_frozen_model

    def spy(*args):
        model, payload, path = real_loader(*args)
        loaded.append(model)
        return model, payload, path

    monkeypatch.setattr(ev, "load_frozen_model", spy)
    cfg = eval_config(ck, limit=24, out=tmp_path / "out", protocol=protocol, epochs=1)
    result = ev.run_linear_eval(cfg)
    assert result["protocol"] == protocol and (tmp_path / "out" / "linear_eval.json").is_file()
    (model,) = loaded
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    after = model.state_dict()  # parameters AND buffers (BN running statistics)
    assert after.keys() == original.keys()
    assert all(torch.equal(after[k], original[k]) for k in original)


def test_a_checkpoint_of_another_kind_is_refused(tmp_path):
    from simclr_cli.errors import CheckpointError

    ck = tmp_path / "ck.pt"
    save_native_checkpoint(ck, kind="classifier")
    with pytest.raises(CheckpointError, match="not a simclr-cli pretraining checkpoint"):
        ev.run_linear_eval(eval_config(ck))
    assert not (tmp_path / "linear_eval.json").exists()


def write_folder(root, classes, per_class, size=12):
    """Image folders: ``classes`` None -> flat unlabelled folder; colour depends on the class."""
    from PIL import Image

    for c, name in enumerate(classes or [None]):
        folder = root / name if name else root
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            colour = (40 * c + 3 * i, 255 - 50 * c, 7 * i)
            Image.new("RGB", (size, size), colour).save(folder / f"img{i:02d}.png")


def test_linear_eval_on_train_and_test_folders(tmp_path):
    write_folder(tmp_path / "train", ["cat", "dog", "owl"], 6)
    write_folder(tmp_path / "test", ["cat", "dog", "owl"], 2)
    ck = tmp_path / "ck.pt"
    save_native_checkpoint(ck)
    cfg = eval_config(ck, dataset=None, train_dir=tmp_path / "train", test_dir=tmp_path / "test")
    result = ev.run_linear_eval(cfg)
    assert (result["train_images"], result["test_images"]) == (18, 6)
    import json

    saved = json.loads((tmp_path / "linear_eval.json").read_text())
    assert [row["class"] for row in saved["per_class"]] == ["cat", "dog", "owl"]


def test_linear_eval_splits_one_folder_with_a_fixed_seed(tmp_path):
    write_folder(tmp_path / "photos", ["a", "b"], 10)
    ck = tmp_path / "ck.pt"
    save_native_checkpoint(ck)
    cfg = eval_config(ck, dataset=str(tmp_path / "photos"), val_split=0.3, limit=None)
    train, test = ev.linear_eval_splits(cfg, transform=None)
    again = ev.linear_eval_splits(cfg, transform=None)[1]
    assert (len(train), len(test)) == (14, 6) and list(test.indices) == list(again.indices)
    assert not set(train.indices) & set(test.indices)
    result = ev.run_linear_eval(cfg)
    assert (result["train_images"], result["test_images"]) == (14, 6)


def test_folders_without_labels_or_with_other_classes_are_refused(tmp_path):
    from simclr_cli.errors import DatasetError

    write_folder(tmp_path / "flat", None, 6)
    write_folder(tmp_path / "train", ["a", "b"], 3)
    write_folder(tmp_path / "test", ["a", "c"], 3)
    ck = tmp_path / "ck.pt"
    save_native_checkpoint(ck)
    with pytest.raises(DatasetError, match="unlabelled images; linear evaluation needs labels"):
        ev.run_linear_eval(eval_config(ck, dataset=str(tmp_path / "flat")))
    with pytest.raises(DatasetError, match="differ"):
        ev.run_linear_eval(
            eval_config(ck, dataset=None, train_dir=tmp_path / "train", test_dir=tmp_path / "test")
        )
    assert not list(tmp_path.glob("*.json"))


@pytest.mark.parametrize("layout", ["1.0", "ddp"])
def test_linear_eval_reads_release_layout_checkpoints(tmp_path, layout):
    from release_fixtures import make_release_checkpoint

    ck = tmp_path / "checkpoint_100.tar"
    make_release_checkpoint(ck, layout)
    result = ev.run_linear_eval(eval_config(ck, limit=20, image_size=32))
    assert result["test_images"] == 20 and 0 <= result["top1"] <= 1
    assert (tmp_path / "linear_eval.json").is_file()


def test_weight_decay_search_stops_once_weaker_decay_stops_helping():
    x, y = separable_problem(n=150, noise=0.1)  # every candidate separates the held-out rows
    best, scores, head = ev.select_weight_decay(
        x, y, 3, grid=(1e-1, 1e-2, 1e-3, 1e-4, 1e-5), patience=2
    )
    assert list(scores) == [1e-1, 1e-2, 1e-3] and best == 1e-1


def test_results_of_cached_checkpoints_stay_out_of_the_cache(tmp_path) -> None:
    from simclr_cli.evaluate import linear_eval_dir

    cache = tmp_path / "cache"
    cache.mkdir()
    cached = cache / "resnet50-stl10.tar"
    run = tmp_path / "runs" / "a" / "checkpoint_last.pt"
    assert linear_eval_dir(None, cached, cache) == Path("linear_eval") / "resnet50-stl10"
    assert linear_eval_dir(None, run, cache) == run.parent
    assert linear_eval_dir(tmp_path / "o", cached, cache) == tmp_path / "o"


# ----------------------------------------------------------------------------------------------
# kNN k chosen from the data, and the baselines


def test_knn_k_is_200_capped_at_a_tenth_of_the_smallest_class():
    def labels(*counts):
        return torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])

    assert ev.knn_k_for(labels(5000, 5000)) == 200  # CIFAR-10-sized classes: the usual k
    assert ev.knn_k_for(labels(200, 300, 250)) == 20  # the smallest class sets the cap
    assert ev.knn_k_for(labels(140, 1000)) == 14
    assert ev.knn_k_for(labels(3, 4)) == 1  # never below one neighbour
    assert ev.knn_k_for(torch.tensor([-1, -1, 0, 0] + [1] * 50)) == 1  # unlabelled rows ignored
    assert ev.knn_k_for(labels(5, 5), k=7) == 7  # --knn-k wins


def test_linear_eval_records_the_k_it_chose(tmp_path):
    import json

    ck = tmp_path / "ck.pt"
    save_native_checkpoint(ck)
    ev.run_linear_eval(eval_config(ck, limit=200, out=tmp_path / "auto"))
    ev.run_linear_eval(eval_config(ck, limit=200, knn_k=3, out=tmp_path / "given"))
    auto = json.loads((tmp_path / "auto" / "linear_eval.json").read_text())
    given = json.loads((tmp_path / "given" / "linear_eval.json").read_text())
    from simclr_cli.data import build_dataset, labels_of

    train_labels = labels_of(build_dataset("shapes", "train", tmp_path, limit=200))
    smallest = int(torch.bincount(torch.tensor(train_labels)).min())
    # 200 images over 10 classes: a tenth of the smallest class, not 200
    assert auto["knn"]["k"] == max(1, smallest // 10) < 200
    assert given["knn"]["k"] == 3


def test_random_baseline_is_default_initialised_and_seeded():
    from simclr_cli.model import build_simclr, model_spec

    spec = model_spec("resnet18", "imagenet", image_size=32)
    a, b, c = ev.random_encoder(spec, 0), ev.random_encoder(spec, 0), ev.random_encoder(spec, 1)
    last_bn = a.encoder.layer1[0].bn2.weight
    # torchvision's default: batch-norm scales are 1; training starts from zero-initialised ones
    assert torch.equal(last_bn, torch.ones_like(last_bn))
    assert not build_simclr(spec, zero_init_residual=True).encoder.layer1[0].bn2.weight.any()
    assert torch.equal(a.encoder.conv1.weight, b.encoder.conv1.weight)
    assert not torch.equal(a.encoder.conv1.weight, c.encoder.conv1.weight)
    assert not a.training and not any(p.requires_grad for p in a.parameters())
    state = torch.random.get_rng_state()
    ev.random_encoder(spec, 3)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's stream is untouched


def test_pixel_features_are_the_pooled_crops():
    images = torch.randint(0, 256, (5, 3, 64, 64), dtype=torch.uint8)
    dataset = torch.utils.data.TensorDataset(images, torch.arange(5))
    x, y = ev.pixel_features(dataset, batch_size=2)
    expected = torch.nn.functional.avg_pool2d(images.double() / 255, 2).flatten(1)
    assert x.shape == (5, 3 * 32 * 32) and torch.equal(y, torch.arange(5))
    assert torch.allclose(x.double(), expected, atol=1e-6)


def test_linear_eval_reports_baselines_beside_the_checkpoint(tmp_path):
    import json

    ck = tmp_path / "ck.pt"
    save_native_checkpoint(ck, seed=1)  # not the seed-0 default init of the random baseline
    cfg = eval_config(ck, limit=100, baseline=("random", "pixels"), out=tmp_path / "eval")
    summary = ev.run_linear_eval(cfg)
    result = json.loads((tmp_path / "eval" / "linear_eval.json").read_text())
    random, pixels = result["baselines"]["random"], result["baselines"]["pixels"]
    for metrics in (random, pixels):
        assert 0 <= metrics["top1"] <= metrics["top5"] <= 1 and 0 <= metrics["knn_top1"] <= 1
    # shapes checkpoints are normalised: the random encoder was also scored on [0, 1] inputs,
    # and the better of the two is the baseline
    assert random["inputs"] in ("checkpoint normalisation", "[0, 1]")
    assert summary["random_top1"] == random["top1"] and summary["pixels_top1"] == pixels["top1"]
    gap = 100 * (result["top1"] - random["top1"])
    assert f"random encoder (default init) {100 * random['top1']:.1f}%" in summary["verdict"]
    assert f"({gap:+.1f} / " in summary["verdict"]
    # the random baseline is not the checkpoint: a zero-init checkpoint's h is nearly constant
    assert random["top1"] != result["top1"] or random["knn_top1"] != result["knn_top1"]


def test_linear_eval_refuses_to_overwrite_earlier_results_without_overwrite(tmp_path):
    from simclr_cli.errors import OutputExistsError

    ck = tmp_path / "ck.pt"
    save_native_checkpoint(ck)
    cfg = eval_config(ck, limit=12, out=tmp_path / "out")
    ev.run_linear_eval(cfg)
    before = (tmp_path / "out" / "linear_eval.json").read_text()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        ev.run_linear_eval(cfg)
    assert (tmp_path / "out" / "linear_eval.json").read_text() == before
    ev.run_linear_eval(eval_config(ck, limit=12, out=tmp_path / "out", overwrite=True))


def test_linear_eval_prints_table_and_summary_on_stdout(tmp_path, capsys, monkeypatch):
    import json

    from simclr_cli.cli import run
    from simclr_cli.shapes import SHAPE_CLASSES

    monkeypatch.setenv("SIMCLR_PROGRESS_SECONDS", "0")
    ck = tmp_path / "ck.pt"
    save_native_checkpoint(ck)
    argv = ["linear-eval", "--checkpoint", str(ck), "--dataset", "shapes", "--limit", "20"]
    assert run([*argv, "--device", "cpu", "--workers", "0", "--out", str(tmp_path / "o")]) == 0
    out, err = capsys.readouterr()
    # The per-class table and the summary both go to stdout: `> results.txt` keeps both.
    assert "circle" in out and "top-1" in out and "Linear evaluation" in out
    assert "circle" not in err
    # Phases and counted extraction batches on stderr (not a terminal here: plain lines).
    assert "loading data (shapes)..." in err and "fitting the linear classifier" in err
    assert "extracting features (train) batch 1/1 (100%)" in err
    assert "warning: 20 train / 20 test images for 10 classes are too few" in err
    saved = json.loads((tmp_path / "o" / "linear_eval.json").read_text())
    assert saved["classes"] == list(SHAPE_CLASSES) and saved["skipped_files"] == 0
    assert "too few" in saved["warning"]


def test_linear_eval_counts_unreadable_files(tmp_path, capsys):
    write_folder(tmp_path / "train", ["cat", "dog"], 4)
    write_folder(tmp_path / "test", ["cat", "dog"], 2)
    (tmp_path / "train" / "cat" / "broken.png").write_bytes(b"not a png")
    (tmp_path / "test" / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    ck = tmp_path / "ck.pt"
    save_native_checkpoint(ck)
    cfg = eval_config(ck, dataset=None, train_dir=tmp_path / "train", test_dir=tmp_path / "test")
    ev.run_linear_eval(cfg)
    assert "skipped 2 unreadable image files" in capsys.readouterr().err
    import json

    assert json.loads((tmp_path / "linear_eval.json").read_text())["skipped_files"] == 2


def test_small_data_warning():
    assert ev.small_data_warning(5000, 1000, 10) is None
    assert "top-5 of 4 classes" in ev.small_data_warning(5000, 1000, 4)
    assert "5 train / 5 test images" in ev.small_data_warning(5, 5, 10)


@pytest.mark.parametrize("better", ["checkpoint normalisation", "[0, 1]"])
def test_random_baseline_keeps_the_better_input_scaling(monkeypatch, better):
    from types import SimpleNamespace

    from simclr_cli.model import model_spec

    def fake_eval(model, *args, **kwargs):
        normalised = model.mean is not None
        top1 = 0.6 if normalised == (better == "checkpoint normalisation") else 0.3
        return {"top1": top1, "top5": 0.9, "knn_top1": top1 / 2, "weight_decay": 1e-4}

    monkeypatch.setattr(ev, "evaluate_frozen", fake_eval)
    spec = model_spec("resnet18", "imagenet", image_size=32, mean=[0.5] * 3, std=[0.2] * 3)
    cfg = SimpleNamespace(seed=0, solver="lbfgs", batch_size=8, resolved_precision="fp32",
                          workers=0, knn_temperature=0.1)  # fmt: skip
    result = ev._best_random_baseline(spec, None, None, 10, torch.device("cpu"), cfg, 5)
    assert result["inputs"] == better and result["top1"] == 0.6
