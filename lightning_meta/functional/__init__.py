"""Inner-loop math with ``torch.func``: adaptation, Hessian-vector products, meta-gradients."""

from lightning_meta.functional.hvp import finite_difference_step, hvp, meta_gradient_hvp
from lightning_meta.functional.inner_loop import Params, TaskLoss, adapt, scaled_grad

__all__ = ["Params", "TaskLoss", "adapt", "finite_difference_step", "hvp", "meta_gradient_hvp", "scaled_grad"]
