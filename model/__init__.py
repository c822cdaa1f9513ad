"""The block-diffusion code LM (transformers Llama + block-causal masks) and its decoder."""

from .cache import BlockKVCache
from .checkpoint import DEFAULT_MODEL_DIR, CheckpointError, load_checkpoint, resolve_model, save_checkpoint
from .config import PRESETS, ModelConfig, preset
from .decoder import DecodeCancelled, DecodeConfig, DecodeResult, StepEvent, generate, reference_generate
from .network import build_model, forward_logits, remask_config, set_attention_backend
from .tokenizer import OWN_SPECIAL_TOKENS, Tokenizer, TokenizerError

__all__ = [
    "BlockKVCache", "CheckpointError", "DEFAULT_MODEL_DIR", "DecodeCancelled", "DecodeConfig", "DecodeResult",
    "ModelConfig", "OWN_SPECIAL_TOKENS", "PRESETS", "StepEvent", "Tokenizer", "TokenizerError", "build_model",
    "forward_logits", "generate", "load_checkpoint", "preset", "reference_generate", "remask_config",
    "resolve_model", "save_checkpoint", "set_attention_backend",
]
