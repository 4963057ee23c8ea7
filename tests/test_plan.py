"""The planner: parameter counts against the published sizes, the memory formulas
against hand computations, the verdict and the overrides it suggests, steps and time."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

import pytest

from tuner.errors import TunerError
from tuner.memory import GIB, NF4_BYTES, Architecture, Training, architecture_for, estimate
from tuner.plan import HEADROOM, Workload, flops_per_token, make_plan, steps_and_tokens, verdict
from tuner.project import ROOT
from tuner.references import error_bands, load_references

TINY = Architecture(hidden=8, layers=2, intermediate=16, heads=2, kv_heads=1, vocab=10, tied=False)


def training(**changes) -> Training:
    base = dict(
        micro_batch=2,
        sequence_len=4,
        gradient_checkpointing=False,
        adapter="lora",
        lora_rank=2,
        lora_targets=None,
        lora_dropout=False,
        weight_bits=16,
        optimizer="adamw",
        zero_stage=0,
        gpus=1,
    )
    return Training(**{**base, **changes})


@pytest.mark.parametrize(
    ("model", "params"),
    [
        # The sizes the model cards give.
        ("meta-llama/Llama-3.1-8B", 8_030_261_248),
        ("meta-llama/Llama-3.2-3B", 3_212_749_824),
        ("Qwen/Qwen2.5-7B", 7_615_616_512),
    ],
)
def test_parameter_counts_match_the_published_sizes(model, params):
    assert architecture_for(model).params == params


def test_lora_parameters_match_the_seed_reports_trainable_count():
    # Llama-3.2-3B, rank 8 on all seven projections: 12,156,928 trainable in the report.
    assert architecture_for("meta-llama/Llama-3.2-3B").lora_params(8, None) == 12_156_928


def test_a_local_model_folder_is_read_from_its_config(tmp_path):
    (tmp_path / "config.json").write_text(
        '{"hidden_size": 8, "num_hidden_layers": 2, "intermediate_size": 16, '
        '"num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 10, '
        '"tie_word_embeddings": false, "model_type": "llama"}'
    )
    assert architecture_for(str(tmp_path)) == TINY


def test_an_unknown_model_says_how_to_teach_the_planner():
    with pytest.raises(TunerError, match=r"recipes/models\.yaml.*Known: .*Qwen/Qwen2\.5-7B"):
        architecture_for("acme/unknown-70B")


def test_memory_parts_match_a_hand_computation():
    # TINY: head_dim 4, kv width 4. Linear per layer: q 64, k 32, v 32, o 64, gate 128,
    # up 128, down 128 = 576; two layers 1152. Embeddings 80 + head 80 + norms 5×8 = 200.
    assert TINY.linear_params == 1152 and TINY.params == 1352
    # LoRA rank 2 on all: 2·(in+out) per module = 2·(16+12+12+16+24+24+24) = 256 per layer.
    assert TINY.lora_params(2, None) == 512
    memory = estimate(TINY, training(), cuda_context_gib=0)
    assert memory.weights == 2 * 1352
    assert memory.adapter == 4 * 512  # PEFT's fp32 adapter
    assert memory.optimizer == 2 * 4 * 512  # two fp32 moments
    # Per token and layer, in bf16: two norms (4 + 2)·8 each, then 2 × (4h + 4kv + 4I)
    # = 2 × (32 + 16 + 64): 96 + 224 = 320 bytes; 8 tokens × 2 layers.
    assert memory.activations == 8 * 2 * 320
    # The peak is where backward starts: every activation and, per logit (8 × 10), the
    # fp32 log-softmax, its gradient and the logits' gradient beside the logits: 12 bytes.
    assert memory.phase == "loss backward"
    assert memory.logits == 8 * 10 * 12 and memory.gradients == 0
    assert memory.allocated == 2704 + 2048 + 4096 + 5120 + 960
    # Reserved: one more block of the largest short-lived tensor, the fp32 logits.
    assert memory.reserved == memory.allocated + 8 * 10 * 4

    checkpointed = estimate(TINY, training(gradient_checkpointing=True), cuda_context_gib=0)
    # Kept: each layer's input (8 tokens × 2 layers × 8 × 2 bytes = 256); in backward one
    # layer is recomputed (8 × 320) while the fp32 LoRA gradients (4 × 512) are written.
    assert checkpointed.phase == "backward"
    assert checkpointed.activations == 8 * 320 and checkpointed.gradients == 4 * 512
    dropout = estimate(TINY, training(lora_dropout=True), cuda_context_gib=0)
    # A dropped copy and a 1-byte mask of each adapted input: (2 + 1)·(6h + I) more.
    assert dropout.activations == 8 * 2 * (320 + 3 * 64)
    fp32 = estimate(TINY, training(precision_bytes=4), cuda_context_gib=0)
    # fp32 logits need no upcast: 4 + 4 in forward, 4 + 4 + 4 + 4 where backward starts.
    assert fp32.weights == 4 * 1352 and fp32.logits == 8 * 10 * 16
    # Axolotl's chunked_cross_entropy: one of 8 chunks in fp32 beside the bf16 logits;
    # where backward starts, their full bf16 gradient too: 2 + 2 + 8/8 bytes per logit.
    upcast = estimate(TINY, training(chunked_upcast=True), cuda_context_gib=0)
    assert upcast.logits == 8 * 10 * 5
    # torchtune's chunked output: the bf16 logits, and one chunk's gradients at a time.
    chunked = estimate(TINY, training(chunked_loss=True), cuda_context_gib=0)
    assert chunked.logits == 8 * 10 * (2 + 6 / 8)


def test_quantized_weights_sharded_states_and_the_optimizer_step():
    four_bit = estimate(TINY, training(weight_bits=4, adapter="qlora"), cuda_context_gib=0)
    assert four_bit.weights == pytest.approx(NF4_BYTES * 1152 + 2 * 200)
    # One weight at a time is dequantised to bf16 for its matmul: the largest, 16 × 8.
    assert four_bit.dequantized == 2 * 128
    # Full fine-tuning in bf16: AdamW's moments take the weights' dtype.
    full = training(adapter=None, gpus=4, gradient_accumulation=2)
    unsharded = estimate(TINY, full, cuda_context_gib=0)
    assert unsharded.optimizer == 2 * 2 * 1352
    # Accumulating, the bf16 gradients stay through the next forward pass.
    assert unsharded.gradients == 2 * 1352
    zero2 = estimate(TINY, replace(full, zero_stage=2), cuda_context_gib=0)
    assert zero2.gradients == unsharded.gradients / 4
    assert zero2.optimizer == unsharded.optimizer / 4 and zero2.weights == unsharded.weights
    zero3 = estimate(TINY, replace(full, zero_stage=3), cuda_context_gib=0)
    # Sharded weights, and two layers gathered whole (576 bf16 weights each).
    assert zero3.weights == unsharded.weights / 4 and zero3.gathered_weights == 2 * 2 * 576
    # DeepSpeed's bf16 mode: an fp32 master copy and fp32 moments, 12 bytes, sharded.
    master = estimate(TINY, replace(full, zero_stage=1, master_weights=True), 0)
    assert master.optimizer == 12 * 1352 / 4
    # One token: the step dominates, with torch's foreach temporaries of a moment's size.
    one = replace(full, micro_batch=1, sequence_len=1, gpus=1, foreach_optimizer=True)
    step = estimate(TINY, one, cuda_context_gib=0)
    assert step.phase == "optimizer step"
    assert step.gradients == 2 * 1352 and step.step_buffers == 2 * 1352
    dpo = estimate(TINY, training(preference=True), cuda_context_gib=0)
    assert dpo.logits == 2 * estimate(TINY, training(), cuda_context_gib=0).logits
    dpo_full = estimate(TINY, replace(full, preference=True), cuda_context_gib=0)
    assert dpo_full.weights == 2 * unsharded.weights  # the frozen reference model


def test_paged_states_and_the_optimizer_step_in_backward():
    arch = architecture_for("meta-llama/Llama-3.1-8B")
    norms = (2 * 32 + 1) * 4096  # the only tensors under bitsandbytes' 100,000 elements
    full = training(adapter=None, optimizer="adamw_8bit", paged_optimizer=True)
    memory = estimate(arch, full, cuda_context_gib=0)
    assert memory.optimizer == 2 * norms
    assert memory.paged_optimizer == 2 * (arch.params - norms)
    assert memory.resident == memory.total - memory.paged_optimizer
    # Stepped in backward, only the largest gradient (embeddings: 128,256 × 4096) exists.
    in_backward = estimate(arch, replace(full, optimizer_in_backward=True), cuda_context_gib=0)
    assert in_backward.gradients == 2 * 128_256 * 4096
    # LoRA rank 8 on the MLP: B of gate and up (14,336 × 8) and A of down (8 × 14,336)
    # reach the threshold, the other three matrices (8 × 4096) do not.
    mlp = training(lora_rank=8, lora_targets=["gate_proj", "up_proj", "down_proj"])
    lora = estimate(arch, replace(mlp, paged_optimizer=True), cuda_context_gib=0)
    assert lora.paged_optimizer == 8 * 32 * 3 * 8 * 14_336
    assert lora.optimizer == 8 * 32 * 3 * 8 * 4096


def test_a_plan_fits_by_paging_the_optimizer_states_to_cpu_memory():
    full = ["adapter=null", "load_in_4bit=false", "micro_batch_size=1", "sequence_len=2048"]
    unpaged = make_plan("chat", "a100", [*full, "optimizer=adamw_8bit"])
    assert not unpaged.fits and "optimizer=paged_adamw_8bit" in unpaged.suggestions
    paged = make_plan("chat", "a100", [*full, "optimizer=paged_adamw_8bit"])
    assert paged.fits and paged.paging
    assert verdict(paged).startswith("fits by paging")
    on_card = paged.upper_gib * GIB
    assert on_card < 40 * GIB * HEADROOM < on_card + paged.memory.paged_optimizer


def test_steps_and_tokens_with_and_without_packing():
    workload = Workload(rows=1000, tokens_per_row=256, source="given")
    config = {"sequence_len": 1024, "micro_batch_size": 4, "gradient_accumulation_steps": 2}
    # Unpacked: 1000 rows / (4 × 2 × 2 GPUs) = 62.5 → 63 steps of 16 rows of 256 tokens.
    assert steps_and_tokens(config, workload, gpus=2) == (63, 63 * 16 * 256)
    # Packed: 256,000 tokens in 250 sequences of 1024 → 16 steps (ceil 15.6).
    packed = steps_and_tokens({**config, "sample_packing": True}, workload, gpus=2)
    assert packed == (16, 16 * 16 * 1024)
    assert steps_and_tokens({**config, "max_steps": 5}, workload, gpus=2)[0] == 5


def test_flops_per_token_count_the_passes():
    arch = architecture_for("meta-llama/Llama-3.1-8B")
    forward = 2 * (arch.linear_params + arch.vocab * arch.hidden) + 2 * 32 * 2048 * 4096
    assert flops_per_token(arch, training(adapter=None), 2048) == 3 * forward
    assert flops_per_token(arch, training(), 2048) == 2 * forward
    assert flops_per_token(arch, training(gradient_checkpointing=True), 2048) == 3 * forward


def test_a_plan_that_does_not_fit_suggests_overrides_that_make_it_fit():
    plan = make_plan("chat", "a100", ["micro_batch_size=8", "gradient_checkpointing=false"])
    assert plan.fits is False
    assert plan.suggestions[0] == "gradient_checkpointing=true"
    overrides = [s.split(" ")[0] for s in plan.suggestions]
    assert make_plan("chat", "a100", ["micro_batch_size=8", *overrides]).fits


def test_a_plan_reports_time_and_cost_from_the_card_and_the_price():
    plan = make_plan("math", "a100", ["price=2.0", "mfu=0.5"])
    assert plan.fits and plan.utilisation == 0.5 and plan.price_per_hour == 2.0
    assert plan.cost == pytest.approx(plan.hours * 2.0)
    slower = make_plan("math", "a100", ["price=2.0", "mfu=0.25"])
    assert slower.hours == pytest.approx(2 * plan.hours)
    # The cpu overlay sizes its local data by reading it; there is no card to time.
    local = make_plan("math", "cpu", [])
    assert local.workload.source == "measured" and local.workload.rows == 80
    assert local.hours is None and local.steps == 20


def test_plan_all_prints_every_pair_in_seconds():
    done = subprocess.run(
        [sys.executable, "-m", "tuner", "plan", "--all"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    for task in ("chat", "code", "tool-use", "summarization"):
        assert task in done.stdout
    assert done.stdout.count("✓") + done.stdout.count("✗") == 60


def test_plan_names_what_is_wrong_with_its_input():
    done = subprocess.run(
        [sys.executable, "-m", "tuner", "plan", "maths", "a100"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "maths" in done.stderr and "math" in done.stderr


def test_the_reference_set_is_published_measurements_across_methods_sizes_and_gpus():
    references = load_references()
    assert len(references) >= 15
    assert {r.training.method for r in references} == {"lora", "qlora", "full"}
    assert {r.counter for r in references} <= {"allocated", "active", "reserved", "unstated"}
    assert all(r.source.startswith("https://") for r in references)
    sizes = {architecture_for(r.model).params // 10**9 for r in references}
    assert min(sizes) <= 1 and max(sizes) >= 70
    assert any(r.training.gpus > 1 for r in references)
    assert {r.training.gradient_checkpointing for r in references} == {True, False}


def test_bench_plan_writes_every_rows_error_and_the_bands(tmp_path, monkeypatch):
    import json

    from rich.console import Console

    from tuner import bench

    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    with open(os.devnull, "w") as quiet:
        written = json.loads(bench.bench_plan(Console(file=quiet)).read_text())
    assert written["comparisons"] == len(load_references()) == len(written["results"])
    for row in written["results"]:
        error = row["estimated"] / row["measured"] - 1
        assert row["relative_error"] == pytest.approx(error, abs=0.002)
        if not row["within_20_percent"]:
            assert row["why_it_misses"]  # a row the planner misses says why
    assert set(written["error_bands"]) == {"lora", "qlora", "full"}


def test_a_plan_fits_at_the_upper_edge_of_its_methods_error_band():
    plan = make_plan("math", "a100", [])
    band = error_bands()["lora"]
    assert plan.band == band
    assert plan.upper_gib * GIB == pytest.approx(
        plan.memory.resident - plan.memory.allocated + band.upper(plan.memory.allocated)
    )
    assert plan.upper_gib * GIB >= plan.memory.resident
    # A card between the estimate and the band's upper edge does not count as a fit.
    limit = plan.card_gib * HEADROOM
    assert plan.fits == (plan.upper_gib <= limit)
