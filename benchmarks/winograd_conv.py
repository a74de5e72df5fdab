"""Would Winograd convolutions take SD's UNet past the bf16 arithmetic floor on this CPU?

A 3x3 convolution computed as Winograd's F(2x2, 3x3) needs 16 multiplies for four outputs where
the direct one needs 36: 2.25x fewer, at the cost of transforming each 4x4 input tile and each
output tile (additions only). OpenVINO's CPU plugin has no Winograd kernel, so the transforms run
as graph operations (slices, additions, a transpose) around one batched bf16 matrix product; this
script builds that graph in torch for the 3x3 convolutions of SD 1.5's UNet levels, exports both
it and the plain convolution to OpenVINO, and times them in bf16 on one thread (as each of
reverie's two UNet streams runs), with each output's relative error against torch's fp32
convolution. A 1x1 convolution follows each, as a UNet's next layer would (the CPU plugin keeps
a graph's last matrix product in f32).

    PYTHONPATH=src .venv/bin/python benchmarks/winograd_conv.py
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

# F(2x2, 3x3): output = A^T [(G g G^T) * (B^T d B)] A; B^T and A^T are 0/+-1, so those transforms
# are additions, written out below; G carries halves and is applied to the weights once.
G = torch.tensor([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])

# Each level's 3x3 convolutions in SD 1.5's UNet (in channels, out channels, latent side at 512 px).
LEVELS = [(320, 320, 64), (640, 320, 64), (640, 640, 32), (1280, 1280, 16), (1280, 1280, 8)]


def input_transform(d0, d1, d2, d3):
    """B^T d along one axis: four rows (or columns) of a tile to four transformed ones."""
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


class WinogradConv(torch.nn.Module):
    """`conv` (3x3, stride 1, padding 1, even sides) as F(2x2, 3x3)."""

    def __init__(self, conv: torch.nn.Conv2d):
        super().__init__()
        weight = conv.weight.detach()
        transformed = torch.einsum("ai,ocij,bj->abco", G, weight, G)
        self.register_buffer("u", transformed.reshape(16, weight.shape[1], weight.shape[0]).contiguous())
        self.bias = conv.bias

    def forward(self, x):
        n, c, h, w = x.shape
        th, tw = h // 2, w // 2
        padded = torch.nn.functional.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1)  # channels last
        rows = input_transform(*[padded[:, i:i + h:2] for i in range(4)])
        tiles = [t for r in rows for t in input_transform(*[r[:, :, j:j + w:2] for j in range(4)])]
        m = torch.bmm(torch.stack(tiles).reshape(16, n * th * tw, c), self.u)
        m = list(m)
        first = [m[b] + m[4 + b] + m[8 + b] for b in range(4)]  # A^T along the rows
        second = [m[4 + b] - m[8 + b] - m[12 + b] for b in range(4)]
        y00, y10 = (s[0] + s[1] + s[2] for s in (first, second))  # and along the columns
        y01, y11 = (s[1] - s[2] - s[3] for s in (first, second))
        y = torch.stack([y00, y01, y10, y11]).reshape(2, 2, n, th, tw, -1)
        return y.permute(2, 5, 3, 0, 4, 1).reshape(n, -1, h, w) + self.bias.view(1, -1, 1, 1)


def timed(module: torch.nn.Module, x: torch.Tensor, calls: int, threads: int) -> tuple[float, np.ndarray]:
    """Median seconds of the OpenVINO bf16 compile of `module` on `x`, and its output."""
    import openvino as ov

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ov.convert_model(module, example_input=x)
    compiled = ov.Core().compile_model(model, "CPU", {
        "INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()
    request.infer([x.numpy()])
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        request.infer([x.numpy()])
        times.append(time.perf_counter() - start)
    return float(np.median(times)), request.get_output_tensor(0).data.copy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"OpenVINO bf16, {args.threads} thread(s), median of {args.calls} calls; error: RMS relative to torch fp32")
    print("| in | out | side | direct ms | Winograd ms | Winograd / direct speed | direct error | Winograd error |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for cin, cout, side in LEVELS:
        conv = torch.nn.Conv2d(cin, cout, 3, padding=1)
        torch.nn.init.normal_(conv.weight, std=(1 / (9 * cin)) ** 0.5)
        after = torch.nn.Conv2d(cout, 16, 1)
        x = torch.randn(1, cin, side, side)
        direct, winograd = torch.nn.Sequential(conv, after), torch.nn.Sequential(WinogradConv(conv), after)
        with torch.no_grad():
            reference = direct(x).numpy()
            assert np.abs(winograd(x).numpy() - reference).max() < 1e-3 * np.abs(reference).max()  # same maths
        error = lambda y: float(np.sqrt(((y - reference) ** 2).mean() / (reference ** 2).mean()))  # noqa: E731
        direct_s, direct_y = timed(direct, x, args.calls, args.threads)
        winograd_s, winograd_y = timed(winograd, x, args.calls, args.threads)
        print(f"| {cin} | {cout} | {side} | {direct_s * 1e3:.1f} | {winograd_s * 1e3:.1f} | {direct_s / winograd_s:.2f}x "
              f"| {error(direct_y):.1e} | {error(winograd_y):.1e} |", flush=True)


if __name__ == "__main__":
    main()
