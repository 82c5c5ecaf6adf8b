"""Writes docs/augment.png: one synthetic image under each augmentation of tinyclip.data.augment (run from the repo root)."""

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tinyclip.data.augment import KINDS, augment_images
from tinyclip.data.pairs import load_pairs

_, images = load_pairs("synthetic", num_samples=8, image_size=128, seed=0)
x = images[2:3]
panels = [("original", x[0])] + [(k, augment_images(x, np.random.default_rng(7), 1.0, kinds=(k,))[0]) for k in KINDS]
panels.append(("all (strength 1)", augment_images(x, np.random.default_rng(7), 1.0)[0]))
fig = Figure(figsize=(2.0 * len(panels), 2.4))
FigureCanvasAgg(fig)
for i, (name, image) in enumerate(panels):
    ax = fig.add_subplot(1, len(panels), i + 1)
    ax.imshow(image)
    ax.set_title(name, fontsize=9)
    ax.axis("off")
fig.tight_layout()
fig.savefig("docs/augment.png", dpi=80)
