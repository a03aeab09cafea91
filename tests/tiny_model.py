"""A tiny random Llama-style model and a BPE tokenizer trained on a few lines, built offline.

Used by tests (through the fixtures in conftest.py) and by benchmarks that need a fast fake LM.
The call markers ``[``, ``]`` and ``->`` tokenize normally in it (" [" is one token, as in
SmolLM2's vocabulary).
"""

from __future__ import annotations

from pathlib import Path

import torch

TRAINING_LINES = [
    "Out of 1400 participants, 400 (or [Calculator(400 / 1400) -> 0.29] 29%) passed the test.",
    "The name derives from la tortuga, the Spanish word for [QA(What is the Spanish word for turtle?) -> turtle] turtle.",
    "Today is [Calendar() -> Today is Monday, January 30, 2023.] the first Monday of the year.",
    "Pittsburgh is also known as [WikiSearch(Pittsburgh) -> the Steel City] the Steel City.",
    "He paid 18 + 12 * 3 = 54 dollars for 3 books and a pen at the store in Paris.",
    "The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9 . , ; : ! ? ( ) [ ] -> =>",
    "Input: Output: Your task is to add calls to a Calculator API to a piece of text.",
    "In 2019 the town had 1,280 people; in 2020 it had 1,350, an increase of 70.",
]


def build_tiny_model(out_dir: str | Path, vocab_size: int = 300, hidden: int = 32, layers: int = 2,
                     seed: int = 0) -> Path:
    """Write a tiny random LlamaForCausalLM and its tokenizer to ``out_dir``; return the path."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(TRAINING_LINES * 4, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>",
                                  eos_token="</s>", pad_token="</s>")
    tok.save_pretrained(out)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=2048, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    model.generation_config.do_sample = False
    model.save_pretrained(out)
    return out


def build_scripted_model(tiny_dir: str | Path, out: str | Path, chain: list[str], scale: float = 3.0) -> Path:
    """A one-layer Llama over the tiny tokenizer whose next token is scripted: each token of ``chain``
    is followed by the next one (cyclically), every other token by itself.

    Attention and MLP outputs are zeroed, so the logits depend on the current token only; the head
    puts ``scale`` on the successor's direction. Used by the pipeline tests and the load benchmark to
    make a model that writes calls (e.g. ``, [Calc(7)]``) without training.
    """
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = Path(out)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    torch.manual_seed(0)
    hidden = 64
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    ids = tok.convert_tokens_to_ids(chain)
    if len(set(ids)) != len(chain) or tok.unk_token_id in ids:
        raise ValueError(f"chain tokens are not distinct known tokens: {chain}")
    succ = {a: a for a in range(len(tok))}
    for a, b in zip(ids, ids[1:] + ids[:1]):
        succ[a] = b
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = torch.randn(len(tok), hidden)
        model.model.embed_tokens.weight.copy_(emb)
        unit = emb / emb.norm(dim=-1, keepdim=True)
        head = torch.zeros(len(tok), hidden)
        for a, b in succ.items():
            head[b] = scale * unit[a]
        model.lm_head.weight.copy_(head)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
