"""Convolution as one matrix product (im2col), max-pooling, and the image tower layer by layer.

What you will learn
-------------------
1. im2col: copy the 3×3 window under every output pixel into one row of a "patch
   matrix". A 5×5 image has 3×3 = 9 such windows (no padding), so the matrix is 9 × 9.
2. A convolution is then one matrix product, patches @ kernel: we compare it with
   tinyclip's ``conv2d`` and with a plain loop over the output pixels.
3. Max-pooling keeps the largest value of each 2×2 window and remembers where it was:
   in backward the gradient goes to that position only (we show the positions).
4. The image tower of the report (128×128 input, conv blocks of 16, 32, 64, 128 and
   256 channels, each halving the image, then 4·4·256 = 4096 features projected to
   128): the shape after every layer and the parameters of every block, from a real
   batch of 2 images pushed through ``tinyclip.models.ImageEncoder`` block by block.

Run it:  python examples/03_cnn_tower.py      (about 2 seconds on a laptop CPU;
         TINYCLIP_EXAMPLE_QUICK=1 runs the tower at 32×32 instead of 128×128)

It prints the small image, its patch matrix, the convolution three ways, the pooling
with its argmax positions, a table of the tower's shapes and parameter counts, and
finally one line ``RESULT: ...``.
"""

import os
import time

import numpy as np

import tinyclip
from tinyclip import Tensor
from tinyclip.data.images import normalize
from tinyclip.data.synthetic import make_synthetic
from tinyclip.functional import conv2d, max_pool2d
from tinyclip.functional.conv import im2col
from tinyclip.models import CLIPConfig, ImageEncoder

QUICK = os.environ.get("TINYCLIP_EXAMPLE_QUICK") == "1"


def section(title):
    print(f"\n=== {title} ===")


def show(name, matrix, fmt="{:5.0f}"):
    print(f"{name}:")
    for row in np.asarray(matrix):
        print("   " + " ".join(fmt.format(v) for v in row))


# ---------------------------------------------------------------------------
# 1-2. im2col and the convolution as a matrix product
# ---------------------------------------------------------------------------

def convolution():
    section("1. a 5x5 image and its im2col patch matrix")
    # A dark left half and a bright right half: a vertical edge between columns 1 and 3.
    image = np.array([[0, 0, 5, 9, 9],
                      [0, 1, 5, 9, 9],
                      [0, 0, 4, 9, 8],
                      [1, 0, 5, 9, 9],
                      [0, 0, 5, 8, 9]], dtype=np.float32)
    show("image (H=5, W=5, one channel)", image, "{:3.0f}")

    x = image.reshape(1, 5, 5, 1)  # channels-last (N, H, W, C), the layout im2col works in
    cols = im2col(x, kernel_size=3)  # (N·Ho·Wo, kh·kw·C) = (9, 9)
    print(f"\nim2col with a 3x3 kernel, no padding: output 3x3, so {cols.shape[0]} rows "
          f"(one per output pixel) of {cols.shape[1]} values (the window, read row by row)")
    for r, row in enumerate(cols):
        print(f"   output pixel ({r // 3},{r % 3}):  " + " ".join(f"{v:2.0f}" for v in row))

    section("2. a 3x3 edge kernel: matrix product vs a loop vs tinyclip.conv2d")
    kernel = np.array([[-1, 0, 1],
                       [-2, 0, 2],
                       [-1, 0, 1]], dtype=np.float32)  # Sobel: responds to left-to-right brightening
    show("kernel (vertical edges)", kernel, "{:3.0f}")

    by_matmul = (cols @ kernel.reshape(9)).reshape(3, 3)  # 9 dot products at once
    by_loop = np.zeros((3, 3), np.float32)
    for i in range(3):
        for j in range(3):
            by_loop[i, j] = (image[i:i + 3, j:j + 3] * kernel).sum()
    # The library op on the NCHW layout: weight (out channels, in channels, kh, kw).
    by_library = conv2d(Tensor(image.reshape(1, 1, 5, 5)), Tensor(kernel.reshape(1, 1, 3, 3))).numpy()[0, 0]
    show("patches @ kernel", by_matmul)
    show("loop over output pixels", by_loop)
    show("tinyclip.functional.conv2d", by_library)
    agree = np.allclose(by_matmul, by_loop) and np.allclose(by_library, by_loop)
    print(f"all three agree: {agree}.  The strong responses are in the middle column, on the edge.")
    print("With C input channels a window row has 3·3·C values, and O filters make the kernel a (9C, O) matrix:")
    print("one (pixels × 9C) @ (9C × O) product computes every filter at every pixel.")
    return agree


# ---------------------------------------------------------------------------
# 3. max-pooling and where its gradient goes
# ---------------------------------------------------------------------------

def pooling():
    section("3. max-pool 2x2 on a 4x4 input, and the argmax that backward uses")
    values = np.array([[1, 3, 2, 0],
                       [4, 2, 1, 7],
                       [0, 5, 6, 6],
                       [2, 1, 3, 1]], dtype=np.float32)
    x = Tensor(values.reshape(1, 1, 4, 4), requires_grad=True)
    y = max_pool2d(x, 2)
    show("input", values, "{:3.0f}")
    show("max_pool2d(input, 2): the max of each 2x2 window", y.numpy()[0, 0], "{:3.0f}")
    y.sum().backward()  # each window's gradient 1 goes to its maximum, nowhere else
    grad = x.grad[0, 0]
    show("d sum(output) / d input: 1 at each window's argmax", grad, "{:3.0f}")
    positions = [tuple(int(v) for v in p) for p in np.argwhere(grad == 1)]
    print(f"argmax positions (row, col): {positions}")
    print("(the window [[6, 6], [3, 1]] has a tie: the first maximum in reading order gets the gradient)")
    return positions


# ---------------------------------------------------------------------------
# 4. the image tower, layer by layer
# ---------------------------------------------------------------------------

def tower():
    size = 32 if QUICK else 128
    config = CLIPConfig(image_size=size)  # the report's tower: conv 16, 32, 64, 128, 256; embed 128
    section(f"4. the image tower on a batch of 2 images of {size}x{size}")
    tinyclip.manual_seed(0)
    encoder = ImageEncoder(config)
    _, images = make_synthetic(num_samples=2, image_size=size, seed=0)
    # uint8 (2, S, S, 3) → float (2, 3, S, S), normalised per channel, on the encoder's device
    x = Tensor(normalize(images, xp=encoder.proj.weight.xp))

    start = time.perf_counter()
    rows = [("input (NCHW)", x.shape, 0)]
    with tinyclip.no_grad():
        h = x.transpose(0, 2, 3, 1)  # what ImageEncoder.forward does first: to channels-last
        rows.append(("to channels-last (NHWC)", h.shape, 0))
        for b, block in enumerate(encoder.blocks):
            conv, relu, pool = block
            h = conv(h)
            rows.append((f"block {b}: conv 3x3 pad 1, {conv.in_channels}->{conv.out_channels}", h.shape,
                         conv.num_parameters()))
            h = relu(h)
            rows.append((f"block {b}: ReLU", h.shape, 0))
            h = pool(h)
            rows.append((f"block {b}: max-pool 2", h.shape, 0))
        flat = h.reshape(h.shape[0], -1)
        rows.append(("flatten (H·W·C)", flat.shape, 0))
        out = encoder.proj(flat)
        rows.append((f"linear {flat.shape[1]}->{config.embed_dim}", out.shape, encoder.proj.num_parameters()))
        check = encoder(x)  # the whole forward in one call gives the same features
    seconds = time.perf_counter() - start

    print(f"{'layer':<42} {'output shape':<22} {'parameters':>10}")
    for name, shape, params in rows:
        print(f"{name:<42} {str(tuple(shape)):<22} {params:>10,}")
    total = encoder.num_parameters()
    print(f"{'total':<42} {'':<22} {total:>10,}")
    print(f"(a conv's parameters: 3·3·C_in·C_out weights + C_out biases; "
          f"the final linear alone has {encoder.proj.num_parameters():,})")
    same = np.allclose(out.numpy(), check.numpy(), atol=1e-5)
    print(f"block by block == encoder(x): {same}; forward of 2 images took {seconds:.2f} s")
    side = size // 2 ** len(config.conv_channels)
    return f"{size}² → {side}·{side}·{config.conv_channels[-1]} → {config.embed_dim}", total, same


if __name__ == "__main__":
    conv_ok = convolution()
    positions = pooling()
    path, total, same = tower()
    ok = conv_ok and same
    print(f"RESULT: conv by im2col matmul == loop: {conv_ok}; max-pool argmax at {positions}; "
          f"tower {path} with {total:,} parameters{'' if ok else ' (MISMATCH)'}")
