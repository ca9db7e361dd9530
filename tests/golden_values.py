"""Comparing with values stored in `tests/golden/`, which were computed on another machine.

Golden floats were written once, on whatever CPU the author had. A different CPU (AVX-512 against AVX2, a
different thread count, another oneDNN kernel) sums in a different order and moves the last bits: on an AMD
EPYC with AVX-512 the stored diffusion_v3 chunk differed by up to 1.9e-6. So golden floats compare with
`GOLDEN_RTOL` / `GOLDEN_ATOL`: loose enough for that rounding, tight enough that a real change to the model
(1e-3 and up) fails. Hashes of stored weights (`Policy.fingerprint`) are not computed floats: they stay exact.
The rule for the whole suite is in `tests/conftest.py`.
"""

from __future__ import annotations

import numpy as np
import torch

GOLDEN_RTOL = 1e-4
GOLDEN_ATOL = 1e-4


def assert_matches_golden(actual: torch.Tensor | np.ndarray | float, stored: object, what: str) -> None:
    """Fail unless `actual` equals the stored golden value within the cross-machine tolerance."""
    if isinstance(actual, torch.Tensor):
        actual = actual.detach().cpu().numpy()
    np.testing.assert_allclose(
        np.asarray(actual, dtype=np.float64),
        np.asarray(stored, dtype=np.float64),
        rtol=GOLDEN_RTOL,
        atol=GOLDEN_ATOL,
        err_msg=f"{what} moved from its golden value: if the change is deliberate, regenerate tests/golden",
    )
