"""Classification metrics: top-1 and top-5 accuracy, accuracy per class and per ``meta`` group,
and the confusion matrix as numbers, as text and as a PNG (Pillow only)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

from .data import label_vocabulary

TOP_K = 5


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor, labels: Sequence[str],
                           samples: Sequence[dict] = (), groups: Sequence[str] = ()
                           ) -> tuple[dict[str, float], dict[str, Any]]:
    """(metrics, details) of ``logits`` (N, labels) against label indices ``targets`` (N,).

    Metrics: ``accuracy``, ``top5``, ``per_class/<label>`` (recall of each class present),
    ``<group>/<value>`` for each ``groups`` meta key of ``samples`` (in the same order as the
    rows), and ``score`` (= accuracy, what training keeps the best checkpoint by). Details:
    ``confusion``, rows the true label, columns the predicted one.
    """
    n = len(labels)
    if logits.shape[0] == 0:
        raise ValueError("no samples to score")
    predicted = logits.argmax(-1)
    correct = (predicted == targets).float()
    top = logits.topk(min(TOP_K, n), dim=-1).indices
    in_top = (top == targets[:, None]).any(-1).float()
    metrics = {"accuracy": correct.mean().item(), f"top{TOP_K}": in_top.mean().item()}
    for i, label in enumerate(labels):
        rows = targets == i
        if rows.any():
            metrics[f"per_class/{label}"] = correct[rows].mean().item()
    for key in groups:
        values: dict[str, list[float]] = {}
        for sample, ok in zip(samples, correct.tolist()):
            value = (sample.get("meta") or {}).get(key)
            if value is not None:
                values.setdefault(str(value), []).append(ok)
        for value in label_vocabulary(list(values)):
            metrics[f"{key}/{value}"] = sum(values[value]) / len(values[value])
    metrics["score"] = metrics["accuracy"]
    confusion = torch.zeros(n, n, dtype=torch.long)
    confusion.index_put_((targets.long(), predicted.long()), torch.ones_like(targets, dtype=torch.long),
                         accumulate=True)
    return metrics, {"confusion": {"labels": list(labels), "matrix": confusion.tolist()}}


def confusion_text(labels: Sequence[str], matrix: Sequence[Sequence[int]]) -> str:
    """The confusion matrix as an aligned table: a row per true label, a column per prediction."""
    names = [str(x)[:10] for x in labels]
    width = max([len(str(v)) for row in matrix for v in row] + [len(x) for x in names] + [1])
    corner = "true \\ predicted"
    first = max(len(x) for x in names + [corner])
    lines = [f"{corner:<{first}} " + " ".join(f"{x:>{width}}" for x in names)]
    for name, row in zip(names, matrix):
        lines.append(f"{name:<{first}} " + " ".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)


def confusion_png(labels: Sequence[str], matrix: Sequence[Sequence[int]], path: str | Path) -> Path:
    """Draw the confusion matrix to ``path``: each cell shaded by its share of the true class's
    samples (so a small class reads as clearly as a big one), counts written where they fit."""
    path = Path(path)
    n = len(labels)
    cell = max(6, min(40, 640 // max(n, 1)))
    font = ImageFont.load_default()
    names = [str(x)[:12] for x in labels]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max((probe.textbbox((0, 0), x, font=font)[2] for x in names), default=0) + 8
    text_h = probe.textbbox((0, 0), "Ag", font=font)[3] + 4
    show_labels = cell >= text_h
    left = text_w + text_h if show_labels else text_h
    top = text_h * 2 + (text_w if show_labels else 0)
    title = "rows: true label, columns: predicted"
    title_w = probe.textbbox((0, 0), title, font=font)[2]
    image = Image.new("RGB", (max(left + n * cell, title_w + 8) + 8, top + n * cell + 8), "white")
    draw = ImageDraw.Draw(image)
    draw.text((4, 2), title, fill="black", font=font)
    for i, row in enumerate(matrix):
        total = max(sum(row), 1)
        for j, count in enumerate(row):
            share = count / total
            shade = (round(255 - 225 * share), round(255 - 160 * share), 255) if i != j or count == 0 else \
                (round(255 - 200 * share), 255 - round(80 * share), round(255 - 200 * share))
            x, y = left + j * cell, top + i * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=shade, outline=(220, 220, 220))
            label = str(count)
            box = draw.textbbox((0, 0), label, font=font)
            if count and box[2] <= cell - 2 and box[3] <= cell - 2:
                draw.text((x + (cell - box[2]) / 2, y + (cell - box[3]) / 2), label,
                          fill="white" if share > 0.6 else "black", font=font)
    if show_labels:
        for i, name in enumerate(names):
            draw.text((text_h, top + i * cell + (cell - text_h) / 2), name, fill="black", font=font)
            column = Image.new("RGB", (text_w, text_h), "white")
            ImageDraw.Draw(column).text((4, 0), name, fill="black", font=font)
            rotated = column.rotate(90, expand=True)
            image.paste(rotated, (left + i * cell + (cell - text_h) // 2, top - text_w - 2))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path
