"""Constants and numba flags shared by the kernels (one place, as in stumpy.config)."""

#: epsilon inside every norm, ``||x||_eps = sqrt(x . x + EPS)`` (DESIGN.md section 1).
EPS = 1e-6
#: usage threshold: a row whose total read + write weight at a step exceeds it is "accessed".
DELTA = 0.005
#: numba options for serial kernels and for kernels that use ``prange``.
NJIT = dict(cache=True, nogil=True)
NJIT_PARALLEL = dict(cache=True, nogil=True, parallel=True)
#: for float32 pre-filters whose error is bounded whatever the order of the sums
NJIT_FAST = dict(cache=True, nogil=True, fastmath=True)
#: rows per parallel block of the brute-force top-k scan.
SCAN_BLOCK = 8192
