"""Policy types. Importing this package registers each one for Policy.from_pretrained."""

from data.normalize import Normalizer
from policies.base import Policy
from policies.diffusion.config import DiffusionConfig
from policies.diffusion.policy import DiffusionPolicy
from policies.residual.config import ResidualConfig
from policies.residual.policy import ResidualPolicy
from policies.steered.config import SteeredConfig
from policies.steered.policy import SteeredPolicy
from policies.vqbet.config import VQBeTConfig
from policies.vqbet.policy import VQBeTPolicy

PolicyConfig = DiffusionConfig | VQBeTConfig
POLICY_FOR_CONFIG: dict[type, type[Policy]] = {DiffusionConfig: DiffusionPolicy, VQBeTConfig: VQBeTPolicy}


def make_policy(config: PolicyConfig, normalizer: Normalizer) -> Policy:
    return POLICY_FOR_CONFIG[type(config)](config, normalizer)


__all__ = ["DiffusionConfig", "DiffusionPolicy", "Policy", "PolicyConfig", "SteeredConfig", "SteeredPolicy", "ResidualConfig", "ResidualPolicy", "VQBeTConfig", "VQBeTPolicy", "make_policy"]
