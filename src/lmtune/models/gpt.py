"""A GPT you can read top to bottom (GPT-2 architecture), weight-compatible with Hugging Face GPT-2.

token + position embeddings -> n_layer x [LayerNorm -> causal self-attention -> +, LayerNorm -> MLP -> +]
-> final LayerNorm -> output layer tied to the token embeddings.

Selected with `model.impl: native`. `save_pretrained` writes a folder that `GPT2LMHeadModel` loads as-is,
and `from_pretrained` reads any HF GPT-2 folder, so runs interoperate with the transformers ecosystem."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lmtune.tasks.losses import causal_lm_loss


@dataclass
class GPTConfig:
    vocab_size: int = 50257
    n_positions: int = 1024  # longest sequence
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    layer_norm_epsilon: float = 1e-5
    eos_token_id: int | None = None

    def to_hf(self):
        from transformers import GPT2Config

        return GPT2Config(
            vocab_size=self.vocab_size,
            n_positions=self.n_positions,
            n_layer=self.n_layer,
            n_head=self.n_head,
            n_embd=self.n_embd,
            resid_pdrop=self.dropout,
            embd_pdrop=self.dropout,
            attn_pdrop=self.dropout,
            layer_norm_epsilon=self.layer_norm_epsilon,
            bos_token_id=self.eos_token_id,
            eos_token_id=self.eos_token_id,
            architectures=["GPT2LMHeadModel"],
        )

    @classmethod
    def from_hf(cls, hf) -> "GPTConfig":
        return cls(
            vocab_size=hf.vocab_size,
            n_positions=hf.n_positions,
            n_layer=hf.n_layer,
            n_head=hf.n_head,
            n_embd=hf.n_embd,
            dropout=hf.resid_pdrop,
            layer_norm_epsilon=hf.layer_norm_epsilon,
            eos_token_id=hf.eos_token_id,
        )


@dataclass
class GPTOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # query, key, value in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        dropout = self.dropout if self.training else 0.0
        if key_padding is None:  # the fast path: SDPA's own causal kernel
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:  # padded batch: causal AND not a pad key
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            mask = causal[None, None] & key_padding[:, None, None, :]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))  # GPT-2's "gelu_new"


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), key_padding)  # pre-norm residual blocks
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as in GPT-2
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None
    ) -> GPTOutput:
        B, T = input_ids.shape
        if T > self.config.n_positions:
            raise ValueError(f"sequence of {T} tokens is longer than n_positions={self.config.n_positions}")
        positions = torch.arange(T, device=input_ids.device)
        x = self.drop(self.wte(input_ids) + self.wpe(positions))
        key_padding = None if attention_mask is None or bool(attention_mask.all()) else attention_mask.bool()
        for block in self.h:
            x = block(x, key_padding)
        logits = self.lm_head(self.ln_f(x))
        loss = None
        if labels is not None:  # position t predicts token t+1
            loss = causal_lm_loss(logits, labels)
        return GPTOutput(logits=logits, loss=loss)

    # ---- what the rest of lmtune (and HF habits) expect of a model --------------------------------------
    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def tie_weights(self) -> None:
        self.lm_head.weight = self.wte.weight

    # ---- Hugging Face GPT-2 weights, both ways ------------------------------------------------------------
    # HF GPT-2 stores its linear layers as Conv1D with weights [in, out]: transpose to nn.Linear's [out, in].
    _CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, tensor in self.state_dict().items():
            if name == "lm_head.weight":
                continue  # tied to wte
            t = tensor.t() if name.endswith(self._CONV1D) else tensor
            out[f"transformer.{name}"] = t.contiguous()
        return out

    def load_hf_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        own = {}
        for name, tensor in state.items():
            if not name.startswith("transformer.") or name.endswith((".attn.bias", ".attn.masked_bias")):
                continue  # lm_head is tied; attn.bias is an old causal-mask buffer
            key = name.removeprefix("transformer.")
            own[key] = tensor.t() if key.endswith(self._CONV1D) else tensor
        missing, unexpected = self.load_state_dict(own, strict=False)
        if set(missing) - {"lm_head.weight"} or unexpected:
            raise ValueError(f"not a GPT-2 state dict: missing {missing[:3]}, unexpected {unexpected[:3]}")
        self.tie_weights()

    def save_pretrained(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.to_hf().save_pretrained(folder)
        save_file(self.hf_state_dict(), folder / "model.safetensors", metadata={"format": "pt"})
        (folder / "lmtune_native.json").write_text(json.dumps(asdict(self.config)))

    def load_pretrained_weights(self, folder: str | Path) -> None:
        from safetensors.torch import load_file

        self.load_hf_state_dict(load_file(Path(folder) / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "GPT":
        """Any Hugging Face GPT-2 folder (safetensors), e.g. a `final/` of an HF-impl run."""
        from transformers import GPT2Config

        model = cls(GPTConfig.from_hf(GPT2Config.from_pretrained(folder)))
        model.load_pretrained_weights(folder)
        return model
