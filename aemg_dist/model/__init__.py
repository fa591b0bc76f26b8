"""The AEMG model: token embedding, Transformer encoder, VQ tokenizer and pretraining objectives.

    cfg = load_config(ModelConfig, "configs/model/tiny.yaml")
    model = AEMGModel(cfg)
    out = model(batch_to_torch(token_batch))   # {"loss": ..., "recon_loss": ..., "mtm_loss": ..., ...}
    out["loss"].backward()
    window, tokens = model.encode(batch_to_torch(token_batch))   # (B, d_model), (B, T, d_model)

Reading order: transformer.py (config and encoder), embeddings.py, quantizer.py, objectives.py
(the model and its losses), export.py (inference checkpoints).
"""

from .embeddings import TokenEmbedding, batch_to_torch
from .export import export_inference, load_inference
from .objectives import AEMGModel, Tokenizer, flops_per_token, mask_tokens, param_count, training_flops
from .quantizer import VectorQuantizer, spherical_kmeans
from .transformer import OBJECTIVES, ModelConfig, Transformer

__all__ = [
    "AEMGModel", "ModelConfig", "OBJECTIVES", "TokenEmbedding", "Tokenizer", "Transformer", "VectorQuantizer",
    "batch_to_torch", "export_inference", "flops_per_token", "load_inference", "mask_tokens", "param_count",
    "spherical_kmeans", "training_flops",
]
