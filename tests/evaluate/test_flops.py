"""FLOP counts of the encoder (research/evaluate/speed.py): dense and low rank."""
from research.evaluate.speed import encoder_flops
from research.models import EncoderConfig

CONFIG = EncoderConfig(vocab_size=50, hidden_size=32, num_layers=2, num_heads=4,
                       intermediate_size=64, max_position_embeddings=32)


def test_dense_flops_count_every_matmul():
  batch, length, h, f, d = 2, 8, 32, 64, 8
  per_layer = 2 * batch * length * (4 * h * h + 2 * h * f) + 2 * 2 * batch * 4 * length ** 2 * d
  assert encoder_flops(CONFIG, batch, length) == 2 * per_layer


def test_low_rank_projections_count_their_factors():
  low = CONFIG.replace(projections=((r'(.*/)?layer_0/mlp/intermediate', 'low_rank:4'),))
  saved = 2 * 2 * 8 * (32 * 64 - 4 * (32 + 64))
  assert encoder_flops(CONFIG, 2, 8) - encoder_flops(low, 2, 8) == saved
