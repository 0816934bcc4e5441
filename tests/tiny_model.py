"""A tiny random Llama for tests and notebook examples: built offline in well under a second (not part of the library)."""
from typing import Iterable


def tiny_llama(texts: Iterable[str] = (), hidden: int = 64, layers: int = 2, context: int = 128, seed: int = 0):
    "`(model, tokenizer)`: a random `LlamaForCausalLM` and a word-level tokenizer over the words of `texts`, built offline."
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    specials = ["<pad>", "<unk>", "</s>"]
    words = sorted({w for t in texts for w in str(t).split()} - set(specials))
    vocab = {w: i for i, w in enumerate(specials + words)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", eos_token="</s>",
                                  model_max_length=context)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=context,
                      pad_token_id=0, bos_token_id=None, eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).float().eval(), tok
