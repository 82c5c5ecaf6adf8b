"""Figures shared by the evaluation tasks, drawn with Matplotlib's object API.

Every helper builds a ``matplotlib.figure.Figure`` directly (no ``pyplot``), so
nothing touches global plotting state or needs a display: the Agg renderer
draws it. ``save`` writes to a temporary file in the target folder and renames
it, so an interrupted run never leaves a half-written PNG behind.

Images are uint8 ``(H, W, 3)`` as the data loaders return them.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..io import atomic_write

CORRECT = "#1a9850"  # green: the right answer
WRONG = "#d73027"    # red: a wrong top answer


def new_figure(width: float, height: float) -> Figure:
    """A ``width × height`` inch Figure on the Agg canvas."""
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)  # attach the Agg renderer; pyplot is never involved
    return fig


def save(fig: Figure, path, dpi: int = 100, crop: bool = True) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically (temporary file + rename), cropped to what is drawn
    unless ``crop`` is false (then the PNG is the figure's size times ``dpi``)."""
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi,
                                                    bbox_inches="tight" if crop else None))


def short(text: str, width: int = 40, lines: int = 2) -> str:
    """``text`` wrapped to at most ``lines`` lines of ``width`` characters, with '…' when cut."""
    wrapped = textwrap.wrap(" ".join(str(text).split()), width) or [""]
    if len(wrapped) > lines:
        wrapped = wrapped[:lines]
        wrapped[-1] = wrapped[-1][: width - 1] + "…"
    return "\n".join(wrapped)


def _show_image(ax, image, edge: str | None = None) -> None:
    ax.imshow(np.asarray(image), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(edge is not None)
        if edge is not None:
            spine.set_edgecolor(edge)
            spine.set_linewidth(4)


# ---------------------------------------------------------------------------
# similarity heatmap (report Fig. 1)
# ---------------------------------------------------------------------------

def similarity_heatmap(path, probs: np.ndarray, images: np.ndarray, captions, title: str = "") -> Path:
    """Heatmap of ``probs`` ``(n, n)`` (row i: image i over the captions), values annotated.

    Image thumbnails run down the left, captions along the bottom; the diagonal
    (the matching pairs) is outlined.
    """
    probs = np.asarray(probs, dtype=float)
    n_img, n_cap = probs.shape
    fig = new_figure(1.0 + 0.75 * n_cap, 1.8 + 0.62 * n_img)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(probs, cmap="viridis", vmin=0.0, vmax=max(float(probs.max()), 1e-12),
              extent=(-0.5, n_cap - 0.5, n_img - 0.5, -0.5))
    for i in range(n_img):
        for j in range(n_cap):
            value = probs[i, j]
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if value > 0.6 * probs.max() else "white")
        ax.add_patch(Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="white", linewidth=1.5))
        # thumbnail of image i in the margin left of its row
        ax.imshow(np.asarray(images[i]), extent=(-1.6, -0.6, i + 0.5, i - 0.5), interpolation="nearest")
    ax.set_xlim(-1.7, n_cap - 0.5)
    ax.set_ylim(n_img - 0.5, -0.5)
    ax.set_yticks([])
    ax.set_xticks(range(n_cap))
    ax.set_xticklabels([short(c, 28, 3) for c in captions], rotation=70, ha="right", fontsize=6)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(title or "image → caption softmax probabilities (matching pairs outlined)", fontsize=9)
    return save(fig, path)


# ---------------------------------------------------------------------------
# ranked images for captions (report Fig. 2/3), ranked captions for images (Fig. 4)
# ---------------------------------------------------------------------------

def ranked_images(path, queries, images: np.ndarray, top: np.ndarray, probs: np.ndarray,
                  correct: np.ndarray, title: str = "") -> Path:
    """One row per caption: the caption, then its top-k images with probabilities.

    ``top`` ``(q, k)`` image indices, ``probs`` ``(q, k)`` their probabilities,
    ``correct`` ``(q, k)`` bool: framed green when the image belongs to the caption.
    """
    q, k = np.shape(top)
    fig = new_figure(1.6 + 1.6 * k, 1.9 * q + 0.4)
    grid = fig.add_gridspec(q, k + 1, width_ratios=[1.6] + [1.0] * k)
    for r in range(q):
        text_ax = fig.add_subplot(grid[r, 0])
        text_ax.axis("off")
        text_ax.text(0.0, 0.5, short(queries[r], 24, 7), va="center", ha="left", fontsize=7)
        for c in range(k):
            ax = fig.add_subplot(grid[r, c + 1])
            _show_image(ax, images[top[r, c]], CORRECT if correct[r, c] else None)
            ax.set_title(f"#{c + 1}  p={probs[r, c]:.2f}", fontsize=7,
                         color=CORRECT if correct[r, c] else "black")
    fig.suptitle(title or "top images for each caption (green: the caption's own image)", fontsize=9)
    return save(fig, path)


def ranked_captions(path, images: np.ndarray, captions, top: np.ndarray, probs: np.ndarray,
                    correct: np.ndarray, title: str = "") -> Path:
    """One row per image: the image, then a bar chart of its top-k captions' probabilities."""
    q, k = np.shape(top)
    fig = new_figure(8.5, 1.9 * q + 0.4)
    grid = fig.add_gridspec(q, 2, width_ratios=[1.0, 3.6])
    for r in range(q):
        _show_image(fig.add_subplot(grid[r, 0]), images[r])
        ax = fig.add_subplot(grid[r, 1])
        y = np.arange(k)
        colors = [CORRECT if correct[r, c] else "#bdbdbd" for c in range(k)]
        ax.barh(y, probs[r], color=colors, alpha=0.55, height=0.8)
        for c, j in enumerate(top[r]):  # the caption written over its bar, its probability at the right
            ax.text(0.005, c, short(captions[j], 80, 1), va="center", ha="left", fontsize=6.5)
            ax.text(0.995, c, f"{probs[r, c]:.2f}", va="center", ha="right", fontsize=6.5,
                    color=CORRECT if correct[r, c] else "black")
        ax.set_yticks([])
        ax.set_ylim(k - 0.5, -0.5)
        ax.set_xlim(0, 1)
        ax.tick_params(axis="x", labelsize=6)
    fig.suptitle(title or "top captions for each image (green: the image's own caption)", fontsize=9)
    return save(fig, path)


# ---------------------------------------------------------------------------
# classification: confusion matrices, images with class probabilities, ROC
# ---------------------------------------------------------------------------

def confusion_matrices(path, matrices: dict, class_names, title: str = "") -> Path:
    """One panel per ``{name: (C, C) count matrix}`` (rows: true class, columns: predicted)."""
    panels = list(matrices.items())
    c = len(class_names)
    size = 1.2 + 0.55 * c
    fig = new_figure(size * len(panels), size + 0.6)
    for p, (name, matrix) in enumerate(panels):
        matrix = np.asarray(matrix)
        ax = fig.add_subplot(1, len(panels), p + 1)
        row_sums = matrix.sum(axis=1, keepdims=True)
        shares = np.divide(matrix, row_sums, out=np.zeros(matrix.shape), where=row_sums > 0)
        ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        for i in range(c):
            for j in range(c):
                ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=7,
                        color="white" if shares[i, j] > 0.6 else "black")
        ax.set_xticks(range(c))
        ax.set_yticks(range(c))
        ax.set_xticklabels(class_names, rotation=45, ha="right", fontsize=7)
        ax.set_yticklabels(class_names if p == 0 else [], fontsize=7)
        accuracy = np.trace(matrix) / max(matrix.sum(), 1)
        ax.set_title(f"{name}\naccuracy {accuracy:.3f}", fontsize=8)
        ax.set_xlabel("predicted", fontsize=7)
        if p == 0:
            ax.set_ylabel("true", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return save(fig, path)


def image_grid(path, images: np.ndarray, labels, probs: np.ndarray, class_names, title: str = "",
               columns: int = 4, top: int = 3) -> Path:
    """Images with their true class and the ``top`` most probable classes underneath.

    ``probs`` ``(n, C)``; the frame is green when the most probable class is right.
    """
    n = len(images)
    rows = max(1, -(-n // columns))
    shown = min(top, len(class_names))
    fig = new_figure(2.2 * columns, (2.3 + 0.16 * (shown + 1)) * rows + 0.3)
    for i in range(n):
        ax = fig.add_subplot(rows, columns, i + 1)
        order = np.argsort(-probs[i], kind="stable")[:shown]
        _show_image(ax, images[i], CORRECT if order[0] == labels[i] else WRONG)
        lines = [f"true: {class_names[labels[i]]}"]
        lines += [f"{'▶' if r == 0 else ' '} {class_names[c]}: {probs[i, c]:.2f}" for r, c in enumerate(order)]
        ax.set_xlabel("\n".join(lines), fontsize=6, family="monospace")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save(fig, path)


def roc_curve(path, fpr: np.ndarray, tpr: np.ndarray, auc: float, title: str = "") -> Path:
    fig = new_figure(3.6, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(fpr, tpr, "-", label=f"AUC {auc:.3f}")
    ax.plot([0, 1], [0, 1], ":", color="grey", label="chance")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    return save(fig, path)
