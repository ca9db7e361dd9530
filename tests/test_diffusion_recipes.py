"""Diffusion backbones (unet, mlp, transformer), objectives (ddpm, flow), samplers and level-2 minibatching."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from golden_values import assert_matches_golden
from diffusers import FlowMatchEulerDiscreteScheduler
from safetensors.torch import load_file

from data.normalize import Normalizer
from policies.base import Policy
from policies.diffusion.config import SAMPLERS_FOR_OBJECTIVE, DiffusionConfig
from policies.diffusion.policy import DiffusionPolicy

GOLDEN = Path(__file__).parent / "golden"
BASE = DiffusionConfig(state_dims=(6,), action_dim=3, horizon=8, n_action_steps=4, diffusion_step_embed_dim=16, down_dims=(16, 32), n_groups=4)
SMALL = {
    "unet": BASE,
    "mlp": replace(BASE, backbone="mlp", mlp_hidden_dim=32, mlp_blocks=2),
    "transformer": replace(BASE, backbone="transformer", transformer_dim=32, transformer_layers=2, transformer_heads=2),
}
OBJECTIVE_SAMPLER = {"ddpm": "ddim", "flow": "euler"}


def small(backbone: str, objective: str = "ddpm", sampler: str | None = None, steps: int = 3, **kw) -> DiffusionConfig:
    return replace(SMALL[backbone], objective=objective, inference_scheduler=sampler or OBJECTIVE_SAMPLER[objective], num_inference_steps=steps, **kw)


def make_policy(config: DiffusionConfig, seed: int = 0) -> DiffusionPolicy:
    g = np.random.default_rng(seed)
    data = {"state": g.normal(size=(100, 6)).astype(np.float32), "action": g.uniform(-2, 3, size=(100, 3)).astype(np.float32)}
    torch.manual_seed(seed)
    return DiffusionPolicy(config, Normalizer.fit(data, {"state": "min_max", "action": "min_max"})).eval()


def fixed_inputs(batch: int = 2):
    g = torch.Generator().manual_seed(123)
    obs = {"state": torch.randn(batch, 2, 6, generator=g)}
    noise = torch.randn(batch, 8, 3, generator=g)
    train_batch = {
        "state": torch.randn(batch, 2, 6, generator=g),
        "action": torch.rand(batch, 8, 3, generator=g) * 5 - 2,
        "action_is_pad": torch.zeros(batch, 8, dtype=torch.bool),
    }
    return obs, noise, train_batch


@pytest.mark.parametrize("objective", ["ddpm", "flow"])
@pytest.mark.parametrize("backbone", ["mlp", "transformer"])
def test_golden_outputs(backbone, objective):
    """Pins each new backbone's numbers: a change that moves them must update tests/golden deliberately."""
    policy = make_policy(small(backbone, objective))
    obs, noise, train_batch = fixed_inputs()
    chunk = policy.predict_action_chunk(obs, noise=noise)
    torch.manual_seed(7)
    policy.train()
    loss, _ = policy(train_batch)
    golden = json.loads((GOLDEN / "diffusion_backbones.json").read_text())[f"{backbone}-{objective}"]
    assert_matches_golden(chunk, golden["chunk"], f"{backbone}-{objective} chunk")
    assert_matches_golden(loss.item(), golden["loss"], f"{backbone}-{objective} loss")


def test_format_3_checkpoint_loads_and_matches():
    """A checkpoint written before backbones and objectives existed: same chunk, same fingerprint (DSRL bases check it)."""
    ckpt = GOLDEN / "checkpoints" / "diffusion_v3"
    assert json.loads((ckpt / "config.json").read_text())["format_version"] == 3
    expected = json.loads((ckpt / "expected.json").read_text())
    policy = Policy.from_pretrained(ckpt)
    assert policy.config.backbone == "unet" and policy.config.objective == "ddpm"
    chunk = policy.predict_action_chunk({"state": torch.tensor(expected["obs"])}, noise=torch.tensor(expected["noise"]))
    assert_matches_golden(chunk, expected["chunk"], "diffusion_v3 chunk")  # computed floats: tolerance
    assert policy.fingerprint() == expected["fingerprint"]  # a hash of the stored weights: exact


@pytest.mark.parametrize("perturbation,caught", [(1e-3, True), (2e-6, False)])
def test_golden_check_catches_real_changes_but_not_cross_machine_rounding(perturbation, caught):
    """A stored value moved by 1e-3 is a real change and fails; 2e-6 is the AVX-512 vs AVX2 rounding and passes."""
    ckpt = GOLDEN / "checkpoints" / "diffusion_v3"
    expected = json.loads((ckpt / "expected.json").read_text())
    policy = Policy.from_pretrained(ckpt)
    chunk = policy.predict_action_chunk({"state": torch.tensor(expected["obs"])}, noise=torch.tensor(expected["noise"]))
    stored = np.array(expected["chunk"])
    largest = np.unravel_index(np.abs(stored).argmax(), stored.shape)  # the loosest place: rtol scales with |value|
    for index in (largest, (0, 0, 0)):
        perturbed = stored.copy()
        perturbed[index] += perturbation
        if caught:
            with pytest.raises(AssertionError, match="moved from its golden value"):
                assert_matches_golden(chunk, perturbed, "perturbed diffusion_v3 chunk")
        else:
            assert_matches_golden(chunk, perturbed, "perturbed diffusion_v3 chunk")


@pytest.mark.parametrize("backbone", ["unet", "mlp", "transformer"])
@pytest.mark.parametrize("objective,sampler", [(o, s) for o, samplers in SAMPLERS_FOR_OBJECTIVE.items() for s in samplers if s != "ddpm"])
def test_same_noise_gives_same_chunk(backbone, objective, sampler, tmp_path):
    """DSRL steers through the initial noise: every deterministic sampler is a fixed function of (obs, noise)."""
    policy = make_policy(small(backbone, objective, sampler, steps=3))
    assert policy.deterministic_sampling
    obs, noise, _ = fixed_inputs()
    a = policy.predict_action_chunk(obs, noise=noise)
    torch.manual_seed(99)  # the global RNG must not matter
    b = policy.predict_action_chunk(obs, noise=noise)
    assert torch.equal(a, b)
    assert not torch.allclose(a, policy.predict_action_chunk(obs, noise=noise + 1.0))
    policy.save_pretrained(tmp_path / "ckpt")
    assert torch.equal(a, Policy.from_pretrained(tmp_path / "ckpt").predict_action_chunk(obs, noise=noise))


def test_euler_step_matches_diffusers_scheduler():
    """The inline Euler update is FlowMatchEulerDiscreteScheduler.step on the same sigma grid."""
    policy = make_policy(small("mlp", "flow", steps=4, clip_sample=False))
    obs, noise, _ = fixed_inputs()
    cond = policy.global_cond(policy.normalize_obs(obs))
    ours = policy.sample_normalized(cond, noise)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=100, shift=1.0)
    scheduler.set_timesteps(4)
    x = noise
    with torch.no_grad():
        for t in scheduler.timesteps:
            v = policy.denoiser(x, t.expand(x.shape[0]), cond)
            x = scheduler.step(v, t, x).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)


def test_multistep_solvers_reset_between_chunks():
    """DPM-Solver++ and UniPC keep past outputs: a second chunk must not see the first chunk's history."""
    for sampler in ("dpm_solver", "unipc"):
        policy = make_policy(small("mlp", "ddpm", sampler, steps=4))
        obs, noise, _ = fixed_inputs()
        first = policy.predict_action_chunk(obs, noise=noise)
        policy.predict_action_chunk({"state": obs["state"] + 3}, noise=noise * 2)
        assert torch.equal(first, policy.predict_action_chunk(obs, noise=noise)), sampler


def test_level2_minibatching_repeats_each_observation():
    """level2_samples=M: the denoiser sees M noised draws per window with that window's conditioning."""
    policy = make_policy(small("mlp", "flow", level2_samples=3)).train()
    _, _, batch = fixed_inputs(batch=2)
    seen = {}
    forward = policy.denoiser.forward

    def recording(sample, times, cond):
        seen.update(sample=sample, times=times, cond=cond)
        return forward(sample, times, cond)

    policy.denoiser.forward = recording
    loss, _ = policy(batch)
    loss.backward()
    assert seen["sample"].shape == (6, 8, 3) and seen["cond"].shape[0] == 6
    assert torch.equal(seen["cond"][0], seen["cond"][2]) and not torch.equal(seen["cond"][2], seen["cond"][3])
    assert len(set(seen["times"].tolist())) > 1  # independent draws per sample


def test_bad_names_and_steps_fail_with_the_valid_choices():
    with pytest.raises(ValueError, match=r"unknown backbone 'resnet'; valid: \['unet', 'mlp', 'transformer'\]"):
        DiffusionConfig(backbone="resnet")
    with pytest.raises(ValueError, match=r"unknown objective 'edm'; valid: \['ddpm', 'flow'\]"):
        DiffusionConfig(objective="edm")
    with pytest.raises(ValueError, match=r"unknown sampler .*'heun'.*valid: \['ddim', 'ddpm', 'dpm_solver', 'euler', 'unipc'\]"):
        DiffusionConfig(inference_scheduler="heun")
    with pytest.raises(ValueError, match=r"sampler 'ddim' cannot sample a model trained with objective 'flow'; valid for 'flow': \['euler'\]"):
        DiffusionConfig(objective="flow", inference_scheduler="ddim")
    with pytest.raises(ValueError, match=r"sampler 'euler' cannot sample a model trained with objective 'ddpm'"):
        DiffusionConfig(inference_scheduler="euler")
    with pytest.raises(ValueError, match=r"num_inference_steps must be in \[1, 100\], got 0"):
        DiffusionConfig(num_inference_steps=0)
    with pytest.raises(ValueError, match="level2_samples must be >= 1"):
        DiffusionConfig(level2_samples=0)
    policy = make_policy(small("mlp", "flow"))
    with pytest.raises(ValueError, match="sampler 'dpm_solver' cannot sample a model trained with objective 'flow'"):
        policy.set_sampler("dpm_solver", 3)
    with pytest.raises(ValueError, match=r"num_inference_steps must be in \[1, 100\], got 500"):
        policy.set_sampler(steps=500)
    assert policy.sampler.name == "euler" and policy.sampler.steps == 3  # a refused switch changes nothing


def test_flow_checkpoint_refuses_an_incompatible_sampler_in_eval(tmp_path, monkeypatch, capsys):
    import eval as eval_cli

    make_policy(small("mlp", "flow")).save_pretrained(tmp_path / "ckpt")
    monkeypatch.setattr("sys.argv", ["eval.py", str(tmp_path / "ckpt"), "--env", "metaworld/push-v3", "--sampler", "ddim"])
    with pytest.raises(SystemExit, match="sampler 'ddim' cannot sample a model trained with objective 'flow'"):
        eval_cli.main()


TRAIN_FLAGS = {  # the tiny preset is a small MLP flow policy; these make each backbone small
    "unet": ["--policy.backbone", "unet", "--policy.down-dims", "16", "32", "--policy.n-groups", "4", "--policy.objective", "ddpm", "--policy.inference-scheduler", "ddim"],
    "mlp": ["--policy.backbone", "mlp", "--policy.mlp-hidden-dim", "32", "--policy.mlp-blocks", "2", "--policy.objective", "flow", "--policy.inference-scheduler", "euler"],
    "transformer": ["--policy.backbone", "transformer", "--policy.transformer-dim", "32", "--policy.transformer-layers", "1", "--policy.transformer-heads", "2", "--policy.objective", "ddpm", "--policy.inference-scheduler", "dpm_solver"],
}


@pytest.mark.parametrize("backbone", ["unet", "mlp", "transformer"])
def test_backbone_trains_resumes_exactly_and_evaluates(backbone, push_demos, tmp_path):
    """Train 2 steps and stop, resume to 4: the same weights as 4 steps straight; then a real Meta-World episode."""
    import train

    common = ["tiny", "--env", "metaworld/push-v3", "--dataset", str(push_demos), "--policy.level2-samples", "2", *TRAIN_FLAGS[backbone]]
    straight = tmp_path / "straight"
    train.main([*common, "--run-dir", str(straight), "--eval-episodes", "0"])
    resumed = tmp_path / "resumed"
    train.main([*common, "--run-dir", str(resumed), "--stop-at", "2", "--eval-episodes", "0"])
    summary = train.main([*common, "--run-dir", str(resumed), "--resume"])
    a = load_file(straight / "checkpoints" / "last" / "model.safetensors")
    b = load_file(resumed / "checkpoints" / "last" / "model.safetensors")
    assert a.keys() == b.keys() and any(k.startswith(f"{backbone}.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert summary["eval"]["n_episodes"] == 1 and summary["eval"]["episodes"][0]["length"] <= 16
    policy = Policy.from_pretrained(resumed / "checkpoints" / "last")
    assert policy.config.backbone == backbone and policy.config.level2_samples == 2


@pytest.mark.parametrize("backbone", ["unet", "mlp", "transformer"])
@pytest.mark.parametrize("objective,sampler", [("ddpm", "ddim"), ("ddpm", "dpm_solver"), ("ddpm", "unipc"), ("flow", "euler")])
def test_compiled_sampling_matches_eager(backbone, objective, sampler):
    """The TorchScript path (eval.py, the server and bundles use it) against eager, at batch 1 and 3."""
    from policies.diffusion.compile import TOLERANCE, compile_sampling, uncompiled

    policy = make_policy(small(backbone, objective, sampler, steps=3))
    obs, noise, _ = fixed_inputs(batch=3)
    cond = policy.global_cond(policy.normalize_obs(obs))
    eager = [policy.sample_normalized(cond[:1], noise[:1]), policy.sample_normalized(cond, noise)]
    assert compile_sampling(policy).startswith("torchscript")
    compiled = [policy.sample_normalized(cond[:1], noise[:1]), policy.sample_normalized(cond, noise)]
    state = policy.compiled_sampling
    assert state.active and len(state.graphs) == 2, state.fallback_reason  # one graph per batch size, both used
    max_diff = max((a - b).abs().max().item() for a, b in zip(eager, compiled))
    assert max_diff <= TOLERANCE, f"compiled vs eager: max abs diff {max_diff:.2e} (normalized action units)"
    assert policy.predict_action_chunk(obs, noise=noise).shape == (3, 8, 3)
    uncompiled(policy)
    assert torch.equal(policy.sample_normalized(cond, noise), eager[1])


def test_stochastic_sampler_stays_eager():
    from policies.diffusion.compile import compile_sampling

    policy = make_policy(small("mlp", "ddpm", "ddpm", steps=3))
    assert compile_sampling(policy) == "eager (sampler 'ddpm' is stochastic)"
    obs, noise, _ = fixed_inputs()
    assert policy.predict_action_chunk(obs, noise=noise).shape == (2, 8, 3)


def test_every_bench_recipe_is_a_valid_config():
    """The sweep benches name configs by string; a bad field or value must fail here, not an hour into a sweep."""
    from bench.camera_success import IMAGE_RECIPES
    from bench.latency import VARIANTS
    from bench.recipe_sweep import RECIPES

    for name, (policy_kw, train_kw, samplers) in RECIPES.items():
        cfg = replace(DiffusionConfig(), **policy_kw)
        assert set(train_kw) <= {"steps", "batch_size"}, name
        for sampler, steps in samplers:
            assert sampler in SAMPLERS_FOR_OBJECTIVE[cfg.objective], (name, sampler)
            replace(cfg, inference_scheduler=sampler, num_inference_steps=steps)
    for name, overrides in IMAGE_RECIPES.items():
        DiffusionConfig(state_keys=("proprio",), image_keys=("image_agentview",), **overrides)
    assert {recipe for _, recipe, _ in VARIANTS.values() if recipe} <= set(RECIPES)
