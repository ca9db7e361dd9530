"""Policy types. Importing this package registers each one for Policy.from_pretrained."""

from data.normalize import Normalizer
from policies.base import Policy
from policies.diffusion.config import DiffusionConfig
from policies.diffusion.policy import DiffusionPolicy
from policies.steered.config import SteeredConfig
from policies.steered.policy import SteeredPolicy
from policies.vqbet.config import VQBeTConfig
from policies.vqbet.policy import VQBeTPolicy

PolicyConfig = DiffusionConfig | VQBeTConfig
POLICY_FOR_CONFIG: dict[type, type[Policy]] = {DiffusionConfig: DiffusionPolicy, VQBeTConfig: VQBeTPolicy}


def make_policy(config: PolicyConfig, normalizer: Normalizer) -> Policy:
    return POLICY_FOR_CONFIG[type(config)](config, normalizer)


__all__ = ["DiffusionConfig", "DiffusionPolicy", "Policy", "PolicyConfig", "SteeredConfig", "SteeredPolicy", "VQBeTConfig", "VQBeTPolicy", "make_policy"]
