"""Old import path, kept working: see `keras_sam.diagnostics.hessian`."""

from keras_sam.diagnostics.hessian import BREAKDOWN_TOLERANCE  # noqa: F401
from keras_sam.diagnostics.hessian import HessianEigenvalues  # noqa: F401
from keras_sam.diagnostics.hessian import HessianOperator  # noqa: F401
from keras_sam.diagnostics.hessian import HessianTrace  # noqa: F401
from keras_sam.diagnostics.hessian import hessian_vector_product  # noqa: F401
from keras_sam.diagnostics.hessian import hutchinson_trace  # noqa: F401
from keras_sam.diagnostics.hessian import lanczos_tridiagonal  # noqa: F401
from keras_sam.diagnostics.hessian import top_hessian_eigenvalues  # noqa: F401
