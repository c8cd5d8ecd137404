"""ONNX attention-family ops: Attention (opset 23+), RotaryEmbedding and the other ops of that family.

Also LinearAttention and CausalConvWithState (opset 27) and the preview-domain FlexAttention.

Precision: every op computes in a wide accumulation dtype (float64 for float32/float64
inputs, float32 for half types) and rounds to the input dtype at the points where the
ONNX definition (its function body and reference) keeps a tensor in the input dtype:
after the scaled Q and K, after QK^T, around softcap, mask addition and softmax, and
after the final MatMul. For float32 that rounding is harmless; for float16 it makes
the oracle agree with the definition to the last unit instead of drifting a few ulps.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from kiln.ir.dtypes import onnx_to_torch
from kiln.kernels.reference.registry import reference_op

Tensor = torch.Tensor


def _acc(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 for float32/float64, float32 for 16-bit floats."""
    return torch.float64 if dtype in (torch.float32, torch.float64) else torch.float32


def _round(t: Tensor, dtype: torch.dtype) -> Tensor:
    """`t` rounded to `dtype` and widened back, emulating a tensor stored in `dtype`."""
    return t.to(dtype).to(t.dtype)


def _heads_first(x: Tensor, num_heads: int) -> Tensor:
    """[B, S, H*D] -> [B, H, S, D]."""
    b, s, hidden = x.shape
    if num_heads <= 0 or hidden % num_heads:
        raise ValueError(f"hidden size {hidden} is not divisible by num_heads {num_heads}")
    return x.reshape(b, s, num_heads, hidden // num_heads).transpose(1, 2)


def _heads_last(x: Tensor) -> Tensor:
    """[B, H, S, D] -> [B, S, H*D]."""
    b, h, s, d = x.shape
    return x.transpose(1, 2).reshape(b, s, h * d)


def _repeat_kv(x: Tensor, q_heads: int) -> Tensor:
    """Repeat each KV head q_heads / kv_heads times along axis 1 (h0, h0, h1, h1, ...)."""
    kv_heads = x.shape[1]
    if q_heads == kv_heads:
        return x
    if kv_heads <= 0 or q_heads % kv_heads:
        raise ValueError(f"q_num_heads {q_heads} is not a multiple of kv_num_heads {kv_heads}")
    return x.repeat_interleave(q_heads // kv_heads, dim=1)


# ---------------------------------------------------------------- Attention


def _softmax_rounded(x: Tensor, dtype: torch.dtype) -> Tensor:
    """Softmax over the last axis with each step stored in `dtype`; all -inf rows give 0."""
    row_max = x.amax(dim=-1, keepdim=True)
    safe_max = torch.where(torch.isneginf(row_max), torch.zeros_like(row_max), row_max)
    e = _round(torch.exp(_round(x - safe_max, dtype)), dtype)
    s = _round(e.sum(dim=-1, keepdim=True), dtype)
    s = torch.where(s == 0, torch.ones_like(s), s)
    return _round(e / s, dtype)


def _frontier(q_len: int, kv_len: int, offset: Tensor | int, device: torch.device) -> Tensor:
    """diff[.., i, j] = i + offset - j: a query's absolute position minus the key's.

    A scalar offset gives [q, kv]; a per-batch offset [B] gives [B, 1, q, kv].
    """
    i = torch.arange(q_len, device=device).reshape(q_len, 1)
    j = torch.arange(kv_len, device=device).reshape(1, kv_len)
    if isinstance(offset, Tensor):
        return (i + offset.to(device=device, dtype=torch.int64).reshape(-1, 1, 1, 1)) - j
    return i + int(offset) - j


def _attention_bias(attn_mask: Tensor | None, q_len: int, kv_len: int, is_causal: int,
                    past_len: int, nonpad: Tensor | None, left: int, right: int,
                    acc: torch.dtype, device: torch.device) -> Tensor:
    """The additive bias (0 or -inf or the float mask), broadcastable to [B, H, q, kv]."""
    zero = torch.zeros((), dtype=acc, device=device)
    ninf = torch.full((), -math.inf, dtype=acc, device=device)
    bias = torch.zeros((q_len, kv_len), dtype=acc, device=device)
    if attn_mask is not None:
        pad = kv_len - attn_mask.shape[-1]
        if attn_mask.dtype == torch.bool:
            m = F.pad(attn_mask, (0, pad), value=False) if pad > 0 else attn_mask
            m = torch.where(m, zero, ninf)
        else:
            m = attn_mask.to(acc)
            m = F.pad(m, (0, pad), value=-math.inf) if pad > 0 else m
        bias = bias + m
    # Offset of the query block inside the key sequence: the cached keys before it.
    offset: Tensor | int = past_len
    if past_len == 0 and nonpad is not None:
        offset = nonpad.reshape(-1).to(torch.int64) - q_len
    if is_causal:
        bias = bias + torch.where(_frontier(q_len, kv_len, offset, device) >= 0, zero, ninf)
    if left >= 0 or right >= 0:
        diff = _frontier(q_len, kv_len, offset, device)
        allowed = torch.ones_like(diff, dtype=torch.bool)
        if left >= 0:
            allowed &= diff <= left
        if right >= 0:
            allowed &= -diff <= right
        bias = bias + torch.where(allowed, zero, ninf)
    if nonpad is not None:
        keep = torch.arange(kv_len, device=device) < nonpad.to(device).reshape(-1, 1, 1, 1)
        bias = bias + torch.where(keep, zero, ninf)
    return bias


def _softcap(x: Tensor, cap: float, dtype: torch.dtype) -> Tensor:
    return _round(_round(torch.tanh(_round(x / cap, dtype)), dtype) * cap, dtype)


@reference_op("Attention", since=23)
def attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None,
              past_key: Tensor | None = None, past_value: Tensor | None = None,
              nonpad_kv_seqlen: Tensor | None = None, *, is_causal: int = 0,
              kv_num_heads: int | None = None, q_num_heads: int | None = None,
              qk_matmul_output_mode: int = 0, scale: float | None = None, softcap: float = 0.0,
              softmax_precision: int | None = None, left_window_size: int = -1,
              right_window_size: int = -1) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Y = softmax(Q*sqrt(scale) @ (K*sqrt(scale))^T [softcapped] + bias) @ V, with KV cache and GQA.

    Inputs are [B, H, S, D] or [B, S, H*D] (then q_num_heads/kv_num_heads say H). bias comes
    from attn_mask (bool: keep True; float: added), is_causal (bottom-right aligned after
    the past keys), the opset-25 sliding window and nonpad_kv_seqlen. Returns
    (Y, present_key, present_value, qk_matmul_output); qk_matmul_output_mode picks the
    latter: 0 raw QK^T, 1 after softcap, 2 after the bias, 3 after softmax. A query row
    whose bias is all -inf yields zeros.
    """
    if (past_key is None) != (past_value is None):
        raise ValueError("past_key and past_value must be given together")
    dtype = q.dtype
    acc = _acc(dtype)
    three_d = q.dim() == 3
    if three_d:
        if q_num_heads is None or kv_num_heads is None:
            raise ValueError("3D Attention inputs need the q_num_heads and kv_num_heads attributes")
        q, k, v = _heads_first(q, q_num_heads), _heads_first(k, kv_num_heads), _heads_first(v, kv_num_heads)
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"Attention needs 3D or 4D Q, K, V; got ranks {q.dim()}, {k.dim()}, {v.dim()}")
    present_key = k if past_key is None else torch.cat([past_key.to(k.dtype), k], dim=2)
    present_value = v if past_value is None else torch.cat([past_value.to(v.dtype), v], dim=2)
    q_len, kv_len = q.shape[2], present_key.shape[2]
    past_len = 0 if past_key is None else past_key.shape[2]

    s = 1.0 / math.sqrt(q.shape[3]) if scale is None else float(scale)
    sqrt_s = torch.tensor(math.sqrt(s), dtype=dtype, device=q.device).to(acc)
    qs = _round(q.to(acc) * sqrt_s, dtype)
    ks = _round(_repeat_kv(present_key, q.shape[1]).to(acc) * sqrt_s, dtype)
    vv = _repeat_kv(present_value, q.shape[1]).to(acc)
    qk = _round(torch.matmul(qs, ks.transpose(-1, -2)), dtype)
    raw_qk = qk
    if softcap > 0:
        qk = _softcap(qk, softcap, dtype)
    bias = _attention_bias(attn_mask, q_len, kv_len, is_causal, past_len, nonpad_kv_seqlen,
                           left_window_size, right_window_size, acc, q.device)
    scores = _round(qk + bias, dtype)
    sm_dtype = dtype if softmax_precision is None else onnx_to_torch(softmax_precision)
    probs = _softmax_rounded(_round(scores, sm_dtype), sm_dtype)
    masked_rows = torch.isneginf(bias.amax(dim=-1, keepdim=True))
    probs = _round(torch.where(masked_rows, torch.zeros_like(probs), probs), dtype)
    y = torch.matmul(probs, vv).to(dtype)
    qk_out = (raw_qk, qk, scores, probs)[qk_matmul_output_mode]
    return (_heads_last(y) if three_d else y), present_key, present_value, qk_out.to(dtype)


# ---------------------------------------------------------------- RotaryEmbedding


@reference_op("RotaryEmbedding", since=23)
def rotary_embedding(x: Tensor, cos_cache: Tensor, sin_cache: Tensor, position_ids: Tensor | None = None, *,
                     interleaved: int = 0, num_heads: int = 0, rotary_embedding_dim: int = 0) -> Tensor:
    """Rotate the first rotary_embedding_dim features of each head by (cos, sin) of its position.

    X is [B, H, S, D] or [B, S, H*D] (num_heads says H). With position_ids [B, S] the caches
    [max_pos, R/2] are gathered, else they are [B, S, R/2]. interleaved pairs features
    (0,1), (2,3)...; otherwise the halves (i, i + R/2) are paired.
    """
    shape = x.shape
    if x.dim() == 4:
        xs = x.transpose(1, 2)  # [B, S, H, D]
    else:
        if not num_heads:
            raise ValueError("RotaryEmbedding with a 3D input needs the num_heads attribute")
        xs = x.reshape(shape[0], shape[1], num_heads, shape[2] // num_heads)
    rdim = rotary_embedding_dim or xs.shape[-1]
    if position_ids is not None:
        pos = position_ids.to(torch.int64)
        cos_cache, sin_cache = cos_cache[pos], sin_cache[pos]
    if cos_cache.shape[-1] != rdim // 2 or sin_cache.shape[-1] != rdim // 2:
        raise ValueError(f"cos/sin caches have {cos_cache.shape[-1]}/{sin_cache.shape[-1]} entries per "
                         f"position; rotary_embedding_dim {rdim} needs {rdim // 2}")
    acc = _acc(x.dtype)
    cos = cos_cache.to(acc).unsqueeze(2)  # [B, S, 1, R/2]
    sin = sin_cache.to(acc).unsqueeze(2)
    rot, rest = xs[..., :rdim].to(acc), xs[..., rdim:]
    x1, x2 = (rot[..., 0::2], rot[..., 1::2]) if interleaved else rot.chunk(2, dim=-1)
    real, imag = cos * x1 - sin * x2, sin * x1 + cos * x2
    rot = torch.stack((real, imag), dim=-1).flatten(-2) if interleaved else torch.cat((real, imag), dim=-1)
    out = torch.cat((rot.to(x.dtype), rest), dim=-1)
    return out.transpose(1, 2) if x.dim() == 4 else out.reshape(shape)


# ---------------------------------------------------------------- LinearAttention

_LINEAR_RULES = {"linear": (False, False), "gated": (True, False), "delta": (False, True),
                 "gated_delta": (True, True)}  # rule -> (decay gating, delta correction)


@reference_op("LinearAttention", since=27)
def linear_attention(query: Tensor, key: Tensor, value: Tensor, past_state: Tensor | None = None,
                     decay: Tensor | None = None, beta: Tensor | None = None, *, chunk_size: int = 64,
                     kv_num_heads: int | None = None, q_num_heads: int | None = None,
                     scale: float = 0.0, update_rule: str = "gated_delta") -> tuple[Tensor, Tensor]:
    """Recurrent linear attention over [B, T, H*D] inputs: (output [B, T, Hq*Dv], present_state).

    Per step t, on the state S [B, Hkv, Dk, Dv]: gated rules decay S *= exp(g_t); delta
    rules replace v_t by beta_t * (v_t - S^T k_t); then S += k_t v_t^T and
    o_t = scale * q_t S (KV heads shared by q_num_heads / kv_num_heads query heads).
    scale 0 means 1/sqrt(Dk); chunk_size is only a tuning hint.
    """
    if update_rule not in _LINEAR_RULES:
        raise ValueError(f"unknown update_rule {update_rule!r}; expected one of {sorted(_LINEAR_RULES)}")
    if q_num_heads is None or kv_num_heads is None:
        raise ValueError("LinearAttention needs the q_num_heads and kv_num_heads attributes")
    gated, delta = _LINEAR_RULES[update_rule]
    if gated != (decay is not None) or delta != (beta is not None):
        raise ValueError(f"update_rule {update_rule!r} needs decay: {gated}, beta: {delta}")
    acc = torch.float64
    b, t, _ = query.shape
    q4 = _heads_first(query, q_num_heads).to(acc)   # [B, Hq, T, Dk]
    k4 = _heads_first(key, kv_num_heads).to(acc)    # [B, Hkv, T, Dk]
    v4 = _heads_first(value, kv_num_heads).to(acc)  # [B, Hkv, T, Dv]
    dk, dv = k4.shape[-1], v4.shape[-1]
    if decay is not None:
        per_head = decay.shape[-1] == kv_num_heads
        g4 = (decay.reshape(b, t, kv_num_heads, 1).transpose(1, 2) if per_head
              else _heads_first(decay, kv_num_heads)).to(acc)  # [B, Hkv, T, 1 or Dk]
    if beta is not None:
        b4 = beta.reshape(b, t, beta.shape[-1], 1).transpose(1, 2).to(acc)  # [B, Hkv or 1, T, 1]
    state_dtype = query.dtype if past_state is None else past_state.dtype
    state = (torch.zeros((b, kv_num_heads, dk, dv), dtype=acc, device=query.device) if past_state is None
             else past_state.to(acc))
    s = float(scale) if scale else 1.0 / math.sqrt(dk)
    outs = []
    for i in range(t):
        k_t, v_t = k4[:, :, i], v4[:, :, i]
        if gated:
            state = state * torch.exp(g4[:, :, i]).unsqueeze(-1)
        if delta:
            retrieved = torch.einsum("bhdm,bhd->bhm", state, k_t)
            v_t = b4[:, :, i] * (v_t - retrieved)
        state = state + k_t.unsqueeze(-1) * v_t.unsqueeze(-2)
        outs.append(s * torch.einsum("bhd,bhdm->bhm", q4[:, :, i], _repeat_kv(state, q_num_heads)))
    out = torch.stack(outs, dim=2) if outs else q4.new_zeros((b, q_num_heads, 0, dv))
    return _heads_last(out).to(query.dtype), state.to(state_dtype)


# ---------------------------------------------------------------- CausalConvWithState


@reference_op("CausalConvWithState", since=27)
def causal_conv_with_state(x: Tensor, weight: Tensor, bias: Tensor | None = None,
                           past_state: Tensor | None = None, *, activation: str = "none") -> tuple[Tensor, Tensor]:
    """Depthwise causal Conv1d over [B, C, L] with a carried state of the last k-1 inputs.

    The input is left-padded with past_state [B, C, k-1] (zeros if absent), convolved with
    weight [C, 1, k] (+ bias [C]), optionally passed through SiLU ("silu" or "swish").
    Returns (output [B, C, L], present_state = the last k-1 columns of the padded input).
    """
    if activation not in ("none", "silu", "swish"):
        raise ValueError(f"unknown activation {activation!r}; expected 'none', 'silu' or 'swish'")
    b, c, _ = x.shape
    k = weight.shape[2]
    pad = x.new_zeros((b, c, k - 1)) if past_state is None else past_state.to(x.dtype)
    padded = torch.cat([pad, x], dim=2)
    acc = _acc(x.dtype)
    out = F.conv1d(padded.to(acc), weight.to(acc), None if bias is None else bias.to(acc), groups=c)
    out = out.to(x.dtype)
    if activation != "none":
        o = out.to(acc)
        out = (o * torch.sigmoid(o)).to(x.dtype)
    return out, padded[:, :, padded.shape[2] - (k - 1):]


# ---------------------------------------------------------------- FlexAttention

_SOFTMAX_PRECISIONS = {1: torch.float32, 10: torch.float16, 16: torch.bfloat16, 11: torch.float64}


def _call_mod(mod: Any, x: Tensor) -> Tensor:
    """Apply a score_mod / prob_mod body of one input and one output.

    The body is a callable `body(x) -> [y]` (the executor's bound subgraph), an unbound
    executor body (it has `bind(captures)`), or a kiln Graph run with the reference ops.
    """
    if not callable(mod) and hasattr(mod, "bind"):
        mod = mod.bind([])
    if callable(mod):
        result = mod(x)
        return result[0] if isinstance(result, (list, tuple)) else result
    from kiln.kernels.reference.interpret import run_graph

    if len(mod.inputs) != 1 or len(mod.outputs) != 1:
        raise ValueError(f"a FlexAttention modifier graph needs 1 input and 1 output, "
                         f"not {len(mod.inputs)} and {len(mod.outputs)}")
    outs = run_graph(mod, {mod.inputs[0].name: x}, x.device)
    return outs[mod.outputs[0].name]


@reference_op("FlexAttention", domain="ai.onnx.preview")
def flex_attention(q: Tensor, k: Tensor, v: Tensor, *, scale: float | None = None, score_mod: Any = None,
                   prob_mod: Any = None, softmax_precision: int | None = None) -> Tensor:
    """Y = prob_mod(softmax(score_mod(Q*sqrt(scale) @ (K*sqrt(scale))^T))) @ V over [B, H, S, D].

    score_mod / prob_mod are optional one-in, one-out graphs on the [B, Hq, L, S] scores and
    probabilities, computed in softmax_precision (default float32 for 16-bit inputs, else the
    input dtype). KV heads are shared by groups of query heads (GQA). scale defaults to 1/sqrt(D).
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"FlexAttention needs 4D Q, K, V; got ranks {q.dim()}, {k.dim()}, {v.dim()}")
    dtype = q.dtype
    acc = _acc(dtype)
    if softmax_precision is not None:
        sm = _SOFTMAX_PRECISIONS[int(softmax_precision)]
    else:
        sm = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    s = 1.0 / math.sqrt(q.shape[3]) if scale is None else float(scale)
    # The definition takes the square root in float32, then casts it to the input type.
    sqrt_s = torch.tensor(s, dtype=torch.float32).sqrt().to(dtype).to(device=q.device, dtype=acc)
    qs = _round(q.to(acc) * sqrt_s, dtype)
    ks = _round(_repeat_kv(k, q.shape[1]).to(acc) * sqrt_s, dtype)
    scores = torch.matmul(qs, ks.transpose(-1, -2)).to(dtype).to(sm)
    if score_mod is not None:
        scores = _call_mod(score_mod, scores).to(sm)
    probs = torch.softmax(scores.to(torch.float64 if sm in (torch.float32, torch.float64) else torch.float32),
                          dim=-1).to(sm)
    if prob_mod is not None:
        probs = _call_mod(prob_mod, probs).to(sm)
    vv = _repeat_kv(v, q.shape[1]).to(sm)
    y = torch.matmul(probs.to(_acc(sm)), vv.to(_acc(sm)))
    return y.to(v.dtype)

