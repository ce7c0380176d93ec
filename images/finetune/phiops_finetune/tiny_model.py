"""A tiny random-weight Phi-3 with a locally trained tokenizer: what tests, the demo and the
serving side use where real Phi-3 weights cannot be downloaded.

The architecture is the real one (`Phi3ForCausalLM`, fused `qkv_proj`/`gate_up_proj`); only
the sizes are small. The tokenizer is a byte-level BPE trained with the `tokenizers` library
on the built-in text below, plus Phi-3's special tokens and chat template, saved so that
`AutoTokenizer.from_pretrained(DIR)` loads it (in transformers 5, `LlamaTokenizer(vocab_file)`
silently builds an empty tokenizer: not used). Same arguments, same files.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from phiops_finetune.chat import PHI3_CHAT_TEMPLATE, PHI3_SPECIAL_TOKENS

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

CORPUS = """\
Welcome to the support desk. How can I help you today?
Our store sells hiking boots, rain jackets, tents, sleeping bags and camping stoves.
Returns are accepted within thirty days of delivery when the item is unused and in its box.
A refund is issued to the original payment method within five business days.
The warranty covers defects in materials and workmanship for two years.
It does not cover normal wear, accidents, or damage from improper care.
To track an order, open the link in the confirmation email or sign in to your account.
Shipping is free for orders over fifty dollars; express delivery takes one or two days.
Please describe the problem, attach a photo, and include your order number.
The customer asked whether the jacket is waterproof. The assistant answered yes.
The tent sleeps three people, weighs two kilograms and packs into a small bag.
Clean the boots with a soft brush and warm water, then let them dry away from heat.
The sleeping bag is rated for temperatures down to minus five degrees Celsius.
Thank you for contacting us. Is there anything else I can do for you?
The patient should take the medicine twice a day with food, unless the doctor says otherwise.
Contracts must be signed by both parties before the work begins.
The invoice lists the price, the tax, the total amount and the due date.
Safety first: wear gloves and goggles when you handle chemicals in the laboratory.
Engineers measure the pressure, the temperature and the flow rate every hour.
The bank will never ask for your password by phone or by email.
Interest is calculated monthly on the outstanding balance of the loan.
A good answer is short, correct, polite, and cites the source document.
Question: What is the capital of France? Answer: Paris is the capital of France.
Question: How many days are in a week? Answer: There are seven days in a week.
The quick brown fox jumps over the lazy dog while the farmer watches from the field.
Numbers: one, two, three, four, five, six, seven, eight, nine, ten, 0 1 2 3 4 5 6 7 8 9.
System: you are a helpful assistant for an outdoor equipment shop.
User: My order arrived damaged. Assistant: I am sorry to hear that. We will send a new one.
User: Can I change my delivery address? Assistant: Yes, until the order has shipped.
"""

DEFAULT_LAYERS = 2
DEFAULT_HIDDEN = 64
DEFAULT_VOCAB = 1024
SEED = 1234
# Wider than Phi-3's 0.02: with a 64-wide hidden state and a random output head, weights that
# small cap how far LoRA can move the logits (loss stuck near ln(vocab)); at 0.1 a tiny
# memorisable dataset visibly drops from ~7 to ~3 in 20 steps.
INIT_RANGE = 0.1


def build_tokenizer(vocab_size: int = DEFAULT_VOCAB) -> PreTrainedTokenizerBase:
    """A byte-level BPE over the built-in corpus with Phi-3's special tokens (ids 0-4) and
    chat template; pad and eos are `<|endoftext|>` as in Phi-3."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(PHI3_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = CORPUS.splitlines()
    # A few passes with the lines in other orders give the merges more pairs to count.
    backend.train_from_iterator(lines + lines[::-1] + sorted(lines), trainer)
    fast: Any = PreTrainedTokenizerFast  # its __init__ is untyped
    tokenizer: PreTrainedTokenizerBase = fast(
        tokenizer_object=backend,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(PHI3_SPECIAL_TOKENS[1:]),
        model_max_length=4096,
    )
    tokenizer.chat_template = PHI3_CHAT_TEMPLATE
    return tokenizer


def _token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    found = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(found, int):  # pragma: no cover - one token in, one id out
        raise TypeError(f"{token} has no single id")
    return found


def make_tiny_model(
    out: str | Path,
    layers: int = DEFAULT_LAYERS,
    hidden: int = DEFAULT_HIDDEN,
    vocab: int = DEFAULT_VOCAB,
    heads: int | None = None,
    seed: int = SEED,
) -> Path:
    """Write a tiny `Phi3ForCausalLM` and its tokenizer to `out`; returns the folder."""
    import torch
    from transformers import GenerationConfig, Phi3Config, Phi3ForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(vocab)
    # Like Phi-3 (32,064 rows for 32,011 tokens) the embedding may have rows no token uses.
    vocab_size = max(vocab, len(tokenizer))
    endoftext, end = _token_id(tokenizer, "<|endoftext|>"), _token_id(tokenizer, "<|end|>")
    # Heads of 32 dimensions: vLLM's CPU attention kernels start at head size 32.
    heads = heads or max(1, hidden // 32)
    config = Phi3Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=4096,
        original_max_position_embeddings=4096,
        bos_token_id=endoftext,
        eos_token_id=endoftext,
        pad_token_id=endoftext,
        tie_word_embeddings=False,
        initializer_range=INIT_RANGE,
    )
    torch.manual_seed(seed)
    untyped_model: Any = Phi3ForCausalLM  # its __init__ is untyped in transformers 5.19
    model = untyped_model(config)
    # Phi-3 stops at <|end|> (the end of a turn) as well as at <|endoftext|>.
    generation: Any = GenerationConfig  # its __init__ is untyped
    model.generation_config = generation(
        bos_token_id=endoftext, eos_token_id=[endoftext, end], pad_token_id=endoftext
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
