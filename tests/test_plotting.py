"""Plot builders: figures hold the model's numbers, and bad input is refused with a clear error."""

import pytest
import torch

from circuitry import load_model
from circuitry.errors import CircuitryError
from circuitry.plotting import attention_patterns

PROMPT = "When Mary and John went to the store, John gave a drink to"


def test_attention_patterns_show_the_gated_patterns():
    dense, sparse = load_model("tiny-dense"), load_model("tiny-sparse")
    fig = attention_patterns({"dense": dense, "sparse": sparse}, PROMPT, layer=2, heads=[0, 3])
    assert len(fig.data) == 4  # 2 models x 2 heads
    with torch.no_grad():
        _, cache = sparse.run_with_cache(sparse.to_tokens(PROMPT), names_filter="blocks.2.attn.hook_pattern")
    want = cache["blocks.2.attn.hook_pattern"][0, 3].numpy()
    got = fig.data[3].z
    assert got.shape == want.shape == (len(fig.data[3].x),) * 2
    assert abs(got - want).max() < 1e-6 and (got > 0).sum(1).mean() < (fig.data[1].z > 0).sum(1).mean()


@pytest.mark.parametrize("kwargs, message", [
    ({"prompt": ""}, "empty prompt"),
    ({"prompt": " Mary" * 80}, "context is 64"),
    ({"prompt": " Mary zzqx went home"}, "outside the tokenizer's vocabulary"),
    ({"layer": 4}, "asked for layer 4"),
    ({"heads": [8]}, "heads [8]"),
])  # fmt: skip
def test_attention_patterns_bad_input(kwargs, message):
    args = {"prompt": PROMPT, "layer": 2, "heads": None, **kwargs}
    with pytest.raises(CircuitryError, match=message.replace("[", r"\[").replace("]", r"\]")):
        attention_patterns({"dense": load_model("tiny-dense")}, args["prompt"], args["layer"], args["heads"])


def test_attention_patterns_label_each_model_with_its_own_tokens(tmp_path):
    """Two tokenizers split the prompt differently: each row has its own token count and labels."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=270,  # few merges: words split into pieces
                                special_tokens=["<bos>", "<pad>", "<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([PROMPT] * 3, trainer)
    PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<bos>", pad_token="<pad>", unk_token="<unk>").save_pretrained(tmp_path)
    tok = PreTrainedTokenizerFast.from_pretrained(tmp_path)  # TransformerLens wants a tokenizer with a name_or_path
    cfg = HookedTransformerConfig(n_layers=1, d_model=16, n_ctx=64, d_head=4, n_heads=4, d_vocab=len(tok), act_fn="relu", seed=0)
    other = HookedTransformer(cfg, tokenizer=tok)
    dense = load_model("tiny-dense")
    fig = attention_patterns({"dense": dense, "bpe": other}, PROMPT, layer=0, heads=[0])
    for trace, model in zip(fig.data, (dense, other)):
        want = [f"{i}:{t}" for i, t in enumerate(model.to_str_tokens(PROMPT))]
        assert list(trace.y) == want and trace.z.shape == (len(want), len(want))
    assert len(fig.data[0].y) != len(fig.data[1].y)
