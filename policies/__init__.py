"""Policy types. Importing this package registers each one for Policy.from_pretrained."""

from policies.base import Policy
from policies.diffusion.config import DiffusionConfig
from policies.diffusion.policy import DiffusionPolicy

__all__ = ["Policy", "DiffusionConfig", "DiffusionPolicy"]
