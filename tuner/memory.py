"""Peak memory of a training run per device, from the model's shape and the composed
config: what stays for the whole run, plus the largest of what each phase of a step
adds, plus what the allocator keeps and the CUDA context.

Bytes (b micro-batch, s sequence length, T = b·s tokens, h hidden, I intermediate,
L layers, V vocabulary, kv the key/value width; p the bytes of an unquantised weight,
2 in bf16/fp16, 4 in fp32 on a CPU):

What stays:
- weights: p per parameter; the decoder's linear layers at 1 (8-bit) or about 0.516
  (NF4 in blocks of 64 with double-quantised scales) while embeddings and the LM head
  stay p. DPO without an adapter holds a frozen reference copy as well.
- LoRA adapter: r·(in + out) per adapted linear at 4 bytes (PEFT keeps adapters in
  fp32) or 2 where a framework trains everything in bf16 (torchtune, LitGPT bf16-true).
  Prompt tuning: n·h, the embeddings of its n virtual tokens, which also lengthen every
  sequence by n (PEFT prepends them), and whose gradient flows back through every
  layer, so the activations are saved as under LoRA.
- optimizer states: AdamW two moments in the trainable weights' dtype (torch creates
  them with `zeros_like`), 8-bit AdamW 2 bytes; DeepSpeed adds an fp32 master copy and
  keeps fp32 moments (12 bytes). bitsandbytes' paged optimizers put the states of
  every tensor of at least 100,000 elements in CUDA managed memory, outside PyTorch's
  allocator: counted apart (`paged_optimizer`), so a verdict can say "fits by paging".

What each phase adds (the peak is the largest):
- forward and loss: the activations saved for backward, per token and layer p bytes ×
  (8h + 2kv + 4I): norm inputs and outputs, q/k/v and the attention output, the MLP's
  gate, up, activation and product; LoRA dropout adds a dropped copy of every adapted
  input. FlashAttention/SDPA keep no s×s matrix. With gradient checkpointing only each
  layer's input (h) is kept. The loss: T·V 16-bit logits, their fp32 copy and the
  fp32 log-softmax (10 bytes each), or 2 when the loss is chunked.
- backward: the saved activations are freed as the gradients are written, so the
  phase peaks at the larger of the two, plus one layer's full activations recomputed
  when checkpointing. Gradients stay through the forward pass when gradients
  accumulate over micro-batches.
- optimizer step: all gradients, plus torch's multi-tensor (foreach) AdamW
  temporaries of one moment's size; fused and 8-bit kernels step tensor by tensor.
- QLoRA dequantises one weight at a time to 16-bit for its matmul: the largest linear.

Sharding (DeepSpeed ZeRO, FSDP as stage 3): stage 1 splits the optimizer states, 2
also the gradients, 3 also the weights over the GPUs, and stage 3 gathers the full
weights of two layers at a time (the one computed and the one prefetched).

The allocator: Axolotl runs PyTorch with expandable segments, so freed memory is
reused; what PyTorch reserves beyond its peak allocation is taken as one more block
of the largest short-lived tensor (the fp32 logits, or one layer's recomputed
activations), a modelling assumption that no published measurement checks yet.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from tuner.errors import TunerError
from tuner.project import PROMPT_TUNING, RECIPES, ROOT

GIB = 1024**3
# 4-bit values, an 8-bit scale per block of 64, an fp32 scale per 256 blocks.
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
# Optimizer state bytes per trainable parameter. AdamW's two moments take the trainable
# weights' dtype, or fp32 under DeepSpeed (see estimate).
FIXED_STATE_BYTES = {"adamw_8bit": 2.0, "sgd": 0.0, "adafactor": 4.0}
OPTIMIZERS = ("adamw", *FIXED_STATE_BYTES)
# bitsandbytes allocates the states of smaller tensors with PyTorch, unpaged.
PAGED_MIN_ELEMENTS = 100_000
LOSS_CHUNKS = 8
ZERO_SHARDS = {
    0: (),
    1: ("optimizer",),
    2: ("optimizer", "gradients"),
    3: ("optimizer", "gradients", "weights"),
}


@dataclass(frozen=True)
class Architecture:
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    qkv_bias: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of one decoder layer."""
        h, kv, inter = self.hidden, self.kv_width, self.intermediate
        return {
            "q_proj": (h, h),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (h, h),
            "gate_proj": (h, inter),
            "up_proj": (h, inter),
            "down_proj": (inter, h),
        }

    @property
    def linear_params(self) -> int:
        per_layer = sum(i * o for i, o in self.linear_shapes().values())
        bias = (self.hidden + 2 * self.kv_width) if self.qkv_bias else 0
        return self.layers * (per_layer + bias)

    @property
    def other_params(self) -> int:
        """Embeddings, the LM head when untied, and the norms."""
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return embeddings + (2 * self.layers + 1) * self.hidden

    @property
    def params(self) -> int:
        return self.linear_params + self.other_params

    def tensors(self) -> list[tuple[int, int]]:
        """(elements, how many) of each kind of weight tensor."""
        sizes = [(i * o, self.layers) for i, o in self.linear_shapes().values()]
        sizes += [
            (self.vocab * self.hidden, 1 if self.tied else 2),
            (self.hidden, 2 * self.layers + 1),
        ]
        if self.qkv_bias:
            sizes += [(self.hidden, self.layers), (self.kv_width, 2 * self.layers)]
        return sizes

    def lora_tensors(self, rank: int, targets: list[str] | None) -> list[tuple[int, int]]:
        """(elements, how many) of each kind of LoRA matrix: A is rank × in, B out × rank."""
        shapes = self.linear_shapes()
        chosen = shapes if targets is None else {k: v for k, v in shapes.items() if k in targets}
        return [(rank * n, self.layers) for i, o in chosen.values() for n in (i, o)]

    def lora_params(self, rank: int, targets: list[str] | None) -> int:
        return sum(n * count for n, count in self.lora_tensors(rank, targets))


def known_architectures() -> dict[str, dict[str, Any]]:
    return yaml.safe_load((RECIPES / "models.yaml").read_text())


def architecture_for(model: str) -> Architecture:
    """From a local folder's config.json, or from recipes/models.yaml by hub id."""
    folder = ROOT / model if not Path(model).is_absolute() else Path(model)
    if (folder / "config.json").is_file():
        config = json.loads((folder / "config.json").read_text())
        return Architecture(
            hidden=config["hidden_size"],
            layers=config["num_hidden_layers"],
            intermediate=config["intermediate_size"],
            heads=config["num_attention_heads"],
            kv_heads=config.get("num_key_value_heads", config["num_attention_heads"]),
            vocab=config["vocab_size"],
            tied=config.get("tie_word_embeddings", False),
            qkv_bias=config.get("attention_bias", config.get("model_type") == "qwen2"),
        )
    known = known_architectures()
    if model not in known:
        raise TunerError(
            f"The planner does not know the shape of '{model}'. Add it to "
            f"recipes/models.yaml (values from its config.json) or point base_model at a "
            f"local folder. Known: {', '.join(sorted(known))}."
        )
    return Architecture(**known[model])


@dataclass(frozen=True)
class Training:
    """What the memory depends on, read from a composed config."""

    micro_batch: int
    sequence_len: int  # the longest batch: sequence_len when packed or padded to it
    gradient_checkpointing: bool
    adapter: str | None  # "lora", "qlora", "prompt-tuning" or None (full fine-tuning)
    lora_rank: int
    lora_targets: list[str] | None  # None: every linear layer
    lora_dropout: bool
    weight_bits: int  # 16, 8 or 4
    optimizer: str  # one of OPTIMIZERS
    zero_stage: int  # DeepSpeed ZeRO's stage; FSDP's full sharding counts as 3
    gpus: int
    # torchtune's and LitGPT's chunked loss: the LM head's output in chunks, each
    # upcast and differentiated alone. Axolotl's `cut_cross_entropy` keeps even less.
    chunked_loss: bool = False
    # Axolotl's `chunked_cross_entropy`: the full 16-bit logits, upcast a chunk at a time;
    # their gradient is one full 16-bit tensor.
    chunked_upcast: bool = False
    # DPO: every row is a chosen and a rejected sequence, and without an adapter the
    # reference model is a second copy of the weights.
    preference: bool = False
    paged_optimizer: bool = False
    # torchtune's optimizer_in_bwd: each gradient is applied and freed as soon as it is
    # computed, so only the largest one exists at a time. Axolotl has no such option
    # (from_config leaves it off); it is here so the formulas can be checked against
    # torchtune's published figures.
    optimizer_in_backward: bool = False
    precision_bytes: int = 2  # of unquantised weights and activations: 4 in fp32
    adapter_bytes: int = 4  # PEFT's fp32 adapters; 2 where everything trains in bf16
    gradient_accumulation: int = 1
    # torch's multi-tensor AdamW (adamw_torch) steps all tensors at once through
    # temporaries; the fused one (adamw_torch_fused) and bitsandbytes' do not.
    foreach_optimizer: bool = False
    # DeepSpeed's bf16/fp16 mode: an fp32 master copy of the trainable weights and fp32
    # moments, whatever the weights' dtype.
    master_weights: bool = False
    # torchtune's activation offloading: saved activations wait in CPU memory.
    activation_offloading: bool = False
    virtual_tokens: int = 0  # prompt tuning's, included in sequence_len
    # A sequence-classification reward model (`reward_model: true`): every row is a
    # chosen and a rejected sequence, and its head gives one score per token, not V logits.
    reward_model: bool = False

    @property
    def sequences_per_row(self) -> int:
        return 2 if self.preference or self.reward_model else 1

    def head_outputs(self, arch: Architecture) -> int:
        """Outputs per token of the model's head: the vocabulary's logits, or one score."""
        return 1 if self.reward_model else arch.vocab

    @property
    def prompt_tuning(self) -> bool:
        return self.adapter == PROMPT_TUNING

    @classmethod
    def from_config(cls, config: dict[str, Any], gpus: int) -> Training:
        adapter = config.get("adapter")
        bits = 4 if config.get("load_in_4bit") else 8 if config.get("load_in_8bit") else 16
        optimizer = str(config.get("optimizer", "adamw_torch"))
        kind = (
            "adamw_8bit" if "8bit" in optimizer else "adamw" if "adam" in optimizer else optimizer
        )
        if kind not in OPTIMIZERS:
            kind = "adamw"
        targets = None if config.get("lora_target_linear") else config.get("lora_target_modules")
        deepspeed = config.get("deepspeed")
        virtual = int(config.get("num_virtual_tokens") or 20) if adapter == PROMPT_TUNING else 0
        return cls(
            micro_batch=int(config.get("micro_batch_size", 1)),
            sequence_len=int(config.get("sequence_len", 2048)) + virtual,
            gradient_checkpointing=bool(config.get("gradient_checkpointing")),
            adapter=adapter,
            lora_rank=int(config.get("lora_r", 8)),
            lora_targets=targets,
            lora_dropout=float(config.get("lora_dropout", 0) or 0) > 0,
            weight_bits=bits,
            optimizer=kind,
            zero_stage=zero_stage(deepspeed),
            gpus=gpus,
            chunked_loss=bool(config.get("cut_cross_entropy")),
            chunked_upcast=bool(config.get("chunked_cross_entropy")),
            preference=config.get("rl") in ("dpo", "ipo", "orpo", "simpo"),
            paged_optimizer=optimizer.startswith("paged_"),
            # The cpu overlay trains in fp32 (bf16 and fp16 false); the GPU ones in bf16.
            precision_bytes=2 if config.get("bf16") or config.get("fp16") else 4,
            gradient_accumulation=int(config.get("gradient_accumulation_steps", 1)),
            foreach_optimizer=optimizer in ("adamw_torch", "adam_torch", "adamw_hf"),
            master_weights=bool(deepspeed),
            virtual_tokens=virtual,
            reward_model=bool(config.get("reward_model")),
        )

    @property
    def method(self) -> str:
        """LoRA, QLoRA or full fine-tuning: the error bands are measured per method."""
        return self.adapter or "full"


def zero_stage(deepspeed: str | None) -> int:
    if not deepspeed:
        return 0
    path = ROOT / deepspeed
    if not path.is_file():
        raise TunerError(f"deepspeed: {deepspeed} does not exist.")
    return int(json.loads(path.read_text()).get("zero_optimization", {}).get("stage", 0))


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per device at the peak: what stays for the run, and what the phase in
    which the peak falls adds."""

    weights: float
    adapter: float
    optimizer: float
    paged_optimizer: float
    gradients: float
    activations: float
    logits: float
    step_buffers: float
    dequantized: float
    gathered_weights: float
    allocator: float
    cuda_context: float
    phase: str

    def parts(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if k != "phase"}

    @property
    def allocated(self) -> float:
        """PyTorch's peak allocation (`torch.cuda.max_memory_allocated`)."""
        unseen = self.paged_optimizer + self.allocator + self.cuda_context
        return sum(self.parts().values()) - unseen

    @property
    def reserved(self) -> float:
        """What PyTorch's caching allocator holds (`torch.cuda.max_memory_reserved`)."""
        return self.allocated + self.allocator

    @property
    def total(self) -> float:
        """Peak with every part on the card, the CUDA context included."""
        return sum(self.parts().values())

    @property
    def resident(self) -> float:
        """Peak without the paged optimizer states, which can wait in CPU memory."""
        return self.total - self.paged_optimizer

    def largest_part(self) -> str:
        return max(self.parts().items(), key=lambda item: item[1])[0]

    def gib(self) -> dict[str, float]:
        parts = {k: round(v / GIB, 2) for k, v in self.parts().items()}
        return {**parts, "total": round(self.total / GIB, 2)}


def activation_bytes_per_token_layer(arch: Architecture, training: Training) -> float:
    """What one decoder layer saves for backward per token, as transformers' Llama-style
    layers do in eager PyTorch (p the activations' bytes):
    - two RMSNorms, each its input upcast to fp32 and its normalised output: (4 + p)·h;
    - attention: q and k before RoPE, rotated and after it (3h + 3kv), v (kv), and the
      attention output (h); FlashAttention/SDPA keep no s×s matrix;
    - the MLP: gate, activation, up and their product (4I);
    - LoRA dropout: each adapted input's dropped copy and its 1-byte mask."""
    h, kv, inter = arch.hidden, arch.kv_width, arch.intermediate
    p = training.precision_bytes
    saved = 2 * (4 + p) * h + p * (4 * h + 4 * kv + 4 * inter)
    if training.adapter and training.lora_dropout:
        shapes = arch.linear_shapes()
        targets = training.lora_targets or list(shapes)
        saved += (p + 1) * sum(shapes[t][0] for t in targets if t in shapes)
    return float(saved)


def loss_bytes_per_logit(training: Training) -> tuple[float, float]:
    """Bytes per logit (T·V of them) in the forward pass and at the start of backward.
    transformers' loss upcasts the logits to fp32 and keeps the fp32 log-softmax (p + 4
    + 4, the upcast a no-op in fp32); backward begins with the log-softmax, its fp32
    gradient and the logits' gradient (p + 4 + 4 + p). A chunked loss keeps only the
    16-bit logits, and backward takes its gradients a chunk at a time (torchtune's 8);
    Axolotl's chunked upcast has one chunk in fp32 at a time beside the full logits,
    and backward writes their full gradient."""
    p = training.precision_bytes
    if training.chunked_loss:
        return float(p), p + (4.0 + p) / LOSS_CHUNKS
    if training.chunked_upcast:
        return p + 8.0 / LOSS_CHUNKS, 2.0 * p + 8.0 / LOSS_CHUNKS
    return p + (4.0 if p < 4 else 0.0) + 4.0, 8.0 + 2 * p


def trainable_tensors(arch: Architecture, training: Training) -> list[tuple[int, int]]:
    if training.prompt_tuning:
        return [(training.virtual_tokens * arch.hidden, 1)]
    if training.adapter:
        return arch.lora_tensors(training.lora_rank, training.lora_targets)
    return arch.tensors()


def trainable_bytes(training: Training) -> float:
    return float(training.adapter_bytes if training.adapter else training.precision_bytes)


def state_bytes(training: Training) -> float:
    """Optimizer state per trainable parameter."""
    if training.optimizer != "adamw":
        return FIXED_STATE_BYTES[training.optimizer]
    return 12.0 if training.master_weights else 2.0 * trainable_bytes(training)


def shards_of(training: Training) -> tuple[tuple[str, ...], int]:
    return ZERO_SHARDS.get(training.zero_stage, ()), max(training.gpus, 1)


def staying(arch: Architecture, training: Training) -> dict[str, float]:
    """What stays for the whole run: weights, adapter, optimizer states, and under
    ZeRO-3 the two layers gathered whole."""
    shards, split = shards_of(training)
    per_linear = {16: float(training.precision_bytes), 8: 1.0, 4: NF4_BYTES}[training.weight_bits]
    weights = per_linear * arch.linear_params + training.precision_bytes * arch.other_params
    if training.preference and not training.adapter:
        weights *= 2  # the frozen reference model
    tensors = trainable_tensors(arch, training)
    trainable = sum(n * k for n, k in tensors)
    paged = sum(n * k for n, k in tensors if n >= PAGED_MIN_ELEMENTS)
    paged = paged if training.paged_optimizer else 0
    states = {"optimizer": state_bytes(training) * (trainable - paged)}
    states["paged_optimizer"] = state_bytes(training) * paged
    if "optimizer" in shards:
        states = {k: v / split for k, v in states.items()}
    gathered = 0.0
    if "weights" in shards:
        weights /= split
        gathered = 2 * per_linear * arch.linear_params / arch.layers
    adapter = trainable_bytes(training) * trainable if training.adapter else 0.0
    return {"weights": weights, "adapter": adapter, **states, "gathered_weights": gathered}


def peak_phase(arch: Architecture, training: Training) -> tuple[str, dict[str, float]]:
    """The phase of a step that adds the most, with what it adds: gradients,
    activations, logits and the optimizer step's temporaries (see the module's doc)."""
    shards, split = shards_of(training)
    p = training.precision_bytes
    tokens = training.micro_batch * training.sequences_per_row * training.sequence_len
    head = training.head_outputs(arch)
    tensors = trainable_tensors(arch, training)
    trainable = sum(n * k for n, k in tensors)
    gradient_bytes = 2.0 if training.master_weights else trainable_bytes(training)
    largest = max(n for n, _ in tensors) if training.optimizer_in_backward else trainable
    gradients = gradient_bytes * largest / (split if "gradients" in shards else 1)
    per_layer = activation_bytes_per_token_layer(arch, training)
    if training.activation_offloading:
        saved = 2 * tokens * (p * arch.hidden if training.gradient_checkpointing else per_layer)
    elif training.gradient_checkpointing:
        saved = tokens * arch.layers * p * arch.hidden
    else:
        saved = tokens * arch.layers * per_layer
    recomputed = tokens * per_layer if training.gradient_checkpointing else 0.0
    forward_loss, backward_loss = (tokens * head * b for b in loss_bytes_per_logit(training))
    step = 0.0
    if training.foreach_optimizer and not training.optimizer_in_backward:
        step = state_bytes(training) / 2 * trainable / (split if "optimizer" in shards else 1)
    kept = gradients if training.gradient_accumulation > 1 else 0.0
    backward = recomputed + (saved if kept else max(saved - gradients, 0.0))
    phases = {
        "forward": (kept, saved, forward_loss, 0.0),
        # Backward starts from the loss with every activation still saved.
        "loss backward": (kept, saved, backward_loss, 0.0),
        "backward": (gradients, backward, 0.0, 0.0),
        "optimizer step": (gradients, 0.0, 0.0, step),
    }
    phase, parts = max(phases.items(), key=lambda item: sum(item[1]))
    names = ("gradients", "activations", "logits", "step_buffers")
    added = dict(zip(names, parts, strict=True))
    added["dequantized"] = 0.0
    if training.weight_bits < 16 and phase != "optimizer step":
        added["dequantized"] = p * max(i * o for i, o in arch.linear_shapes().values())
    chunked = training.chunked_loss or training.chunked_upcast
    added["allocator"] = tokens * head * 4.0 if not chunked else recomputed or saved / arch.layers
    return phase, added


def estimate(
    arch: Architecture, training: Training, cuda_context_gib: float = 0.5
) -> MemoryEstimate:
    phase, added = peak_phase(arch, training)
    return MemoryEstimate(
        **staying(arch, training), **added, cuda_context=cuda_context_gib * GIB, phase=phase
    )
