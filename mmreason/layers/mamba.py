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


def auto_chunk_size(length: int) -> int:
    """About √length, a power of two in [16, 64]: the two loops of ``linear_scan`` then take
    about 2√length steps, each large enough to amortise its Python overhead (measured on CPU)."""
    return min(64, max(16, 2 ** round(math.log2(max(length, 1)) / 2)))


@torch.no_grad()
def linear_scan(log_decay: torch.Tensor, inputs: torch.Tensor, chunk_size: int | None = None,
                reverse: bool = False) -> torch.Tensor:
    """All states of h_t = exp(a_t) h_{t-1} + b_t along dim 1, h_0 = 0; (batch, length, ...) in and out.
    ``inputs`` (b) is consumed: unless padding was needed, its memory becomes the states.

    ``reverse`` runs the recurrence from the end: h_t = exp(a_t) h_{t+1} + b_t. Time is cut
    into chunks of ``chunk_size`` (default :func:`auto_chunk_size`). One loop walks the
    positions of every chunk at once (each chunk's states from a zero start, and the chunk's
    cumulative decay), a second carries the state from chunk to chunk: O(length) work in
    about 2√length vectorised steps, instead of a Python step per token.
    """
    length = log_decay.shape[1]
    chunk_size = chunk_size or auto_chunk_size(length)
    num_chunks = -(-length // chunk_size)
    chunk_size = -(-length // num_chunks)  # same number of chunks, least padding
    padding = [0, 0] * (log_decay.dim() - 2) + [0, num_chunks * chunk_size - length]
    if padding[-1]:  # zero padding at the end: no input, so it adds nothing in either direction
        log_decay, inputs = F.pad(log_decay, padding), F.pad(inputs, padding)
    decay = log_decay.exp().unflatten(1, (num_chunks, chunk_size))
    states = inputs.unflatten(1, (num_chunks, chunk_size))
    step = -1 if reverse else 1
    positions = range(chunk_size - 2, -1, -1) if reverse else range(1, chunk_size)
    for t in positions:
        states[:, :, t].addcmul_(decay[:, :, t], states[:, :, t - step])
        decay[:, :, t].mul_(decay[:, :, t - step])
    edge = slice(0, 1) if reverse else slice(-1, None)  # the state a chunk hands to the next one
    for chunk in range(num_chunks - 2, -1, -1) if reverse else range(1, num_chunks):
        states[:, chunk].addcmul_(decay[:, chunk], states[:, chunk - step, edge])
    return states.flatten(1, 2)[:, :length]


class _SelectiveScan(torch.autograd.Function):
    """The selective scan with a hand-written backward: the adjoint recurrence is the same scan
    run in reverse, and every gradient is reduced straight to its parameter's shape, so autograd
    keeps one (batch, length, channels, state) tensor (the states) instead of every intermediate."""

    @staticmethod
    def forward(ctx, dt, A, dt_x, B, C, chunk_size):
        states = linear_scan(dt[..., None] * A, dt_x[..., None] * B[:, :, None, :], chunk_size)
        ctx.save_for_backward(dt, A, dt_x, B, C, states)
        ctx.chunk_size = chunk_size
        final_state = states[:, -1].clone()
        ctx.mark_non_differentiable(final_state)
        return torch.einsum("blen,bln->ble", states, C), final_state

    @staticmethod
    def backward(ctx, grad_y, _grad_final_state):
        dt, A, dt_x, B, C, states = ctx.saved_tensors
        log_decay = dt[..., None] * A
        # adjoint g_t = dL/dh_t + exp(a_{t+1}) g_{t+1}: the forward scan, reversed, with decays shifted
        next_log_decay = F.pad(log_decay[:, 1:], [0, 0, 0, 0, 0, 1])
        adjoint = linear_scan(next_log_decay, grad_y[..., None] * C[:, :, None, :], ctx.chunk_size, reverse=True)
        grad_C = torch.einsum("blen,ble->bln", states, grad_y)
        grad_dt_x = torch.einsum("blen,bln->ble", adjoint, B)
        grad_B = torch.einsum("blen,ble->bln", adjoint, dt_x)
        # dh_t / da_t = exp(a_t) h_{t-1}; the adjoint's memory becomes the decay gradient
        grad_log_decay = adjoint.mul_(log_decay.exp_()).mul_(F.pad(states[:, :-1], [0, 0, 0, 0, 1, 0]))
        grad_dt = torch.einsum("blen,en->ble", grad_log_decay, A)
        grad_A = torch.einsum("blen,ble->en", grad_log_decay, dt)
        return grad_dt, grad_A, grad_dt_x, grad_B, grad_C, None


def selective_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """y_t = C_t·h_t with h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t x_t, h_0 = 0, as a chunked parallel scan.

    x, dt (Δ after softplus): (batch, length, channels); A (≤ 0): (channels, state);
    B, C: (batch, length, state). Returns y (batch, length, channels) and the final
    state (batch, channels, state; for decoding, not differentiable).
    """
    return _SelectiveScan.apply(dt, A, dt * x, B, C, chunk_size)


def _mask_padding(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Zero (batch, length, ·) states where attention_mask (batch, length) is 0, as transformers does."""
    return hidden_states if attention_mask is None else hidden_states * attention_mask[:, :, None]


class MambaBlock(nn.Module):
    """The Mamba mixer, with transformers' `MambaMixer` parameter names, shapes and A, D, Δ init."""

    def __init__(self, config: MambaConfig, chunk_size: int | None = None):
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
            x = F.silu(self.conv1d(conv_input.contiguous())[..., :length])  # strided input: slow backward
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

    def __init__(self, config: MambaConfig, chunk_size: int | None = None):
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
                 chunk_size: int | None = None):
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
