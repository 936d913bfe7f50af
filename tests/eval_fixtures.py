"""A simclr-cli checkpoint and image folders, built locally for the tests of everything that
reads a trained encoder (linear evaluation, features, export, report, the CLI)."""

from __future__ import annotations

import torch


def save_native_checkpoint(path, kind="pretrain", stem="imagenet", image_size=32, seed=0, **spec):
    """A simclr-cli checkpoint of a randomly initialised ResNet-18 (what run_linear_eval reads)."""
    from simclr_cli.data.facts import normalization
    from simclr_cli.method.model import build_simclr, model_spec
    from simclr_cli.storage.checkpoint import FORMAT, FORMAT_VERSION, save_checkpoint

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


def write_folder(root, classes, per_class, size=12):
    """Image folders: ``classes`` None -> flat unlabelled folder; colour depends on the class."""
    from PIL import Image

    for c, name in enumerate(classes or [None]):
        folder = root / name if name else root
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            colour = (40 * c + 3 * i, 255 - 50 * c, 7 * i)
            Image.new("RGB", (size, size), colour).save(folder / f"img{i:02d}.png")


def write_broken_png(path, size=40):
    """A PNG that passes indexing (every chunk's CRC is valid) and fails to decode: its
    compressed image data is random bytes."""
    import os
    import struct
    import zlib

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)  # 8-bit RGB
    body = chunk(b"IHDR", header) + chunk(b"IDAT", os.urandom(600)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def save_classifier_checkpoint(path, classes=("cat", "dog", "owl"), stem="cifar", image_size=16,
                               from_head_layer=0, seed=0, **spec):  # fmt: skip
    """A classifier checkpoint (kind "classifier") of a randomly initialised ResNet-18, as
    `simclr finetune` writes it; returns the classifier module."""
    from simclr_cli.data.facts import normalization
    from simclr_cli.method.classifier import build_classifier, classifier_spec
    from simclr_cli.method.model import model_spec
    from simclr_cli.storage.classifier import build_classifier_payload, save_classifier

    mean, std = normalization("shapes")
    spec = model_spec("resnet18", stem, image_size=image_size, mean=mean, std=std, **spec)
    cspec = classifier_spec(spec, len(classes), from_head_layer)
    torch.manual_seed(seed)
    model = build_classifier(cspec).eval()
    linear = model.fc[-1] if from_head_layer else model.fc
    with torch.no_grad():  # logits that differ visibly between images (a new layer starts tiny)
        linear.weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(seed))
    payload = build_classifier_payload(
        model=cspec, classes=list(classes), state_dict=model.state_dict(), dataset="folder",
        epoch=1, global_step=1,
    )  # fmt: skip
    save_classifier(payload, path)
    return model
