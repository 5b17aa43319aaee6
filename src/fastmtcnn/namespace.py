"""The array namespace of the shared array code: numpy itself for numpy arrays, array-api-compat otherwise.

Why: numpy 2.1 and later is an array-API namespace of its own (concat,
astype, permute_dims, cumulative_sum, argsort(stable=), clip(min=), device=),
so the host pipeline needs no wrapper. array-api-compat's numpy wrapper
costs a fresh process 100-200 ms on its first use (it imports numpy.testing,
numpy.f2py and the other lazy numpy submodules; measured on 2 cores), which
is most of what the CPU engines' first photo spends outside the nets, and a
few microseconds per call in the per-tile loops. Torch tensors (and numpy
older than 2.1) go through array-api-compat as before.
"""
from __future__ import annotations

import numpy as np

#: numpy has every array-API function the pipeline uses
NUMPY_IS_ARRAY_API = all(hasattr(np, f) for f in ("concat", "astype", "permute_dims", "cumulative_sum"))


def array_namespace(*arrays):
    """The namespace to compute on `arrays` with (see the module's note)."""
    if NUMPY_IS_ARRAY_API and all(type(a) is np.ndarray for a in arrays):
        return np
    from array_api_compat import array_namespace as compat

    return compat(*arrays)
