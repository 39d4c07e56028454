"""Hugging Face transformers built from tiny configs (no download), fed dict batches (`model(**batch)`).

Their activation classes (`GELUActivation`, `NewGELUActivation`) are not torch.nn's; GPT-2's
`NewGELUActivation` is built from `torch.tanh` (one layer, not two) and follows HF's `Conv1D`,
whose weight is stored (in, out).
"""

from __future__ import annotations

import pytest
import torch
from zoo_expect import assert_layers, measure_quietly

transformers = pytest.importorskip("transformers")

IDS = torch.randint(1, 50, (2, 9), generator=torch.Generator().manual_seed(0))
MASK = torch.tensor([[1] * 9, [1] * 6 + [0] * 3])


def test_gpt2_new_gelu_is_one_layer_of_mlp_features():
    config = transformers.GPT2Config(
        vocab_size=50,
        n_positions=16,
        n_embd=16,
        n_layer=3,
        n_head=2,
        n_inner=44,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = transformers.GPT2LMHeadModel(config)
    result = measure_quietly(model, {"input_ids": IDS, "attention_mask": MASK})
    assert_layers(result, [(f"transformer.h.{i}.mlp.act", 44) for i in range(3)])


def test_bert_intermediate_gelu_and_pooler_tanh():
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=28,
        max_position_embeddings=16, num_labels=3,
    )  # fmt: skip
    model = transformers.BertForSequenceClassification(config)
    result = measure_quietly(model, {"input_ids": IDS, "attention_mask": MASK})
    expected = [(f"bert.encoder.layer.{i}.intermediate.intermediate_act_fn", 28) for i in range(2)]
    assert_layers(result, [*expected, ("bert.pooler.activation", 16)])
    # Independent: the first intermediate GELU's output by a standard forward hook, averaged over
    # both sequences and all 9 positions (padding included, as HF computes them).
    captured = []
    layer = model.bert.encoder.layer[0].intermediate
    handle = layer.register_forward_hook(lambda module, args, output: captured.append(output))
    with torch.no_grad():
        model.eval()(input_ids=IDS, attention_mask=MASK)  # eval: no dropout, as measure() runs it
    handle.remove()
    # the default statistic, mean |a|: GELU outputs can be negative
    assert torch.allclose(result.layers[0].activity, captured[0].double().abs().mean(dim=(0, 1)), atol=1e-6)


def test_llama_gated_mlp_counts_the_gate_activation():
    # SiLU(gate_proj(x)) * up_proj(x): the layer is the SiLU's output, intermediate_size wide.
    config = transformers.LlamaConfig(
        vocab_size=50, hidden_size=16, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=32,
    )  # fmt: skip
    result = measure_quietly(
        transformers.LlamaForCausalLM(config), {"input_ids": IDS, "attention_mask": MASK}
    )
    assert_layers(result, [(f"model.layers.{i}.mlp.act_fn", 40) for i in range(2)])


def test_t5_encoder_then_decoder_feed_forward():
    config = transformers.T5Config(
        vocab_size=50, d_model=16, d_ff=40, d_kv=8, num_layers=2, num_heads=2, decoder_start_token_id=0
    )
    model = transformers.T5ForConditionalGeneration(config)
    batch = {"input_ids": IDS, "attention_mask": MASK, "decoder_input_ids": IDS[:, :4]}
    expected = [(f"encoder.block.{i}.layer.1.DenseReluDense.act", 40) for i in range(2)]
    # decoder blocks: self-attention, cross-attention, then the feed-forward (layer 2)
    expected += [(f"decoder.block.{i}.layer.2.DenseReluDense.act", 40) for i in range(2)]
    assert_layers(measure_quietly(model, batch), expected)


def test_distilbert_feed_forward_then_the_heads_functional_relu():
    config = transformers.DistilBertConfig(
        vocab_size=50, dim=16, hidden_dim=40, n_layers=2, n_heads=2, max_position_embeddings=32
    )
    model = transformers.DistilBertForSequenceClassification(config)
    expected = [(f"distilbert.transformer.layer.{i}.ffn.activation", 40) for i in range(2)]
    # `nn.ReLU()(pooled_output)`: a module made in forward, not registered, seen as its F.relu call
    expected.append(("relu-fn", 16))
    assert_layers(measure_quietly(model, {"input_ids": IDS, "attention_mask": MASK}), expected)
