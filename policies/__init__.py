"""Policy types. Importing this package registers each one for Policy.from_pretrained."""

from data.normalize import Normalizer
from policies.base import Policy
from policies.diffusion.config import DiffusionConfig
from policies.diffusion.policy import DiffusionPolicy
from policies.vqbet.config import VQBeTConfig
from policies.vqbet.policy import VQBeTPolicy

PolicyConfig = DiffusionConfig | VQBeTConfig
POLICY_FOR_CONFIG: dict[type, type[Policy]] = {DiffusionConfig: DiffusionPolicy, VQBeTConfig: VQBeTPolicy}


def make_policy(config: PolicyConfig, normalizer: Normalizer) -> Policy:
    return POLICY_FOR_CONFIG[type(config)](config, normalizer)


__all__ = ["Policy", "PolicyConfig", "DiffusionConfig", "DiffusionPolicy", "VQBeTConfig", "VQBeTPolicy", "make_policy"]
