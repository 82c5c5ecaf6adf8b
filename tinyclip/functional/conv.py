"""Convolution and max-pooling over image batches, each op's forward and backward together.

Layouts: PyTorch's NCHW by default, or channels-last NHWC with ``channels_last=True``, the
fast path that the image tower uses (it transposes its input once). The conv weight is always
PyTorch's ``(O, C, kh, kw)``, so state dicts carry over unchanged.

conv2d is one matrix product (im2col). Copy the kh×kw window under every output pixel into a
row of a patch matrix; each output pixel is then a dot product of its row with each filter:

    x (N, H, W, C) ──im2col──► cols (N·Ho·Wo, kh·kw·C)
    cols @ Wᵀ (kh·kw·C, O) ──► y (N·Ho·Wo, O), which is (N, Ho, Wo, O)

Backward is the same product, transposed:  dW = gyᵀ @ cols,  db = Σ gy,  dcols = gy @ W, and
``col2im`` adds each row of dcols back onto the window it was copied from, giving dx.

Sizes follow PyTorch (floor mode): ``Ho = (H + 2·padding - kh) // stride + 1``.
"""

from __future__ import annotations

from .. import threads
from ..backend import get_array_module
from ..tensor import Function


def pair(value) -> tuple:
    """An int or a pair of ints → a pair (rows, columns)."""
    if isinstance(value, int):
        return value, value
    values = tuple(int(v) for v in value)
    if len(values) != 2:
        raise ValueError(f"expected an int or a pair of ints, got {value!r}")
    return values


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output length of a convolution or pooling along an axis: (size + 2·padding - kernel) // stride + 1."""
    out = (size + 2 * padding - kernel) // stride + 1
    if out < 1:
        raise ValueError(f"kernel {kernel} does not fit an input of size {size} with padding {padding}")
    return out


# ---------------------------------------------------------------------------
# im2col / col2im (channels-last)
# ---------------------------------------------------------------------------

def _pad(x, ph: int, pw: int):
    """x (N, H, W, C) with ph zero rows and pw zero columns on each side, as a new contiguous array."""
    xp = get_array_module(x)
    if ph == 0 and pw == 0:
        return xp.ascontiguousarray(x)
    N, H, W, C = x.shape
    out = xp.zeros((N, H + 2 * ph, W + 2 * pw, C), dtype=x.dtype)
    out[:, ph:ph + H, pw:pw + W] = x
    return out


def im2col(x, kernel_size, stride=1, padding=0, out=None):
    """The patch matrix of a channels-last batch: x (N, H, W, C) → cols (N·Ho·Wo, kh·kw·C).

    Row ``(n·Ho + ho)·Wo + wo`` holds the window under output pixel (n, ho, wo), columns
    ordered (i, j, c):  ``cols[row, (i·kw + j)·C + c] = x_padded[n, ho·sh + i, wo·sw + j, c]``.
    ``out``: an optional C-contiguous (N·Ho·Wo, kh·kw·C) array to fill instead of a new one.
    """
    xp = get_array_module(x)
    (kh, kw), (sh, sw), (ph, pw) = pair(kernel_size), pair(stride), pair(padding)
    N, H, W, C = x.shape
    Ho, Wo = conv_output_size(H, kh, sh, ph), conv_output_size(W, kw, sw, pw)
    x = _pad(x, ph, pw)
    # A view with one axis per window offset, made of strides alone (no copy): windows[n, ho, wo, i, j]
    # is the C-vector x[n, ho·sh + i, wo·sw + j]. Writing it into `out` is the one copy.
    sN, sH, sW, sC = x.strides
    windows = xp.lib.stride_tricks.as_strided(x, (N, Ho, Wo, kh, kw, C), (sN, sH * sh, sW * sw, sH, sW, sC))
    if out is None:
        out = xp.empty((N * Ho * Wo, kh * kw * C), dtype=x.dtype)
    out.reshape(N, Ho, Wo, kh, kw, C)[...] = windows
    return out


def col2im(cols, x_shape, kernel_size, stride=1, padding=0):
    """The adjoint of im2col: add each row of cols (N·Ho·Wo, kh·kw·C) onto its window → (N, H, W, C).

    Where windows overlap their contributions add up, so ``col2im(dcols)`` is the gradient of
    ``im2col``. One vectorised add per kernel row i and group r of windows (kh·kw adds at stride 1).

    The simplest version adds offset (i, j) of every window at once,
    ``out[:, i::sh, j::sw] += patches[:, :, :, i, j]``, but each run of contiguous memory is then
    only C numbers long and NumPy's per-run overhead dominates (2× slower at 16 channels).
    Adding whole window rows (kw·C numbers) needs windows that do not overlap one another, so the
    windows of a row of pixels go in q = ceil(kw / sw) groups: wo = r, r+q, r+2q, ... lie ≥ kw apart.
    """
    xp = get_array_module(cols)
    (kh, kw), (sh, sw), (ph, pw) = pair(kernel_size), pair(stride), pair(padding)
    N, H, W, C = x_shape
    Ho, Wo = conv_output_size(H, kh, sh, ph), conv_output_size(W, kw, sw, pw)
    patches = cols.reshape(N, Ho, Wo, kh, kw, C)
    out = xp.zeros((N, H + 2 * ph, W + 2 * pw, C), dtype=cols.dtype)
    sN, sH, sW, sC = out.strides
    q = -(-kw // sw)
    for i in range(kh):
        for r in range(min(q, Wo)):
            n_windows = len(range(r, Wo, q))
            # Row i of windows r, r+q, ...: disjoint (kw, C) blocks of `out`, viewed through strides.
            rows = xp.lib.stride_tricks.as_strided(out[:, i:, r * sw:], (N, Ho, n_windows, kw, C),
                                                   (sN, sH * sh, sW * sw * q, sW, sC))
            rows += patches[:, :, r::q, i]
    if ph or pw:
        out = xp.ascontiguousarray(out[:, ph:ph + H, pw:pw + W])
    return out


# ---------------------------------------------------------------------------
# conv2d
# ---------------------------------------------------------------------------

class Conv2d(Function):
    """y = x ⋆ W + b as one product  y = im2col(x) @ Wᵀ + b;
    dW = (im2col(x)ᵀ @ gy)ᵀ,  db = Σ gy,  dx = col2im(gy @ W)

    x (N, C, H, W), or (N, H, W, C) channels-last; weight (O, C, kh, kw); bias (O,).
    Every product runs over a chunk of images at a time (``threads.over_batch``): the rows of im2col(x)
    and of y are the images' rows in order, so each formula holds chunk by chunk (dW summed). On
    NumPy the chunks are shared out over the CPU threads (``tinyclip.threads``).
    """

    def __init__(self, stride, padding, channels_last: bool):
        self.stride, self.padding, self.channels_last = pair(stride), pair(padding), channels_last

    def _run(self, xp, share_fn, x, rows_per_image: int) -> list:
        """share_fn over the batch's chunks of images, sized by their patch matrices."""
        return threads.over_batch(xp, share_fn, x.shape[0], rows_per_image * self._width(x) * x.itemsize)

    def _width(self, x) -> int:
        return self.kernel[0] * self.kernel[1] * x.shape[-1]

    def _buffer(self, xp, x, chunks, rows_per_image: int):
        """One (rows, kh·kw·C) patch-matrix buffer big enough for any of ``chunks``."""
        rows = max((part.stop - part.start for part in chunks), default=0) * rows_per_image
        return xp.empty((rows, self._width(x)), dtype=x.dtype)

    def forward(self, x, weight, bias=None):
        xp = get_array_module(x)
        if x.ndim != 4 or weight.ndim != 4:
            raise ValueError(f"conv2d needs a 4-D input and weight, got {x.shape} and {weight.shape}")
        if not self.channels_last:
            x = x.transpose(0, 2, 3, 1)  # a view; im2col's padding copy makes it contiguous NHWC
        N, H, W, C = x.shape
        O, C_in, kh, kw = weight.shape
        if C != C_in:
            raise ValueError(f"conv2d: input has {C} channels, weight expects {C_in}")
        Ho = conv_output_size(H, kh, self.stride[0], self.padding[0])
        Wo = conv_output_size(W, kw, self.stride[1], self.padding[1])
        self.kernel, self.has_bias = (kh, kw), bias is not None

        # The weight as a matrix whose columns follow cols' (i, j, c) order: (O, kh·kw·C).
        w_mat = weight.transpose(0, 2, 3, 1).reshape(O, kh * kw * C)
        w_t = xp.ascontiguousarray(w_mat.T)
        y = xp.empty((N, Ho, Wo, O), dtype=xp.result_type(x.dtype, weight.dtype))  # channels-last output

        def forward_share(chunks):
            buffer = self._buffer(xp, x, chunks, Ho * Wo)
            for part in chunks:
                y_part = y[part].reshape(-1, O)  # a view: a chunk of images is a block of rows
                cols = im2col(x[part], (kh, kw), self.stride, self.padding, out=buffer[:len(y_part)])
                xp.matmul(cols, w_t, out=y_part)
                if bias is not None:
                    y_part += bias

        self._run(xp, forward_share, x, Ho * Wo)

        self.x, self.w_mat = x, w_mat
        return y if self.channels_last else xp.ascontiguousarray(y.transpose(0, 3, 1, 2))

    def backward(self, gy):
        xp = get_array_module(gy)
        if not self.channels_last:
            gy = gy.transpose(0, 2, 3, 1)
        gy = xp.ascontiguousarray(gy)  # (N, Ho, Wo, O); a copy when gy came in NCHW
        N, Ho, Wo, O = gy.shape
        kh, kw = self.kernel
        need_gx, need_gw = self.needs_input_grad[0], self.needs_input_grad[1]

        gx = xp.empty(self.x.shape, dtype=gy.dtype) if need_gx else None

        def backward_share(chunks):
            """Writes gx of its images; returns their share of dW as a (kh·kw·C, O) matrix (or None)."""
            buffer = self._buffer(xp, self.x, chunks, Ho * Wo)
            gw_mat = xp.zeros((self.w_mat.shape[1], O), dtype=gy.dtype) if need_gw else None
            for part in chunks:
                g = gy[part].reshape(-1, O)
                if need_gw:
                    cols = im2col(self.x[part], self.kernel, self.stride, self.padding, out=buffer[:len(g)])
                    # (kh·kw·C, O). Not gyᵀ @ cols = (O, kh·kw·C): OpenBLAS runs that long thin product
                    # up to 10× slower on 2 threads (benchmarks/bench_conv.py --layouts).
                    gw_mat += cols.T @ g
                if need_gx:  # dcols reuses the buffer: the weight gradient above is done with cols
                    dcols = xp.matmul(g, self.w_mat, out=buffer[:len(g)])
                    gx[part] = col2im(dcols, self.x[part].shape, self.kernel, self.stride, self.padding)
            return gw_mat

        shares = self._run(xp, backward_share, self.x, Ho * Wo)
        gw = None
        if need_gw:
            gw_mat = sum(shares[1:], shares[0])
            gw = xp.ascontiguousarray(gw_mat.reshape(kh, kw, -1, O).transpose(3, 2, 0, 1))
        gb = gy.reshape(-1, O).sum(axis=0) if self.has_bias and self.needs_input_grad[2] else None
        if need_gx and not self.channels_last:
            gx = xp.ascontiguousarray(gx.transpose(0, 3, 1, 2))
        return (gx, gw, gb) if self.has_bias else (gx, gw)


def conv2d(x, weight, bias=None, stride=1, padding=0, channels_last: bool = False):
    """2-D convolution (cross-correlation, as PyTorch), zero padding.

    x: (N, C, H, W), or (N, H, W, C) with ``channels_last=True``; weight: (O, C, kh, kw);
    bias: (O,) or None; stride, padding: an int or a pair (rows, columns).
    Returns (N, O, Ho, Wo), or (N, Ho, Wo, O) channels-last.
    """
    fn = Conv2d(stride, padding, channels_last)
    return fn(x, weight) if bias is None else fn(x, weight, bias)


# ---------------------------------------------------------------------------
# max_pool2d
# ---------------------------------------------------------------------------

class MaxPool2d(Function):
    """y = the maximum of each kh×kw window;  dx = gy at the window's first maximum, 0 elsewhere

    Works offset by offset: the element at offset (i, j) of every window is one strided slice
    of x, so the max is kh·kw element-wise ``maximum``s, with no loop over windows or pixels;
    a few images at a time, shared out over the CPU threads as conv2d's chunks.
    """

    def __init__(self, kernel_size, stride, channels_last: bool):
        self.kernel = pair(kernel_size)
        self.stride = self.kernel if stride is None else pair(stride)
        self.channels_last = channels_last

    def _offset(self, i: int, j: int):
        """Index of the element at offset (i, j) of every window: a strided slice of the input."""
        (sh, sw), (Ho, Wo) = self.stride, self.out_size
        rows, cols = slice(i, i + sh * (Ho - 1) + 1, sh), slice(j, j + sw * (Wo - 1) + 1, sw)
        return (slice(None), rows, cols) if self.channels_last else (Ellipsis, rows, cols)

    def forward(self, x):
        xp = get_array_module(x)
        if x.ndim != 4:
            raise ValueError(f"max_pool2d needs a 4-D input, got shape {x.shape}")
        (kh, kw), (sh, sw) = self.kernel, self.stride
        H, W = x.shape[1:3] if self.channels_last else x.shape[2:4]
        self.out_size = conv_output_size(H, kh, sh), conv_output_size(W, kw, sw)
        self.offsets, self.x_shape = [(i, j) for i in range(kh) for j in range(kw)], x.shape
        shape = x[self._offset(0, 0)].shape
        y = xp.empty(shape, dtype=x.dtype)
        self.argmax = xp.empty(shape, dtype=xp.uint8 if len(self.offsets) <= 256 else xp.int32)

        def share(chunks):  # chunks of images, as conv2d's, on the CPU threads
            for part in chunks:
                self._pool(xp, x[part], y[part], self.argmax[part])

        threads.over_batch(xp, share, x.shape[0], x[:1].nbytes)
        return y

    def _pool(self, xp, x, y, argmax) -> None:
        """Fills y with the windows' maxima of x and argmax with the offset of each (views of the outputs)."""
        offsets = self.offsets
        xp.copyto(y, x[self._offset(0, 0)])
        for i, j in offsets[1:]:
            xp.maximum(y, x[self._offset(i, j)], out=y)

        # Which offset holds each window's maximum: the first one, so on ties exactly one element
        # gets the gradient. Walking the offsets backwards, the last match written is the first.
        argmax[...] = len(offsets) - 1
        for o in range(len(offsets) - 2, -1, -1):
            hit = x[self._offset(*offsets[o])] == y
            # argmax = where(hit, o, argmax), done in place (twice as fast as where); argmax >= o here.
            argmax -= hit * (argmax - o)

    def backward(self, gy):
        xp = get_array_module(gy)
        overlapping = self.stride[0] < self.kernel[0] or self.stride[1] < self.kernel[1]
        # Windows that tile x exactly (2×2, stride 2, even sizes) write every element of gx below:
        # no zero-fill first. Elsewhere an element in no window, or in several, needs the zeros.
        H, W = self.x_shape[1:3] if self.channels_last else self.x_shape[2:4]
        tiled = self.kernel == self.stride and (H, W) == (self.out_size[0] * self.kernel[0],
                                                         self.out_size[1] * self.kernel[1])
        gx = (xp.empty if tiled else xp.zeros)(self.x_shape, dtype=gy.dtype)

        def share(chunks):
            for part in chunks:
                g, argmax, out = gy[part], self.argmax[part], gx[part]
                for o, (i, j) in enumerate(self.offsets):
                    if overlapping:  # an input element can be in several windows: contributions add
                        out[self._offset(i, j)] += g * (argmax == o)
                    else:
                        xp.multiply(g, argmax == o, out=out[self._offset(i, j)])

        threads.over_batch(xp, share, gx.shape[0], gx[:1].nbytes)
        return gx


def max_pool2d(x, kernel_size=2, stride=None, channels_last: bool = False):
    """Max-pooling over kh×kw windows (floor mode: a remainder that fits no window is dropped).

    x: (N, C, H, W), or (N, H, W, C) with ``channels_last=True``; kernel_size, stride: an int or a
    pair; stride defaults to kernel_size. Returns (N, C, Ho, Wo), or (N, Ho, Wo, C).
    """
    return MaxPool2d(kernel_size, stride, channels_last)(x)
