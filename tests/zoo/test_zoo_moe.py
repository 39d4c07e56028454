"""Mixture-of-experts blocks: each expert's hidden unit is a node, averaged over the tokens routed to
that expert, whatever the implementation. transformers' Mixtral (grouped, batched and eager experts)
and Qwen2-MoE are built untrained from tiny configs; a plain-PyTorch top-k MoE keeps its experts in a
ModuleList. The experts are planted so that their true active counts differ (expert e has exactly
ACTIVE[e] units that fire on every token, the others output exactly 0) and are recovered exactly.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from zoo_expect import assert_layers, measure_expecting, measure_quietly

from emergence_lightning.measure import ActivityTracker

EXPERTS, TOP_K, D_FF, HIDDEN = 4, 2, 24, 16
ACTIVE = [6, 12, 18, 24]  # active units per expert, as in the report
IDS = torch.arange(24).view(2, 12)  # token v goes first to expert v % 4: every expert gets tokens


def plant_experts(model: nn.Module, idle_expert: int | None = None) -> None:
    """One decoder layer made transparent: the residual stream is the embedding, whose dim 0 is 1
    for every token and dim 1 + v % 4 is 1 for token v. The router sends token v to expert v % 4
    first; expert e's gate rows j < ACTIVE[e] read dim 0 (SiLU of a large positive value: active on
    every token), the rest are zero (SiLU(0) = 0: dead). ``idle_expert`` is never routed to.
    """
    layer = model.model.layers[0]
    with torch.no_grad():
        embedding = model.model.embed_tokens.weight
        embedding.zero_()
        embedding[:, 0] = 1.0
        embedding[torch.arange(len(embedding)), 1 + torch.arange(len(embedding)) % EXPERTS] = 1.0
        layer.self_attn.o_proj.weight.zero_()
        router = layer.mlp.gate.weight
        router.zero_()
        for expert in range(EXPERTS):
            router[expert, 1 + expert] = 5.0
        if idle_expert is not None:
            router[idle_expert, 0] = -20.0
        gate_rows = layer.mlp.experts.gate_up_proj[:, :D_FF]
        gate_rows.zero_()
        for expert, active in enumerate(ACTIVE):
            gate_rows[expert, :active, 0] = 10.0


def routed_gate_means(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Independent: per expert, the mean SiLU(gate) over the tokens the router sent to it, from the
    router's own choices and the normalised hidden states read by standard forward hooks.
    """
    layer = model.model.layers[0]
    seen = {}
    hooks = [
        layer.post_attention_layernorm.register_forward_hook(lambda m, a, out: seen.update(hidden=out)),
        layer.mlp.gate.register_forward_hook(lambda m, a, out: seen.update(chosen=out[-1])),
    ]
    with torch.no_grad():
        model.eval()(input_ids=ids)
    for hook in hooks:
        hook.remove()
    hidden = seen["hidden"].reshape(-1, HIDDEN).double()
    means = []
    for expert in range(EXPERTS):
        rows = (seen["chosen"] == expert).any(-1)
        gate = hidden[rows] @ layer.mlp.experts.gate_up_proj[expert, :D_FF].double().T
        means.append(
            F.silu(gate).mean(0) if rows.any() else torch.full((D_FF,), float("nan"), dtype=torch.float64)
        )
    return torch.cat(means)


def mixtral(implementation: str | None) -> nn.Module:
    transformers = pytest.importorskip("transformers")  # the plain-PyTorch cases run without it
    extra = {} if implementation is None else {"experts_implementation": implementation}
    config = transformers.MixtralConfig(
        vocab_size=32, hidden_size=HIDDEN, intermediate_size=D_FF, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, num_local_experts=EXPERTS, num_experts_per_tok=TOP_K, max_position_embeddings=32,
        **extra,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.MixtralForCausalLM(config)


@pytest.mark.parametrize(
    ("implementation", "runs"), [(None, "grouped_mm"), ("batched_mm", "batched_mm"), ("eager", "eager")]
)
def test_mixtral_experts_are_one_layer_of_experts_times_d_ff_whatever_the_implementation(
    implementation, runs
):
    model = mixtral(implementation)
    assert model.config._experts_implementation == runs  # the path this case covers (grouped is the default)
    plant_experts(model)
    result = measure_quietly(model, {"input_ids": IDS})
    assert_layers(result, [("model.layers.0.mlp.experts.act_fn", EXPERTS * D_FF)])
    layer = result.layers[0]
    assert layer.experts == EXPERTS and layer.idle_experts == ()
    assert layer.expert_active == ACTIVE
    assert torch.allclose(layer.activity, routed_gate_means(model, IDS), rtol=1e-5, atol=1e-6)


def test_an_expert_that_got_no_token_is_reported_not_silently_dead():
    model = mixtral("eager")  # the eager loop never calls an expert without tokens: it must not vanish
    plant_experts(model, idle_expert=3)
    ids = torch.tensor([[0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14]])  # token v % 4 == 3 absent
    result = measure_expecting(
        model,
        [{"input_ids": ids}],
        r"^Layer 'model.layers.0.mlp.experts.act_fn': experts \[3\] of 4 got no token in this measurement; "
        r"their nodes have no activity \(NaN\) and are counted inactive.$",
    )
    layer = result.layers[0]
    assert layer.n == EXPERTS * D_FF and layer.idle_experts == (3,)
    assert result.idle_experts == {"model.layers.0.mlp.experts.act_fn": (3,)}
    assert layer.expert_active == [6, 12, 18, 0]
    assert torch.isnan(layer.activity[3 * D_FF :]).all() and not layer.active[3 * D_FF :].any()


def test_qwen2_moe_experts_beside_the_shared_expert_and_its_sigmoid_gate():
    transformers = pytest.importorskip("transformers")
    config = transformers.Qwen2MoeConfig(
        vocab_size=32, hidden_size=HIDDEN, moe_intermediate_size=D_FF, shared_expert_intermediate_size=20,
        intermediate_size=28, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
        num_experts=EXPERTS, num_experts_per_tok=TOP_K, max_position_embeddings=32,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.Qwen2MoeForCausalLM(config)
    plant_experts(model)
    result = measure_quietly(model, {"input_ids": IDS})
    # The shared expert runs first (SwiGLU, 20 wide), then the routed experts, then the shared
    # expert's gate: sigmoid of a Linear(hidden, 1), one node.
    assert_layers(
        result,
        [
            ("model.layers.0.mlp.shared_expert.act_fn", 20),
            ("model.layers.0.mlp.experts.act_fn", EXPERTS * D_FF),
            ("model.layers.0.mlp.sigmoid-fn", 1),
        ],
    )
    assert result.layers[1].expert_active == ACTIVE
    assert torch.allclose(result.layers[1].activity, routed_gate_means(model, IDS), rtol=1e-5, atol=1e-6)


def test_qwen3_moe_experts_without_a_shared_expert():
    transformers = pytest.importorskip("transformers")
    config = transformers.Qwen3MoeConfig(
        vocab_size=32, hidden_size=HIDDEN, moe_intermediate_size=D_FF, intermediate_size=28, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, num_experts=EXPERTS, num_experts_per_tok=TOP_K,
        max_position_embeddings=32,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.Qwen3MoeForCausalLM(config)
    plant_experts(model)
    result = measure_quietly(model, {"input_ids": IDS})
    assert_layers(result, [("model.layers.0.mlp.experts.act_fn", EXPERTS * D_FF)])
    assert result.layers[0].expert_active == ACTIVE


class Expert(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.up, self.act, self.down = nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, width)

    def forward(self, x):
        return self.down(self.act(self.up(x)))


class TopKMoE(nn.Module):
    """A plain-PyTorch top-k MoE: a router, an expert list, a loop over the experts that got tokens."""

    def __init__(self, width: int = 8, hidden: int = 10, experts: int = 3, k: int = 2) -> None:
        super().__init__()
        self.k = k
        self.router = nn.Linear(width, experts)
        self.experts = nn.ModuleList(Expert(width, hidden) for _ in range(experts))

    def forward(self, x):
        tokens = x.reshape(-1, x.shape[-1])
        weights, chosen = self.router(tokens).softmax(-1).topk(self.k, dim=-1)
        out = torch.zeros_like(tokens)
        for index, expert in enumerate(self.experts):
            rows, slot = torch.where(chosen == index)
            if len(rows):
                out[rows] += weights[rows, slot, None] * expert(tokens[rows])
        return out.view_as(x)


def test_plain_pytorch_top_k_moe_with_an_expert_list():
    torch.manual_seed(0)
    model = TopKMoE()
    active = [3, 7, 10]  # expert e: units below active[e] have bias 1 and no weights (ReLU = 1), the rest 0
    with torch.no_grad():
        for expert, count in zip(model.experts, active):
            expert.up.weight.zero_()
            expert.up.bias.zero_()
            expert.up.bias[:count] = 1.0
    x = torch.randn(4, 5, 8, generator=torch.Generator().manual_seed(1))
    result = measure_quietly(model, x)
    # One layer: 3 experts x 10 units, named for the site inside one expert.
    assert_layers(result, [("experts.each.act", 30)])
    assert result.layers[0].expert_active == active
    assert result.layers[0].activity.tolist() == [
        1.0 if j < count else 0.0 for count in active for j in range(10)
    ]


def test_an_expert_list_member_that_never_ran_is_reported():
    torch.manual_seed(0)
    model = TopKMoE()
    with torch.no_grad():
        model.router.weight.zero_()
        model.router.bias.copy_(torch.tensor([1.0, 1.0, -9.0]))  # expert 2 is never among the top 2
    result = measure_expecting(
        model, [torch.randn(2, 5, 8)], r"^Layer 'experts.each.act': experts \[2\] of 3 got no token"
    )
    assert result.layers[0].n == 30 and result.idle_experts == {"experts.each.act": (2,)}
    assert torch.isnan(result.layers[0].activity[20:]).all()


def test_a_call_site_whose_number_of_calls_changes_between_passes_is_warned_about():
    class Unrolled(nn.Module):
        """One ReLU module applied once per time step: its -call<k> names follow the sequence length."""

        def __init__(self) -> None:
            super().__init__()
            self.cell, self.act = nn.Linear(4, 4), nn.ReLU()

        def forward(self, x):
            h = torch.zeros(x.shape[0], 4)
            for step in range(x.shape[1]):
                h = self.act(self.cell(x[:, step] + h))
            return h

    batches = [torch.randn(2, 3, 4), torch.randn(2, 5, 4)]
    measure_expecting(
        Unrolled(),
        batches,
        r"Call site 'act' ran 3 times in one forward pass and 5 in another, so its layers 'act', 'act-call2', \.\.\. ",
    )


def test_experts_pack_and_reduce_across_processes_like_any_layer():
    # `compute(reduce=...)` as two processes that saw the same batches: every sum doubles, every
    # max stays. The per-expert units (idle expert included) must come out as on one process.
    model = mixtral("grouped_mm")
    plant_experts(model, idle_expert=3)
    ids = torch.tensor([[0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14]])
    tracker = ActivityTracker(model)
    model.eval()
    with tracker, torch.no_grad():
        tracker.start_pass()
        model(input_ids=ids)
    with pytest.warns(RuntimeWarning, match=r"experts \[3\] of 4 got no token"):
        alone = tracker.compute()
    with pytest.warns(RuntimeWarning, match=r"experts \[3\] of 4 got no token"):
        doubled = tracker.compute(reduce=lambda tensor, op: tensor * 2 if op == "sum" else tensor)
    assert doubled.layers[0].expert_active == alone.layers[0].expert_active == [6, 12, 18, 0]
    assert doubled.layers[0].idle_experts == (3,)
    assert torch.equal(doubled.layers[0].activity.isnan(), alone.layers[0].activity.isnan())
    assert torch.allclose(doubled.layers[0].activity[: 3 * D_FF], alone.layers[0].activity[: 3 * D_FF])


def test_a_fit_logs_the_experts_layer_under_its_stable_name(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.loggers import TensorBoardLogger
    from tb import read_scalars
    from torch.utils.data import DataLoader, TensorDataset

    from emergence_lightning import EmergenceCallback

    class MoEClassifier(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.act, self.moe, self.head = nn.Linear(8, 8), nn.ReLU(), TopKMoE(), nn.Linear(8, 3)

        def forward(self, x):  # x: (batch, 5 tokens, 8)
            return self.head(self.moe(self.act(self.embed(x))).mean(1))

        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self(batch[0]), batch[1])

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1]))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(8, 5, 8, generator=generator), torch.arange(8) % 3)
    torch.manual_seed(0)
    callback = EmergenceCallback()
    trainer = pl.Trainer(
        max_epochs=1, callbacks=[callback], logger=TensorBoardLogger(tmp_path, name="run"), accelerator="cpu",
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.filterwarnings("error", module="emergence_lightning")  # no idle expert, no undecided layer
        trainer.fit(MoEClassifier(), DataLoader(data, batch_size=4), DataLoader(data, batch_size=4))
    for record in callback.history:  # epoch 0 and epoch 1
        assert record["layers"] == ["act", "moe.experts.each.act"] and record["n"] == [8, 3 * 10]
    scalars = read_scalars(trainer.logger.log_dir)
    assert len(scalars["emergence/active/moe.experts.each.act"]) == 2
