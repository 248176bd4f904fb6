"""Checks for the exercises of notebooks/00_setup.ipynb (the worked example of the convention)."""

from __future__ import annotations

import torch

from mmlearn.checks import expect_close, expect_number, expect_value_error, fresh_generator, register


@register("ex-ch00-flops", hint="Count the cells of the result, then the multiplications and additions per cell.")
def _check_flops(answer) -> None:
    expect_number(answer, 2 * 64 * 32 * 16, what="FLOPs of (64×32)@(32×16)", tol=0.5)


@register("ex-ch00-matmul", hint="Cell (i, j) is torch.dot(A[i], B[:, j]); compare A.shape[1] with B.shape[0] first.")
def _check_matmul(matmul_dots) -> None:
    gen = fresh_generator()
    for case in range(4):
        n, m, p = (int(v) for v in torch.randint(1, 6, (3,), generator=gen))
        A = torch.randn(n, m, dtype=torch.float64, generator=gen)
        B = torch.randn(m, p, dtype=torch.float64, generator=gen)
        expect_close(matmul_dots(A, B), A @ B, what=f"case {case}: A {tuple(A.shape)} @ B {tuple(B.shape)}")
    expect_value_error(matmul_dots, torch.ones(2, 3), torch.ones(4, 2), what="mismatched shapes (2, 3) @ (4, 2)")
