"""Mamba blocks: parity with transformers, the parallel scan, decoding, float32, lazy kernels."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from transformers import MambaConfig, MambaModel
from transformers.models.mamba import modeling_mamba

from mmreason.layers import mamba
from mmreason.layers.mamba import MambaBlock, MambaStack, selective_scan

LENGTH = 37  # no chunk size used below divides it


def tiny_config(**overrides) -> MambaConfig:
    fields = dict(vocab_size=32, hidden_size=16, state_size=4, expand=2, conv_kernel=4, num_hidden_layers=2)
    return MambaConfig(**(fields | overrides))


def reference_and_stack(**overrides) -> tuple[MambaModel, MambaStack]:
    """transformers' MambaModel with perturbed weights, and a MambaStack loaded from its state dict."""
    torch.manual_seed(0)
    config = tiny_config(**overrides)
    reference = MambaModel(config).float()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    stack = MambaStack(config, with_embeddings=True, chunk_size=8)
    stack.load_state_dict(reference.state_dict(), strict=True)
    return reference, stack


def sequential_scan(x, dt, A, B, C):
    """The recurrence one step at a time, as in transformers' slow path."""
    state = x.new_zeros(x.shape[0], x.shape[2], A.shape[1])
    outputs = []
    for t in range(x.shape[1]):
        state = torch.exp(dt[:, t, :, None] * A) * state + (dt[:, t] * x[:, t])[..., None] * B[:, t, None, :]
        outputs.append((state @ C[:, t, :, None]).squeeze(-1))
    return torch.stack(outputs, dim=1), state


@pytest.mark.parametrize("use_bias", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_stack_matches_transformers_outputs_and_gradients(use_bias, padded):
    reference, stack = reference_and_stack(use_bias=use_bias)
    embeds = torch.randn(2, LENGTH, 16)
    mask = torch.ones(2, LENGTH, dtype=torch.long)
    if padded:
        mask[1, :5] = 0
    ours_in, reference_in = embeds.clone().requires_grad_(), embeds.clone().requires_grad_()
    ours = stack(ours_in, attention_mask=mask if padded else None)
    expected = reference(inputs_embeds=reference_in, attention_mask=mask if padded else None,
                         use_cache=False).last_hidden_state
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)

    weights = torch.randn_like(expected)
    (ours * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(ours_in.grad, reference_in.grad, atol=1e-5, rtol=1e-5)
    reference_parameters = dict(reference.named_parameters())
    for name, parameter in stack.named_parameters():
        if name == "embeddings.weight":  # unused when inputs_embeds are given
            continue
        torch.testing.assert_close(parameter.grad, reference_parameters[name].grad, atol=1e-5, rtol=1e-5,
                                   msg=lambda text, name=name: f"{name}: {text}")


def test_stack_without_embeddings_loads_the_rest_by_name():
    reference, _ = reference_and_stack()
    weights = {name: value for name, value in reference.state_dict().items()
               if not name.startswith("embeddings.")}
    MambaStack(tiny_config()).load_state_dict(weights, strict=True)


def test_init_matches_transformers_shapes_and_ssm_init():
    block = MambaBlock(tiny_config())
    reference = modeling_mamba.MambaMixer(tiny_config(), layer_idx=0)
    shapes = {name: parameter.shape for name, parameter in block.named_parameters()}
    assert shapes == {name: parameter.shape for name, parameter in reference.named_parameters()}
    torch.testing.assert_close(block.A_log, reference.A_log)
    torch.testing.assert_close(block.D, reference.D)
    dt = F.softplus(block.dt_proj.bias)
    assert dt.min() >= 1e-3 - 1e-6 and dt.max() <= 0.1 + 1e-6


@pytest.mark.parametrize("chunk_size", [1, 3, 8, 16, 64])
def test_parallel_scan_equals_the_sequential_loop(chunk_size):
    torch.manual_seed(1)
    batch, channels, state_size = 2, 6, 4
    x = torch.randn(batch, LENGTH, channels)
    dt = F.softplus(torch.randn(batch, LENGTH, channels) * 3)  # up to ~10: strong decays included
    A = -torch.rand(channels, state_size) * 20
    B, C = torch.randn(batch, LENGTH, state_size), torch.randn(batch, LENGTH, state_size)
    y, final_state = selective_scan(x, dt, A, B, C, chunk_size=chunk_size)
    expected_y, expected_state = sequential_scan(x, dt, A, B, C)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, expected_y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(final_state, expected_state, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 3, 8, None])
def test_the_hand_written_scan_gradient_equals_autograd_through_the_loop(chunk_size):
    torch.manual_seed(2)
    batch, length, channels, state_size = 2, 11, 3, 4  # 11 tokens: several chunks, the last one padded
    leaves = [F.softplus(torch.randn(batch, length, channels, dtype=torch.float64)),  # dt
              -torch.rand(channels, state_size, dtype=torch.float64) * 5,  # A
              torch.randn(batch, length, channels, dtype=torch.float64),  # x
              torch.randn(batch, length, state_size, dtype=torch.float64),  # B
              torch.randn(batch, length, state_size, dtype=torch.float64)]  # C
    for leaf in leaves:
        leaf.requires_grad_(True)
    dt, A, x, B, C = leaves
    weights = torch.randn(batch, length, channels, dtype=torch.float64)
    ours = torch.autograd.grad((selective_scan(x, dt, A, B, C, chunk_size=chunk_size)[0] * weights).sum(), leaves)
    loop = torch.autograd.grad((sequential_scan(x, dt, A, B, C)[0] * weights).sum(), leaves)
    for name, mine, expected in zip(("dt", "A", "x", "B", "C"), ours, loop):
        torch.testing.assert_close(mine, expected, atol=1e-10, rtol=1e-8, msg=name)


@pytest.mark.parametrize("prompt_length", [0, 2, 10])
def test_step_by_step_decoding_equals_the_full_forward(prompt_length):
    _, stack = reference_and_stack()
    embeds = torch.randn(2, LENGTH, 16)
    with torch.no_grad():
        full = stack(embeds)
        if prompt_length:
            prompt_out, states = stack(embeds[:, :prompt_length], return_states=True)
            torch.testing.assert_close(prompt_out, full[:, :prompt_length], atol=1e-5, rtol=1e-5)
        else:
            states = stack.init_states(2)
        steps = [stack.step(embeds[:, t], states) for t in range(prompt_length, LENGTH)]
    torch.testing.assert_close(torch.stack(steps, dim=1), full[:, prompt_length:], atol=1e-5, rtol=1e-5)
    assert states[0].conv_state.shape == (2, 32, 4) and states[0].ssm_state.shape == (2, 32, 4)


def test_bf16_inputs_compute_in_float32():
    _, stack = reference_and_stack()
    embeds = torch.randn(2, LENGTH, 16)
    full_precision = stack(embeds)
    half = stack(embeds.bfloat16())
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), full_precision, atol=5e-2, rtol=2e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = stack(embeds)
    torch.testing.assert_close(under_autocast, full_precision, atol=0, rtol=0)
    assert all(parameter.dtype == torch.float32 for parameter in stack.parameters())


def test_kernel_path_arguments_match_the_pytorch_path(monkeypatch):
    """transformers' PyTorch fallbacks share mamba-ssm's signatures: stand-ins for the CUDA kernels."""
    _, stack = reference_and_stack()
    embeds = torch.randn(2, LENGTH, 16)
    expected, expected_states = stack(embeds, return_states=True)
    stand_ins = mamba._CudaKernels(modeling_mamba.causal_conv1d_fn, modeling_mamba.mamba_selective_scan)
    monkeypatch.setattr(mamba, "_kernels_for", lambda tensor: stand_ins)
    ours, states = stack(embeds, return_states=True)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(states[-1].ssm_state, expected_states[-1].ssm_state, atol=1e-5, rtol=1e-5)


def test_kernels_load_when_importable(monkeypatch):
    fakes = {}
    for name in ("causal_conv1d", "mamba_ssm", "mamba_ssm.ops", "mamba_ssm.ops.selective_scan_interface"):
        fakes[name] = type(sys)(name)
        monkeypatch.setitem(sys.modules, name, fakes[name])
    fakes["causal_conv1d"].causal_conv1d_fn = "conv kernel"
    fakes["mamba_ssm.ops.selective_scan_interface"].selective_scan_fn = "scan kernel"
    mamba._load_cuda_kernels.cache_clear()
    try:
        assert mamba._load_cuda_kernels() == ("conv kernel", "scan kernel")
        assert mamba._kernels_for(torch.zeros(1)) is None  # CPU tensors never use them
    finally:
        mamba._load_cuda_kernels.cache_clear()


LAZY_IMPORT_PROBE = """
import sys, torch
from transformers import MambaConfig
import mmreason.layers.mamba as mamba
assert "mamba_ssm" not in sys.modules and "causal_conv1d" not in sys.modules, "imported at package import"
config = MambaConfig(vocab_size=8, hidden_size=8, state_size=2, num_hidden_layers=1)
mamba.MambaStack(config)(torch.randn(1, 5, 8))
assert "mamba_ssm" not in sys.modules, "kernels imported for a CPU input"
"""


def test_kernels_are_imported_lazily_and_never_for_cpu_inputs(tmp_path):
    """With a mamba_ssm that fails loudly on import, importing and running on CPU must not touch it."""
    for package in ("mamba_ssm", "causal_conv1d"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text(f"raise RuntimeError('{package} imported')\n")
    search_path = os.pathsep.join([str(tmp_path), *sys.path])
    environment = os.environ | {"PYTHONPATH": search_path, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", LAZY_IMPORT_PROBE], env=environment, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
