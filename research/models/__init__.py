"""Flax linen models and their config dataclasses."""
from research.models.config import EncoderConfig
from research.models import products, projections
from research.models.encoder import Encoder, first_token, init_params, mean_pool
