"""Mamba (S6) blocks for Meteor's rationale embedder, in float32 on any device.

Meteor reads image + question (+ rationale) with a small Mamba and hands its
states at the `<tor>` positions to the backbone. The blocks here keep the
parameter names of transformers' `MambaMixer` / `MambaModel`, so a
`state-spaces/mamba-130m-hf` state dict loads by name. CUDA users get the fused
`mamba-ssm` / `causal-conv1d` kernels when they import (`pip install
'mmreason[cuda]'`); everyone else, CPU users first, gets a chunked parallel scan
in PyTorch instead of a Python loop over every token. Mamba always computes in
float32 (bf16 is unstable upstream): inputs are cast up, outputs cast back.

Per channel the selective SSM is h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t x_t,
y_t = C_t·h_t + D x_t, gated by SiLU(z_t), after a causal depthwise conv.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from transformers import MambaConfig

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 64


class _CudaKernels(NamedTuple):
    causal_conv1d_fn: Callable
    selective_scan_fn: Callable


@functools.cache
def _load_cuda_kernels() -> _CudaKernels | None:
    """The fused kernels, or None when they do not import; tried once, on first CUDA use."""
    try:
        from causal_conv1d import causal_conv1d_fn
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError as error:
        logger.warning("mamba-ssm kernels unavailable (%s): Mamba uses the PyTorch parallel scan on CUDA. "
                       "Install them with: pip install 'mmreason[cuda]'", error)
        return None
    return _CudaKernels(causal_conv1d_fn, selective_scan_fn)


def _kernels_for(tensor: torch.Tensor) -> _CudaKernels | None:
    return _load_cuda_kernels() if tensor.is_cuda else None


@dataclass
class MambaState:
    """Decoding state of one block: the last `conv_kernel` conv inputs and the SSM state."""

    conv_state: torch.Tensor  # (batch, intermediate, conv_kernel), oldest input first
    ssm_state: torch.Tensor  # (batch, intermediate, state_size)


def _prefix_scan(log_decay: torch.Tensor, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hillis–Steele scan of h_t = exp(a_t) h_{t-1} + b_t along dim 2, from h = 0.

    Pairs (a, b) combine as (a_1 + a_2, exp(a_2) b_1 + b_2); since every a ≤ 0 only
    non-positive numbers are exponentiated. Returns the cumulative log-decays and the states.
    """
    offset = 1
    while offset < log_decay.shape[2]:
        earlier_inputs, earlier_log_decay = inputs[:, :, :-offset], log_decay[:, :, :-offset]
        later_inputs, later_log_decay = inputs[:, :, offset:], log_decay[:, :, offset:]
        carried = later_inputs + later_log_decay.exp() * earlier_inputs
        inputs = torch.cat([inputs[:, :, :offset], carried], dim=2)
        log_decay = torch.cat([log_decay[:, :, :offset], later_log_decay + earlier_log_decay], dim=2)
        offset *= 2
    return log_decay, inputs


def selective_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """y_t = C_t·h_t with h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t x_t, h_0 = 0, as a chunked parallel scan.

    x, dt (Δ after softplus): (batch, length, channels); A (≤ 0): (channels, state);
    B, C: (batch, length, state). Returns y (batch, length, channels) and the final
    state (batch, channels, state). Within each chunk a log-depth prefix scan runs
    on all chunks at once; a short loop then carries the state across chunks.
    Autograd keeps about 2·log2(chunk_size) tensors of size batch·length·channels·state.
    """
    batch, length, channels = x.shape
    num_chunks = -(-length // chunk_size)
    chunk_size = -(-length // num_chunks)  # same number of chunks, least padding
    padding = num_chunks * chunk_size - length
    log_decay = dt[..., None] * A  # (batch, length, channels, state)
    inputs = (dt * x)[..., None] * B[:, :, None, :]
    # zero padding at the end: decay exp(0) = 1 and no input, so the final state is unchanged
    log_decay, inputs = (F.pad(t, (0, 0, 0, 0, 0, padding)).unflatten(1, (num_chunks, chunk_size))
                         for t in (log_decay, inputs))
    cumulative_log_decay, local_states = _prefix_scan(log_decay, inputs)

    state = x.new_zeros(batch, channels, A.shape[1])
    incoming = []
    for chunk in range(num_chunks):
        incoming.append(state)
        state = cumulative_log_decay[:, chunk, -1].exp() * state + local_states[:, chunk, -1]
    states = local_states + cumulative_log_decay.exp() * torch.stack(incoming, dim=1)[:, :, None]
    C = F.pad(C, (0, 0, 0, padding)).unflatten(1, (num_chunks, chunk_size))
    y = torch.einsum("bkten,bktn->bkte", states, C).flatten(1, 2)[:, :length]
    return y, state


def _mask_padding(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Zero (batch, length, ·) states where attention_mask (batch, length) is 0, as transformers does."""
    return hidden_states if attention_mask is None else hidden_states * attention_mask[:, :, None]


class MambaBlock(nn.Module):
    """The Mamba mixer, with transformers' `MambaMixer` parameter names, shapes and A, D, Δ init."""

    def __init__(self, config: MambaConfig, chunk_size: int = DEFAULT_CHUNK_SIZE):
        super().__init__()
        if config.hidden_act not in ("silu", "swish"):
            raise ValueError(f"MambaBlock supports hidden_act 'silu' (what Mamba checkpoints use), "
                             f"got {config.hidden_act!r}")
        self.config = config
        self.chunk_size = chunk_size
        self.intermediate_size = config.intermediate_size
        self.state_size = config.state_size
        self.conv_kernel = config.conv_kernel
        self.time_step_rank = int(config.time_step_rank)
        self.in_proj = nn.Linear(config.hidden_size, 2 * self.intermediate_size, bias=config.use_bias)
        self.conv1d = nn.Conv1d(self.intermediate_size, self.intermediate_size, config.conv_kernel,
                                groups=self.intermediate_size, padding=config.conv_kernel - 1,
                                bias=config.use_conv_bias)
        self.x_proj = nn.Linear(self.intermediate_size, self.time_step_rank + 2 * self.state_size, bias=False)
        self.dt_proj = nn.Linear(self.time_step_rank, self.intermediate_size, bias=True)
        self.A_log = nn.Parameter(torch.empty(self.intermediate_size, self.state_size))
        self.D = nn.Parameter(torch.empty(self.intermediate_size))
        self.out_proj = nn.Linear(self.intermediate_size, config.hidden_size, bias=config.use_bias)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """S4D-real A = -(1..state_size), D = 1, Δ log-uniform in [time_step_min, time_step_max]."""
        config = self.config
        self.A_log.copy_(torch.arange(1, self.state_size + 1).log().expand_as(self.A_log))
        self.D.fill_(1.0)
        dt_init_std = self.time_step_rank ** -0.5 * config.time_step_scale
        if config.time_step_init_scheme == "constant":
            nn.init.constant_(self.dt_proj.weight, dt_init_std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        log_min, log_max = math.log(config.time_step_min), math.log(config.time_step_max)
        dt = torch.exp(torch.rand(self.intermediate_size) * (log_max - log_min) + log_min)
        dt = dt.clamp(min=config.time_step_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        if self.conv1d.bias is not None:
            self.conv1d.bias.zero_()

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> MambaState:
        """An all-zero state: what `step` starts from without a prompt."""
        return MambaState(
            torch.zeros(batch_size, self.intermediate_size, self.conv_kernel, device=device),
            torch.zeros(batch_size, self.intermediate_size, self.state_size, device=device))

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                return_state: bool = False) -> torch.Tensor | tuple[torch.Tensor, MambaState]:
        """(batch, length, hidden) → same shape and dtype; with return_state also the state for `step`."""
        with torch.autocast(hidden_states.device.type, enabled=False):
            output, state = self._mix(hidden_states.float(), attention_mask, _kernels_for(hidden_states))
        output = output.to(hidden_states.dtype)
        return (output, state) if return_state else output

    def _mix(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None,
             kernels: _CudaKernels | None) -> tuple[torch.Tensor, MambaState]:
        length = hidden_states.shape[1]
        projected = self.in_proj(_mask_padding(hidden_states, attention_mask)).transpose(1, 2)
        conv_input, gate = projected.chunk(2, dim=1)  # (batch, intermediate, length) each
        conv_state = F.pad(conv_input, (max(self.conv_kernel - length, 0), 0))[..., -self.conv_kernel:]
        if kernels is None:
            x = F.silu(self.conv1d(conv_input)[..., :length])
        else:
            x = kernels.causal_conv1d_fn(conv_input.contiguous(), self.conv1d.weight.squeeze(1),
                                         self.conv1d.bias, activation="silu")
        x = _mask_padding(x.transpose(1, 2), attention_mask)  # (batch, length, intermediate)
        dt_low_rank, B, C = self._select(x)
        A = -self.A_log.exp()
        if kernels is None:
            y, ssm_state = selective_scan(x, F.softplus(self.dt_proj(dt_low_rank)), A, B, C, self.chunk_size)
            y = (y + x * self.D) * F.silu(gate.transpose(1, 2))
        else:
            dt_before_bias = (dt_low_rank @ self.dt_proj.weight.T).transpose(1, 2).contiguous()
            x_cf, B_cf, C_cf = (t.transpose(1, 2).contiguous() for t in (x, B, C))  # channels first
            y, ssm_state = kernels.selective_scan_fn(
                x_cf, dt_before_bias, A, B_cf, C_cf, self.D, z=gate.contiguous(),
                delta_bias=self.dt_proj.bias, delta_softplus=True, return_last_state=True)
            y = y.transpose(1, 2)
        return self.out_proj(y), MambaState(conv_state, ssm_state)

    def _select(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The input-dependent parameters: low-rank Δ, B and C."""
        return self.x_proj(x).split([self.time_step_rank, self.state_size, self.state_size], dim=-1)

    def step(self, hidden_states: torch.Tensor, state: MambaState) -> torch.Tensor:
        """One token: (batch, hidden) → (batch, hidden) in the input dtype; advances `state`."""
        with torch.autocast(hidden_states.device.type, enabled=False):
            conv_input, gate = self.in_proj(hidden_states.float()).chunk(2, dim=-1)
            state.conv_state = torch.cat([state.conv_state[..., 1:], conv_input[..., None]], dim=-1)
            x = F.silu(F.conv1d(state.conv_state, self.conv1d.weight, self.conv1d.bias,
                                groups=self.intermediate_size).squeeze(-1))
            dt_low_rank, B, C = self._select(x)
            dt = F.softplus(self.dt_proj(dt_low_rank))
            decay = torch.exp(dt[..., None] * -self.A_log.exp())
            state.ssm_state = decay * state.ssm_state + (dt * x)[..., None] * B[:, None, :]
            y = (state.ssm_state @ C[..., None]).squeeze(-1) + x * self.D
            output = self.out_proj(y * F.silu(gate))
        return output.to(hidden_states.dtype)


class MambaLayer(nn.Module):
    """Pre-norm residual block x + mixer(RMSNorm(x)), named like transformers' `MambaBlock`."""

    def __init__(self, config: MambaConfig, chunk_size: int = DEFAULT_CHUNK_SIZE):
        super().__init__()
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.mixer = MambaBlock(config, chunk_size)

    def forward(self, hidden_states: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, MambaState]:
        mixed, state = self.mixer(self.norm(hidden_states), attention_mask, return_state=True)
        return hidden_states + mixed, state

    def step(self, hidden_states: torch.Tensor, state: MambaState) -> torch.Tensor:
        return hidden_states + self.mixer.step(self.norm(hidden_states), state)


class MambaStack(nn.Module):
    """`layers.{i}.norm|mixer` and `norm_f` of transformers' `MambaModel` (plus `embeddings` if asked).

    Takes input embeddings, so callers can splice image features in; the residual
    stream stays in float32 and the output comes back in the input dtype.
    """

    def __init__(self, config: MambaConfig, with_embeddings: bool = False,
                 chunk_size: int = DEFAULT_CHUNK_SIZE):
        super().__init__()
        self.config = config
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size) if with_embeddings else None
        self.layers = nn.ModuleList(MambaLayer(config, chunk_size) for _ in range(config.num_hidden_layers))
        self.norm_f = nn.RMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)

    def init_states(self, batch_size: int, device: torch.device | str | None = None) -> list[MambaState]:
        return [layer.mixer.init_state(batch_size, device) for layer in self.layers]

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None,
                return_states: bool = False) -> torch.Tensor | tuple[torch.Tensor, list[MambaState]]:
        """(batch, length, hidden) → final-norm states; with return_states also one state per layer."""
        states = []
        with torch.autocast(inputs_embeds.device.type, enabled=False):
            hidden_states = inputs_embeds.float()
            for layer in self.layers:
                hidden_states, state = layer(hidden_states, attention_mask)
                states.append(state)
            output = self.norm_f(hidden_states).to(inputs_embeds.dtype)
        return (output, states) if return_states else output

    def step(self, inputs_embeds: torch.Tensor, states: list[MambaState]) -> torch.Tensor:
        """One token (batch, hidden) → (batch, hidden); advances every layer's state."""
        with torch.autocast(inputs_embeds.device.type, enabled=False):
            hidden_states = inputs_embeds.float()
            for layer, state in zip(self.layers, states, strict=True):
                hidden_states = layer.step(hidden_states, state)
            return self.norm_f(hidden_states).to(inputs_embeds.dtype)
