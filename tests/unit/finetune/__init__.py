"""Tests of the phiops-finetune workload: real transformers, peft and bitsandbytes (4-bit on
CPU) on a tiny random-weight Phi-3 made by `make-tiny-model`."""

import os

# Read by huggingface_hub at import time: these tests never reach for a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
