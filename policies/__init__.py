"""Policy types. Importing this package registers each one (policies.base.policy_class looks them up)."""

from policies.base import Policy, make_policy, policy_class, policy_class_for_config
from policies.diffusion.config import DiffusionConfig
from policies.diffusion.policy import DiffusionPolicy
from policies.residual.config import ResidualConfig
from policies.residual.policy import ResidualPolicy
from policies.steered.config import SteeredConfig
from policies.steered.policy import SteeredPolicy
from policies.vqbet.config import VQBeTConfig
from policies.vqbet.policy import VQBeTPolicy

PolicyConfig = DiffusionConfig | VQBeTConfig
"""Configs of the policies trained from demonstrations (train.py's --policy); the RL wrappers are built by rl/."""

__all__ = [
    "DiffusionConfig", "DiffusionPolicy", "Policy", "PolicyConfig", "ResidualConfig", "ResidualPolicy", "SteeredConfig", "SteeredPolicy",
    "VQBeTConfig", "VQBeTPolicy", "make_policy", "policy_class", "policy_class_for_config",
]
