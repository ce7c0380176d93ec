"""The phiops-finetune image: LoRA/QLoRA training of Phi-3 adapters for a FineTuneJob.

Subcommands (see `phiops_finetune.cli`): `preflight`, `train`, `make-tiny-model`.
Nothing heavy is imported here: torch and transformers load inside the functions that use them.
"""
