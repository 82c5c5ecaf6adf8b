"""Write your own differentiable op, and prove its backward right with a gradient check.

What you will learn
-------------------
1. How to add an op to tinyclip: subclass ``Function``, write ``forward`` on raw arrays
   (saving what backward needs) and ``backward`` with the local derivative. Our op is
   softplus, y = log(1 + eˣ), whose derivative is the sigmoid.
2. How ``tinyclip.gradcheck`` tests a backward: it compares it with central finite
   differences (f(x + ε) - f(x - ε)) / 2ε, element by element, in float64.
3. That it catches mistakes: a softplus with a subtly wrong backward fails, and the
   error names the input and the element.
4. The fast mode, ``directions=k``: k random directions instead of every element,
   so a big input costs 2k forward passes instead of two per element.

Run it:  python examples/02_gradcheck.py      (about a second;
         TINYCLIP_EXAMPLE_QUICK=1 uses smaller inputs)

It prints the op's values next to the formula, each check's outcome and time, the
message of the failed check, and finally one line ``RESULT: ...``.
"""

import os
import time

import numpy as np

from tinyclip import Function, GradcheckError, Tensor, get_array_module, gradcheck

QUICK = os.environ.get("TINYCLIP_EXAMPLE_QUICK") == "1"


class Softplus(Function):
    """y = log(1 + eˣ);  dx = gy · sigmoid(x)

    Computed as max(x, 0) + log(1 + e^-|x|): the same value, but e^-|x| ≤ 1 never
    overflows, where e^x would for x > 709 in float64 (x > 88 in float32).
    """

    def forward(self, x):
        xp = get_array_module(x)
        self.x = x
        return xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x)))

    def backward(self, gy):
        xp = get_array_module(gy)
        sigmoid = 0.5 + 0.5 * xp.tanh(0.5 * self.x)  # 1 / (1 + e^-x) without overflow
        return gy * sigmoid


class SoftplusWrongBackward(Softplus):
    """The same forward; the backward uses sigmoid(-x), a sign slip that is easy to make."""

    def backward(self, gy):
        xp = get_array_module(gy)
        return gy * (0.5 - 0.5 * xp.tanh(0.5 * self.x))


def softplus(x):
    return Softplus()(x)


def softplus_wrong(x):
    return SoftplusWrongBackward()(x)


def timed(label, fn):
    start = time.perf_counter()
    try:
        fn()
        outcome = "passed"
    except GradcheckError as error:
        outcome = "FAILED"
        message = str(error)
    print(f"  {label:<52} {outcome}  ({time.perf_counter() - start:.3f} s)")
    return message if outcome == "FAILED" else None


def main():
    rng = np.random.default_rng(0)

    print("=== 1. the op ===")
    x = Tensor(np.array([-30.0, -1.0, 0.0, 1.0, 30.0, 1000.0]), requires_grad=True)
    y = softplus(x)
    y.sum().backward()
    with np.errstate(over="ignore"):
        naive = np.log1p(np.exp(x.data))  # overflows at 1000
    with np.printoptions(precision=6, suppress=True):
        print("x              ", x.data)
        print("softplus(x)    ", y.data)
        print("log(1 + e^x)   ", naive, "<- the naive formula overflows")
        print("dy/dx (ours)   ", x.grad)
        print("sigmoid(x)     ", 1 / (1 + np.exp(-np.clip(x.data, -700, 700))))

    print("\n=== 2. full check: every element, two forward passes each ===")
    small = rng.standard_normal((3, 4) if QUICK else (8, 10)) * 3
    timed(f"softplus on shape {small.shape}", lambda: gradcheck(softplus, [small]))
    message = timed(f"softplus_wrong on shape {small.shape}", lambda: gradcheck(softplus_wrong, [small]))
    print("\nThe check's message for the wrong backward:")
    print("  " + message.splitlines()[0])

    print("\n=== 3. fast check: k random directions ===")
    big = rng.standard_normal((50, 60) if QUICK else (300, 400)) * 3
    timed(f"softplus on shape {big.shape}, directions=3", lambda: gradcheck(softplus, [big], directions=3))
    fast_message = timed(f"softplus_wrong on shape {big.shape}, directions=3",
                         lambda: gradcheck(softplus_wrong, [big], directions=3))
    print("  " + fast_message.splitlines()[0])
    print(f"(a full check of {big.size} elements would take {2 * big.size} forward passes; the passing one took 6)")

    caught = message is not None and fast_message is not None
    verdict = "softplus passes; the wrong backward is caught by both the full and the fast check"
    print(f"RESULT: {verdict if caught else 'the wrong backward was NOT caught'}")


if __name__ == "__main__":
    main()
